"""Liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

from typing import Optional

import torch
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import schemas
from app.catalog import Catalog
from app.metrics import GPU_MEMORY, READY, STORE_UP
from app.pipeline import Embedder
from app.routes.common import retry_later

router = APIRouter()


@router.get("/healthz", response_model=schemas.Health, responses=schemas.errors(413))
def healthz() -> schemas.Health:
    return schemas.Health(status="alive")


@router.get("/readyz", response_model=schemas.Health,
            responses={**schemas.errors(413),
                       503: {"model": schemas.Health, "description": "Starting, or the store does not answer"}})
def readyz(request: Request) -> JSONResponse:
    catalog: Optional[Catalog] = getattr(request.app.state, "catalog", None)
    if catalog is None:
        return retry_later(request, {"status": "starting", "detail": "loading the model and the catalogue"})
    if not catalog.store_reachable():
        return retry_later(request, {"status": "unavailable", "detail": f"the catalogue store "
                            f"({catalog.store_location}) does not answer; /identify still answers from memory, "
                            "without titles"})
    if not catalog.engine_reachable():
        return retry_later(request, {"status": "unavailable", "detail": "the search engine (Milvus) does not answer; "
                                     "/identify and /catalog answer 503 until it does"})
    body = schemas.Health(status="ready", model_id=catalog.model_id, tracks=catalog.stored_tracks(),
                          vectors=catalog.indexed_vectors())
    return JSONResponse(body.model_dump())


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    refresh_health_gauges(request.app)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def refresh_health_gauges(app: FastAPI) -> None:
    """Readiness, store and accelerator state as of this scrape (what the alert rules read)."""
    catalog: Optional[Catalog] = getattr(app.state, "catalog", None)
    store_up = catalog is not None and catalog.store_reachable()
    STORE_UP.set(int(store_up))
    READY.set(int(store_up and catalog.engine_reachable()))
    embedder: Optional[Embedder] = getattr(app.state, "embedder", None)
    if embedder is not None:
        device = embedder.device
        GPU_MEMORY.labels(str(device)).set(torch.cuda.memory_allocated(device) if device.type == "cuda" else 0)
