"""The HTTP service: `uvicorn app.main:app`. The app, its middleware and the errors it maps to statuses; the routes
are module-level routers in app/routes/, their dependencies in app/dependencies.py.

Heavy things (extractor, store, index) are created in the lifespan, never at
import, and reach routes through typed dependencies.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from functools import partial
from typing import Optional

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.backpressure import Admission, Overloaded
from app.catalog import Catalog, IndexSettings
from app.dependencies import key_valid, one_value_per_parameter, route_needing_key, route_using_model
from app.limits import AdmitBeforeBody, BodyLimit, KeyBeforeBody, RequestMetrics
from app.metrics import ABANDONED, MODEL_INFO
from app.pipeline import Embedder, load_decision
from app.routes import catalog as catalog_routes
from app.routes import health as health_routes
from app.routes import identify as identify_routes
from app.routes import page as page_routes
from app.routes.common import audio_status, retry_later, update_gauges
from app.settings import Settings, get_settings
from app.store import StoreError, StoreFull, StoreUnavailable, open_store
from index.milvus_index import EngineUnavailable
from models.audio import AudioError, DecodeCancelled
from models.extractor import load_extractor

log = logging.getLogger("coverid")


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    logging.basicConfig(level=settings.log_level.upper())
    extractor = load_extractor(settings.model_path, settings.device)
    store = open_store(settings.data_dir, settings.redis_url, settings.store_timeout_s)
    catalog, how = Catalog.open(store, extractor.model_id, settings.snapshot_path,
                                IndexSettings.of(settings, extractor.config.embedding_dim), settings.retry_after_s)
    log.info("model %s on %s; %d tracks, index %s", extractor.model_id, extractor.device, store.count(), how)
    decision, why_not = load_decision(settings.decision_calibration, settings.false_match_rate, extractor,
                                      required=settings.calibration_path is not None)
    if decision is None:
        log.warning("matches carry no is_match or confidence: %s", why_not)
    app.state.embedder = Embedder(extractor, settings.queue_size, settings.queue_wait_s, settings.stage3_top_n,
                                  settings.upload_slots, decision)
    app.state.catalog = catalog
    MODEL_INFO.labels(extractor.model_id, str(extractor.device)).set(1)
    update_gauges(catalog)
    stop = threading.Event()
    follower = threading.Thread(target=catalog.follow, args=(stop, settings.sync_interval_s, update_gauges),
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
    app = FastAPI(title="coverid", version="0.1.0", lifespan=lifespan, dependencies=[Depends(one_value_per_parameter)],
                  description="Which catalogue song is this clip a cover of? (ByteCover3)")
    app.state.settings = settings
    routers = (catalog_routes.router, identify_routes.router, health_routes.router,
               *((page_routes.router,) if settings.demo_page else ()))
    routes = [route for router in routers for route in router.routes]  # what the middleware matches from the headers
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(AdmitBeforeBody, model_route=lambda scope: route_using_model(routes, scope),
                       admission=lambda: _admission(app), retry_after_s=settings.retry_after_s)
    app.add_middleware(KeyBeforeBody, needs_key=lambda scope: route_needing_key(routes, settings, scope),
                       key_valid=lambda header: key_valid(header, settings))
    app.add_middleware(RequestMetrics)
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(AudioError, _audio_error)
    app.add_exception_handler(DecodeCancelled, _client_gone)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(EngineUnavailable, _engine_unavailable)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(StarletteHTTPException, partial(_http_error, routes=routes))
    return app


def _admission(app: FastAPI) -> Optional[Admission]:
    embedder = getattr(app.state, "embedder", None)
    return embedder.admission if embedder is not None else None


# -- errors to statuses ------------------------------------------------------------


async def _audio_error(request: Request, err: AudioError) -> JSONResponse:
    return JSONResponse({"detail": str(err), "reason": err.reason}, status_code=audio_status(err))


async def _client_gone(request: Request, err: DecodeCancelled) -> Response:
    ABANDONED.inc()
    log.info("%s %s: the client left while its audio was decoded; stopped", request.method, request.url.path)
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it


async def _store_unavailable(request: Request, err: StoreError) -> JSONResponse:
    log.error("store unavailable: %s", err)
    retry_after = request.app.state.settings.retry_after_s
    detail = ("the catalogue's disk is full: nothing was changed; an operator must free space" if isinstance(err, StoreFull)
              else "the catalogue store is unavailable")
    return retry_later(request, {"detail": f"{detail}; retry in {retry_after} s"})


async def _engine_unavailable(request: Request, err: EngineUnavailable) -> JSONResponse:
    log.error("search engine unavailable: %s", err)
    retry_after = request.app.state.settings.retry_after_s
    return retry_later(request, {"detail": f"the search engine (Milvus) is unavailable; retry in {retry_after} s"})


async def _http_error(request: Request, err: StarletteHTTPException, routes: list) -> Response:
    """FastAPI's own answer, except a 405's Allow: Starlette names the methods of the first route on the path only
    (POST for /catalog); here every method some route of the path takes (RFC 9110: Allow lists them all)."""
    if err.status_code == 405:
        path = request.url.path
        matching = [r for r in routes if r.path_regex.match(path)]
        # a literal path is its own resource: /catalog/batch takes POST, although /catalog/{track_id} matches it too
        matching = [r for r in matching if r.path == path] or matching
        allowed = sorted({m for r in matching for m in (r.methods or ())})
        err = StarletteHTTPException(405, err.detail, headers={**(err.headers or {}), "Allow": ", ".join(allowed)})
    return await http_exception_handler(request, err)


async def _overloaded(request: Request, err: Overloaded) -> JSONResponse:
    return retry_later(request, {"detail": err.detail(request.app.state.settings.retry_after_s)})


app = create_app()
