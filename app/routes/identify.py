"""POST /identify: which catalogue tracks is this clip a cover of; POST /identify/segments: which works does a long
upload play, span by span (both run the model)."""

from __future__ import annotations

import time
from typing import Annotated, Optional

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile

from app import schemas
from app.dependencies import CatalogDep, EmbedderDep, SettingsDep, require_identify_key, uses_model
from app.metrics import IDENTIFY_SECONDS, LONG_QUERY_S
from app.pipeline import ClipDurationError, identify
from app.segmentation import identify_segments
from app.routes.common import AUDIO_UPLOAD, while_connected

router = APIRouter()


@router.post("/identify", response_model=schemas.IdentifyResponse, dependencies=[Depends(require_identify_key)],
             responses=schemas.errors(400, 401, 413, 415, 422, 503))
@uses_model
async def identify_clip(
    request: Request,
    catalog: CatalogDep,
    embedder: EmbedderDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description=f"the clip to identify, 6 to 60 s typically: {AUDIO_UPLOAD}",
                                     json_schema_extra={"minLength": 1})],
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


@router.post("/identify/segments", response_model=schemas.SegmentsResponse,
             dependencies=[Depends(require_identify_key)], responses=schemas.errors(400, 401, 413, 415, 422, 503))
@uses_model
async def identify_spans(
    request: Request,
    catalog: CatalogDep,
    embedder: EmbedderDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a long upload holding several works (a set list, a DJ mix, a "
                                     f"compilation), up to COVERID_MAX_TRACK_SECONDS: {AUDIO_UPLOAD}",
                                     json_schema_extra={"minLength": 1})],
) -> schemas.SegmentsResponse:
    """The works the upload plays, span by span: consecutive chunks that agree on a track form a span, which is
    then checked as a query of its own; stretches that match nothing are spans without a track."""
    started = time.perf_counter()
    data = await file.read()
    try:
        result = await while_connected(request, identify_segments, embedder, catalog, data,
                                       settings.min_clip_seconds, settings.max_track_seconds)
    except ClipDurationError as err:
        raise HTTPException(422, str(err)) from None
    IDENTIFY_SECONDS.labels("segments").observe(time.perf_counter() - started)
    return schemas.SegmentsResponse(spans=[schemas.Span(**vars(s)) for s in result.spans],
                                    query_duration_s=result.query_duration_s, n_segments=result.n_segments,
                                    timings_ms=result.timings_ms)
