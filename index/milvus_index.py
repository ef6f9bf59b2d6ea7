"""ByteCover3's first stage in Milvus, for catalogues past one node.

The engine holds every local embedding as one row: the primary key "<track id>#<chunk>", the track id, the
chunk's number and the unit vector, in an HNSW index on inner product (cosine). Milvus shards and replicates
it. This process keeps nothing of the catalogue: stage 2 (MaxMean) reads the candidates' vectors and chunk
starts from the catalogue store that every replica shares (`fetch`), as stage 3 reads their pitch-class sequences
(app/catalog.py), so the service's replicas stay stateless over the engine and the store.

The same client code speaks to a Milvus server or cluster (`http://host:19530`) and to milvus-lite, the
engine in this process (a local path), which the tests run. The collection records the model it was filled
for; one of another model or dimension is dropped and refilled from the store (`created`).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from index.defaults import EF_CONSTRUCTION, EF_SEARCH, HNSW_M, K_NEIGHBOURS
from index.local_index import (DuplicateTrack, Match, UnknownTrack, check_distinct, check_positive, check_starts,
                               ranked_matches, unit_rows)
from index.maxmean import pad_sequences

# the API's track ids (app/routes/catalog.py): nothing in them can break out of a quoted filter string
TRACK_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
INSERT_ROWS = 5000  # rows per insert call: one gRPC message stays far below its size limit
ID_BATCH = 1000  # track ids per filter expression
COUNT_TTL_S = 2.0  # how stale a track or vector count may be (gauges, /readyz, the match decision)
COLLECTION_NOT_LOADED = 101  # Milvus's error code for a search of a released collection
MODEL_PROPERTY = "coverid.model_id"  # the collection property naming the model whose embeddings it holds


class EngineUnavailable(RuntimeError):
    """Milvus did not answer, or answered with an error: the service answers 503 and retries later."""


@dataclass(frozen=True)
class StoredTrack:
    """What stage 2 needs of one catalogue track, read from the store."""

    vectors: np.ndarray  # (N, dim) float32
    starts_s: Optional[np.ndarray]  # (N,) chunk starts in seconds


Fetch = Callable[[list[str]], dict[str, StoredTrack]]  # track ids -> those the store holds


class MilvusIndex:
    """LocalIndex's interface over a Milvus collection; thread safe as the client is."""

    snapshots = False  # the engine keeps its own data: nothing to write at shutdown

    def __init__(self, uri: str, collection: str, dim: int, model_id: str, fetch: Fetch,
                 k_neighbours: int = K_NEIGHBOURS, ef_search: int = EF_SEARCH, m: int = HNSW_M,
                 ef_construction: int = EF_CONSTRUCTION, token: str = "", shards: int = 1, replicas: int = 1,
                 timeout_s: float = 10.0) -> None:
        """`shards` splits the collection when it is created (Milvus cannot change it later); `replicas` is how many
        in-memory copies the engine's query nodes serve, set at each load. A call the engine does not answer within
        `timeout_s`, or answers with an error, raises EngineUnavailable."""
        from pymilvus import MilvusClient  # only a service configured for Milvus loads the client

        check_positive(dim=dim, k_neighbours=k_neighbours, ef_search=ef_search, m=m, ef_construction=ef_construction,
                       shards=shards, replicas=replicas)
        self._uri = uri
        self._client = MilvusClient(uri=uri, token=token, timeout=timeout_s)
        self._collection = collection
        self._dim = dim
        self._model_id = model_id
        self._fetch = fetch
        self._k, self._ef_search = k_neighbours, ef_search
        self._replicas = replicas
        self._counts: dict[str, tuple[float, int]] = {}  # expression -> (when, count)
        self._writes_seen = 0  # this process's writes, so that a count begun before one is not kept
        self._refreshing: set[str] = set()
        self._refresh_lock = threading.Lock()
        self.created = self._open_collection(m, ef_construction, shards)

    def _open_collection(self, m: int, ef_construction: int, shards: int) -> bool:
        """Load the collection if it was filled for this model and dimension, else (re)create it empty: True."""
        from pymilvus import DataType, MilvusClient

        name = self._collection
        if self._call("has_collection", name):
            info = self._call("describe_collection", name)
            dims = [f["params"].get("dim") for f in info["fields"] if f["name"] == "vector"]
            if (info.get("properties") or {}).get(MODEL_PROPERTY) == self._model_id and dims == [self._dim]:
                self._call("load_collection", name, replica_number=self._replicas)
                return False
            self._call("drop_collection", name)
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=216)
        schema.add_field("track_id", DataType.VARCHAR, max_length=200)
        schema.add_field("chunk", DataType.INT32)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dim)
        params = self._client.prepare_index_params()
        params.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": m, "efConstruction": ef_construction})
        params.add_index("track_id", index_type="INVERTED")
        self._call("create_collection", name, schema=schema, index_params=params, num_shards=shards,
                   properties={MODEL_PROPERTY: self._model_id})
        self._call("load_collection", name, replica_number=self._replicas)
        return True

    def _call(self, method: str, *args, **kwargs):
        """One client call; the engine's failures (gRPC errors, Milvus errors, timeouts) as EngineUnavailable."""
        import grpc
        from pymilvus.exceptions import MilvusException

        try:
            try:
                return getattr(self._client, method)(*args, **kwargs)
            except MilvusException as err:
                if err.code != COLLECTION_NOT_LOADED:
                    raise
                # a restarted engine may come back with the collection released: load it again, once
                self._client.load_collection(self._collection, replica_number=self._replicas)
                return getattr(self._client, method)(*args, **kwargs)
        except (MilvusException, grpc.RpcError) as err:
            raise EngineUnavailable(f"Milvus at {self._uri} failed {method}: {err}") from err

    def reachable(self) -> bool:
        """Whether the engine answers a search of the collection (which loads it again after an engine restart)."""
        try:
            self._reached(np.zeros((1, self._dim), dtype=np.float32), 1)
            return True
        except EngineUnavailable:
            return False

    # ---- sizes and membership

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def k_neighbours(self) -> int:
        return self._k

    @property
    def ef(self) -> int:
        return max(self._ef_search, self._k)

    @property
    def vector_count(self) -> int:
        return self._count("")

    def __len__(self) -> int:
        return self._count("chunk == 0")

    def _count(self, expression: str) -> int:
        """A count(*) of the engine, about COUNT_TTL_S old at most: every identify reads the catalogue's size (the
        match decision), and a count is a scan for the engine, so a stale one is refreshed in the background while
        the caller gets the last. After a write of this process the next caller counts again."""
        cached = self._counts.get(expression)
        if cached is None:
            return self._count_now(expression)
        if time.monotonic() - cached[0] > COUNT_TTL_S:
            self._refresh_in_background(expression)
        return cached[1]

    def _count_now(self, expression: str) -> int:
        writes = self._writes_seen
        rows = self._call("query", self._collection, filter=expression, output_fields=["count(*)"])
        count = int(rows[0]["count(*)"])
        if writes == self._writes_seen:  # a write of this process during the count makes it stale already
            self._counts[expression] = (time.monotonic(), count)
        return count

    def _refresh_in_background(self, expression: str) -> None:
        with self._refresh_lock:
            if expression in self._refreshing:
                return
            self._refreshing.add(expression)

        def refresh() -> None:
            try:
                self._count_now(expression)
            except EngineUnavailable:
                pass  # the last count stands; /readyz reports the engine
            finally:
                with self._refresh_lock:
                    self._refreshing.discard(expression)

        threading.Thread(target=refresh, name="milvus-count", daemon=True).start()

    def _forget_counts(self) -> None:
        self._writes_seen += 1
        self._counts.clear()

    def contains(self, track_id: str) -> bool:
        return bool(self._call("get", self._collection, ids=[f"{track_id}#0"], output_fields=["chunk"]))

    def track_ids(self) -> list[str]:
        iterator = self._call("query_iterator", self._collection, batch_size=ID_BATCH, filter="chunk == 0",
                              output_fields=["track_id"])
        ids: list[str] = []
        while batch := iterator.next():
            ids.extend(row["track_id"] for row in batch)
        iterator.close()
        return ids

    def vectors(self, track_id: str) -> np.ndarray:
        rows = self._call("query", self._collection, filter=f'track_id == "{_checked(track_id)}"',
                          output_fields=["chunk", "vector"])
        if not rows:
            raise UnknownTrack(f"track {track_id!r} is not indexed")
        rows.sort(key=lambda row: row["chunk"])
        return np.asarray([row["vector"] for row in rows], dtype=np.float32)

    def set_search(self, k_neighbours: Optional[int] = None, ef_search: Optional[int] = None) -> None:
        k = self._k if k_neighbours is None else k_neighbours
        ef = self._ef_search if ef_search is None else ef_search
        check_positive(k_neighbours=k, ef_search=ef)
        self._k, self._ef_search = k, ef

    # ---- changes

    def add(self, track_id: str, vectors: np.ndarray, starts_s: Optional[np.ndarray] = None,
            replace: bool = False) -> None:
        self.add_many([(track_id, vectors, starts_s)], replace=replace)

    def add_many(self, items: list, replace: bool = False) -> None:
        """Insert tracks' rows; a track already held is refused (DuplicateTrack) unless `replace`. The starts are
        checked as LocalIndex checks them, but live in the store only."""
        rows, ids = [], []
        for track_id, vectors, starts_s in items:
            unit = unit_rows(vectors, self._dim, "vectors")
            check_starts(starts_s, len(unit), "starts_s")
            ids.append(_checked(track_id))
            rows.extend({"pk": f"{track_id}#{i}", "track_id": track_id, "chunk": i, "vector": row}
                        for i, row in enumerate(unit.tolist()))
        check_distinct(ids)
        if not ids:
            return
        present = self.present(ids)
        if present and not replace:
            raise DuplicateTrack(f"track {present[0]!r} is already indexed; pass replace=True to overwrite it")
        self._delete(present)  # a replaced track may have fewer chunks than before: its old rows go first
        for first in range(0, len(rows), INSERT_ROWS):
            self._call("insert", self._collection, rows[first : first + INSERT_ROWS])
        self._forget_counts()  # this process reads its own writes; other processes' within about COUNT_TTL_S

    def remove(self, track_id: str) -> None:
        if not self.contains(track_id):
            raise UnknownTrack(f"track {track_id!r} is not indexed")
        self._delete([track_id])

    def present(self, track_ids: list[str]) -> list[str]:
        """Which of these tracks the engine holds (primary-key lookups of their first chunk)."""
        present = []
        for first in range(0, len(track_ids), ID_BATCH):
            found = self._call("get", self._collection, ids=[f"{t}#0" for t in track_ids[first : first + ID_BATCH]],
                               output_fields=["track_id"])
            present.extend(row["track_id"] for row in found)
        return present

    def _delete(self, track_ids: list[str]) -> None:
        self._forget_counts()
        for first in range(0, len(track_ids), ID_BATCH):
            quoted = ", ".join(f'"{_checked(t)}"' for t in track_ids[first : first + ID_BATCH])
            self._call("delete", self._collection, filter=f"track_id in [{quoted}]")

    # ---- search

    def search(self, query: np.ndarray, top_k: int = 10, k_neighbours: Optional[int] = None,
               query_starts_s: Optional[np.ndarray] = None, timings: Optional[dict] = None) -> list[Match]:
        """Stage 1 in the engine, stage 2 (MaxMean) here on the candidates as the store holds them."""
        rows = unit_rows(query, self._dim, "query")
        starts = check_starts(query_starts_s, len(rows), "query_starts_s")
        k = self._k if k_neighbours is None else k_neighbours
        check_positive(top_k=top_k, k_neighbours=k)
        started = time.perf_counter()
        candidates = self._reached(rows, k)
        searched = time.perf_counter()
        best = self._best(rows, starts, candidates, top_k)
        if timings is not None:
            timings["search"] = searched - started
            timings["rerank"] = time.perf_counter() - searched
        return best

    def chunk_scores(self, query: np.ndarray, k_neighbours: int) -> tuple[list[str], np.ndarray]:
        """Each query chunk's best cosine with each track stage 1 reaches from it: (track ids, (M, C) float32)."""
        rows = unit_rows(query, self._dim, "query")
        check_positive(k_neighbours=k_neighbours)
        present, vectors, _ = self._stored_units(self._reached(rows, k_neighbours))
        if not present:
            return [], np.zeros((len(rows), 0), dtype=np.float32)
        offsets = np.concatenate([[0], np.cumsum([len(v) for v in vectors[:-1]])]).astype(np.int64)
        return present, np.maximum.reduceat(rows @ np.concatenate(vectors).T, offsets, axis=1)

    def score(self, query: np.ndarray, track_ids: list[str], query_starts_s: Optional[np.ndarray] = None) -> list[Match]:
        """Stage 2 alone: MaxMean of the query against these tracks (those the store holds), best first."""
        rows = unit_rows(query, self._dim, "query")
        starts = check_starts(query_starts_s, len(rows), "query_starts_s")
        present = list(dict.fromkeys(track_ids))
        return self._best(rows, starts, present, len(present))

    def _reached(self, rows: np.ndarray, k_neighbours: int) -> list[str]:
        """Stage 1: the tracks owning one of each row's k nearest rows in the engine, in order of first reach."""
        hits = self._call("search", self._collection, data=rows.tolist(), limit=k_neighbours, anns_field="vector",
                          search_params={"metric_type": "IP", "params": {"ef": max(self._ef_search, k_neighbours)}},
                          output_fields=["track_id"])
        return list(dict.fromkeys(hit["entity"]["track_id"] for per_row in hits for hit in per_row))

    def _best(self, rows: np.ndarray, query_starts: Optional[np.ndarray], track_ids: list[str], top_k: int) -> list[Match]:
        present, vectors, starts = self._stored_units(track_ids)
        if not present:
            return []
        padded, mask = pad_sequences([torch.from_numpy(v) for v in vectors])
        return ranked_matches(rows, query_starts, present, padded, mask, starts, top_k)

    def _stored_units(self, track_ids: list[str]) -> tuple[list[str], list[np.ndarray], list[Optional[np.ndarray]]]:
        """The tracks the store still holds (one deleted since stage 1 is gone), in the order asked: their ids, unit
        vectors (as LocalIndex holds them) and chunk starts."""
        stored = self._fetch(track_ids)
        present = [t for t in track_ids if t in stored]
        return (present, [unit_rows(stored[t].vectors, self._dim, "stored vectors") for t in present],
                [stored[t].starts_s for t in present])

    def flush(self) -> None:
        """Seal what was inserted so the engine indexes it (growing segments are searched by brute force): after a
        bulk load, not per write."""
        self._call("flush", self._collection)

    def save(self, *args, **kwargs) -> None:
        """Nothing to write: the engine persists every change as it is made."""

    def close(self) -> None:
        self._client.close()


def _checked(track_id: str) -> str:
    if not isinstance(track_id, str) or not TRACK_ID.match(track_id):
        raise ValueError(f"track id {track_id!r} cannot be held in Milvus: use 1 to 200 of A-Z a-z 0-9 . _ : -")
    return track_id
