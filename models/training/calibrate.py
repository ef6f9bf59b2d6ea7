"""Fit the match decision (index/calibration.py) on recordings that cover nothing in their catalogue.

Every recording is its own work and goes into the catalogue as a full track. Clips of each length are cut from
every recording (as the evaluation cuts them) and run through all three stages as the service runs them, with
their own source left out (the folder they came from: a game's pieces share themes): what remains is a catalogue
that holds nothing of theirs, so the best score each clip gets is a non-matching best. Per length, a distribution
is fitted to those bests (index/calibration.py: the body as measured, an exponential tail above its 90th
percentile).

Fit on real recordings that are not the validation set (the game soundtracks of the Debian packages); a
catalogue holding covers of one another would raise the bests and so the thresholds (fewer matches, never more
false ones).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Optional, Sequence

import numpy as np

from index.calibration import Calibration, fit_length
from index.defaults import K_NEIGHBOURS
from models.training.evaluation import (FULL, Embed, IndexFactory, Recording, Stage3, _embed, _stage3_scores,
                                        build_queries, catalogue_of)

# up to the longest game track: a full-track query of any length then falls between two fitted lengths or past the
# last one, where the last fit holds
CALIBRATION_SECONDS = (6, 10, 15, 20, 30, 45, 60, 90, 120, 180)


def absent_work_bests(
    embed: Embed,
    recordings: Sequence[Recording],
    stage3: Stage3,
    frame_seconds: float,
    seed: int = 0,
    lengths: Sequence[float] = CALIBRATION_SECONDS,
    clips_per_length: int = 5,
    k_neighbours: int = K_NEIGHBOURS,
    index_factory: Optional[IndexFactory] = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    sources: Optional[dict[str, str]] = None,
) -> tuple[dict[float, list[float]], float]:
    """({clip seconds: the best fused score of each clip against the other recordings}, the mean number of
    recordings a clip was ranked against).

    `sources` (recording id -> its source: a game, an album) leaves a clip's whole source out of its ranking, not
    only its own recording: pieces of one source often share themes, and their bests would be matches, not chance."""
    if len(recordings) < 3:
        raise ValueError(f"need at least 3 recordings to calibrate, got {len(recordings)}")
    _, index = catalogue_of(embed, recordings, k_neighbours, index_factory)
    sequences = {rec.recording_id: stage3.sequence(rec.spectrogram).numpy() for rec in recordings}
    queries = [q for q in build_queries(recordings, seed, frame_seconds, lengths, clips_per_length) if q.length != FULL]
    source_of = sources or {rec.recording_id: rec.recording_id for rec in recordings}
    bests: dict[float, list[float]] = defaultdict(list)
    ranked_against = []
    for done, query in enumerate(queries, start=1):
        found = index.search(_embed(embed, query.spectrogram), top_k=len(recordings), k_neighbours=k_neighbours)
        found = [m for m in found if source_of[m.track_id] != source_of[query.recording_id]]
        ranked_against.append(sum(source_of[r] != source_of[query.recording_id] for r in source_of))
        seconds = query.spectrogram.shape[-1] * frame_seconds
        ids, scores = _stage3_scores(found, query.recording_id, stage3.sequence(query.spectrogram), sequences,
                                     seconds, stage3)
        if ids:  # scores[0] is the best aligned candidate's fused score + 3
            bests[float(query.length)].append(float(scores[0] - 3.0))
        progress(done, len(queries))
    return dict(bests), float(np.mean(ranked_against))


def fit_calibration(bests: dict[float, list[float]], model_id: str, stage3: Stage3, catalogue_tracks: int,
                    fitted_on: str, min_queries: int = 50) -> Calibration:
    """One fitted distribution per length with at least `min_queries` bests (fewer would leave its tail to chance)."""
    fits = [fit_length(seconds, bests[seconds]) for seconds in sorted(bests) if len(bests[seconds]) >= min_queries]
    if not fits:
        raise ValueError(f"no length has {min_queries} queries; add recordings or --clips-per-length")
    settings = {**dataclasses.asdict(stage3.fusion), **dataclasses.asdict(stage3.alignment)}
    return Calibration(model_id, settings, catalogue_tracks, tuple(fits), fitted_on)
