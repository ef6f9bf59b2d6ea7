"""What several routes share: running model work while the client is connected, the metadata field's checks,
the Track answer, the catalogue gauges, and the statuses of bad audio and of a temporary refusal (503)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Optional

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app import schemas
from app.catalog import Catalog
from app.metrics import CATALOG_TRACKS, INDEX_VECTORS, INGESTED_AUDIO_SECONDS, INGESTED_TRACKS
from app.store import TrackRecord
from app.store.base import METADATA_LONG_INTEGER, METADATA_TOO_DEEP, metadata_json
from models.audio import AudioError

# what the schema cannot say about an upload, said in its description (the service answers 415 or 422 otherwise)
AUDIO_UPLOAD = ("an audio file (WAV, FLAC, OGG/Vorbis, Opus or MP3), not empty, at least 0.5 s long and not silent; "
                "other content is refused with 415 (not audio) or 422 (unusable audio)")
CLIENT_POLL_S = 0.25  # how often a running decode checks that its client is still connected


async def while_connected(request: Request, work, *args):
    """Run `work(*args, should_stop=...)` in the thread pool; should_stop turns True once the client has gone,
    so a decode nobody waits for stops at its next block instead of holding a core to the end."""
    gone = threading.Event()

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(CLIENT_POLL_S)
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(work, *args, should_stop=gone.is_set)
    finally:
        watcher.cancel()


def parse_metadata(text: Optional[str]) -> dict:
    """The metadata form field: a JSON object; absent, empty or JSON null mean no metadata."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise HTTPException(422, f"metadata must be a JSON object: {err.msg} at position {err.pos}") from None
    except RecursionError:  # far deeper than the store's limit: the same answer
        raise HTTPException(422, METADATA_TOO_DEEP) from None
    except ValueError:  # an integer past Python's digit limit (the only ValueError left)
        raise HTTPException(422, METADATA_LONG_INTEGER) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HTTPException(422, f"metadata must be a JSON object, not {type(value).__name__}")
    try:
        metadata_json(value)  # the store's own check (NaN, depth), before any audio is decoded
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    return value


def stem(filename: str) -> str:
    base = filename.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def track_answer(record: TrackRecord) -> schemas.Track:
    return schemas.Track(track_id=record.track_id, title=record.title, artist=record.artist,
                         metadata=record.metadata, duration_s=record.duration_s, n_segments=record.n_segments,
                         model_id=record.model_id, created_at=record.created_at)


def update_gauges(catalog: Catalog) -> None:
    CATALOG_TRACKS.set(catalog.indexed_tracks())
    INDEX_VECTORS.set(catalog.indexed_vectors())


def count_ingested(records: list[TrackRecord]) -> None:
    INGESTED_TRACKS.inc(len(records))
    INGESTED_AUDIO_SECONDS.inc(sum(r.duration_s for r in records))


def audio_status(err: AudioError) -> int:
    return 415 if err.reason == "unsupported_format" else 422


def retry_later(request: Request, body: dict) -> JSONResponse:
    """A 503 with the configured Retry-After: every temporary refusal of the service."""
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(request.app.state.settings.retry_after_s)})
