"""Several works in one upload (a set list, a mix): which catalogue track each stretch of the query plays.

Every query chunk (20 s, 10 s hop) already has its similarity to the tracks stage 1 reaches: the best cosine
between the chunk and any chunk of the track. Taking each chunk's best track alone flickers where two songs
sound alike for a moment, so the labels are chosen together (Viterbi): the sum of the chosen tracks'
similarities, minus `switch_penalty` for every change of track. Runs of one label are spans; the caller then
checks each span as a query of its own (stage 3 and the match decision), and a span that fails is reported
as matching nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SWITCH_PENALTY = 0.1  # cosine units: a change of track must gain this much similarity over the chunks it spans
# a prior, not a fit: a work in a set list or a mix plays for more than 3 chunks (40 s); a shorter run of one
# track between two others is a passage that happens to resemble it
MIN_SPAN_CHUNKS = 3


@dataclass(frozen=True)
class ChunkSpan:
    first: int  # first query chunk of the span
    last: int  # last query chunk (inclusive)
    candidate: int  # column of the chunk-score matrix: which track


def label_chunks(chunk_scores: np.ndarray, switch_penalty: float = SWITCH_PENALTY) -> np.ndarray:
    """(M chunks, C candidates) similarities -> (M,) candidate per chunk maximising the total similarity minus
    `switch_penalty` per change of candidate."""
    scores = np.asarray(chunk_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"chunk_scores must be (chunks, candidates) with both at least 1, got {scores.shape}")
    if switch_penalty < 0:
        raise ValueError(f"switch_penalty={switch_penalty} must be >= 0")
    chunks = scores.shape[0]
    total = scores[0].copy()
    came_from = np.zeros(scores.shape, dtype=np.int64)
    for t in range(1, chunks):
        best = int(total.argmax())
        switch = total[best] - switch_penalty
        stay = total >= switch  # staying is at least as good as switching from the best
        came_from[t] = np.where(stay, np.arange(scores.shape[1]), best)
        total = np.where(stay, total, switch) + scores[t]
    labels = np.empty(chunks, dtype=np.int64)
    labels[-1] = int(total.argmax())
    for t in range(chunks - 1, 0, -1):
        labels[t - 1] = came_from[t, labels[t]]
    return labels


def spans_of(labels: np.ndarray) -> list[ChunkSpan]:
    """Runs of one label, in order."""
    spans: list[ChunkSpan] = []
    first = 0
    for t in range(1, len(labels) + 1):
        if t == len(labels) or labels[t] != labels[first]:
            spans.append(ChunkSpan(first, t - 1, int(labels[first])))
            first = t
    return spans


def span_seconds(spans: list[ChunkSpan], starts_s: np.ndarray, chunk_seconds: float,
                 duration_s: float) -> list[tuple[float, float]]:
    """(start, end) seconds of each span: neighbouring spans share their overlap, split at its middle, so the
    spans tile the query from 0 to its duration."""
    bounds = [0.0]
    for left, right in zip(spans, spans[1:]):
        end_of_left = min(float(starts_s[left.last]) + chunk_seconds, duration_s)
        bounds.append((float(starts_s[right.first]) + end_of_left) / 2.0)
    bounds.append(duration_s)
    return list(zip(bounds[:-1], bounds[1:]))


def absorb_short_spans(spans: list[ChunkSpan], chunk_scores: np.ndarray,
                       min_chunks: int = MIN_SPAN_CHUNKS) -> list[ChunkSpan]:
    """Spans shorter than `min_chunks` handed to a neighbour, shortest first: to the one whose track is the more
    similar over the short span's chunks. Neighbours that then share a track merge. A lone span stays."""
    spans = list(spans)
    while len(spans) > 1:
        short = [i for i, span in enumerate(spans) if span.last - span.first + 1 < min_chunks]
        if not short:
            break
        i = min(short, key=lambda j: (spans[j].last - spans[j].first, j))
        rows = slice(spans[i].first, spans[i].last + 1)
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(spans)]
        to = max(neighbours, key=lambda j: float(chunk_scores[rows, spans[j].candidate].sum()))
        spans[i] = ChunkSpan(spans[i].first, spans[i].last, spans[to].candidate)
        spans = _merge_same(spans)
    return spans


def _merge_same(spans: list[ChunkSpan]) -> list[ChunkSpan]:
    merged: list[ChunkSpan] = []
    for span in spans:
        if merged and merged[-1].candidate == span.candidate:
            merged[-1] = ChunkSpan(merged[-1].first, span.last, span.candidate)
        else:
            merged.append(span)
    return merged
