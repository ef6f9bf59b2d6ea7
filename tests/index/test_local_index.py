import threading
import time
import zipfile

import numpy as np
import pytest
import torch

from index.local_index import (
    FORMAT_VERSION,
    RERANK_DTYPE,
    DuplicateTrack,
    LocalIndex,
    Match,
    SnapshotMismatch,
    UnknownTrack,
    read_header,
)
from index.maxmean import maxmean
from tests.conftest import rewrite_snapshot
from index.rwlock import RWLock

DIM = 32
HOP_S = 10.0  # chunk starts in these tests: 0, 10, 20, ... seconds


def unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def noisy(rng: np.random.Generator, rows: np.ndarray, sigma: float = 0.05) -> np.ndarray:
    """Unit rows near the given ones (cosine about 0.96 at sigma 0.05 in 32 dims)."""
    return unit_rows_of(rows + sigma * rng.standard_normal(rows.shape).astype(np.float32))


def unit_rows_of(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def starts_for(count: int) -> np.ndarray:
    return HOP_S * np.arange(count)


def random_tracks(rng: np.random.Generator, count: int, prefix: str = "t") -> dict[str, np.ndarray]:
    return {f"{prefix}{i}": unit_rows(rng, int(rng.integers(1, 13))) for i in range(count)}


def build(tracks: dict[str, np.ndarray], **options) -> LocalIndex:
    index = LocalIndex(DIM, **options)
    for track_id, rows in tracks.items():
        index.add(track_id, rows, starts_s=starts_for(len(rows)))
    return index


def query_from(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    """A noisy copy of 1-5 consecutive chunks of a track: a short clip of it."""
    length = int(rng.integers(1, min(5, len(rows)) + 1))
    first = int(rng.integers(0, len(rows) - length + 1))
    return noisy(rng, rows[first : first + length])


@pytest.fixture(scope="module")
def library():
    rng = np.random.default_rng(0)
    tracks = random_tracks(rng, 300)
    return tracks, build(tracks, initial_capacity=256)


def test_two_stage_recall_against_exhaustive(library):
    tracks, index = library
    rng = np.random.default_rng(1)
    ids = list(tracks)
    hits = total = 0
    for _ in range(60):
        query = query_from(rng, tracks[ids[int(rng.integers(len(ids)))]])
        two_stage = {m.track_id: m.score for m in index.search(query, top_k=10)}
        exhaustive = {m.track_id: m.score for m in index.search_exhaustive(query, top_k=10)}
        hits += len(two_stage.keys() & exhaustive.keys())
        total += len(exhaustive)
        for track_id in two_stage.keys() & exhaustive.keys():
            assert two_stage[track_id] == pytest.approx(exhaustive[track_id], abs=1e-5)
    assert hits / total >= 0.99


def test_true_track_first_with_aligned_segments(library):
    tracks, index = library
    rng = np.random.default_rng(2)
    target = next(track_id for track_id, rows in tracks.items() if len(rows) >= 8)
    query = noisy(rng, tracks[target][3:6])
    matches = index.search(query, top_k=5, query_starts_s=starts_for(3))
    best = matches[0]
    assert best.track_id == target
    assert best.score > 0.9
    assert best.reference_segment in (3, 4, 5)
    assert best.reference_segment - 3 == best.query_segment  # the pair is a true alignment
    assert best.reference_start_s == pytest.approx(HOP_S * best.reference_segment)
    assert best.query_start_s == pytest.approx(HOP_S * best.query_segment)
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)


def test_without_stored_starts_the_start_times_are_none():
    rng = np.random.default_rng(3)
    index = LocalIndex(DIM)
    rows = unit_rows(rng, 4)
    index.add("a", rows)
    match = index.search(rows[1:2])[0]
    assert (match.track_id, match.reference_segment) == ("a", 1)
    assert match.reference_start_s is None and match.query_start_s is None


def test_fewer_vectors_than_k_and_an_empty_index():
    rng = np.random.default_rng(4)
    index = LocalIndex(DIM, k_neighbours=50)
    assert index.search(unit_rows(rng, 2)) == []
    assert index.search_exhaustive(unit_rows(rng, 2)) == []
    index.add("a", unit_rows(rng, 2))
    index.add("b", unit_rows(rng, 1))
    matches = index.search(unit_rows(rng, 3), top_k=10, k_neighbours=50)
    assert sorted(m.track_id for m in matches) == ["a", "b"]


def test_remove_is_immediate_and_churn_reuses_slots():
    rng = np.random.default_rng(5)
    live = random_tracks(rng, 10)  # at most 120 vectors: churn never needs more than 128 slots
    index = build(live, initial_capacity=128)
    victim = "t3"
    index.remove(victim)
    del live[victim]
    assert not index.contains(victim)
    with pytest.raises(UnknownTrack):
        index.remove(victim)

    capacity = index.capacity
    for step in range(150):  # churn: remove one track, add a new one, live vectors stay under capacity
        gone = sorted(live)[int(rng.integers(len(live)))]
        index.remove(gone)
        del live[gone]
        rows = unit_rows(rng, int(rng.integers(1, 13)))
        index.add(f"c{step}", rows, starts_s=starts_for(len(rows)))
        live[f"c{step}"] = rows
        assert gone not in {m.track_id for m in index.search_exhaustive(rows, top_k=50)}
    assert index.capacity == capacity
    assert index.vector_count == sum(len(rows) for rows in live.values())
    for track_id, rows in live.items():
        assert index.search(rows, top_k=1)[0].track_id == track_id
    for track_id in list(live):  # hnswlib's label map is intact: every reused slot can be deleted again
        index.remove(track_id)
    assert len(index) == 0 and index.vector_count == 0 and index.search(unit_rows(rng, 2)) == []


def test_a_removed_track_vanishes_from_search():
    rng = np.random.default_rng(6)
    tracks = random_tracks(rng, 20)
    index = build(tracks)
    assert index.search(tracks["t7"])[0].track_id == "t7"
    index.remove("t7")
    assert "t7" not in {m.track_id for m in index.search(tracks["t7"], top_k=20)}
    assert "t7" not in index.track_ids() and len(index) == 19


def test_duplicate_add_is_refused_and_replace_overwrites():
    rng = np.random.default_rng(7)
    index = LocalIndex(DIM)
    old, new = unit_rows(rng, 3), unit_rows(rng, 5)
    index.add("a", old)
    with pytest.raises(DuplicateTrack) as caught:
        index.add("a", new)
    assert isinstance(caught.value, KeyError) and "replace=True" in str(caught.value)
    assert index.vector_count == 3
    index.add("a", new, replace=True)
    assert index.vector_count == 5 and len(index) == 1
    assert index.search(new)[0].score == pytest.approx(1.0, abs=1e-5)
    assert index.search(old[:1])[0].score < 0.9


@pytest.mark.parametrize(
    "rows",
    [
        np.ones((3, DIM + 1), np.float32),
        np.ones(DIM, np.float32),
        np.ones((0, DIM), np.float32),
        np.full((2, DIM), np.nan, np.float32),
        np.full((2, DIM), np.inf, np.float32),
    ],
    ids=["wrong-dim", "one-dimensional", "empty", "nan", "inf"],
)
def test_bad_vectors_are_refused_naming_the_dim(rows):
    index = LocalIndex(DIM)
    with pytest.raises(ValueError, match=str(DIM)):
        index.add("a", rows)
    with pytest.raises(ValueError, match=str(DIM)):
        index.search(rows)
    assert len(index) == 0 and index.vector_count == 0


def test_bad_start_times_are_refused():
    rng = np.random.default_rng(8)
    index = LocalIndex(DIM)
    with pytest.raises(ValueError, match="start times"):
        index.add("a", unit_rows(rng, 3), starts_s=np.arange(2.0))
    with pytest.raises(ValueError, match="start times"):
        index.search(unit_rows(rng, 2), query_starts_s=np.array([0.0, np.nan]))
    assert not index.contains("a")


def test_snapshot_round_trip_gives_identical_results(library, tmp_path):
    tracks, original = library
    index = build({k: tracks[k] for k in list(tracks)[:80]}, initial_capacity=64)
    index.remove("t5")
    index.add("no-starts", unit_rows(np.random.default_rng(9), 4))
    path = tmp_path / "local.idx"
    header = index.save(path, model_id="bytecover3-v1")

    assert read_header(path) == header == LocalIndex.read_header(path)
    assert (header.dim, header.model_id, header.track_count) == (DIM, "bytecover3-v1", len(index))
    assert header.vector_count == index.vector_count
    assert [p.name for p in tmp_path.iterdir()] == ["local.idx"]  # no temp file left behind

    loaded = LocalIndex.load(path, expected_model_id="bytecover3-v1", dim=DIM)
    assert sorted(loaded.track_ids()) == sorted(index.track_ids())
    assert (loaded.vector_count, loaded.capacity) == (index.vector_count, index.capacity)
    rng = np.random.default_rng(10)
    for track_id in ["t5", "no-starts", *list(tracks)[:20]]:
        query = query_from(rng, tracks.get(track_id, unit_rows(rng, 3)))
        assert loaded.search(query) == index.search(query)
        assert loaded.search_exhaustive(query) == index.search_exhaustive(query)
    assert "t5" not in {m.track_id for m in loaded.search(tracks["t5"], top_k=50)}

    # the loaded index keeps working: its freed slots are reused and its graph takes deletes
    capacity = loaded.capacity
    loaded.add("fresh", tracks["t5"])
    loaded.remove("t6")
    assert loaded.search(tracks["t5"])[0].track_id == "fresh"
    assert loaded.capacity == capacity


def saved_one_track(path, model_id: str, seed: int):
    """A snapshot at `path` of an index holding one two-chunk track "a"."""
    index = LocalIndex(DIM)
    index.add("a", unit_rows(np.random.default_rng(seed), 2))
    index.save(path, model_id=model_id)
    return path


def test_snapshot_of_another_model_or_dim_is_refused_naming_both(tmp_path):
    path = saved_one_track(tmp_path / "local.idx", "model-a", seed=11)
    with pytest.raises(SnapshotMismatch, match="'model-a' != expected 'model-b'"):
        LocalIndex.load(path, expected_model_id="model-b", dim=DIM)
    with pytest.raises(SnapshotMismatch, match=f"dim {DIM} != expected 64"):
        LocalIndex.load(path, expected_model_id="model-a", dim=64)
    assert isinstance(SnapshotMismatch("x"), ValueError)


def test_snapshot_of_another_format_version_or_no_snapshot_is_refused(tmp_path):
    path = saved_one_track(tmp_path / "local.idx", "m", seed=12)
    future = tmp_path / "future.idx"
    rewrite_snapshot(path, future, format_version=99)
    with pytest.raises(SnapshotMismatch, match=f"format_version 99 != expected {FORMAT_VERSION}"):
        LocalIndex.load(future, expected_model_id="m", dim=DIM)
    junk = tmp_path / "junk.idx"
    junk.write_bytes(b"not a snapshot")
    with pytest.raises(SnapshotMismatch, match="not a"):
        read_header(junk)


def test_only_a_regular_file_is_opened_as_a_snapshot(tmp_path):
    """A named pipe would block the reader until a writer came; a directory or a link is no snapshot either."""
    import os

    real = saved_one_track(tmp_path / "real.idx", "m", seed=12)
    pipe, directory, link = tmp_path / "pipe.idx", tmp_path / "dir.idx", tmp_path / "link.idx"
    os.mkfifo(pipe)
    directory.mkdir()
    link.symlink_to(real)
    errors: list = []

    def read_all():
        for path, kind in [(pipe, "a named pipe"), (directory, "a directory"), (link, "a symbolic link")]:
            for read in (read_header, lambda p: LocalIndex.load(p, expected_model_id="m", dim=DIM)):
                try:
                    read(path)
                    errors.append(f"{path.name} was read")
                except SnapshotMismatch as error:
                    if f"not a regular file ({kind})" not in str(error):
                        errors.append(str(error))

    worker = threading.Thread(target=read_all, daemon=True)
    worker.start()
    worker.join(timeout=20)
    while worker.is_alive():  # blocked opening the pipe: give it a writer so that the thread ends, and fail
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=1)
        errors.append("blocked opening a named pipe")
    assert errors == []
    assert LocalIndex.load(real, expected_model_id="m", dim=DIM).track_ids() == ["a"]


def test_ef_is_at_least_k_also_after_load(tmp_path):
    rng = np.random.default_rng(13)
    index = LocalIndex(DIM, k_neighbours=80, ef_search=20)
    assert index.ef >= 80
    index.add("a", unit_rows(rng, 3))
    path = tmp_path / "local.idx"
    index.save(path, model_id="m")
    assert LocalIndex.load(path, expected_model_id="m", dim=DIM).ef >= 80
    assert LocalIndex.load(path, expected_model_id="m", dim=DIM, k_neighbours=120).ef >= 120


def test_set_search_changes_k_and_ef_and_keeps_ef_at_least_k(library):
    tracks, _ = library
    index = build(dict(list(tracks.items())[:40]), k_neighbours=5, ef_search=10)
    query = next(iter(tracks.values()))[:2]
    index.set_search(k_neighbours=60)
    assert (index.k_neighbours, index.ef) == (60, 60)
    index.set_search(ef_search=200)
    assert (index.k_neighbours, index.ef) == (60, 200)
    index.set_search(k_neighbours=index.vector_count)  # every stored chunk a neighbour: every track a candidate
    wide = [(m.track_id, round(m.score, 5)) for m in index.search(query, top_k=40)]
    assert wide == [(m.track_id, round(m.score, 5)) for m in index.search_exhaustive(query, top_k=40)]
    index.set_search(k_neighbours=1, ef_search=1)
    assert len(index.search(query, top_k=40)) <= 2  # one neighbour per query chunk: at most two tracks
    with pytest.raises(ValueError, match="k_neighbours"):
        index.set_search(k_neighbours=-3)
    assert index.k_neighbours == 1


def test_growth_past_the_initial_capacity():
    rng = np.random.default_rng(14)
    tracks = random_tracks(rng, 60)
    index = build(tracks, initial_capacity=4)
    vectors = sum(len(rows) for rows in tracks.values())
    assert index.vector_count == vectors
    assert index.capacity >= vectors and index.capacity & (index.capacity - 1) == 0  # 4 doubled
    for track_id, rows in tracks.items():
        assert index.search(rows, top_k=1)[0].track_id == track_id


def test_concurrent_searches_while_tracks_come_and_go():
    rng = np.random.default_rng(15)
    base = random_tracks(rng, 100)
    index = build(base, initial_capacity=64)
    sizes = {track_id: len(rows) for track_id, rows in base.items()}
    seen: set[str] = set()
    errors: list[BaseException] = []
    stop = threading.Event()
    counts = {"searches": 0, "writes": 0}

    def searcher(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for _ in range(5000):
                if stop.is_set():
                    return
                matches = index.search(unit_rows(local, int(local.integers(1, 6))), top_k=5)
                assert all(isinstance(m, Match) for m in matches)
                seen.update(m.track_id for m in matches)
                counts["searches"] += 1
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    def writer() -> None:
        local = np.random.default_rng(99)
        try:
            deadline = time.monotonic() + 2.0
            for step in range(3000):
                if time.monotonic() > deadline:
                    break
                track_id = f"w{step}"
                rows = unit_rows(local, int(local.integers(1, 13)))
                sizes[track_id] = len(rows)  # before add: a search may see it from then on
                index.add(track_id, rows)
                if step % 2:
                    index.remove(f"w{step - 1}")
                counts["writes"] += 1
        except BaseException as error:
            errors.append(error)
        finally:
            stop.set()

    threads = [threading.Thread(target=searcher, args=(seed,)) for seed in range(3)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert counts["searches"] > 0 and counts["writes"] > 0
    assert seen <= set(sizes)
    assert index.vector_count == sum(sizes[track_id] for track_id in index.track_ids())


def test_rwlock_readers_share_and_a_waiting_writer_goes_before_new_readers():
    lock = RWLock()
    order: list[str] = []
    second_reader_in = threading.Event()

    def reader(tag: str) -> None:
        with lock.read():
            order.append(tag)
            second_reader_in.set()

    def writer() -> None:
        with lock.write():
            order.append("writer")

    with lock.read():
        threading.Thread(target=reader, args=("shared",)).start()
        assert second_reader_in.wait(5)  # two readers at once
        write = threading.Thread(target=writer)
        write.start()
        deadline = time.monotonic() + 5
        while not lock._writers_waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        late = threading.Thread(target=reader, args=("late",))
        late.start()
        time.sleep(0.05)
        assert order == ["shared"]  # the writer waits for us, the late reader waits for the writer
    write.join(5)
    late.join(5)
    assert order == ["shared", "writer", "late"]


def test_vectors_returns_a_copy_in_segment_order():
    from index.local_index import LocalIndex, UnknownTrack

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = LocalIndex(32)
    index.add("t", vectors)
    copy = index.vectors("t")
    assert np.allclose(copy, vectors, atol=1e-3)  # kept in half precision: within 2^-11 of each element
    copy[:] = 0
    assert np.allclose(index.vectors("t"), vectors, atol=1e-3)
    with pytest.raises(UnknownTrack):
        index.vectors("nope")


def test_add_many_equals_adding_one_by_one_and_refuses_duplicates():
    from index.local_index import DuplicateTrack, LocalIndex

    rng = np.random.default_rng(1)
    tracks = {f"t{i}": rng.standard_normal((3 + i % 4, 32)).astype(np.float32) for i in range(40)}
    one, many = LocalIndex(32), LocalIndex(32)
    for track_id, vectors in tracks.items():
        one.add(track_id, vectors)
    many.add_many([(track_id, vectors, None) for track_id, vectors in tracks.items()])
    assert many.vector_count == one.vector_count == sum(len(v) for v in tracks.values())
    query = tracks["t7"][1:3] + 0.01 * rng.standard_normal((2, 32)).astype(np.float32)
    assert [m.track_id for m in many.search(query, top_k=5)] == [m.track_id for m in one.search(query, top_k=5)]
    with pytest.raises(DuplicateTrack):
        many.add_many([("new", tracks["t1"], None), ("t2", tracks["t2"], None)])
    assert not many.contains("new")  # nothing of a refused batch is added
    with pytest.raises(DuplicateTrack):
        many.add_many([("x", tracks["t1"], None), ("x", tracks["t2"], None)])


def test_exhaustive_search_ranks_every_track_like_a_plain_loop():
    rng = np.random.default_rng(5)
    tracks = random_tracks(rng, 60)
    index = build(tracks, initial_capacity=64)
    for gone in list(tracks)[:10]:  # freed slots, then reused by new tracks: slots no longer in track order
        index.remove(gone)
        del tracks[gone]
    extra = random_tracks(np.random.default_rng(6), 8, prefix="new-")
    for track_id, rows in extra.items():
        index.add(track_id, rows)
    tracks.update(extra)
    query = query_from(rng, tracks["new-3"])
    expected = sorted(((float(maxmean(torch.from_numpy(query), torch.from_numpy(as_stored(rows))[None])[0]), track_id)
                       for track_id, rows in tracks.items()), key=lambda p: (-p[0], p[1]))[:12]
    for block in (1, 7, 16384):
        found = index.search_exhaustive(query, top_k=12, block_tracks=block)
        assert [m.track_id for m in found] == [t for _, t in expected]
        assert [m.score for m in found] == pytest.approx([s for s, _ in expected], abs=1e-4)  # float32 sums


def as_stored(rows: np.ndarray) -> np.ndarray:
    """What the index keeps of rows for stage 2: unit rows in half precision, read back as float32."""
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit.astype(RERANK_DTYPE).astype(np.float32)


def test_the_vectors_read_back_for_the_rerank_are_the_ones_given_after_slot_reuse_and_a_snapshot(tmp_path):
    """Stage 2's half-precision copy is filled from hnswlib when a snapshot loads: each track keeps its own, in order."""
    rng = np.random.default_rng(13)
    tracks = {name: unit_rows(rng, n) for name, n in (("a", 2), ("b", 1), ("c", 3), ("d", 4))}
    index = LocalIndex(DIM, initial_capacity=2)  # grown twice on the way
    index.add_many([(name, rows, None) for name, rows in tracks.items() if name != "d"])
    index.remove("a")
    index.add("d", tracks["d"])  # takes a's freed slots, then fresh ones
    path = tmp_path / "local.idx"
    index.save(path, model_id="m")
    loaded = LocalIndex.load(path, expected_model_id="m", dim=DIM)
    for source in (index, loaded):
        for name in ("b", "c", "d"):
            assert np.allclose(source.vectors(name), tracks[name] / np.linalg.norm(tracks[name], axis=1, keepdims=True),
                               atol=1e-3)  # half precision
        found = source.score(tracks["d"], ["b", "c", "d"])
        assert found[0].track_id == "d" and found[0].score == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("damage", ["missing", "float32"])
def test_a_snapshot_without_its_half_precision_rerank_copy_is_refused(tmp_path, damage):
    index = LocalIndex(DIM)
    index.add("a", unit_rows(np.random.default_rng(15), 3))
    path = tmp_path / "local.idx"
    index.save(path, model_id="m")
    damaged = tmp_path / "damaged.idx"
    rewrite_snapshot(path, damaged, format_version=FORMAT_VERSION, drop=("rerank_vectors",))
    if damage == "float32":  # the right shape in the wrong precision
        with zipfile.ZipFile(damaged, "a") as archive, archive.open("rerank_vectors.npy", "w") as member:
            np.save(member, index.vectors("a"))
    with pytest.raises(ValueError, match="rerank vectors"):
        LocalIndex.load(damaged, expected_model_id="m", dim=DIM)


@pytest.mark.parametrize("version", [2, 3])
def test_a_snapshot_of_an_older_format_is_refused_by_version(tmp_path, version):
    index = LocalIndex(DIM)
    index.add("a", unit_rows(np.random.default_rng(14), 2))
    path = tmp_path / "local.idx"
    index.save(path, model_id="m")
    old = tmp_path / "old.idx"  # format 2 wrote no sequences; 3 wrote them; 4 leaves them in the store
    rewrite_snapshot(path, old, format_version=version, drop=())
    with pytest.raises(SnapshotMismatch, match=f"format_version {version} != expected {FORMAT_VERSION}"):
        LocalIndex.load(old, expected_model_id="m", dim=DIM)
