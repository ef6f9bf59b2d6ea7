import dataclasses
import time

import numpy as np
import pytest
import redis

from app.catalog import Catalog, IndexSettings
from app.settings import Settings
from app.store import RedisStore, SQLiteStore, StoreUnavailable, TrackRecord
from index.local_index import GRAPH_MEMBER, LocalIndex, read_header
from tests.conftest import rewrite_snapshot

DIM = 16
MODEL = "model-a"


def record(track_id: str, rng: np.random.Generator) -> TrackRecord:
    vectors = rng.standard_normal((4, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return TrackRecord(track_id, None, None, {}, 50.0, MODEL, time.time(), vectors, (10.0 * np.arange(4)).astype(np.float32))


def reopen(data_dir, m: int, make_store=SQLiteStore) -> tuple[Catalog, str]:
    settings = Settings(hnsw_m=m)  # the service's defaults otherwise
    return Catalog.open(make_store(data_dir), MODEL, data_dir / "index.snapshot", IndexSettings.of(settings, DIM),
                        settings.retry_after_s)


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request):
    """How a test opens "the" store again: a SQLite file in its data dir, or one real Redis database."""
    if request.param == "sqlite":
        yield SQLiteStore
        return
    url = request.getfixturevalue("redis_server").url.replace("/0", "/15")
    redis.Redis.from_url(url).flushdb()
    yield lambda _data_dir: RedisStore(url)
    redis.Redis.from_url(url).flushdb()


def test_the_snapshot_is_used_when_it_fits_and_a_changed_m_rebuilds_from_the_store(tmp_path):
    rng = np.random.default_rng(0)
    catalog, how = reopen(tmp_path, m=16)
    assert how == "rebuilt"  # nothing to load yet
    catalog.ingest_many([record(f"t{i}", rng) for i in range(5)])
    query = catalog._index.vectors("t3")[1:3]
    catalog.save_snapshot(tmp_path / "index.snapshot")
    catalog.close()

    catalog, how = reopen(tmp_path, m=16)
    assert how == "snapshot"
    assert catalog.search(query, top_k=1)[0].track_id == "t3"
    catalog.save_snapshot(tmp_path / "index.snapshot")
    catalog.close()

    catalog, how = reopen(tmp_path, m=32)  # M is fixed in a built graph: the new setting needs a rebuild
    assert how == "rebuilt"
    assert sorted(catalog._index.track_ids()) == [f"t{i}" for i in range(5)]
    assert catalog.search(query, top_k=1)[0].track_id == "t3"
    catalog.save_snapshot(tmp_path / "index.snapshot")
    catalog.close()
    assert reopen(tmp_path, m=32)[1] == "snapshot"


def test_the_graph_is_built_with_the_configured_beam(tmp_path):
    settings = Settings(hnsw_ef_construction=64)  # COVERID_HNSW_EF_CONSTRUCTION
    catalog, how = Catalog.open(SQLiteStore(tmp_path), MODEL, tmp_path / "index.snapshot",
                                IndexSettings.of(settings, DIM), settings.retry_after_s)
    assert how == "rebuilt"
    catalog.ingest_many([record(f"t{i}", np.random.default_rng(i)) for i in range(3)])
    catalog.save_snapshot(tmp_path / "index.snapshot")
    catalog.close()
    assert read_header(tmp_path / "index.snapshot").ef_construction == 64


def saved_catalogue(tmp_path, make_store=SQLiteStore) -> np.ndarray:
    """Five tracks stored and snapshotted; returns a query that finds t3."""
    rng = np.random.default_rng(1)
    catalog, _ = reopen(tmp_path, m=16, make_store=make_store)
    catalog.ingest_many([record(f"t{i}", rng) for i in range(5)])
    catalog.save_snapshot(tmp_path / "index.snapshot")
    catalog.close()
    return catalog._index.vectors("t3")[1:3]


def flip_byte_inside_graph(path):
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(GRAPH_MEMBER)
    data = bytearray(path.read_bytes())
    data[info.header_offset + 200] ^= 0xFF  # inside the member's data: its CRC no longer matches
    path.write_bytes(bytes(data))


def random_graph(path):
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[GRAPH_MEMBER] = np.random.default_rng(0).bytes(len(members[GRAPH_MEMBER]))  # a valid zip, a meaningless graph
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def directory_instead(path):
    path.unlink()
    path.mkdir()
    (path / "x").write_text("not a snapshot")


def truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [flip_byte_inside_graph, random_graph, directory_instead, truncated])
def test_a_damaged_snapshot_is_moved_aside_and_the_index_rebuilt_from_the_store(tmp_path, damage, caplog, make_store):
    query = saved_catalogue(tmp_path, make_store)
    damage(tmp_path / "index.snapshot")
    with caplog.at_level("WARNING", logger="coverid.catalog"):
        catalog, how = reopen(tmp_path, m=16, make_store=make_store)
    assert how == "rebuilt"
    assert catalog.search(query, top_k=1)[0].track_id == "t3"
    assert not (tmp_path / "index.snapshot").exists()
    kept = list(tmp_path.glob("index.snapshot.damaged-*"))
    assert len(kept) == 1 and "cannot be loaded" in caplog.text and str(kept[0]) in caplog.text


def test_the_snapshot_is_written_where_no_data_dir_exists_yet(tmp_path):
    catalog, _ = reopen(tmp_path, m=16)
    catalog.ingest(record("t0", np.random.default_rng(2)))
    target = tmp_path / "not" / "yet" / "index.snapshot"
    catalog.save_snapshot(target)
    assert target.exists()


def test_a_second_process_on_the_same_store_converges_by_syncing(tmp_path):
    """Two catalogues over one SQLite file stand for two replicas: each sees the other's writes after sync()."""
    rng = np.random.default_rng(3)
    first, _ = reopen(tmp_path, m=16)
    second, _ = reopen(tmp_path, m=16)
    added = record("t0", rng)
    first.ingest(added)
    assert not second._index.contains("t0")
    assert second.sync() >= 1
    assert second.search(added.vectors[1:3], top_k=1)[0].track_id == "t0"

    swapped = record("t0", rng)  # a replace through the second replica
    second.ingest(swapped, replace=True)
    first.sync()
    assert np.allclose(first._index.vectors("t0"), swapped.vectors, atol=1e-3)  # half precision

    first.delete("t0")
    second.sync()
    assert not second._index.contains("t0") and second.indexed_tracks() == 0
    assert second.sync() == 0 and second.generation == first._store.generation()


def test_a_snapshot_whose_counts_match_a_changed_store_is_brought_up_to_date(tmp_path, make_store):
    """The stale snapshot of issue 12: another process swapped a track's content, counts unchanged."""
    query = saved_catalogue(tmp_path, make_store)
    other = make_store(tmp_path)
    swapped = record("t3", np.random.default_rng(9))
    other.put(swapped, replace=True)
    other.close()
    catalog, how = reopen(tmp_path, m=16, make_store=make_store)
    assert how == "snapshot"  # trusted as of its generation, then the log replayed
    assert np.allclose(catalog._index.vectors("t3"), swapped.vectors, atol=1e-3)  # half precision
    assert catalog.search(swapped.vectors[:2], top_k=1)[0].track_id == "t3"
    assert catalog.search(query, top_k=1)[0].score < 0.99  # the old content is gone from the index


def test_a_snapshot_newer_than_the_store_is_not_used(tmp_path):
    saved_catalogue(tmp_path)
    (tmp_path / "catalog.sqlite3").unlink()  # the store replaced by an empty one: the snapshot describes nothing here
    for leftover in tmp_path.glob("catalog.sqlite3-*"):
        leftover.unlink()
    catalog, how = reopen(tmp_path, m=16)
    assert how == "rebuilt" and catalog.indexed_tracks() == 0


@pytest.mark.parametrize("snapshot_format", ["current", "3"])
def test_stage_3_reads_the_sequences_from_the_store_after_a_snapshot_or_a_rebuild(tmp_path, make_store, snapshot_format):
    rng = np.random.default_rng(21)
    sequence = rng.integers(0, 256, (12, 30), dtype=np.uint8)
    catalog, _ = reopen(tmp_path, m=16, make_store=make_store)
    catalog.ingest(dataclasses.replace(record("with-sequence", rng), sequence=sequence))
    catalog.ingest(record("without", rng))
    snapshot = tmp_path / "index.snapshot"
    catalog.save_snapshot(snapshot)
    if snapshot_format == "3":  # the same snapshot as format 3 wrote it: refused, so rebuilt from the store
        old = tmp_path / "old.snapshot"
        rewrite_snapshot(snapshot, old, format_version=3)
        old.replace(snapshot)
    reopened, how = reopen(tmp_path, m=16, make_store=make_store)
    assert how == ("rebuilt" if snapshot_format == "3" else "snapshot")
    assert np.array_equal(reopened.sequences(["with-sequence"])[0], sequence)
    assert reopened.sequences(["without", "gone", "with-sequence"])[:2] == [None, None]


def test_without_the_store_stage_3_gets_nothing_and_the_store_is_not_asked_again_at_once(tmp_path):
    store = FailingStore(tmp_path)
    catalog = Catalog(store, LocalIndex(DIM), MODEL, IndexSettings.of(Settings(), DIM), store_retry_s=60.0)
    rng = np.random.default_rng(22)
    store.put(dataclasses.replace(record("t", rng), sequence=rng.integers(0, 256, (12, 5), dtype=np.uint8)))
    assert catalog.sequences(["t"])[0].shape == (12, 5)
    store.down = True
    assert catalog.sequences(["t", "u"]) is None
    store.down = False  # back, but within the retry interval the catalogue does not ask
    assert catalog.sequences(["t"]) is None and store.asked == 2


class FailingStore(SQLiteStore):
    """A real SQLite store whose get_many fails as an unreachable Redis does while `down`."""

    def __init__(self, data_dir):
        super().__init__(data_dir)
        self.down, self.asked = False, 0

    def get_many(self, track_ids, with_vectors=False):
        self.asked += 1
        if self.down:
            raise StoreUnavailable("the store is down (test)")
        return super().get_many(track_ids, with_vectors)


def test_a_named_pipe_at_the_snapshot_path_is_moved_aside_and_the_index_rebuilt(tmp_path, caplog):
    """Opening a FIFO for reading blocks until a writer comes: start-up must not wait for one."""
    import os
    import threading

    query = saved_catalogue(tmp_path)
    snapshot = tmp_path / "index.snapshot"
    snapshot.unlink()
    os.mkfifo(snapshot)
    opened: list = []
    with caplog.at_level("WARNING", logger="coverid.catalog"):
        worker = threading.Thread(target=lambda: opened.append(reopen(tmp_path, m=16)), daemon=True)
        worker.start()
        worker.join(timeout=20)
        if worker.is_alive():  # blocked in open(): give it a writer, so that the thread ends, and fail
            os.close(os.open(snapshot, os.O_WRONLY | os.O_NONBLOCK))
            worker.join(timeout=20)
            pytest.fail("Catalog.open blocked on a named pipe at the snapshot path")
    catalog, how = opened[0]
    assert how == "rebuilt"
    assert sorted(catalog._index.track_ids()) == [f"t{i}" for i in range(5)]
    assert catalog.search(query, top_k=1)[0].track_id == "t3"
    assert not os.path.lexists(snapshot)
    kept = list(tmp_path.glob("index.snapshot.damaged-*"))
    assert len(kept) == 1 and "cannot be loaded" in caplog.text and "not a regular file" in caplog.text


def test_the_milvus_collection_is_brought_in_line_with_the_store_at_start(tmp_path, milvus_server):
    from pymilvus import MilvusClient

    settings = Settings(milvus_uri=milvus_server.uri, milvus_collection="in_line")
    rng = np.random.default_rng(3)

    def open_catalog() -> tuple[Catalog, str]:
        return Catalog.open(SQLiteStore(tmp_path), MODEL, tmp_path / "index.snapshot", IndexSettings.of(settings, DIM),
                            settings.retry_after_s)

    catalog, how = open_catalog()
    assert how == "engine"
    catalog.ingest_many([record(f"t{i}", rng) for i in range(4)])
    # a writer stopped between the store and the engine: one track reached only the store, one is gone from it
    catalog._store.put(record("late", rng))
    catalog._index.add("ghost", record("ghost", rng).vectors)
    catalog.save_snapshot(tmp_path / "index.snapshot")  # the engine keeps its own data: no snapshot
    assert not (tmp_path / "index.snapshot").exists()
    catalog.close()

    catalog, how = open_catalog()
    assert "late" in catalog._index.track_ids()
    late = catalog._store.get("late", with_vectors=True).vectors
    assert catalog.search(late[1:3], top_k=1)[0].track_id == "late"
    ghost = catalog._index.vectors("ghost")  # still in the engine, never answered: stage 2 reads the store
    assert "ghost" not in [m.track_id for m in catalog.search(ghost[1:3], top_k=10)]
    assert catalog.delete("t2")
    catalog.close()
    engine = MilvusClient(uri=milvus_server.uri)  # what the engine itself holds: t0, t1, t3, late, ghost
    assert engine.query("in_line", filter="", output_fields=["count(*)"])[0]["count(*)"] == 20
    engine.close()
