"""The catalogue: the durable store and the in-memory search index, kept in step.

The store is the one source of truth. A track is written to the store first
(one atomic write), then added to the index; a crash in between leaves it in
the store, and the next start-up rebuilds the index from the store. The index
snapshot is written only at a clean shutdown and removed once loaded, so a
snapshot on disk always describes the store as it was left.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Optional

from app.store import CatalogStore, StoreUnavailable, TrackRecord
from index.local_index import LocalIndex, read_header


REBUILD_BATCH = 512  # tracks per index insert when rebuilding from the store
log = logging.getLogger("coverid.catalog")


class CatalogMismatch(ValueError):
    """The store holds embeddings made by another model than the one loaded."""


class Catalog:
    def __init__(self, store: CatalogStore, index: LocalIndex, model_id: str, store_retry_s: float = 5.0):
        self.store = store
        self.index = index
        self.model_id = model_id
        self.store_retry_s = store_retry_s
        self._writes = threading.Lock()  # store and index change together, one track at a time
        self._store_down_until = 0.0  # monotonic time before which describe() does not ask the store

    @classmethod
    def open(
        cls,
        store: CatalogStore,
        model_id: str,
        dim: int,
        snapshot: Path,
        k_neighbours: int = 50,
        ef_search: int = 100,
        m: int = 16,
        store_retry_s: float = 5.0,
    ) -> tuple["Catalog", str]:
        """Open over `store`; returns the catalogue and how its index was built ("snapshot" or "rebuilt")."""
        foreign = sorted(store.model_ids() - {model_id})
        if foreign:
            raise CatalogMismatch(
                f"the catalogue holds embeddings of model(s) {foreign}, but the loaded extractor is {model_id!r}; "
                "re-embed the catalogue with this model or load the model that built it"
            )
        index = _load_snapshot(snapshot, store, model_id, dim, k_neighbours, ef_search, m)
        how = "snapshot"
        if index is None:
            how = "rebuilt"
            index = LocalIndex(dim, k_neighbours=k_neighbours, ef_search=ef_search, m=m,
                               initial_capacity=max(1024, store.vector_count()))
            batch: list = []
            for record in store.iter_records(batch_size=REBUILD_BATCH):
                batch.append((record.track_id, record.vectors, record.starts_s))
                if len(batch) == REBUILD_BATCH:
                    index.add_many(batch)
                    batch = []
            index.add_many(batch)
        return cls(store, index, model_id, store_retry_s), how

    def ingest(self, record: TrackRecord, replace: bool = False) -> None:
        """Store then index one track; searchable when this returns."""
        if record.model_id != self.model_id:
            raise CatalogMismatch(f"embeddings of model {record.model_id!r} offered to a {self.model_id!r} catalogue")
        with self._writes:
            self.store.put(record, replace=replace)
            self.index.add(record.track_id, record.vectors, record.starts_s, replace=replace)

    def ingest_many(self, records: list[TrackRecord]) -> None:
        """Store then index new tracks as one batch (one store write where the backend allows it)."""
        foreign = {r.model_id for r in records} - {self.model_id}
        if foreign:
            raise CatalogMismatch(f"embeddings of model(s) {sorted(foreign)} offered to a {self.model_id!r} catalogue")
        with self._writes:
            self.store.put_many(records)
            self.index.add_many([(r.track_id, r.vectors, r.starts_s) for r in records])

    def delete(self, track_id: str) -> bool:
        with self._writes:
            removed = self.store.delete(track_id)
            if self.index.contains(track_id):
                self.index.remove(track_id)
            return removed

    def describe(self, track_ids: list[str]) -> Optional[dict[str, Optional[TrackRecord]]]:
        """The stored records (no vectors) of these tracks, or None when the store does not answer.

        The index ranks without the store, so a caller can answer without titles. After a failure the
        store is not asked again for `store_retry_s`: a frozen store costs one request its timeout, not all.
        """
        if time.monotonic() < self._store_down_until:
            return None
        try:
            return {track_id: self.store.get(track_id) for track_id in track_ids}
        except StoreUnavailable as err:
            log.warning("catalogue store unavailable, answering without titles for %.0f s: %s", self.store_retry_s, err)
            self._store_down_until = time.monotonic() + self.store_retry_s
            return None

    def get(self, track_id: str) -> Optional[TrackRecord]:
        return self.store.get(track_id)

    def save_snapshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)  # a Redis-backed service may have no data dir yet
        with self._writes:
            self.index.save(path, self.model_id)


def _load_snapshot(
    path: Path, store: CatalogStore, model_id: str, dim: int, k_neighbours: int, ef_search: int, m: int
) -> Optional[LocalIndex]:
    """The snapshot's index if its header matches the store and M, else None. The file is removed either way.

    M is fixed when a graph is built, so a changed M setting takes effect by rebuilding from the store.
    A snapshot that cannot be read at all (damaged, truncated, not a file) is logged and moved aside for
    inspection: start-up then rebuilds from the store instead of failing.
    """
    if not os.path.lexists(path):
        return None
    try:
        header = read_header(path)
        fits = (header.model_id, header.dim, header.vector_count, header.track_count, header.m) == (
            model_id, dim, store.vector_count(), store.count(), m)
        if not fits:
            log.info("index snapshot %s does not describe the store; rebuilding the index from the store", path)
            os.remove(path)
            return None
        index = LocalIndex.load(path, model_id, dim, k_neighbours=k_neighbours, ef_search=ef_search)
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file, the store still holds everything
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        log.warning("index snapshot %s cannot be loaded (%s: %s); moved to %s, rebuilding the index from the store",
                    path, type(err).__name__, err, aside)
        shutil.move(str(path), str(aside))
        return None
    # a crash from here on must not find a snapshot older than the store's next writes
    os.remove(path)
    return index
