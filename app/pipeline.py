"""What the routes call: ingest an upload into the catalogue, identify a clip. No HTTP here.

Model calls are serialised with one lock: on a CPU torch already uses every
core for one call, and on a GPU one call at a time keeps memory bounded; the
routes run these functions in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from app.catalog import Catalog
from app.backpressure import Admission, Overloaded
from app.metrics import REJECTED, STAGE_SECONDS
from app.store import TrackRecord
from index.calibration import Calibration, CalibrationError, MatchDecision, calibration_mismatch
from index.fusion import rerank
from models.audio import StopCheck, never_stop
from models.extractor import LoadedExtractor, LocalEmbeddings



class ClipDurationError(ValueError):
    """A clip outside the configured duration range."""


@dataclass
class StageClock:
    """Seconds per named stage, also observed into the stage histogram."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        STAGE_SECONDS.labels(stage).observe(seconds)

    def milliseconds(self) -> dict[str, float]:
        return {stage: round(1000 * s, 2) for stage, s in self.seconds.items()}


@dataclass(frozen=True)
class MatchResult:
    track_id: str
    title: Optional[str]
    artist: Optional[str]
    score: float
    query_start_s: float
    reference_start_s: float
    is_match: Optional[bool] = None  # None: no calibration for this model and stage 3
    confidence: Optional[float] = None


@dataclass(frozen=True)
class Identification:
    matches: list[MatchResult]
    query_duration_s: float
    n_segments: int
    timings_ms: dict[str, float]
    metadata_unavailable: bool = False  # the store did not answer: matches carry no title or artist


class Embedder:
    """The loaded extractor behind one lock, timing decode and embed separately.

    No caller waits for the model's turn longer than `queue_wait_s`: past it, Overloaded. How many
    may wait at once is bounded before this, by `admission` (see Admission).
    """

    def __init__(self, extractor: LoadedExtractor, queue_size: int = 16, queue_wait_s: float = 2.0,
                 stage3_top_n: Optional[int] = None, upload_slots: Optional[int] = None,
                 decision: Optional[MatchDecision] = None):
        self.extractor = extractor
        stage3 = extractor.stage3
        if stage3 is not None and stage3_top_n is not None:  # the service's setting overrides the artifact's N
            stage3 = (dataclasses.replace(stage3[0], top_n=stage3_top_n), stage3[1])
        # (fusion, alignment) settings of stage 3, or None: the artifact has none, or N is 0
        self.stage3 = stage3 if stage3 is not None and stage3[0].top_n > 0 else None
        self.decision = decision if self.stage3 is not None else None  # it is fitted on stage 3's fused scores
        self.admission = Admission(queue_size, upload_slots)
        self.queue_wait_s = queue_wait_s
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.extractor.model_id

    @property
    def device(self) -> torch.device:
        return self.extractor.device

    def embed(self, data: bytes, max_seconds: float, clock: StageClock, should_stop: StopCheck = never_stop) -> LocalEmbeddings:
        started = time.perf_counter()
        waveform = self.extractor.decode(data, max_seconds=max_seconds, should_stop=should_stop)
        decoded = time.perf_counter()
        clock.add("decode", decoded - started)
        if not self._lock.acquire(timeout=self.queue_wait_s):
            REJECTED.labels("wait").inc()
            raise Overloaded(f"the model was busy for {self.queue_wait_s:g} s; retry later")
        try:
            embeddings = self.extractor.embed_waveform(waveform)
        finally:
            self._lock.release()
        clock.add("embed", time.perf_counter() - decoded)
        return embeddings


def load_decision(path: Optional[Path], false_match_rate: float, extractor: LoadedExtractor,
                  required: bool = False) -> tuple[Optional[MatchDecision], str]:
    """The match decision for this model from the calibration at `path`, and why there is none when there is not.
    `required` (the path was set explicitly): a missing or unusable file is an error, not a note."""
    why = ""
    if path is None:
        why = "no calibration set (COVERID_CALIBRATION_PATH)"
    elif extractor.stage3 is None:
        why = "the model has no stage 3, whose fused scores the calibration describes"
    elif not path.is_file():
        why = f"no calibration at {path}; fit one with `coverid calibrate`"
    else:
        calibration = Calibration.load(path)
        why = calibration_mismatch(calibration, extractor.model_id, extractor.stage3)
        if not why:
            return MatchDecision(calibration, false_match_rate), ""
    if required and path is not None:
        raise CalibrationError(f"COVERID_CALIBRATION_PATH: {why}")
    return None, why


def make_record(
    embedder: Embedder,
    data: bytes,
    max_seconds: float,
    track_id: Optional[str] = None,
    title: Optional[str] = None,
    artist: Optional[str] = None,
    metadata: Optional[dict] = None,
    should_stop: StopCheck = never_stop,
) -> TrackRecord:
    """Decode and embed an upload into a catalogue record (not stored yet)."""
    embeddings = embedder.embed(data, max_seconds, StageClock(), should_stop)
    return TrackRecord(
        track_id=track_id or uuid.uuid4().hex,
        title=title,
        artist=artist,
        metadata=metadata or {},
        duration_s=round(embeddings.duration_s, 3),
        model_id=embedder.model_id,
        created_at=time.time(),
        vectors=embeddings.vectors.numpy(),
        starts_s=embeddings.starts_s.numpy(),
        sequence=None if embeddings.sequence is None else embeddings.sequence.numpy(),
    )


def ingest(
    embedder: Embedder,
    catalog: Catalog,
    data: bytes,
    max_seconds: float,
    track_id: Optional[str] = None,
    title: Optional[str] = None,
    artist: Optional[str] = None,
    metadata: Optional[dict] = None,
    replace: bool = False,
    should_stop: StopCheck = never_stop,
) -> TrackRecord:
    record = make_record(embedder, data, max_seconds, track_id, title, artist, metadata, should_stop)
    started = time.perf_counter()
    catalog.ingest(record, replace=replace)
    STAGE_SECONDS.labels("store").observe(time.perf_counter() - started)
    return record


def identify(
    embedder: Embedder,
    catalog: Catalog,
    data: bytes,
    top_k: int,
    min_score: Optional[float],
    min_seconds: float,
    max_seconds: float,
    should_stop: StopCheck = never_stop,
) -> Identification:
    clock = StageClock()
    started = time.perf_counter()
    embeddings = embedder.embed(data, max_seconds, clock, should_stop)
    if embeddings.duration_s < min_seconds:
        raise ClipDurationError(f"the clip lasts {embeddings.duration_s:.1f} s; send at least {min_seconds:g} s")
    stages: dict[str, float] = {}
    stage3 = embedder.stage3
    wanted = max(top_k, stage3[0].top_n) if stage3 else top_k  # stage 3 re-orders the stage-2 top N
    matches = catalog.search(embeddings.vectors.numpy(), top_k=wanted, query_starts_s=embeddings.starts_s.numpy(),
                             timings=stages)
    for stage, seconds in stages.items():
        clock.add(stage, seconds)
    aligned_count = 0  # the first matches, re-scored by stage 3: the ones the decision applies to
    if stage3 and matches and embeddings.sequence is not None:
        aligned = time.perf_counter()
        fusion, alignment = stage3
        sequences = catalog.sequences([m.track_id for m in matches[: fusion.top_n]])
        if sequences is not None:  # None: the store did not answer, and stage 2's order and scores stand
            matches = rerank(matches, embeddings.sequence, sequences, embeddings.duration_s,
                             embedder.extractor.config.sequence_frame_seconds, fusion, alignment)
            aligned_count = min(fusion.top_n, len(matches))
        clock.add("align", time.perf_counter() - aligned)
    matches = matches[:top_k]
    decided = list(zip(matches, match_decisions(embedder.decision, [m.score for m in matches], aligned_count,
                                           embeddings.duration_s, catalog.indexed_tracks())))
    if min_score is not None:
        decided = [(m, d) for m, d in decided if m.score >= min_score]
    records = catalog.describe([m.track_id for m, _ in decided])
    results = []
    for match, (is_match, confidence) in decided:
        if records is not None and records[match.track_id] is None:  # deleted between the search and now
            continue
        record = records[match.track_id] if records is not None else None
        results.append(MatchResult(match.track_id, record.title if record else None, record.artist if record else None,
                                   round(match.score, 5), round(float(match.query_start_s), 3),
                                   round(float(match.reference_start_s), 3), is_match, confidence))
    clock.seconds["total"] = time.perf_counter() - started
    return Identification(results, round(embeddings.duration_s, 3), int(embeddings.vectors.shape[0]),
                          clock.milliseconds(), metadata_unavailable=records is None)


def match_decisions(decision: Optional[MatchDecision], scores: list[float], aligned_count: int, seconds: float,
               catalogue_tracks: int) -> list[tuple[Optional[bool], Optional[float]]]:
    """(is_match, confidence) per match: (None, None) without a decision; a match stage 3 did not align (beyond its
    N) is no match, with no confidence, since its score is on MaxMean's scale, not the calibrated one."""
    if decision is None:
        return [(None, None)] * len(scores)
    out: list[tuple[Optional[bool], Optional[float]]] = []
    for i, score in enumerate(scores):
        if i < aligned_count:
            is_match, confidence = decision.decide(score, seconds, catalogue_tracks)
            out.append((is_match, round(confidence, 4)))
        else:
            out.append((False, None))
    return out
