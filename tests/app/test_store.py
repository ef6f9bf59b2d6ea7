"""The catalogue store's contract, run against SQLite and a real redis-server alike."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace as with_fields
from pathlib import Path

import numpy as np
import pytest

from app.store import (
    CatalogStore,
    RedisStore,
    SQLiteStore,
    StoreError,
    StoreUnavailable,
    TrackExists,
    TrackRecord,
    open_store,
)
from app.store.base import MAX_METADATA_DEPTH, MAX_PAGE_END, MAX_SEQUENCE_FRAMES
from app.store.redis import redact_url
from tests.app.conftest import RedisServer, free_port, plant_raw_track

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_record(track_id: str, n: int = 3, dim: int = 8, model_id: str = "m1", created_at: float = 1000.0,
                seed: int = 0, **fields) -> TrackRecord:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    values = dict(
        track_id=track_id, title=f"Title {track_id}", artist="Ärtist", metadata={"isrc": track_id, "tags": [1, "a"]},
        duration_s=20.0 * n, model_id=model_id, created_at=created_at, vectors=vectors,
        starts_s=(np.arange(n) * 10.0 + 0.25).astype(np.float32),
    )
    values.update(fields)
    return TrackRecord(**values)


def make_sequence(frames: int, seed: int = 0) -> np.ndarray:
    """A (12, frames) uint8 pitch-class sequence using the whole byte range."""
    return np.random.default_rng(seed).integers(0, 256, size=(12, frames), dtype=np.uint8)


def assert_same_sequence(got, want) -> None:
    if want is None:
        assert got is None
    else:
        assert got.dtype == np.uint8 and got.shape == want.shape and got.tobytes() == want.tobytes()
        assert got.flags.c_contiguous and got.flags.writeable


class Backend:
    """Opens stores of one kind on the same data, and simulates the restart that tests durability."""

    def __init__(self, kind: str, tmp_path, redis_server=None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.redis_server = redis_server
        self.prefix = f"test-{uuid.uuid4().hex[:12]}"

    def open(self) -> CatalogStore:
        if self.kind == "sqlite":
            return SQLiteStore(self.tmp_path / "data")
        return RedisStore(self.redis_server.url, prefix=self.prefix)

    def restart(self) -> None:
        # SQLite: the next open() reads the file afresh. Redis: SIGKILL, then reload the AOF.
        if self.kind == "redis":
            self.redis_server.restart(crash=True)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path) -> Backend:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    return Backend(request.param, tmp_path, server)


@pytest.fixture
def store(backend):
    opened = backend.open()
    yield opened
    opened.close()


def assert_same(got: TrackRecord, want: TrackRecord, with_vectors: bool = True) -> None:
    for name in ("track_id", "title", "artist", "metadata", "duration_s", "model_id", "created_at"):
        assert getattr(got, name) == getattr(want, name), name
    assert np.array_equal(got.starts_s, want.starts_s) and got.starts_s.dtype == np.float32
    assert got.n_segments == want.n_segments
    if with_vectors:
        assert got.vectors.dtype == np.float32 and np.array_equal(got.vectors, want.vectors)
    else:
        assert got.vectors is None


def test_put_get_round_trip_is_exact(store):
    record = make_record("a/1:ü", n=4, dim=16, title=None, metadata={"nested": {"x": [1.5, None]}, "s": "日本"})
    store.put(record)
    assert_same(store.get("a/1:ü", with_vectors=True), record)
    assert store.get("a/1:ü", with_vectors=True).vectors.flags.writeable


def test_get_without_vectors_and_missing_track(store):
    record = make_record("t", n=5)
    store.put(record)
    assert_same(store.get("t"), record, with_vectors=False)
    assert store.get("absent") is None and store.get("absent", with_vectors=True) is None


def test_get_many_reads_the_stored_ones_in_the_order_asked(store, monkeypatch):
    import app.store.sqlite

    monkeypatch.setattr(app.store.sqlite, "IDS_PER_QUERY", 2)  # several IN (...) reads
    records = [make_record(f"t{i}", n=2 + i % 3, seed=i, sequence=make_sequence(9, seed=i)) for i in range(5)]
    store.put_many(records)
    got = store.get_many(["t3", "absent", "t0", "t4", "t1", "t2"], with_vectors=True)
    assert [r.track_id for r in got] == ["t3", "t0", "t4", "t1", "t2"]
    for record in got:
        want = records[int(record.track_id[1:])]
        assert_same(record, want)
        assert np.array_equal(record.sequence, want.sequence)
    assert [r.vectors for r in store.get_many(["t1"])] == [None] and store.get_many([]) == []


def test_sequence_round_trips_through_put_put_many_get_and_iter_records(store):
    with_one = make_record("seq", sequence=make_sequence(37, seed=1))
    # a Fortran-order array: stored as the (12, T) array it is, not in its memory order
    transposed = make_record("seq-t", sequence=np.asfortranarray(make_sequence(5, seed=2)))
    store.put(with_one)
    store.put(make_record("plain"))
    batch = [make_record("bulk-seq", sequence=make_sequence(1, seed=3)), make_record("bulk-plain"), transposed]
    store.put_many(batch)
    expected = {r.track_id: r.sequence for r in [with_one, *batch]} | {"plain": None}
    for track_id, sequence in expected.items():
        assert_same_sequence(store.get(track_id, with_vectors=True).sequence, sequence)
        assert store.get(track_id).sequence is None  # cheap reads leave it out
    found = {r.track_id: r.sequence for r in store.iter_records(batch_size=2)}
    assert found.keys() == expected.keys()
    for track_id, sequence in expected.items():
        assert_same_sequence(found[track_id], sequence)
    assert all(r.sequence is None for r in store.list(0, 10))


def test_replace_swaps_or_drops_the_sequence(store):
    store.put(make_record("t", sequence=make_sequence(20, seed=1)))
    store.put(make_record("t"), replace=True)
    assert store.get("t", with_vectors=True).sequence is None  # no sequence of the old track lingers
    new = make_sequence(9, seed=2)
    store.put(make_record("t", sequence=new), replace=True)
    assert_same_sequence(store.get("t", with_vectors=True).sequence, new)


def test_duplicate_put_raises_and_keeps_the_original(store):
    original = make_record("t", n=3, seed=1)
    store.put(original)
    with pytest.raises(TrackExists, match="replace=True"):
        store.put(make_record("t", n=6, seed=2, model_id="m2"))
    assert_same(store.get("t", with_vectors=True), original)
    assert (store.count(), store.vector_count(), store.model_ids()) == (1, 3, {"m1"})


def test_replace_swaps_content_and_counters(store):
    store.put(make_record("t", n=3, model_id="m1"))
    store.put(make_record("other", n=2, model_id="m1"))
    new = make_record("t", n=5, model_id="m2", seed=9, title="New", created_at=2000.0)
    store.put(new, replace=True)
    assert_same(store.get("t", with_vectors=True), new)
    assert (store.count(), store.vector_count(), store.model_ids()) == (2, 7, {"m1", "m2"})
    store.put(make_record("fresh", n=1), replace=True)  # replace of an absent track is a plain put
    assert (store.count(), store.vector_count()) == (3, 8)


def test_delete_then_delete_again(store):
    store.put(make_record("a", n=3, model_id="m1"))
    store.put(make_record("b", n=4, model_id="m2"))
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.get("a") is None
    assert (store.count(), store.vector_count(), store.model_ids()) == (1, 4, {"m2"})
    assert store.delete("b") and (store.count(), store.vector_count(), store.model_ids()) == (0, 0, set())


def test_list_pages_are_ordered_stable_and_complete(store):
    rng = np.random.default_rng(3)
    ids = [f"track-{i:02d}" for i in rng.permutation(25)]
    for i, track_id in enumerate(ids):
        store.put(make_record(track_id, n=1 + i % 3, created_at=1000.0 + int(track_id[-2:]) // 4))  # ties on purpose
    expected = sorted(ids, key=lambda t: (1000.0 + int(t[-2:]) // 4, t))
    pages = [store.list(offset, 7) for offset in range(0, 28, 7)]
    assert [len(page) for page in pages] == [7, 7, 7, 4]
    assert [r.track_id for page in pages for r in page] == expected
    assert all(r.vectors is None and r.n_segments >= 1 for page in pages for r in page)
    assert [r.track_id for r in store.list(7, 7)] == expected[7:14]  # the same page twice reads the same
    assert store.list(25, 10) == [] and store.list(0, 0) == []
    with pytest.raises(ValueError):
        store.list(-1, 5)


def test_counters_after_a_mix_of_writes(store):
    expected: dict[str, TrackRecord] = {}
    for i in range(12):
        record = make_record(f"t{i}", n=1 + i % 4, model_id=f"m{i % 3}", seed=i)
        store.put(record)
        expected[record.track_id] = record
    for i in (0, 4, 5):
        record = make_record(f"t{i}", n=7, model_id="m9", seed=100 + i)
        store.put(record, replace=True)
        expected[record.track_id] = record
    for i in (1, 2, 5):
        assert store.delete(f"t{i}")
        del expected[f"t{i}"]
    assert store.count() == len(expected)
    assert store.vector_count() == sum(r.n_segments for r in expected.values())
    assert store.model_ids() == {r.model_id for r in expected.values()}


def test_iter_records_yields_each_once_with_vectors(store):
    records = {f"r{i}": make_record(f"r{i}", n=1 + i % 5, seed=i) for i in range(30)}
    for record in records.values():
        store.put(record)
    for batch_size in (1, 4, 1000):
        seen = list(store.iter_records(batch_size=batch_size))
        assert sorted(r.track_id for r in seen) == sorted(records)
        for record in seen:
            assert_same(record, records[record.track_id])


def test_iter_records_reads_in_batches_not_all_at_once(store):
    for i in range(30):
        store.put(make_record(f"r{i:02d}", seed=i))
    iterator = store.iter_records(batch_size=4)
    first = next(iterator)
    for i in range(30):  # whatever was not yet read can no longer be read
        if f"r{i:02d}" != first.track_id:
            store.delete(f"r{i:02d}")
    assert len(list(iterator)) <= 3  # at most the rest of the first batch, already in memory


def test_acknowledged_writes_survive_a_restart(backend):
    store = backend.open()
    kept = {f"k{i}": make_record(f"k{i}", n=2 + i, seed=i, model_id=f"m{i % 2}") for i in range(5)}
    for record in kept.values():
        store.put(record)
    store.put(make_record("gone", n=9))
    assert store.delete("gone")
    kept["k0"] = make_record("k0", n=6, seed=50, model_id="m7")
    store.put(kept["k0"], replace=True)
    store.close()

    backend.restart()
    reopened = backend.open()
    try:
        assert reopened.ping()
        assert {r.track_id: r for r in reopened.iter_records()}.keys() == kept.keys()
        for track_id, record in kept.items():
            assert_same(reopened.get(track_id, with_vectors=True), record)
        assert reopened.count() == 5 and reopened.vector_count() == sum(r.n_segments for r in kept.values())
        assert reopened.model_ids() == {"m0", "m1", "m7"}
    finally:
        reopened.close()


def churn_op(k: int) -> tuple[str, object]:
    """The k-th write of a deterministic churn: replaces over 7 ids, a delete every fifth op."""
    track_id = f"c{k % 7}"
    if k % 5 == 4:
        return "delete", track_id
    return "put", make_record(track_id, n=1 + k % 4, seed=k, model_id=f"m{k % 3}", metadata={"k": k})


def churn(store: CatalogStore, acknowledge, stop) -> None:
    k = 0
    while not stop():
        kind, arg = churn_op(k)
        if kind == "put":
            store.put(arg, replace=True)
        else:
            store.delete(arg)
        acknowledge(k)
        k += 1


def state_after(ops: int) -> dict[str, int]:
    """track_id -> k of the put that wrote it, once the first `ops` churn writes applied."""
    state: dict[str, int] = {}
    for k in range(ops):
        kind, arg = churn_op(k)
        if kind == "put":
            state[arg.track_id] = k
        else:
            state.pop(arg, None)
    return state


def assert_whole_tracks_after(store: CatalogStore, acknowledged: int) -> None:
    """Every acknowledged write is there, the one in flight wholly or not at all, counters match the rows."""
    records = list(store.iter_records(batch_size=3))
    found = {r.track_id: r.metadata["k"] for r in records}
    assert found in (state_after(acknowledged), state_after(acknowledged + 1))
    for record in records:
        assert_same(record, churn_op(record.metadata["k"])[1])
    assert store.count() == len(records)
    assert store.vector_count() == sum(r.n_segments for r in records)
    assert store.model_ids() == {r.model_id for r in records}


def test_sqlite_writer_killed_mid_churn_leaves_whole_tracks(tmp_path):
    code = ("import sys; from pathlib import Path; from app.store import SQLiteStore; "
            "from tests.app.test_store import churn; "
            "churn(SQLiteStore(Path(sys.argv[1])), lambda k: print(k, flush=True), lambda: False)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for expected in range(10):  # let it get going, then kill it wherever it is
        assert child.stdout.readline().strip() == str(expected), child.stderr.read()
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=10)
    acknowledged = 10 + sum(1 for line in out.splitlines(keepends=True) if line.endswith("\n"))
    with SQLiteStore(tmp_path) as store:
        assert_whole_tracks_after(store, acknowledged)


def test_redis_server_killed_mid_churn_keeps_acknowledged_writes(redis_server):
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_server.url, prefix=prefix)
    acknowledged: list[int] = []

    def writer() -> None:
        with pytest.raises(StoreUnavailable):
            churn(store, acknowledged.append, lambda: False)

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 10
    while len(acknowledged) < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        redis_server.stop(crash=True)
        thread.join(timeout=10)
    finally:
        store.close()
        redis_server.start()
    assert len(acknowledged) >= 10
    with RedisStore(redis_server.url, prefix=prefix) as reopened:
        assert_whole_tracks_after(reopened, len(acknowledged))


def test_redis_torn_aof_drops_the_whole_last_put(tmp_path, redis_server):
    server = RedisServer(redis_server.executable, tmp_path)  # its own server: this test mangles the AOF
    server.start()
    try:
        with RedisStore(server.url) as store:
            store.put(make_record("a", n=2))
            aof = next((tmp_path / "appendonlydir").glob("*.incr.aof"))
            before = aof.stat().st_size
            store.put(make_record("b", n=3, model_id="m2"))
        server.stop(crash=True)
        pristine = tmp_path / "pristine"
        shutil.copytree(tmp_path / "appendonlydir", pristine)
        after = aof.stat().st_size
        for cut in np.linspace(before + 1, after - 1, 5).astype(int):  # a crash cutting the write anywhere
            shutil.rmtree(tmp_path / "appendonlydir")
            shutil.copytree(pristine, tmp_path / "appendonlydir")
            with open(aof, "r+b") as handle:
                handle.truncate(cut)
            server.start()
            with RedisStore(server.url) as store:
                assert store.get("b") is None and store.get("a", with_vectors=True) is not None
                assert (store.count(), store.vector_count(), store.model_ids()) == (1, 2, {"m1"})
            server.stop(crash=True)
    finally:
        server.stop()


def test_concurrent_puts_of_distinct_tracks(store):
    def writer(thread: int) -> None:
        for i in range(6):
            store.put(make_record(f"w{thread}-{i}", n=1 + (thread + i) % 4, seed=thread * 10 + i))
            assert store.get(f"w{thread}-{i}") is not None

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(writer, range(8)))
    assert store.count() == 48
    assert store.vector_count() == sum(1 + (t + i) % 4 for t in range(8) for i in range(6))


def test_concurrent_puts_of_one_track_let_exactly_one_win(store):
    barrier = threading.Barrier(6)

    def writer(seed: int) -> bool:
        barrier.wait()
        try:
            store.put(make_record("contested", n=1 + seed, seed=seed))
            return True
        except TrackExists:
            return False

    with ThreadPoolExecutor(max_workers=6) as pool:
        won = list(pool.map(writer, range(6)))
    assert won.count(True) == 1
    winner = won.index(True)
    assert_same(store.get("contested", with_vectors=True), make_record("contested", n=1 + winner, seed=winner))
    assert (store.count(), store.vector_count()) == (1, 1 + winner)


def _nested(depth: int) -> dict:
    """A dict `depth` objects deep: {"a": {"a": ... {"a": 1}}}."""
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_metadata_as_deep_as_the_limit_is_stored(store):
    record = with_fields(make_record("deep"), metadata=_nested(MAX_METADATA_DEPTH))
    store.put(record)
    assert store.get("deep").metadata == record.metadata


def _nan_vectors() -> np.ndarray:
    vectors = make_record("x").vectors.copy()
    vectors[1, 2] = np.nan
    return vectors


INVALID = {
    "vectors 1-D": dict(vectors=np.ones(8, dtype=np.float32) / np.sqrt(8)),
    "vectors float64": dict(vectors=make_record("x").vectors.astype(np.float64)),
    "starts length != N": dict(starts_s=np.zeros(2, dtype=np.float32)),
    "NaN in vectors": dict(vectors=_nan_vectors()),
    "NaN in starts": dict(starts_s=np.array([0, np.nan, 20], dtype=np.float32)),
    "not L2-normalised": dict(vectors=make_record("x").vectors * 2),
    "no vectors": dict(vectors=None, starts_s=None),
    "metadata not JSON": dict(metadata={"when": object()}),
    "NaN in metadata": dict(metadata={"bpm": float("nan")}),
    "metadata nested too deep": dict(metadata=_nested(MAX_METADATA_DEPTH + 1)),
    "metadata integer too long": dict(metadata={"n": 10**5000}),
    "NaN duration": dict(duration_s=float("nan")),
    "empty track id": dict(track_id=""),
    "sequence float32": dict(sequence=make_sequence(4).astype(np.float32)),
    "sequence int8": dict(sequence=make_sequence(4).astype(np.int8)),
    "sequence 1-D": dict(sequence=make_sequence(4).ravel()),
    "sequence 11 rows": dict(sequence=make_sequence(4)[:11]),
    "sequence frames first": dict(sequence=make_sequence(4).T.copy()),
    "sequence without frames": dict(sequence=np.zeros((12, 0), dtype=np.uint8)),
    "sequence too long": dict(sequence=np.broadcast_to(np.uint8(1), (12, MAX_SEQUENCE_FRAMES + 1))),  # no memory
    "sequence a list": dict(sequence=[[0] * 4] * 12),
}


@pytest.mark.parametrize("fields", INVALID.values(), ids=INVALID.keys())
def test_invalid_record_is_refused_before_any_write(store, fields):
    store.put(make_record("existing", n=2))
    record = with_fields(make_record("bad"), **fields)
    for replace in (False, True):
        with pytest.raises(ValueError):
            store.put(record, replace=replace)
    assert store.get(record.track_id) is None
    assert (store.count(), store.vector_count(), store.model_ids()) == (1, 2, {"m1"})


def test_an_integer_past_pythons_digit_limit_is_refused_saying_what_to_do():
    """json.dumps cannot write it; Python's own message tells a programmer to call sys.set_int_max_str_digits()."""
    from app.store.base import metadata_json

    for metadata in ({"n": 10**5000}, {"tags": [1, {"n": -(10**5000)}]}):
        with pytest.raises(ValueError) as refused:
            metadata_json(metadata)
        message = str(refused.value)
        assert "set_int_max_str_digits" not in message and "sys." not in message
        assert "as a string" in message and "digits" in message
    assert metadata_json({"n": 10**4000}) == '{"n":1' + "0" * 4000 + "}"


# a lone surrogate is what json.loads makes of the escape "\\ud800": Python holds it, but no UTF-8 writer can
UNENCODABLE = {
    "title": dict(title="Bad \ud800 title"),
    "artist": dict(artist="\udfff"),
    "metadata value": dict(metadata={"a": "\ud800"}),
    "metadata key": dict(metadata={"\udc00": 1}),
    "nested metadata": dict(metadata={"tags": ["ok", {"b": "x\udbff"}]}),
}


@pytest.mark.parametrize("fields", UNENCODABLE.values(), ids=UNENCODABLE.keys())
def test_text_that_is_not_unicode_is_refused_before_any_write(store, fields):
    record = with_fields(make_record("bad"), **fields)
    for replace in (False, True):
        with pytest.raises(ValueError, match=r"lone surrogate \\ud[89a-f][0-9a-f]{2}.*UTF-8"):
            store.put(record, replace=replace)
    assert store.get("bad") is None and (store.count(), store.vector_count(), store.generation()) == (0, 0, 0)


def utf8_encodable(record: TrackRecord) -> bool:
    """What an HTTP answer needs of a record's text."""
    try:
        json.dumps([record.track_id, record.title, record.artist, record.metadata], ensure_ascii=False).encode()
        return True
    except UnicodeEncodeError:
        return False


def test_a_stored_track_with_lone_surrogates_is_read_repaired_and_logged(store, caplog):
    store.put(make_record("before", created_at=100.0))
    store.put(make_record("after", created_at=2000.0))
    # as the service stored it before such text was refused: JSON escapes of lone surrogates
    plant_raw_track(store, "bad", title="Bad \ud800 title", metadata_text='{"a":"\\ud800","\\udfffk":["x\\udc00"]}',
                    created_at=1000.0)
    with caplog.at_level(logging.WARNING, logger="coverid.store"):
        listed = store.list(0, 10)
        assert [r.track_id for r in listed] == ["before", "bad", "after"]
        readings = [listed[1], store.get("bad"), store.get("bad", with_vectors=True),
                    *[r for r in store.iter_records(batch_size=2) if r.track_id == "bad"]]
    assert len(readings) == 4
    for record in readings:
        assert utf8_encodable(record)
        assert record.metadata == {"a": "\ufffd", "\ufffdk": ["x\ufffd"]}
        assert record.title.startswith("Bad \ufffd") and record.title.endswith(" title")
        assert record.n_segments == 2
    assert "'bad'" in caplog.text and "replace=true" in caplog.text
    assert store.delete("bad") and store.count() == 2


def test_a_track_that_cannot_be_decoded_is_left_out_of_reads_and_logged(store, caplog):
    store.put(make_record("before", created_at=100.0))
    store.put(make_record("after", created_at=2000.0))
    plant_raw_track(store, "torn", title="Torn", metadata_text='{"a": [1, ', created_at=1000.0)
    with caplog.at_level(logging.ERROR, logger="coverid.store"):
        assert [r.track_id for r in store.list(0, 10)] == ["before", "after"]
        assert store.get("torn") is None and store.get("torn", with_vectors=True) is None
        assert sorted(r.track_id for r in store.iter_records()) == ["after", "before"]
    assert "'torn'" in caplog.text and "cannot be read" in caplog.text
    assert store.delete("torn") and store.count() == 2


def test_page_past_64_bit_bounds_is_refused_and_the_last_allowed_one_is_empty(store):
    store.put(make_record("only", n=1))
    with pytest.raises(ValueError, match="at most"):
        store.list(MAX_PAGE_END, 1)
    assert store.list(MAX_PAGE_END - 1000, 1000) == []


def test_closed_store_refuses_calls_and_fails_ping(store):
    assert store.ping()
    store.close()
    assert not store.ping()
    with pytest.raises(StoreError, match="closed"):
        store.count()


def test_unreachable_redis_names_the_url_without_password():
    port = free_port()  # nothing listens there
    with pytest.raises(StoreUnavailable) as caught:
        RedisStore(f"redis://:s3cret@127.0.0.1:{port}/0")
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "s3cret" not in message and "redis-server" in message


def test_redact_url_hides_passwords():
    assert redact_url("redis://user:pw@host:6379/1") == "redis://user:***@host:6379/1"
    assert redact_url("rediss://:pw@host/0?password=pw2&db=0") == "rediss://:***@host/0?password=%2A%2A%2A&db=0"
    assert redact_url("redis://host:6379") == "redis://host:6379"


def test_redis_put_retried_after_a_lost_reply_counts_once(redis_server):
    store = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex[:12]}")
    try:
        store.put(make_record("t", n=3))
        written = store._client.hget(store._track_key("t"), "write_id").decode()
        # replay the stored write as a retry would: same write id, not a second track
        args = ["t", "0", "1000.0", "m1", 3, 8, "{}", b"", b"", written]
        assert store._put(keys=store._keys("t"), args=args) == 1
        assert (store.count(), store.vector_count()) == (1, 3)
        with pytest.raises(TrackExists):
            store.put(make_record("t", n=3))
    finally:
        store.close()


def test_newer_layouts_are_refused(tmp_path, redis_server):
    SQLiteStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99.*upgrade coverid"):
        SQLiteStore(tmp_path)
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    with RedisStore(redis_server.url, prefix=prefix) as store:
        store._client.set(f"{prefix}:schema", 5)
    with pytest.raises(StoreError, match="layout version 5.*upgrade coverid"):
        RedisStore(redis_server.url, prefix=prefix)


def test_a_bad_sequence_is_refused_with_what_to_do(store):
    with pytest.raises(ValueError, match=r"sequence must be a 2-D uint8 array \(12, T\).*got 2-D uint8 of shape "
                                         r"\(11, 4\).*put the classes first"):
        store.put(make_record("bad", sequence=make_sequence(4)[:11]))
    with pytest.raises(ValueError, match="1 to 1000000 frames, got 0.*store None"):
        store.put(make_record("bad", sequence=np.zeros((12, 0), dtype=np.uint8)))
    assert store.count() == 0 and store.generation() == 0


def downgrade(path: Path, version: int) -> None:
    """Turn the catalogue file into one of an older schema, as that coverid left it: schema 2 had no sequence
    column; schema 1 no change log either, so its triggers logged nothing."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ALTER TABLE tracks DROP COLUMN sequence")
    if version == 1:
        triggers = "SELECT name, sql FROM sqlite_master WHERE name IN ('tracks_insert', 'tracks_delete')"
        for name, sql in conn.execute(triggers).fetchall():
            conn.execute(f"DROP TRIGGER {name}")
            conn.execute(re.sub(r"\s*INSERT INTO changes[^;]*;", "", sql))
        conn.execute("DROP TABLE changes")  # its trim trigger goes with it
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


@pytest.mark.parametrize("version", [1, 2])
def test_sqlite_catalogue_of_an_older_schema_is_upgraded_in_place(tmp_path, version):
    old = [make_record("old-a", n=2, seed=1), make_record("old-b", n=4, seed=2, model_id="m2")]
    with SQLiteStore(tmp_path) as store:
        store.put_many(old)
    downgrade(tmp_path / "catalog.sqlite3", version)
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as conn:  # it is the old layout
        assert "sequence" not in {row[1] for row in conn.execute("PRAGMA table_info(tracks)")}
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'changes'").fetchone()[0] == version - 1
    conn.close()
    generation = 2 if version == 2 else 0  # a schema-2 log is kept; schema 1 had none
    with SQLiteStore(tmp_path) as store:
        assert store._conn().execute("PRAGMA user_version").fetchone()[0] == 3
        assert (store.count(), store.vector_count(), store.model_ids()) == (2, 6, {"m1", "m2"})
        assert store.generation() == generation
        for record in old:
            got = store.get(record.track_id, with_vectors=True)
            assert_same(got, record)
            assert got.sequence is None
        sequence = make_sequence(15)
        store.put(make_record("new", sequence=sequence))
        store.put(make_record("old-a", n=1, sequence=sequence), replace=True)
        store.delete("old-b")  # the triggers, upgraded, still count and log
    with SQLiteStore(tmp_path) as reopened:  # the upgrade ran once: opening the upgraded file changes nothing
        assert sorted(r.track_id for r in reopened.iter_records()) == ["new", "old-a"]
        assert_same_sequence(reopened.get("new", with_vectors=True).sequence, sequence)
        assert_same_sequence(reopened.get("old-a", with_vectors=True).sequence, sequence)
        assert (reopened.count(), reopened.vector_count(), reopened.model_ids()) == (2, 3 + 1, {"m1"})
        assert reopened.generation() == generation + 4


def test_sqlite_file_is_wal_with_synchronous_full(tmp_path):
    store = SQLiteStore(tmp_path / "new" / "dir")
    try:
        assert (tmp_path / "new" / "dir" / "catalog.sqlite3").exists()
        conn = store._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_unusable_data_dir_is_store_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="data directory"):
        SQLiteStore(blocker / "data")


def test_open_store_picks_the_backend(tmp_path, redis_server):
    with open_store(tmp_path, None) as store:
        assert isinstance(store, SQLiteStore)
    with open_store(tmp_path, redis_server.url) as store:
        assert isinstance(store, RedisStore) and store.ping()


def test_put_many_stores_a_batch_and_refuses_an_existing_id(store):
    batch = [make_record(f"bulk-{i}", n=2 + i % 3) for i in range(10)]
    store.put_many(batch)
    assert store.count() == 10 and store.vector_count() == sum(r.n_segments for r in batch)
    assert_same(store.get("bulk-4", with_vectors=True), batch[4])
    with pytest.raises(TrackExists):
        store.put_many([make_record("bulk-new-0"), make_record("bulk-3", n=5)])
    assert store.get("bulk-3").n_segments == batch[3].n_segments  # the stored track is untouched


def test_sqlite_put_many_is_one_transaction(tmp_path):
    from app.store import SQLiteStore

    with SQLiteStore(tmp_path) as store:
        store.put(make_record("taken"))
        with pytest.raises(TrackExists):
            store.put_many([make_record("first"), make_record("taken")])
        assert store.get("first") is None and store.count() == 1


def test_a_full_sqlite_disk_is_a_clear_error_and_the_store_carries_on(tmp_path):
    """SQLITE_FULL, the error a full disk gives, raised here by SQLite's page limit on the writing connection."""
    from app.store import SQLiteStore, StoreFull

    store = SQLiteStore(tmp_path)
    kept = make_record("kept", n=4)
    store.put(kept)
    conn = store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreFull, match="disk is full"):
        store.put(make_record("big", n=2000, dim=64))
    # the next request on this thread gets a working connection, not one stuck in a failed transaction
    assert store.get("big") is None and store.count() == 1
    assert_same(store.get("kept", with_vectors=True), kept)
    store.put(make_record("after", n=2))  # space freed (the new connection has no page limit): writes work again
    assert store.count() == 2
    store.close()


def test_every_write_is_in_the_change_log_in_order(store):
    start = store.generation()
    assert store.changes_since(start) == []
    store.put(make_record("a"))
    store.put(make_record("b"))
    store.put(make_record("a", n=5), replace=True)
    store.delete("b")
    assert not store.delete("b")  # nothing deleted: nothing logged
    changes = store.changes_since(start)
    ops = [(c.track_id, c.op) for c in changes]
    # a replace is one put for Redis, a delete then a put for SQLite (its log is kept by triggers)
    assert ops in ([("a", "put"), ("b", "put"), ("a", "put"), ("b", "delete")],
                   [("a", "put"), ("b", "put"), ("a", "delete"), ("a", "put"), ("b", "delete")])
    generations = [c.generation for c in changes]
    assert generations == list(range(start + 1, start + 1 + len(changes))) and store.generation() == generations[-1]
    assert store.changes_since(generations[1], limit=1) == changes[2:3]


def test_a_log_that_no_longer_reaches_back_says_so(store):
    store.put(make_record("a"))
    assert store.changes_since(store.generation() + 5) is None  # the store was emptied behind the reader
