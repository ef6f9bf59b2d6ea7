"""The durable catalogue: tracks with their local embeddings, in SQLite or Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from app.store.base import CatalogStore, StoreError, StoreFull, StoreUnavailable, TrackExists, TrackRecord
from app.store.redis import RedisStore
from app.store.sqlite import SQLiteStore

__all__ = [
    "CatalogStore", "RedisStore", "SQLiteStore", "StoreError", "StoreFull", "StoreUnavailable", "TrackExists", "TrackRecord",
    "open_store",
]


def open_store(data_dir: Path, redis_url: Optional[str] = None, timeout_s: float = 30.0) -> CatalogStore:
    """Redis when a URL is given (several replicas can share it), else a SQLite file in data_dir.

    `timeout_s` bounds one store call (Redis: the socket timeout; SQLite: the wait for a lock)."""
    if redis_url:
        return RedisStore(redis_url, timeout_s=timeout_s)
    return SQLiteStore(data_dir, busy_timeout_s=timeout_s)
