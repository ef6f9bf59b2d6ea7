"""Response bodies of the HTTP API (they are also its OpenAPI documentation)."""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, Field


class Track(BaseModel):
    track_id: str
    title: Optional[str] = None
    artist: Optional[str] = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    duration_s: float
    n_segments: int = Field(description="20 s chunks (10 s hop) embedded for this track")
    model_id: str
    created_at: float


class TrackPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[Track]


class BatchItem(BaseModel):
    filename: str
    status: int = Field(description="201 when catalogued, else the status a single upload would get")
    track: Optional[Track] = None
    error: Optional[str] = None


class BatchResult(BaseModel):
    catalogued: int
    failed: int
    items: list[BatchItem]


class Match(BaseModel):
    track_id: str
    title: Optional[str] = None
    artist: Optional[str] = None
    score: float = Field(description="how alike the clip and the track are, higher is better: for the candidates "
                         "stage 3 aligns, MaxMean of the local embeddings fused with the alignment score (weights by "
                         "query length); for any beyond them, MaxMean alone")
    query_start_s: float = Field(description="start of the best-matching clip segment")
    reference_start_s: float = Field(description="where that segment sits in the catalogue track")
    is_match: Optional[bool] = Field(None, description="the decision a rights team can act on: true when `confidence` "
                                     "is at least 1 - COVERID_FALSE_MATCH_RATE (default 0.01), so about that share "
                                     "of clips of works absent from the catalogue get any match. Null when the "
                                     "service has no calibration for its model")
    confidence: Optional[float] = Field(None, ge=0.0, le=1.0, description="1 minus the chance that a clip of a work "
                                        "absent from the catalogue scores this high, for a query this long in a "
                                        "catalogue this large (calibrated on real recordings). Null without a "
                                        "calibration, or for a match stage 3 did not align (then is_match is false)")


class IdentifyResponse(BaseModel):
    matches: list[Match]
    query_duration_s: float
    n_segments: int
    timings_ms: dict[str, float]
    metadata_unavailable: bool = Field(False, description="true when the catalogue store did not answer: the "
                                       "matches are ranked as usual but carry no title or artist")


class Span(BaseModel):
    start_s: float = Field(description="where the span starts in the upload; spans tile the upload from 0 to its end")
    end_s: float = Field(description="where the span ends; the next span starts here")
    track_id: Optional[str] = Field(None, description="the catalogue track this stretch plays; null: it matches "
                                    "nothing in the catalogue (unrelated audio, or a work the catalogue lacks)")
    title: Optional[str] = None
    artist: Optional[str] = None
    score: Optional[float] = Field(None, description="the span as a query of its own against its track, on the "
                                   "scale of a match's score")
    is_match: Optional[bool] = Field(None, description="the match decision for a query as long as the span (see "
                                     "Match); spans it refuses are reported with no track. Null without a calibration")
    confidence: Optional[float] = Field(None, ge=0.0, le=1.0, description="as a match's confidence")
    query_start_s: Optional[float] = Field(None, description="start of the best-matching passage, in the upload")
    reference_start_s: Optional[float] = Field(None, description="where that passage sits in the catalogue track")


class SegmentsResponse(BaseModel):
    spans: list[Span] = Field(description="in order, from 0 to the end of the upload; neighbouring spans without a "
                              "track are merged")
    query_duration_s: float
    n_segments: int = Field(description="20 s chunks (10 s hop) embedded for the upload")
    timings_ms: dict[str, float]


class Error(BaseModel):
    """Every error answer. `detail` is a sentence saying what to do; request-validation errors (422 from
    FastAPI's own checks) carry its list of problems instead, each with `loc`, `msg` and `type`."""

    detail: Union[str, list[dict[str, Any]]]


def errors(*statuses: int) -> dict[int, dict]:
    """OpenAPI `responses` for these statuses, all with the Error body."""
    return {status: {"model": Error, "description": ERROR_MEANINGS[status]} for status in statuses}


ERROR_MEANINGS = {
    400: "Malformed request",
    401: "A valid API key is required (Authorization: Bearer <key>)",
    404: "No such track",
    409: "The track_id exists (send replace=true to overwrite)",
    413: "The body (or its declared Content-Length) is over COVERID_MAX_UPLOAD_BYTES, on any route",
    415: "Not a readable audio file",
    422: "Invalid parameters, metadata or audio (too short, too long, silent, corrupt)",
    503: "Overloaded, or the catalogue store is unavailable; see Retry-After",
}


class Health(BaseModel):
    status: str
    model_id: Optional[str] = None
    tracks: Optional[int] = None
    vectors: Optional[int] = None
    detail: Optional[str] = None
