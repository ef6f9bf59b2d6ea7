"""The catalogue's routes: ingest one track or a batch (these run the model), list, read and delete tracks."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from app import schemas
from app.backpressure import Overloaded
from app.dependencies import CatalogDep, EmbedderDep, SettingsDep, require_key, uses_model
from app.pipeline import ingest, make_record
from app.routes.common import (AUDIO_UPLOAD, audio_status, count_ingested, parse_metadata, stem, track_answer,
                               update_gauges, while_connected)
from app.store import TrackExists
from app.store.base import MAX_PAGE_END
from models.audio import AudioError

METADATA_MAX_CHARS = 65536  # a catalogue record (ISRC, labels, links), not a document store
PAGE_MAX_LIMIT = 1000  # tracks per GET /catalog page

router = APIRouter()


@router.post("/catalog", status_code=201, response_model=schemas.Track, dependencies=[Depends(require_key)],
             responses=schemas.errors(400, 401, 409, 413, 415, 422, 503))
@uses_model
async def add_track(
    request: Request,
    catalog: CatalogDep,
    embedder: EmbedderDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description=f"the reference recording: {AUDIO_UPLOAD}",
                                     json_schema_extra={"minLength": 1})],
    track_id: Annotated[Optional[str], Form(max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")] = None,
    title: Annotated[Optional[str], Form(max_length=500)] = None,
    artist: Annotated[Optional[str], Form(max_length=500)] = None,
    metadata: Annotated[Optional[str], Form(max_length=METADATA_MAX_CHARS,
                                            description="a JSON object (JSON null or empty: none)")] = None,
    replace: Annotated[bool, Query(description="overwrite an existing track_id")] = False,
) -> schemas.Track:
    extra = parse_metadata(metadata)
    if track_id and not replace and catalog.get(track_id) is not None:
        raise HTTPException(409, f"track {track_id!r} already exists; send replace=true to overwrite it")
    data = await file.read()
    try:
        record = await while_connected(request, ingest, embedder, catalog, data, settings.max_track_seconds,
                                       track_id, title, artist, extra, replace)
    except TrackExists:
        raise HTTPException(409, f"track {track_id!r} already exists; send replace=true to overwrite it") from None
    update_gauges(catalog)
    count_ingested([record])
    return track_answer(record)


@router.post("/catalog/batch", response_model=schemas.BatchResult, dependencies=[Depends(require_key)],
             responses=schemas.errors(400, 401, 413, 422, 503))
@uses_model
async def add_tracks(
    request: Request,
    catalog: CatalogDep,
    embedder: EmbedderDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(min_length=1, description=f"reference recordings, each {AUDIO_UPLOAD}; "
                                                                     "each gets a new track_id")],
) -> schemas.BatchResult:
    items, records = [], []
    for upload in files:
        name = upload.filename or "upload"
        try:
            record = await while_connected(request, make_record, embedder, await upload.read(),
                                           settings.max_track_seconds, None, stem(name))
            records.append(record)
            items.append(schemas.BatchItem(filename=name, status=201, track=track_answer(record)))
        except AudioError as err:
            items.append(schemas.BatchItem(filename=name, status=audio_status(err), error=str(err)))
        except Overloaded as err:  # this file only: the ones already embedded are still stored
            items.append(schemas.BatchItem(filename=name, status=503, error=str(err)))
    if records:  # one store write for the batch: acknowledged only once all of it is durable
        await run_in_threadpool(catalog.ingest_many, records)
    update_gauges(catalog)
    count_ingested(records)
    ok = sum(item.status == 201 for item in items)
    return schemas.BatchResult(catalogued=ok, failed=len(items) - ok, items=items)


@router.get("/catalog", response_model=schemas.TrackPage, responses=schemas.errors(413, 422, 503))
def list_tracks(
    catalog: CatalogDep,
    offset: Annotated[int, Query(ge=0, le=MAX_PAGE_END - PAGE_MAX_LIMIT)] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX_LIMIT)] = 100,
) -> schemas.TrackPage:
    records, total = catalog.page(offset, limit)
    return schemas.TrackPage(total=total, offset=offset, limit=limit, items=[track_answer(r) for r in records])


@router.get("/catalog/{track_id}", response_model=schemas.Track, responses=schemas.errors(404, 413, 503))
def get_track(track_id: str, catalog: CatalogDep) -> schemas.Track:
    record = catalog.get(track_id)
    if record is None:
        raise HTTPException(404, f"no track {track_id!r} in the catalogue")
    return track_answer(record)


@router.delete("/catalog/{track_id}", status_code=204, dependencies=[Depends(require_key)],
               responses=schemas.errors(401, 404, 413, 503))
def delete_track(track_id: str, catalog: CatalogDep) -> Response:
    if not catalog.delete(track_id):
        raise HTTPException(404, f"no track {track_id!r} in the catalogue")
    update_gauges(catalog)
    return Response(status_code=204)
