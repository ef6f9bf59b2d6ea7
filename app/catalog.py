"""The catalogue: the durable store and the in-memory search index, kept in step.

The store is the one source of truth. A track is written to the store first
(one atomic write), then added to the index; a crash in between leaves it in
the store, and the next sync (or start-up) puts it in the index. The index
snapshot is written only at a clean shutdown, records the store generation it
reflects, and is removed once loaded. Processes sharing one store follow its
change log (`Catalog.sync`), so a track ingested through one replica is found
through every other within the sync interval.

With `COVERID_MILVUS_URI` the first stage lives in Milvus instead (index/milvus_index.py): every process
writes the same collection and reads candidates' vectors from the store, so there is no snapshot, and
start-up adds to the collection what the store holds and it misses, instead of rebuilding it.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from contextlib import suppress
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from app.store import CatalogStore, StoreError, StoreUnavailable, TrackRecord
from index.defaults import EF_CONSTRUCTION
from index.local_index import LocalIndex, Match, read_header
from index.milvus_index import EngineUnavailable, MilvusIndex, StoredTrack

SearchIndex = Union[LocalIndex, MilvusIndex]  # the search-backend seam: one interface, two implementations

if TYPE_CHECKING:
    from app.settings import Settings


REBUILD_BATCH = 512  # tracks per index insert when rebuilding from the store
log = logging.getLogger("coverid.catalog")


class CatalogMismatch(ValueError):
    """The store holds embeddings made by another model than the one loaded."""


class CatalogBehind(RuntimeError):
    """The store's change log no longer reaches back to this process's generation: rebuild the index."""


@dataclass(frozen=True)
class IndexSettings:
    """How the index is built and searched: the service's Settings for a model's embedding size."""

    dim: int
    k_neighbours: int
    ef_search: int
    m: int
    ef_construction: int = EF_CONSTRUCTION
    engine_uri: Optional[str] = None  # Milvus (index/milvus_index.py); None: the in-process LocalIndex
    engine_collection: str = "coverid_chunks"
    engine_token: str = field(default="", repr=False)
    engine_shards: int = 1
    engine_replicas: int = 1
    engine_timeout_s: float = 10.0

    @classmethod
    def of(cls, settings: "Settings", dim: int) -> "IndexSettings":
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
        return cls(dim, settings.k_neighbours, settings.ef_search, settings.hnsw_m, settings.hnsw_ef_construction,
                   settings.milvus_location, settings.milvus_collection, token, settings.milvus_shards,
                   settings.milvus_replicas, settings.store_timeout_s)


class Catalog:
    """The store and this process's index of it.

    `generation` is the store change-log generation the index reflects. Writes made here reach the
    index at once; writes made by other processes sharing the store (replicas on one Redis) reach it
    when `sync` replays the log, which `follow` does every few seconds in the background.
    """

    def __init__(self, store: CatalogStore, index: SearchIndex, model_id: str, settings: IndexSettings,
                 store_retry_s: float, generation: int = 0):
        self._store = store
        self._index = index
        self.model_id = model_id
        self.store_retry_s = store_retry_s
        self.generation = generation
        self.settings = settings  # how to build the index again (a rebuild)
        self._writes = threading.Lock()  # store and index change together, one track at a time
        self._store_down_until = 0.0  # monotonic time before which describe() does not ask the store

    @classmethod
    def open(
        cls,
        store: CatalogStore,
        model_id: str,
        snapshot: Path,
        settings: IndexSettings,
        store_retry_s: float,
    ) -> tuple["Catalog", str]:
        """Open over `store`; returns the catalogue and how its index was built ("snapshot" or "rebuilt").

        `settings` and `store_retry_s` come from the service's Settings (IndexSettings.of, retry_after_s).

        A snapshot is trusted only as of the store generation it records: the changes made since are
        replayed from the store's log, and when the log no longer reaches back that far the index is rebuilt.
        """
        foreign = sorted(store.model_ids() - {model_id})
        if foreign:
            raise CatalogMismatch(
                f"the catalogue holds embeddings of model(s) {foreign}, but the loaded extractor is {model_id!r}; "
                "re-embed the catalogue with this model or load the model that built it"
            )
        loaded = None if settings.engine_uri else _load_snapshot(snapshot, store, model_id, settings)
        if loaded is not None:
            catalog = cls(store, loaded[0], model_id, settings, store_retry_s, generation=loaded[1])
            try:
                catalog.sync()
                return catalog, "snapshot"
            except CatalogBehind:
                log.info("the store's change log does not reach back to the snapshot; rebuilding the index")
        index, generation = _rebuild(store, settings, model_id)
        catalog = cls(store, index, model_id, settings, store_retry_s, generation=generation)
        catalog.sync()  # what other processes wrote during the rebuild
        return catalog, "engine" if settings.engine_uri else "rebuilt"

    def sync(self, batch: int = 1000) -> int:
        """Bring the index up to the store's latest generation; returns the changes replayed.

        Each change is applied as the store now holds the track (present: indexed with its stored
        vectors; absent: removed), so replaying a change twice, or one this process made itself, is harmless.
        """
        replayed = 0
        while True:
            changes = self._store.changes_since(self.generation, batch)
            if changes is None:
                raise CatalogBehind(f"the store's change log does not reach back to generation {self.generation}")
            if not changes:
                return replayed
            for track_id in dict.fromkeys(c.track_id for c in changes):  # each track once, as it is now
                with self._writes:
                    self._refresh(track_id)
            with self._writes:
                self.generation = max(self.generation, changes[-1].generation)
            replayed += len(changes)

    def _refresh(self, track_id: str) -> None:
        record = self._store.get(track_id, with_vectors=True)
        indexed = self._index.contains(track_id)
        if record is None or record.model_id != self.model_id:
            if indexed:
                self._index.remove(track_id)
            return
        if indexed and np.allclose(self._index.vectors(track_id), record.vectors, atol=1e-6):
            return  # this process wrote it, or already replayed it
        self._index.add(track_id, record.vectors, record.starts_s, replace=True)

    def follow(self, stop: threading.Event, interval_s: float, on_change=None) -> None:
        """Sync every `interval_s` until `stop` is set (the service runs this in a thread); a log that no
        longer reaches back rebuilds the index in the background and swaps it in."""
        while not stop.wait(interval_s):
            try:
                if self.sync() and on_change:
                    on_change(self)
            except CatalogBehind as err:
                log.warning("%s; rebuilding the index from the store", err)
                index, generation = _rebuild(self._store, self.settings, self.model_id)
                with self._writes:
                    self._index, self.generation = index, generation
            except (StoreError, EngineUnavailable) as err:
                log.debug("catalogue sync skipped: %s", err)

    def ingest(self, record: TrackRecord, replace: bool = False) -> None:
        """Store then index one track; searchable when this returns."""
        if record.model_id != self.model_id:
            raise CatalogMismatch(f"embeddings of model {record.model_id!r} offered to a {self.model_id!r} catalogue")
        with self._writes:
            self._store.put(record, replace=replace)
            try:
                self._index.add(record.track_id, record.vectors, record.starts_s, replace=replace)
            except EngineUnavailable:
                self._undo_new([record], replace)
                raise

    def ingest_many(self, records: list[TrackRecord]) -> None:
        """Store then index new tracks as one batch (one store write where the backend allows it)."""
        foreign = {r.model_id for r in records} - {self.model_id}
        if foreign:
            raise CatalogMismatch(f"embeddings of model(s) {sorted(foreign)} offered to a {self.model_id!r} catalogue")
        with self._writes:
            self._store.put_many(records)
            try:
                self._index.add_many([(r.track_id, r.vectors, r.starts_s) for r in records])
            except EngineUnavailable:
                self._undo_new(records, replace=False)
                raise

    def _undo_new(self, records: list[TrackRecord], replace: bool) -> None:
        """The engine refused new tracks the store took: take them out of the store again, so that the client's
        retry is a plain ingest. A replace stays stored (the store is the truth): a sync puts it in the engine."""
        if replace:
            return
        with suppress(StoreError):
            for record in records:
                self._store.delete(record.track_id)

    def delete(self, track_id: str) -> bool:
        with self._writes:
            removed = self._store.delete(track_id)
            if self._index.contains(track_id):
                self._index.remove(track_id)
            return removed

    def describe(self, track_ids: list[str]) -> Optional[dict[str, Optional[TrackRecord]]]:
        """The stored records (no vectors) of these tracks, or None when the store does not answer.

        The index ranks without the store, so a caller can answer without titles. After a failure the
        store is not asked again for `store_retry_s`: a frozen store costs one request its timeout, not all.
        """
        if time.monotonic() < self._store_down_until:
            return None
        try:
            return {track_id: self._store.get(track_id) for track_id in track_ids}
        except StoreUnavailable as err:
            log.warning("catalogue store unavailable, answering without titles for %.0f s: %s", self.store_retry_s, err)
            self._store_down_until = time.monotonic() + self.store_retry_s
            return None

    def get(self, track_id: str) -> Optional[TrackRecord]:
        return self._store.get(track_id)

    def page(self, offset: int, limit: int) -> tuple[list[TrackRecord], int]:
        """Up to `limit` stored tracks from `offset` in the store's order, and how many there are in all."""
        return self._store.list(offset, limit), self._store.count()

    def stored_tracks(self) -> int:
        return self._store.count()

    def indexed_tracks(self) -> int:
        return len(self._index)

    def indexed_vectors(self) -> int:
        return self._index.vector_count

    def store_reachable(self) -> bool:
        return self._store.ping()

    def engine_reachable(self) -> bool:
        """Whether the first stage answers: always in process; Milvus when it answers a call."""
        return self._index.reachable()

    @property
    def store_location(self) -> str:
        return self._store.location

    def close(self) -> None:
        self._store.close()
        self._index.close()

    def search(self, vectors: np.ndarray, top_k: int, query_starts_s: Optional[np.ndarray] = None,
               timings: Optional[dict] = None) -> list[Match]:
        """Stages 1 and 2 over the index: the best `top_k` tracks by MaxMean."""
        return self._index.search(vectors, top_k=top_k, query_starts_s=query_starts_s, timings=timings)

    def chunk_scores(self, vectors: np.ndarray, k_neighbours: int) -> tuple[list[str], np.ndarray]:
        """Each query chunk's best cosine with each track stage 1 reaches from it (index.LocalIndex.chunk_scores)."""
        return self._index.chunk_scores(vectors, k_neighbours)

    def score(self, vectors: np.ndarray, track_ids: list[str], query_starts_s: Optional[np.ndarray] = None) -> list[Match]:
        """Stage 2 of the query against these tracks only."""
        return self._index.score(vectors, track_ids, query_starts_s)

    def sequences(self, track_ids: list[str]) -> Optional[list[Optional[np.ndarray]]]:
        """Stage 3's pitch-class sequences of these tracks, read from the store in one round trip (None for one
        stored without, of another model, or gone), or None when the store does not answer.

        The store and not the index holds them: the index would keep 5 KiB per track in memory for the few
        (fusion's top N) a query aligns (issue 17). Without the store the caller skips stage 3 and answers in stage
        2's order, as the index ranks without the store (see describe); the store is not asked again for
        `store_retry_s`.
        """
        if time.monotonic() < self._store_down_until:
            return None
        try:
            stored = {record.track_id: record.sequence for record in self._store.get_many(track_ids, with_vectors=True)
                      if record.model_id == self.model_id}
        except StoreUnavailable as err:
            log.warning("catalogue store unavailable, answering without stage 3 for %.0f s: %s", self.store_retry_s, err)
            self._store_down_until = time.monotonic() + self.store_retry_s
            return None
        return [stored.get(track_id) for track_id in track_ids]

    def save_snapshot(self, path: Path) -> None:
        if not self._index.snapshots:  # an engine keeps its own data
            return
        path.parent.mkdir(parents=True, exist_ok=True)  # a Redis-backed service may have no data dir yet
        with suppress(StoreError, CatalogBehind):
            self.sync()  # the snapshot then records the latest generation it can
        with self._writes:
            self._index.save(path, self.model_id, self.generation)


def _rebuild(store: CatalogStore, settings: IndexSettings, model_id: str) -> tuple[SearchIndex, int]:
    """A fresh index of everything in the store (or the engine's collection brought in line with the store), and
    the generation it reflects at least.

    The generation is read before the scan: whatever changes during it is replayed by `sync` later.
    """
    generation = store.generation()
    if settings.engine_uri:
        return _engine_in_line(store, settings, model_id), generation
    index = LocalIndex(settings.dim, k_neighbours=settings.k_neighbours, ef_search=settings.ef_search, m=settings.m,
                       ef_construction=settings.ef_construction, initial_capacity=max(1024, store.vector_count()))
    batch: list = []
    for record in store.iter_records(batch_size=REBUILD_BATCH):
        batch.append((record.track_id, record.vectors, record.starts_s))
        if len(batch) == REBUILD_BATCH:
            index.add_many(batch)
            batch = []
    index.add_many(batch)
    return index, generation


def _engine_in_line(store: CatalogStore, settings: IndexSettings, model_id: str) -> MilvusIndex:
    """The engine's collection, holding every track of this model the store holds.

    A collection made now (new, or filled for another model) is filled from the store; an existing one gets what it
    misses (a writer that stopped between the store and the engine), found by primary-key lookups a page of the store
    at a time. Rows of tracks the store no longer has (a delete whose engine step failed) are not searched for here:
    stage 2 reads every candidate from the store, so they are never answered, and the sync that replays the delete
    removes them.
    """
    index = MilvusIndex(settings.engine_uri, settings.engine_collection, settings.dim, model_id,
                        partial(_stored_tracks, store, model_id), k_neighbours=settings.k_neighbours,
                        ef_search=settings.ef_search, m=settings.m, ef_construction=settings.ef_construction,
                        token=settings.engine_token, shards=settings.engine_shards, replicas=settings.engine_replicas,
                        timeout_s=settings.engine_timeout_s)
    added = offset = 0
    while page := store.list(offset, REBUILD_BATCH):
        offset += len(page)
        ids = [record.track_id for record in page if record.model_id == model_id]
        held = set(index.present(ids))
        missing = store.get_many([t for t in ids if t not in held], with_vectors=True)
        index.add_many([(r.track_id, r.vectors, r.starts_s) for r in missing], replace=True)
        added += len(missing)
    if added:
        index.flush()
    log.info("Milvus collection %s: %d tracks added from the store", settings.engine_collection, added)
    return index


def _stored_tracks(store: CatalogStore, model_id: str, track_ids: list[str]) -> dict[str, StoredTrack]:
    """What stage 2 reads of the engine's candidates: the store's vectors and chunk starts."""
    return {record.track_id: StoredTrack(record.vectors, record.starts_s)
            for record in store.get_many(track_ids, with_vectors=True) if record.model_id == model_id}


def _load_snapshot(path: Path, store: CatalogStore, model_id: str, settings: IndexSettings
                   ) -> Optional[tuple[LocalIndex, int]]:
    """The snapshot's index and generation if it can describe the store, else None. The file is removed either way.

    M is fixed when a graph is built, so a changed M setting takes effect by rebuilding from the store.
    A snapshot newer than the store (the store was emptied or replaced) is not used. One that cannot be
    read at all (damaged, truncated, not a regular file: a directory, or a named pipe, which
    read_header refuses without opening it) is logged and moved aside for inspection: start-up then
    rebuilds from the store instead of failing.
    """
    if not os.path.lexists(path):
        return None
    try:
        header = read_header(path)
        fits = (header.model_id, header.dim, header.m) == (model_id, settings.dim, settings.m)
        if fits and header.generation == store.generation():  # then the counts must agree too
            fits = (header.vector_count, header.track_count) == (store.vector_count(), store.count())
        if not fits or header.generation > store.generation():
            log.info("index snapshot %s does not describe the store; rebuilding the index from the store", path)
            os.remove(path)
            return None
        index = LocalIndex.load(path, model_id, settings.dim, k_neighbours=settings.k_neighbours,
                                ef_search=settings.ef_search)
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file, the store still holds everything
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        log.warning("index snapshot %s cannot be loaded (%s: %s); moved to %s, rebuilding the index from the store",
                    path, type(err).__name__, err, aside)
        shutil.move(str(path), str(aside))
        return None
    # a crash from here on must not find a snapshot older than the store's next writes
    os.remove(path)
    return index, header.generation
