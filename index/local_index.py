"""Local-embedding index with ByteCover3's two-stage search (paper, section 2.3).

Stage one asks HNSW for the K nearest stored chunks of every query chunk; the
tracks those chunks belong to are the candidates. Stage two scores every
candidate against the whole query with MaxMean, in one batched call. A track
that no query chunk reaches in stage one is not returned at all: the paper sets
the similarity of such tracks to 0 (section 3.1), so a caller that needs a score
for every track reads "absent" as 0, or uses search_exhaustive (the all-pairs
baseline, for measuring recall and for evaluation).

Every stored vector has a slot: a row of one contiguous float16 array (stage
two's copy) and, the same number, its hnswlib label (hnswlib keeps its own float32
copy for the graph). Half precision halves the rerank copy's memory (issue 17) and
moves a cosine by about 1e-3 at most. The copy stays because reading vectors back
out of hnswlib (get_items) took 100 ms per query against 3 ms for the array.
Removing a track marks its slots deleted in hnswlib and frees them; the next add
writes over freed slots before taking new ones, so add/remove churn does not grow
memory. Stage 3's pitch-class sequences are not held here: the catalogue reads the
few it aligns from the store (app/catalog.py), as it does for the Milvus backend.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
import zipfile
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import hnswlib
import numpy as np
import torch

from index.common import replaced_atomically
from index.defaults import EF_CONSTRUCTION, EF_SEARCH, HNSW_M, K_NEIGHBOURS
from index.maxmean import maxmean_best_pair
from index.rwlock import RWLock

FORMAT = "coverid-local-index"
FORMAT_VERSION = 4  # 2: the store generation; 3: pitch-class sequences; 4: no sequences (read from the store)
HEADER_MEMBER = "header.json"
GRAPH_MEMBER = "hnsw.bin"
RERANK_DTYPE = np.float16  # stage two's copy of the vectors
RERANK_MEMBER = "rerank_vectors.npy"  # that copy in a snapshot

PathLike = Union[str, os.PathLike]


class DuplicateTrack(KeyError):
    """add() of a track id that is already indexed (without replace=True)."""


class UnknownTrack(KeyError):
    """remove() of a track id that is not indexed."""


class SnapshotMismatch(ValueError):
    """A snapshot whose format, dimension or model id differs from what the caller expects."""


@dataclass(frozen=True)
class Match:
    """One retrieved track; the segments are its single highest-cosine (query chunk, reference chunk) pair."""

    track_id: str
    score: float  # MaxMean, the shorter sequence first
    query_segment: int
    reference_segment: int
    query_start_s: Optional[float]
    reference_start_s: Optional[float]


@dataclass(frozen=True)
class SnapshotHeader:
    format_version: int
    dim: int
    model_id: str
    vector_count: int  # live vectors
    track_count: int
    slot_count: int  # slots ever used, live or freed: the size of the hnswlib graph
    capacity: int
    k_neighbours: int
    m: int
    ef_construction: int
    ef_search: int
    generation: int = 0  # the catalogue store's change-log generation the index reflects (app/catalog.py)


@dataclass(frozen=True)
class _Track:
    slots: np.ndarray  # (N,) int64, in segment order
    starts_s: Optional[np.ndarray]  # (N,) float64 chunk start times, when the caller gave them


TrackItem = tuple  # (track_id, vectors (N, dim), starts_s (N,) or None)


class LocalIndex:
    """Local embeddings of many tracks; thread safe (searches run together, add/remove are exclusive)."""

    snapshots = True  # the service writes one at shutdown (save) and starts from it (load)

    def __init__(
        self,
        dim: int,
        k_neighbours: int = K_NEIGHBOURS,
        m: int = HNSW_M,
        ef_construction: int = EF_CONSTRUCTION,
        ef_search: int = EF_SEARCH,
        initial_capacity: int = 1024,
    ) -> None:
        """Defaults as the service's settings' (index/defaults.py); the service passes its settings."""
        check_positive(
            dim=dim, k_neighbours=k_neighbours, m=m, ef_construction=ef_construction,
            ef_search=ef_search, initial_capacity=initial_capacity,
        )
        self._dim = dim
        self._k = k_neighbours
        self._m = m
        self._ef_construction = ef_construction
        self._ef_search = ef_search
        self._hnsw = hnswlib.Index(space="ip", dim=dim)  # inner product = cosine on unit vectors
        # allow_replace_deleted stays False on purpose: hnswlib's replace_deleted gives the new label to an
        # arbitrary deleted element, and since our labels (= slots) are reused its label map then goes stale
        # (a later mark_deleted fails with "Label not found"). Without it, adding a deleted label unmarks
        # and overwrites that very element: the slot reuse we want, with the same memory bound.
        self._hnsw.init_index(
            max_elements=initial_capacity, ef_construction=ef_construction, M=m, allow_replace_deleted=False
        )
        self._hnsw.set_ef(max(ef_search, k_neighbours))
        self._vectors = np.zeros((initial_capacity, dim), dtype=RERANK_DTYPE)  # (capacity, dim), row = slot
        self._owners: list[Optional[str]] = [None] * initial_capacity  # slot -> track id
        self._tracks: dict[str, _Track] = {}
        self._free: list[int] = []  # freed slots, deleted in hnswlib, reused first
        self._used = 0  # slots [0, used) have been handed out at least once
        self._live = 0
        self._lock = RWLock()

    # ---- sizes and membership

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def k_neighbours(self) -> int:
        return self._k

    @property
    def ef(self) -> int:
        """hnswlib's query-time ef; always >= k_neighbours."""
        return self._hnsw.ef

    @property
    def capacity(self) -> int:
        with self._lock.read():
            return len(self._vectors)

    @property
    def vector_count(self) -> int:
        with self._lock.read():
            return self._live

    def __len__(self) -> int:
        with self._lock.read():
            return len(self._tracks)

    def contains(self, track_id: str) -> bool:
        with self._lock.read():
            return track_id in self._tracks

    def track_ids(self) -> list[str]:
        with self._lock.read():
            return list(self._tracks)

    def vectors(self, track_id: str) -> np.ndarray:
        """A copy of one track's stored vectors, (N, dim) in segment order."""
        with self._lock.read():
            if track_id not in self._tracks:
                raise UnknownTrack(track_id)
            return self._vectors[self._tracks[track_id].slots].astype(np.float32)

    def reachable(self) -> bool:
        """The index is this process: it always answers (MilvusIndex asks its engine)."""
        return True

    def close(self) -> None:
        """Nothing to release (MilvusIndex closes its client)."""

    def set_search(self, k_neighbours: Optional[int] = None, ef_search: Optional[int] = None) -> None:
        """Change K and ef for the searches that follow; ef stays at least K."""
        k = self._k if k_neighbours is None else k_neighbours
        ef = self._ef_search if ef_search is None else ef_search
        check_positive(k_neighbours=k, ef_search=ef)
        with self._lock.write():
            self._k, self._ef_search = k, ef
            self._hnsw.set_ef(max(ef, k))

    # ---- changes

    def add(self, track_id: str, vectors: np.ndarray, starts_s: Optional[np.ndarray] = None,
            replace: bool = False) -> None:
        """Index a track's local embeddings, (N, dim) in segment order, with optional chunk starts (N,) in seconds."""
        self.add_many([(track_id, vectors, starts_s)], replace=replace)

    def add_many(self, items: list[TrackItem], replace: bool = False) -> None:
        """Index several tracks with one hnswlib call (which it spreads over threads): rebuilds and bulk loads.

        All or nothing for duplicates: a track id already indexed (without replace) or given twice adds none.
        """
        prepared = []
        for track_id, vectors, starts_s in items:
            rows = self._unit_rows(vectors, "vectors")
            prepared.append((track_id, rows, check_starts(starts_s, len(rows), "starts_s")))
        ids = [track_id for track_id, *_ in prepared]
        check_distinct(ids)
        if not prepared:
            return
        with self._lock.write():
            present = [track_id for track_id in ids if track_id in self._tracks]
            if present and not replace:
                raise DuplicateTrack(f"track {present[0]!r} is already indexed; pass replace=True to overwrite it")
            for track_id in present:
                self._drop(track_id)
            rows = np.concatenate([r for _, r, _ in prepared])
            slots = self._take_slots(len(rows))
            self._vectors[slots] = rows
            try:
                self._hnsw.add_items(rows, slots)
            except BaseException:
                self._give_back(slots)
                raise
            offset = 0
            for track_id, track_rows, starts in prepared:
                track_slots = slots[offset : offset + len(track_rows)]
                offset += len(track_rows)
                self._tracks[track_id] = _Track(track_slots, starts)
                for slot in track_slots.tolist():
                    self._owners[slot] = track_id
            self._live += len(slots)

    def remove(self, track_id: str) -> None:
        """Drop a track; it is gone from every search that starts after this returns."""
        with self._lock.write():
            if track_id not in self._tracks:
                raise UnknownTrack(f"track {track_id!r} is not indexed")
            self._drop(track_id)

    def _drop(self, track_id: str) -> None:
        track = self._tracks.pop(track_id)
        for slot in track.slots.tolist():
            self._hnsw.mark_deleted(slot)
            self._owners[slot] = None
        self._free.extend(track.slots.tolist())
        self._live -= len(track.slots)

    def _take_slots(self, count: int) -> np.ndarray:
        reused = [self._free.pop() for _ in range(min(count, len(self._free)))]
        fresh = count - len(reused)
        if self._used + fresh > len(self._vectors):
            self._grow(self._used + fresh)
        slots = reused + list(range(self._used, self._used + fresh))
        self._used += fresh
        return np.asarray(slots, dtype=np.int64)

    def _give_back(self, slots: np.ndarray) -> None:
        """Undo _take_slots after add_items failed part way: whatever it added must not be found."""
        for slot in slots.tolist():
            with suppress(RuntimeError):  # a label add_items never reached is not in the graph
                self._hnsw.mark_deleted(slot)
        self._free.extend(slots.tolist())

    def _grow(self, needed: int) -> None:
        capacity = len(self._vectors)
        while capacity < needed:
            capacity *= 2
        self._hnsw.resize_index(capacity)
        grown = np.zeros((capacity, self._dim), dtype=RERANK_DTYPE)
        grown[: self._used] = self._vectors[: self._used]
        self._vectors = grown
        self._owners.extend([None] * (capacity - len(self._owners)))

    # ---- search

    def search(
        self,
        query: np.ndarray,
        top_k: int = 10,
        k_neighbours: Optional[int] = None,
        query_starts_s: Optional[np.ndarray] = None,
        timings: Optional[dict] = None,
    ) -> list[Match]:
        """Two-stage search: HNSW candidates, then MaxMean over them. query: (M, dim); best first.

        Tracks that stage one does not reach are left out (the paper scores them 0).
        `timings`, when given, receives the seconds of each stage under "search" and "rerank".
        """
        rows = self._unit_rows(query, "query")
        starts = check_starts(query_starts_s, len(rows), "query_starts_s")
        k = self._k if k_neighbours is None else k_neighbours
        check_positive(top_k=top_k, k_neighbours=k)
        with self._lock.read():
            if self._live == 0:
                return []
            started = time.perf_counter()
            candidates = self._reached(rows, k)
            searched = time.perf_counter()
            best = self._best(rows, starts, candidates, top_k)
            if timings is not None:
                timings["search"] = searched - started
                timings["rerank"] = time.perf_counter() - searched
            return best

    def chunk_scores(self, query: np.ndarray, k_neighbours: int) -> tuple[list[str], np.ndarray]:
        """Stage 1 per query chunk: the tracks holding one of any chunk's `k_neighbours` nearest vectors, and each
        chunk's best cosine with each of them: (track ids, (M, C) float32)."""
        rows = self._unit_rows(query, "query")
        check_positive(k_neighbours=k_neighbours)
        with self._lock.read():
            if self._live == 0:
                return [], np.zeros((len(rows), 0), dtype=np.float32)
            candidates = self._reached(rows, k_neighbours)
            table, offsets, _ = self._similarities(rows, [self._tracks[t].slots for t in candidates])
            return candidates, np.maximum.reduceat(table, offsets, axis=1)

    def score(self, query: np.ndarray, track_ids: list[str],
              query_starts_s: Optional[np.ndarray] = None) -> list[Match]:
        """Stage 2 alone: MaxMean of the query against these tracks (those still indexed), best first."""
        rows = self._unit_rows(query, "query")
        starts = check_starts(query_starts_s, len(rows), "query_starts_s")
        with self._lock.read():
            present = [t for t in dict.fromkeys(track_ids) if t in self._tracks]
            return self._best(rows, starts, present, len(present))

    def search_exhaustive(
        self,
        query: np.ndarray,
        top_k: int = 10,
        query_starts_s: Optional[np.ndarray] = None,
        block_tracks: int = 16384,
    ) -> list[Match]:
        """All-pairs MaxMean against every track; best first.

        One matrix product per block of tracks against their stored vectors, then MaxMean with
        the shorter side first (as `index.maxmean`): for a track at least as long as the query,
        the max over its slots per query chunk (`np.maximum.reduceat`), meaned over the query;
        for a shorter track, the max over the query per slot, meaned over its slots. The
        alignment is then read for the top_k only. block_tracks bounds memory.
        """
        rows = self._unit_rows(query, "query")
        starts = check_starts(query_starts_s, len(rows), "query_starts_s")
        check_positive(top_k=top_k, block_tracks=block_tracks)
        with self._lock.read():
            track_ids = list(self._tracks)
            scores = np.empty(len(track_ids), dtype=np.float32)
            for first in range(0, len(track_ids), block_tracks):
                block = [self._tracks[t].slots for t in track_ids[first : first + block_tracks]]
                table, offsets, lengths = self._similarities(rows, block)
                query_first = np.maximum.reduceat(table, offsets, axis=1).mean(axis=0)
                track_first = np.add.reduceat(table.max(axis=0), offsets) / lengths
                scores[first : first + len(block)] = np.where(lengths >= len(rows), query_first, track_first)
            order = sorted(range(len(track_ids)), key=lambda i: (-scores[i], track_ids[i]))[:top_k]
            return self._best(rows, starts, [track_ids[i] for i in order], top_k)

    def _reached(self, rows: np.ndarray, k_neighbours: int) -> list[str]:
        """Stage 1: the tracks owning one of each row's k nearest vectors, in order of first reach. Caller holds the
        lock and has checked the index is not empty."""
        # hnswlib raises when asked for more neighbours than it holds live; it searches with
        # max(ef, k), so a k above the configured ef still gets a wide enough beam
        labels, _ = self._hnsw.knn_query(rows, k=min(k_neighbours, self._live))
        return list(dict.fromkeys(self._owners[label] for label in labels.ravel().tolist()))

    def _similarities(self, rows: np.ndarray,
                      track_slots: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cosines of the rows with these tracks' vectors, tracks side by side: (M, their slots), each track's first
        column (for np.*.reduceat) and each track's length. Caller holds the lock."""
        lengths = np.asarray([len(slots) for slots in track_slots])
        offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
        return rows @ self._vectors[np.concatenate(track_slots)].astype(np.float32).T, offsets, lengths

    def _best(
        self, rows: np.ndarray, query_starts: Optional[np.ndarray], track_ids: list[str], top_k: int
    ) -> list[Match]:
        """One batched MaxMean of the query against track_ids; their top_k as Matches. Caller holds the lock."""
        if not track_ids:
            return []
        tracks = [self._tracks[track_id] for track_id in track_ids]
        padded, mask = self._gather([track.slots for track in tracks])
        return ranked_matches(rows, query_starts, track_ids, padded, mask, [track.starts_s for track in tracks], top_k)

    def _gather(self, track_slots: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tracks' vectors padded into one (D, N_max, dim) float32 tensor and its mask (D, N_max), in one gather.

        Padding positions read slot 0 and are masked out; one fancy index instead of a copy per
        track keeps the rerank of a few hundred candidates off the Python interpreter.
        """
        lengths = np.fromiter((len(s) for s in track_slots), dtype=np.int64, count=len(track_slots))
        mask = np.arange(lengths.max())[None, :] < lengths[:, None]
        slot_table = np.zeros(mask.shape, dtype=np.int64)
        slot_table[mask] = np.concatenate(track_slots)
        return torch.from_numpy(self._vectors[slot_table].astype(np.float32)), torch.from_numpy(mask)

    def _unit_rows(self, vectors: np.ndarray, name: str) -> np.ndarray:
        return unit_rows(vectors, self._dim, name)

    # ---- snapshot

    def save(self, path: PathLike, model_id: str, generation: int = 0) -> SnapshotHeader:
        """Write one snapshot file atomically (temp file beside it, fsync, os.replace). Searches may go on meanwhile."""
        path = Path(path)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            graph = Path(scratch) / GRAPH_MEMBER
            with self._lock.read():  # a consistent view; only writers wait
                header = self._header(model_id, generation)
                arrays = self._track_arrays()
                self._hnsw.save_index(str(graph))
            _write_atomically(path, header, arrays, graph)
        return header

    def _header(self, model_id: str, generation: int = 0) -> SnapshotHeader:
        return SnapshotHeader(
            format_version=FORMAT_VERSION, dim=self._dim, model_id=model_id, vector_count=self._live,
            track_count=len(self._tracks), slot_count=self._used, capacity=len(self._vectors),
            k_neighbours=self._k, m=self._m, ef_construction=self._ef_construction, ef_search=self._ef_search,
            generation=generation,
        )

    def _track_arrays(self) -> dict[str, np.ndarray]:
        """The tracks as flat arrays, and stage 2's copy of the vectors (hnswlib's own copy travels in its graph:
        reading it back out with get_items costs about 7 microseconds a vector, two minutes at a million tracks)."""
        tracks = list(self._tracks.values())
        lengths = [len(track.slots) for track in tracks]
        starts = [np.full(n, np.nan) if track.starts_s is None else track.starts_s for track, n in zip(tracks, lengths)]
        return {
            RERANK_MEMBER[:-4]: self._vectors[: self._used],  # (slots used, dim) float16, freed slots included
            "track_ids": np.frombuffer(json.dumps(list(self._tracks)).encode(), dtype=np.uint8),
            "track_offsets": np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            "track_slots": np.concatenate([track.slots for track in tracks] or [np.zeros(0, np.int64)]),
            "track_starts_s": np.concatenate(starts or [np.zeros(0)]),  # NaN where a track has none
            "track_has_starts": np.asarray([track.starts_s is not None for track in tracks], dtype=bool),
            "free_slots": np.asarray(self._free, dtype=np.int64),
        }

    @classmethod
    def load(
        cls,
        path: PathLike,
        expected_model_id: str,
        dim: int,
        k_neighbours: Optional[int] = None,
        ef_search: Optional[int] = None,
    ) -> "LocalIndex":
        """Read a snapshot, refusing one of another format version, dim or model id (SnapshotMismatch).

        k_neighbours and ef_search default to the snapshot's; ef is set to max(ef_search, k_neighbours).
        """
        with _open_regular(path) as file, _zip(file, path) as archive:  # one open: header and arrays agree
            header = _archive_header(archive, path)
            if header.dim != dim:
                raise SnapshotMismatch(f"snapshot dim {header.dim} != expected {dim}")
            if header.model_id != expected_model_id:
                raise SnapshotMismatch(f"snapshot model_id {header.model_id!r} != expected {expected_model_id!r}")
            index = cls(
                dim,
                header.k_neighbours if k_neighbours is None else k_neighbours,
                header.m,
                header.ef_construction,
                header.ef_search if ef_search is None else ef_search,
                initial_capacity=1,  # _restore sets the real capacity
            )
            with tempfile.TemporaryDirectory() as scratch:
                arrays = {name[:-4]: _read_array(archive, name) for name in archive.namelist()
                          if name.endswith(".npy") and name != RERANK_MEMBER}
                rerank = np.zeros((header.capacity, dim), dtype=RERANK_DTYPE)  # read in place: no second copy
                _read_rows_into(archive, RERANK_MEMBER, rerank, header.slot_count, path)
                graph = Path(scratch) / GRAPH_MEMBER
                with archive.open(GRAPH_MEMBER) as source, open(graph, "wb") as target:
                    shutil.copyfileobj(source, target)
                index._restore(header, arrays, rerank, graph)
        return index

    def _restore(self, header: SnapshotHeader, arrays: dict[str, np.ndarray], rerank: np.ndarray, graph: Path) -> None:
        self._hnsw = hnswlib.Index(space="ip", dim=self._dim)
        self._hnsw.load_index(str(graph), max_elements=header.capacity, allow_replace_deleted=False)
        self._hnsw.set_ef(max(self._ef_search, self._k))  # load_index resets ef to hnswlib's default
        track_ids = json.loads(arrays["track_ids"].tobytes())
        offsets, slots, starts = arrays["track_offsets"], arrays["track_slots"], arrays["track_starts_s"]
        counts = (len(track_ids), len(slots), self._hnsw.get_current_count())
        if counts != (header.track_count, header.vector_count, header.slot_count):
            raise ValueError(f"snapshot is inconsistent: its header says {header}, its arrays disagree")
        self._vectors = rerank
        self._owners = [None] * header.capacity
        for i, track_id in enumerate(track_ids):
            span = slice(offsets[i], offsets[i + 1])
            has_starts = bool(arrays["track_has_starts"][i])
            self._tracks[track_id] = _Track(slots[span].copy(), starts[span].copy() if has_starts else None)
            for slot in slots[span].tolist():
                self._owners[slot] = track_id
        self._free = arrays["free_slots"].tolist()
        self._used = header.slot_count
        self._live = len(slots)

    @staticmethod
    def read_header(path: PathLike) -> SnapshotHeader:
        """The module's read_header, reachable from the class."""
        return read_header(path)


def read_header(path: PathLike) -> SnapshotHeader:
    """The snapshot's header alone (the arrays stay on disk), e.g. to compare vector_count with a store."""
    with _open_regular(path) as file, _zip(file, path) as archive:
        return _archive_header(archive, path)


def _open_regular(path: PathLike):
    """The file at path opened for binary reading, if it is a regular file (not followed through a link).

    Anything else is refused with SnapshotMismatch before it is opened: opening a named pipe for reading
    blocks until some writer opens it (start-up would hang, deaf to SIGTERM), and a device or directory
    is no snapshot either. O_NONBLOCK and the fstat after opening cover a swap between the check and the open.
    """
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise SnapshotMismatch(f"{os.fspath(path)} is not a regular file ({_file_kind(mode)}), so not a snapshot")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SnapshotMismatch(f"{os.fspath(path)} is not a regular file ({_file_kind(mode)}), so not a snapshot")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _zip(file, path: PathLike) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(file)
    except zipfile.BadZipFile as error:
        raise SnapshotMismatch(f"{os.fspath(path)} is not a {FORMAT} snapshot: {error}") from error


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a named pipe", stat.S_ISLNK: "a symbolic link",
             stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


def _archive_header(archive: zipfile.ZipFile, path: PathLike) -> SnapshotHeader:
    try:
        fields = json.loads(archive.read(HEADER_MEMBER))
    except KeyError as error:
        raise SnapshotMismatch(f"{os.fspath(path)} is not a {FORMAT} snapshot: {error}") from error
    if fields.get("format") != FORMAT:
        raise SnapshotMismatch(f"snapshot format {fields.get('format')!r} != expected {FORMAT!r}")
    if fields.get("format_version") != FORMAT_VERSION:
        raise SnapshotMismatch(f"snapshot format_version {fields.get('format_version')!r} != expected {FORMAT_VERSION}")
    del fields["format"]
    return SnapshotHeader(**fields)


def _write_atomically(path: Path, header: SnapshotHeader, arrays: dict[str, np.ndarray], graph: Path) -> None:
    """A zip (stored, not compressed: embeddings do not compress) written beside path, then renamed over it."""
    with replaced_atomically(path, durable=True, mode=0o600) as file:
        with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.writestr(HEADER_MEMBER, json.dumps({"format": FORMAT, **asdict(header)}))
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.save(member, array, allow_pickle=False)
            archive.write(graph, GRAPH_MEMBER)


def _read_rows_into(archive: zipfile.ZipFile, name: str, target: np.ndarray, rows: int, path: PathLike) -> None:
    """Fill target[:rows] with the .npy member `name`, read straight into it (at a million tracks the member is
    4 GB: np.load and a copy into the larger array would hold it twice). ValueError unless it is (rows, dim) of
    target's dtype."""
    try:
        member = archive.open(name)
    except KeyError:
        raise ValueError(f"snapshot {os.fspath(path)} is inconsistent: it has no rerank vectors ({name})") from None
    with member:
        version = np.lib.format.read_magic(member)
        header_of = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header_of(member)
        if shape != (rows, target.shape[1]) or dtype != target.dtype or fortran:
            raise ValueError(f"snapshot {os.fspath(path)} is inconsistent: its rerank vectors are {dtype} {shape}, "
                             f"not {target.dtype} ({rows}, {target.shape[1]})")
        view = memoryview(target[:rows]).cast("B")
        done = 0
        while done < len(view):
            got = member.readinto(view[done:])
            if not got:
                raise ValueError(f"snapshot {os.fspath(path)} is inconsistent: its rerank vectors are cut short")
            done += got


def _read_array(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    with archive.open(name) as member:
        return np.load(member, allow_pickle=False)



def ranked_matches(rows: np.ndarray, query_starts: Optional[np.ndarray], track_ids: list[str], padded: torch.Tensor,
                   mask: torch.Tensor, track_starts: list[Optional[np.ndarray]], top_k: int) -> list[Match]:
    """Stage 2: one batched MaxMean of the (M, dim) unit query rows against the candidates' (D, N_max, dim) padded
    unit vectors; the top_k as Matches, best first (ties by track id), with each one's best chunk pair."""
    scores, query_index, reference_index = maxmean_best_pair(torch.from_numpy(rows), padded, candidate_mask=mask, unit=True)
    scores, query_index, reference_index = scores.tolist(), query_index.tolist(), reference_index.tolist()
    order = sorted(range(len(track_ids)), key=lambda i: (-scores[i], track_ids[i]))[:top_k]
    return [
        Match(
            track_id=track_ids[i],
            score=scores[i],
            query_segment=query_index[i],
            reference_segment=reference_index[i],
            query_start_s=_start(query_starts, query_index[i]),
            reference_start_s=_start(track_starts[i], reference_index[i]),
        )
        for i in order
    ]


def unit_rows(vectors: np.ndarray, dim: int, name: str) -> np.ndarray:
    """(N, dim) finite, non-zero rows -> contiguous float32 unit rows (inner product is then cosine)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}) with N >= 1; got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} of shape (N, {dim}) contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} contain an all-zero row, which has no direction")
    return np.ascontiguousarray(array / norms)

def _start(starts_s: Optional[np.ndarray], segment: int) -> Optional[float]:
    return None if starts_s is None else float(starts_s[segment])


def check_starts(starts_s: Optional[np.ndarray], count: int, name: str) -> Optional[np.ndarray]:
    if starts_s is None:
        return None
    starts = np.asarray(starts_s, dtype=np.float64)
    if starts.shape != (count,) or not np.isfinite(starts).all():
        raise ValueError(
            f"{name} must be {count} finite start times in seconds, one per vector; got shape {starts.shape}"
        )
    return starts.copy()


def check_distinct(track_ids: list[str]) -> None:
    """One add_many names each track once (DuplicateTrack otherwise)."""
    if len(set(track_ids)) != len(track_ids):
        repeated = sorted(i for i in track_ids if track_ids.count(i) > 1)[0]
        raise DuplicateTrack(f"a track id appears twice in one add_many: {repeated!r}")


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
