"""The HTTP service: `uvicorn app.main:app`. Routes translate HTTP to pipeline calls and errors to statuses.

Heavy things (extractor, store, index) are created in the lifespan, never at
import, and reach routes through typed dependencies.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated, Optional

import torch
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Match

from app import schemas
from app.catalog import Catalog, IndexSettings
from app.limits import UNAUTHORISED, AdmitBeforeBody, BodyLimit, KeyBeforeBody, RequestMetrics
from app.metrics import (ABANDONED, CATALOG_TRACKS, GPU_MEMORY, IDENTIFY_SECONDS, INDEX_VECTORS, INGESTED_AUDIO_SECONDS,
                         INGESTED_TRACKS, LONG_QUERY_S, MODEL_INFO, READY, STORE_UP)
from app.backpressure import Admission, Overloaded
from app.pipeline import ClipDurationError, Embedder, identify, ingest, make_record
from app.settings import Settings, get_settings
from app.store import StoreError, StoreFull, StoreUnavailable, TrackExists, TrackRecord, open_store
from app.store.base import MAX_PAGE_END, METADATA_LONG_INTEGER, METADATA_TOO_DEEP, metadata_json
from models.audio import AudioError, DecodeCancelled
from models.extractor import load_extractor

log = logging.getLogger("coverid")
METADATA_MAX_CHARS = 65536  # a catalogue record (ISRC, labels, links), not a document store
PAGE_MAX_LIMIT = 1000  # tracks per GET /catalog page


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    logging.basicConfig(level=settings.log_level.upper())
    extractor = load_extractor(settings.model_path, settings.device)
    store = open_store(settings.data_dir, settings.redis_url, settings.store_timeout_s)
    catalog, how = Catalog.open(store, extractor.model_id, settings.snapshot_path,
                                IndexSettings.of(settings, extractor.config.embedding_dim), settings.retry_after_s)
    log.info("model %s on %s; %d tracks, index %s", extractor.model_id, extractor.device, store.count(), how)
    app.state.embedder = Embedder(extractor, settings.queue_size, settings.queue_wait_s, settings.stage3_top_n,
                                  settings.upload_slots)
    app.state.catalog = catalog
    MODEL_INFO.labels(extractor.model_id, str(extractor.device)).set(1)
    _update_gauges(catalog)
    stop = threading.Event()
    follower = threading.Thread(target=catalog.follow, args=(stop, settings.sync_interval_s, _update_gauges),
                                name="catalog-sync", daemon=True)
    follower.start()
    try:
        yield
    finally:
        stop.set()
        follower.join(timeout=settings.store_timeout_s + 5)
        try:
            catalog.save_snapshot(settings.snapshot_path)
        except OSError as err:  # a full or read-only disk: the next start rebuilds from the store instead
            log.warning("index snapshot not written to %s: %s", settings.snapshot_path, err)
        store.close()


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="coverid", version="0.1.0", lifespan=lifespan,
                  description="Which catalogue song is this clip a cover of? (ByteCover3)")
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    router = _routes()
    app.add_middleware(AdmitBeforeBody, model_route=lambda scope: _route_using_model(router.routes, scope),
                       admission=lambda: _admission(app), retry_after_s=settings.retry_after_s)
    app.add_middleware(KeyBeforeBody, needs_key=lambda scope: _route_needing_key(router.routes, settings, scope),
                       key_valid=lambda header: _key_valid(header, settings))
    app.add_middleware(RequestMetrics)
    app.include_router(router)
    app.add_exception_handler(AudioError, _audio_error)
    app.add_exception_handler(DecodeCancelled, _client_gone)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(Overloaded, _overloaded)
    return app


# -- dependencies ------------------------------------------------------------------


def settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def catalog_dep(request: Request) -> Catalog:
    return request.app.state.catalog


def embedder_dep(request: Request) -> Embedder:
    return request.app.state.embedder


SettingsDep = Annotated[Settings, Depends(settings_dep)]
CatalogDep = Annotated[Catalog, Depends(catalog_dep)]
EmbedderDep = Annotated[Embedder, Depends(embedder_dep)]


def _key_valid(authorization: str, settings: Settings) -> bool:
    if not settings.api_keys:
        return True
    offered = authorization[7:].encode() if authorization.lower().startswith("bearer ") else b""
    # compare with every key, in constant time, so timing does not reveal a prefix
    valid = [hmac.compare_digest(offered, key.get_secret_value().encode()) for key in settings.api_keys]
    return any(valid)


def _check_key(request: Request, settings: Settings) -> None:
    if not _key_valid(request.headers.get("authorization", ""), settings):
        raise HTTPException(401, UNAUTHORISED, headers={"WWW-Authenticate": "Bearer"})


def require_key(request: Request, settings: SettingsDep) -> None:
    _check_key(request, settings)


def require_identify_key(request: Request, settings: SettingsDep) -> None:
    if settings.identify_requires_key:
        _check_key(request, settings)


def _matched_route(routes: list, scope) -> Optional[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute) and route.matches(scope)[0] == Match.FULL:
            return route
    return None


def _route_needing_key(routes: list, settings: Settings, scope) -> Optional[APIRoute]:
    """The route `scope` goes to, when its dependencies ask for a key under `settings`."""
    route = _matched_route(routes, scope) if settings.api_keys else None
    if route is None:
        return None
    checks = {d.dependency for d in route.dependencies}
    if require_key in checks or (require_identify_key in checks and settings.identify_requires_key):
        return route
    return None


def _route_using_model(routes: list, scope) -> Optional[APIRoute]:
    """The route `scope` goes to, when it takes the embedder (so needs a place in the model's queue)."""
    route = _matched_route(routes, scope)
    if route is not None and any(d.call is embedder_dep for d in route.dependant.dependencies):
        return route
    return None


def _admission(app: FastAPI) -> Optional[Admission]:
    embedder = getattr(app.state, "embedder", None)
    return embedder.admission if embedder is not None else None


# -- routes ------------------------------------------------------------------------


def _routes():
    from fastapi import APIRouter

    router = APIRouter()

    @router.post("/catalog", status_code=201, response_model=schemas.Track, dependencies=[Depends(require_key)],
                 responses=schemas.errors(400, 401, 409, 413, 415, 422, 503))
    async def add_track(
        request: Request,
        catalog: CatalogDep,
        embedder: EmbedderDep,
        settings: SettingsDep,
        file: Annotated[UploadFile, File(description="the reference recording")],
        track_id: Annotated[Optional[str], Form(max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")] = None,
        title: Annotated[Optional[str], Form(max_length=500)] = None,
        artist: Annotated[Optional[str], Form(max_length=500)] = None,
        metadata: Annotated[Optional[str], Form(max_length=METADATA_MAX_CHARS, description="a JSON object")] = None,
        replace: Annotated[bool, Query(description="overwrite an existing track_id")] = False,
    ) -> schemas.Track:
        extra = _metadata(metadata)
        if track_id and not replace and catalog.get(track_id) is not None:
            raise HTTPException(409, f"track {track_id!r} already exists; send replace=true to overwrite it")
        data = await file.read()
        try:
            record = await while_connected(request, ingest, embedder, catalog, data, settings.max_track_seconds,
                                           track_id, title, artist, extra, replace)
        except TrackExists:
            raise HTTPException(409, f"track {track_id!r} already exists; send replace=true to overwrite it") from None
        _update_gauges(catalog)
        _count_ingested([record])
        return _track(record)

    @router.post("/catalog/batch", response_model=schemas.BatchResult, dependencies=[Depends(require_key)],
                 responses=schemas.errors(400, 401, 413, 422, 503))
    async def add_tracks(
        request: Request,
        catalog: CatalogDep,
        embedder: EmbedderDep,
        settings: SettingsDep,
        files: Annotated[list[UploadFile], File(description="reference recordings; each gets a new track_id")],
    ) -> schemas.BatchResult:
        items, records = [], []
        for upload in files:
            name = upload.filename or "upload"
            try:
                record = await while_connected(request, make_record, embedder, await upload.read(),
                                               settings.max_track_seconds, None, _stem(name))
                records.append(record)
                items.append(schemas.BatchItem(filename=name, status=201, track=_track(record)))
            except AudioError as err:
                items.append(schemas.BatchItem(filename=name, status=_audio_status(err), error=str(err)))
            except Overloaded as err:  # this file only: the ones already embedded are still stored
                items.append(schemas.BatchItem(filename=name, status=503, error=str(err)))
        if records:  # one store write for the batch: acknowledged only once all of it is durable
            await run_in_threadpool(catalog.ingest_many, records)
        _update_gauges(catalog)
        _count_ingested(records)
        ok = sum(item.status == 201 for item in items)
        return schemas.BatchResult(catalogued=ok, failed=len(items) - ok, items=items)

    @router.get("/catalog", response_model=schemas.TrackPage, responses=schemas.errors(422, 503))
    def list_tracks(
        catalog: CatalogDep,
        offset: Annotated[int, Query(ge=0, le=MAX_PAGE_END - PAGE_MAX_LIMIT)] = 0,
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX_LIMIT)] = 100,
    ) -> schemas.TrackPage:
        records, total = catalog.page(offset, limit)
        return schemas.TrackPage(total=total, offset=offset, limit=limit, items=[_track(r) for r in records])

    @router.get("/catalog/{track_id}", response_model=schemas.Track, responses=schemas.errors(404, 503))
    def get_track(track_id: str, catalog: CatalogDep) -> schemas.Track:
        record = catalog.get(track_id)
        if record is None:
            raise HTTPException(404, f"no track {track_id!r} in the catalogue")
        return _track(record)

    @router.delete("/catalog/{track_id}", status_code=204, dependencies=[Depends(require_key)],
                   responses=schemas.errors(401, 404, 503))
    def delete_track(track_id: str, catalog: CatalogDep) -> Response:
        if not catalog.delete(track_id):
            raise HTTPException(404, f"no track {track_id!r} in the catalogue")
        _update_gauges(catalog)
        return Response(status_code=204)

    @router.post("/identify", response_model=schemas.IdentifyResponse, dependencies=[Depends(require_identify_key)],
                 responses=schemas.errors(400, 401, 413, 415, 422, 503))
    async def identify_clip(
        request: Request,
        catalog: CatalogDep,
        embedder: EmbedderDep,
        settings: SettingsDep,
        file: Annotated[UploadFile, File(description="the clip to identify, 6 to 60 s typically")],
        top_k: Annotated[int, Query(ge=1)] = 10,
        min_score: Annotated[Optional[float], Query(ge=-1.0, le=1.0)] = None,
    ) -> schemas.IdentifyResponse:
        if top_k > settings.max_top_k:
            raise HTTPException(422, f"top_k is at most {settings.max_top_k}")
        started = time.perf_counter()
        data = await file.read()
        try:
            result = await while_connected(request, identify, embedder, catalog, data, top_k, min_score,
                                           settings.min_clip_seconds, settings.max_clip_seconds)
        except ClipDurationError as err:
            raise HTTPException(422, str(err)) from None
        query = "long" if result.query_duration_s > LONG_QUERY_S else "clip"
        IDENTIFY_SECONDS.labels(query).observe(time.perf_counter() - started)
        return schemas.IdentifyResponse(
            matches=[schemas.Match(**vars(m)) for m in result.matches], query_duration_s=result.query_duration_s,
            n_segments=result.n_segments, timings_ms=result.timings_ms,
            metadata_unavailable=result.metadata_unavailable,
        )

    @router.get("/healthz", response_model=schemas.Health)
    def healthz() -> schemas.Health:
        return schemas.Health(status="alive")

    @router.get("/readyz", response_model=schemas.Health,
                responses={503: {"model": schemas.Health, "description": "Starting, or the store does not answer"}})
    def readyz(request: Request) -> JSONResponse:
        catalog: Optional[Catalog] = getattr(request.app.state, "catalog", None)
        if catalog is None:
            return _retry_later(request, {"status": "starting", "detail": "loading the model and the catalogue"})
        if not catalog.store_reachable():
            return _retry_later(request, {"status": "unavailable", "detail": f"the catalogue store "
                                f"({catalog.store_location}) does not answer; /identify still answers from memory, "
                                "without titles"})
        body = schemas.Health(status="ready", model_id=catalog.model_id, tracks=catalog.stored_tracks(),
                              vectors=catalog.indexed_vectors())
        return JSONResponse(body.model_dump())

    @router.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        _refresh_health_gauges(request.app)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


# -- helpers -----------------------------------------------------------------------


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


def _metadata(text: Optional[str]) -> dict:
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
    if not isinstance(value, dict):
        raise HTTPException(422, f"metadata must be a JSON object, not {type(value).__name__}")
    try:
        metadata_json(value)  # the store's own check (NaN, depth), before any audio is decoded
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    return value


def _stem(filename: str) -> str:
    base = filename.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _track(record: TrackRecord) -> schemas.Track:
    return schemas.Track(track_id=record.track_id, title=record.title, artist=record.artist,
                         metadata=record.metadata, duration_s=record.duration_s, n_segments=record.n_segments,
                         model_id=record.model_id, created_at=record.created_at)


def _update_gauges(catalog: Catalog) -> None:
    CATALOG_TRACKS.set(catalog.indexed_tracks())
    INDEX_VECTORS.set(catalog.indexed_vectors())


def _count_ingested(records: list[TrackRecord]) -> None:
    INGESTED_TRACKS.inc(len(records))
    INGESTED_AUDIO_SECONDS.inc(sum(r.duration_s for r in records))


def _refresh_health_gauges(app: FastAPI) -> None:
    """Readiness, store and accelerator state as of this scrape (what the alert rules read)."""
    catalog: Optional[Catalog] = getattr(app.state, "catalog", None)
    store_up = catalog is not None and catalog.store_reachable()
    STORE_UP.set(int(store_up))
    READY.set(int(store_up))
    embedder: Optional[Embedder] = getattr(app.state, "embedder", None)
    if embedder is not None:
        device = embedder.device
        GPU_MEMORY.labels(str(device)).set(torch.cuda.memory_allocated(device) if device.type == "cuda" else 0)


def _audio_status(err: AudioError) -> int:
    return 415 if err.reason == "unsupported_format" else 422


async def _audio_error(request: Request, err: AudioError) -> JSONResponse:
    return JSONResponse({"detail": str(err), "reason": err.reason}, status_code=_audio_status(err))


async def _client_gone(request: Request, err: DecodeCancelled) -> Response:
    ABANDONED.inc()
    log.info("%s %s: the client left while its audio was decoded; stopped", request.method, request.url.path)
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it


async def _store_unavailable(request: Request, err: StoreError) -> JSONResponse:
    log.error("store unavailable: %s", err)
    retry_after = request.app.state.settings.retry_after_s
    detail = ("the catalogue's disk is full: nothing was changed; an operator must free space" if isinstance(err, StoreFull)
              else "the catalogue store is unavailable")
    return _retry_later(request, {"detail": f"{detail}; retry in {retry_after} s"})


async def _overloaded(request: Request, err: Overloaded) -> JSONResponse:
    return _retry_later(request, {"detail": err.detail(request.app.state.settings.retry_after_s)})


def _retry_later(request: Request, body: dict) -> JSONResponse:
    """A 503 with the configured Retry-After: every temporary refusal of the service."""
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(request.app.state.settings.retry_after_s)})


app = create_app()
