"""Stage 3's ranking: the top N of stage 2 re-scored by MaxMean and alignment together.

MaxMean of local embeddings is strong on short queries (one chunk says a lot) and alignment on
long ones (a long query has a long path to find), so the weight of the alignment score grows
with the query's length: `short_weight` up to `short_seconds`, `long_weight` from `long_seconds`,
linear between. The fused score is a convex mix of the two raw scores, so it keeps one scale
for every query (what the API returns as `score`), and a candidate outside the top N keeps its
stage-2 place below every aligned one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FusionSettings:
    top_n: int = 100  # stage-2 candidates aligned per query (0: no stage 3)
    short_weight: float = 0.5
    long_weight: float = 0.8
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
