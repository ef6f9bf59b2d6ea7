"""What `POST /identify/segments` calls: the works a long upload (a set list, a mix) plays, span by span. No HTTP.

1. The upload is embedded as any query (20 s chunks, 10 s hop).
2. Stage 1 per chunk: the tracks among each chunk's SEGMENT_NEIGHBOURS nearest vectors, and each chunk's best
   cosine with each of them; the chunks are labelled together (index/segments.py) and runs of one track are spans;
   a run shorter than 3 chunks goes to a neighbour.
3. Each span is then a query of its own against its track: stage 2, stage 3 (alignment fused with MaxMean) and
   the match decision for a query of the span's length. A span that is no match reports no track, and
   neighbouring spans without a track merge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Optional

from app.catalog import Catalog
from app.pipeline import ClipDurationError, Embedder, StageClock, match_decisions
from index.fusion import rerank
from index.segments import SWITCH_PENALTY, ChunkSpan, absorb_short_spans, label_chunks, span_seconds, spans_of
from models.audio import StopCheck, never_stop

SEGMENT_NEIGHBOURS = 10  # per chunk: only its best track matters, so a few neighbours find it


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float
    track_id: Optional[str]  # None: this stretch matches nothing in the catalogue
    title: Optional[str]
    artist: Optional[str]
    score: Optional[float]
    is_match: Optional[bool]
    confidence: Optional[float]
    query_start_s: Optional[float]  # where the best-matching passage starts in the upload
    reference_start_s: Optional[float]  # and where it sits in the track


@dataclass(frozen=True)
class Segmentation:
    spans: list[Span]
    query_duration_s: float
    n_segments: int
    timings_ms: dict[str, float]


def identify_segments(embedder: Embedder, catalog: Catalog, data: bytes, min_seconds: float, max_seconds: float,
                      should_stop: StopCheck = never_stop, switch_penalty: float = SWITCH_PENALTY) -> Segmentation:
    clock = StageClock()
    started = time.perf_counter()
    embeddings = embedder.embed(data, max_seconds, clock, should_stop)
    if embeddings.duration_s < min_seconds:
        raise ClipDurationError(f"the upload lasts {embeddings.duration_s:.1f} s; send at least {min_seconds:g} s")
    vectors, starts = embeddings.vectors.numpy(), embeddings.starts_s.numpy()
    searched = time.perf_counter()
    candidates, chunk_scores = catalog.chunk_scores(vectors, SEGMENT_NEIGHBOURS)
    clock.add("search", time.perf_counter() - searched)
    if not candidates:
        spans = [_unmatched(0.0, embeddings.duration_s)]
    else:
        chunk_spans = absorb_short_spans(spans_of(label_chunks(chunk_scores, switch_penalty)), chunk_scores)
        bounds = span_seconds(chunk_spans, starts, embedder.extractor.config.chunk_seconds, embeddings.duration_s)
        checked = time.perf_counter()
        tracks = catalog.indexed_tracks()
        spans = [_checked_span(embedder, catalog, embeddings, span, candidates[span.candidate], bounds[i], tracks)
                 for i, span in enumerate(chunk_spans)]
        clock.add("align", time.perf_counter() - checked)
        spans = _with_titles(catalog, _merge_unmatched(spans))
    clock.seconds["total"] = time.perf_counter() - started
    return Segmentation(spans, round(embeddings.duration_s, 3), int(vectors.shape[0]), clock.milliseconds())


def _checked_span(embedder: Embedder, catalog: Catalog, embeddings, span: ChunkSpan, track_id: str,
                  bounds: tuple[float, float], catalogue_tracks: int) -> Span:
    """The span as a query of its own against its track; no track when the decision says it is no match."""
    rows = slice(span.first, span.last + 1)
    starts = embeddings.starts_s.numpy()
    found = catalog.score(embeddings.vectors.numpy()[rows], [track_id], starts[rows])
    if not found:  # deleted since stage 1
        return _unmatched(*bounds)
    match = found[0]
    is_match, confidence = None, None
    covered_s = min(float(starts[span.last]) + embedder.extractor.config.chunk_seconds - float(starts[span.first]),
                    embeddings.duration_s)
    stored = catalog.sequences([track_id]) if embedder.stage3 is not None and embeddings.sequence is not None else None
    if stored is not None:  # None also when the store did not answer: stage 2's score stands, undecided
        fusion, alignment = embedder.stage3
        frame_s = embedder.extractor.config.sequence_frame_seconds
        first = int(float(starts[span.first]) / frame_s)
        sequence = embeddings.sequence[:, first : first + max(1, int(covered_s / frame_s))]
        match = rerank([match], sequence, stored, covered_s, frame_s, fusion, alignment)[0]
        if match.query_start_s == 0.0:  # an alignment path placed the span: 0 is the start of its sequence
            match = replace(match, query_start_s=float(starts[span.first]))
        (is_match, confidence), = match_decisions(embedder.decision, [match.score], 1, covered_s, catalogue_tracks)
        if is_match is False:
            return _unmatched(*bounds)
    return Span(round(bounds[0], 3), round(bounds[1], 3), track_id, None, None, round(match.score, 5), is_match,
                confidence, round(float(match.query_start_s), 3), round(float(match.reference_start_s), 3))


def _unmatched(start_s: float, end_s: float) -> Span:
    return Span(round(start_s, 3), round(end_s, 3), None, None, None, None, None, None, None, None)


def _merge_unmatched(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in spans:
        if merged and span.track_id is None and merged[-1].track_id is None:
            merged[-1] = _unmatched(merged[-1].start_s, span.end_s)
        else:
            merged.append(span)
    return merged


def _with_titles(catalog: Catalog, spans: list[Span]) -> list[Span]:
    records = catalog.describe(sorted({s.track_id for s in spans if s.track_id is not None}))
    if not records:
        return spans
    out = []
    for span in spans:
        record = records.get(span.track_id) if span.track_id is not None else None
        out.append(replace(span, title=record.title, artist=record.artist) if record else span)
    return out
