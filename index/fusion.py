"""Stage 3's ranking: the top N of stage 2 re-scored by MaxMean and alignment together.

MaxMean of local embeddings is strong on short queries (one chunk says a lot) and alignment on
long ones (a long query has a long path to find), so the weight of the alignment score grows
with the query's length: `short_weight` up to `short_seconds`, `long_weight` from `long_seconds`,
linear between. The fused score is a convex mix of the two raw scores, so it keeps one scale
for every query (what the API returns as `score`), and a candidate outside the top N keeps its
stage-2 place below every aligned one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from index.alignment import AlignmentSettings, align
from index.local_index import Match


# an alignment path covering this share of the query places the clip; a shorter one may sit in a passage that
# only resembles it (another section with the same chords), and stage 2's best chunk pair places it instead
CONFIDENT_PATH = 0.7


@dataclass(frozen=True)
class FusionSettings:
    top_n: int = 50  # stage-2 candidates aligned per query (0: no stage 3)
    short_weight: float = 0.3
    long_weight: float = 0.5
    short_seconds: float = 10.0
    long_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.top_n < 0:
            raise ValueError(f"top_n={self.top_n} must be >= 0")
        for name in ("short_weight", "long_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if not 0 < self.short_seconds < self.long_seconds:
            raise ValueError(f"need 0 < short_seconds ({self.short_seconds}) < long_seconds ({self.long_seconds})")

    def alignment_weight(self, query_seconds: float) -> float:
        """Weight of the alignment score for a query this long (the rest goes to MaxMean)."""
        share = (query_seconds - self.short_seconds) / (self.long_seconds - self.short_seconds)
        share = min(1.0, max(0.0, share))
        return self.short_weight + share * (self.long_weight - self.short_weight)


def fuse(maxmean: Tensor, alignment: Tensor, weight: float) -> Tensor:
    """(B,) stage-2 MaxMean and (B,) alignment scores -> (B,) fused scores."""
    return (1.0 - weight) * maxmean.float() + weight * alignment.float()


def stage3_order(fused: Tensor) -> Tensor:
    """Indices of the aligned candidates, best fused score first (stable: ties keep stage 2's order)."""
    return torch.argsort(fused, descending=True, stable=True)


def rerank(
    matches: Sequence[Match],
    query_sequence: Tensor,
    sequences: Sequence[Optional[np.ndarray]],
    query_seconds: float,
    frame_seconds: float,
    fusion: FusionSettings,
    alignment: AlignmentSettings = AlignmentSettings(),
) -> list[Match]:
    """Stage 3: the first `fusion.top_n` of stage 2's matches (best first) aligned with the query and re-ordered by
    the fused score; the rest follow in stage 2's order with their MaxMean scores.

    `sequences[i]` is the (12, T) uint8 pitch-class sequence of `matches[i]` (None: a track stored without one
    scores 0 for alignment). A match whose best path covers at least CONFIDENT_PATH of the query places the clip's
    start where the path says: reference_start_s = reference end - query end of the path (the same tempo assumed
    across the path), with query_start_s 0; otherwise it keeps stage 2's best chunk pair.
    """
    top = list(matches[: fusion.top_n])
    if not top:
        return list(matches)
    present = [i for i, sequence in enumerate(sequences[: len(top)]) if sequence is not None]
    aligned = torch.zeros(len(top))
    query_end = torch.zeros(len(top), dtype=torch.long)
    reference_end = torch.zeros(len(top), dtype=torch.long)
    if present:
        result = align(query_sequence, [torch.from_numpy(sequences[i]) for i in present], alignment)
        aligned[present], query_end[present], reference_end[present] = result.scores, result.query_end, result.reference_end
    maxmean = torch.tensor([m.score for m in top], dtype=torch.float32)
    fused = fuse(maxmean, aligned, fusion.alignment_weight(query_seconds))
    rescored = []
    for i in stage3_order(fused).tolist():
        match = top[i]
        if aligned[i] >= CONFIDENT_PATH:
            offset = max(0.0, float(reference_end[i] - query_end[i]) * frame_seconds)
            match = replace(match, query_start_s=0.0, reference_start_s=round(offset, 3))
        rescored.append(replace(match, score=float(fused[i])))
    return rescored + list(matches[fusion.top_n :])
