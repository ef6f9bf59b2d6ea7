"""The local alignment loss (ByteCover3 eq. 3-5), built on the shared MaxMean.

L_lal = L_lac + L_lat.
- L_lac: cross-entropy over K works whose logits are MaxMean(X, W_k) against
  trainable proxies W (K, L, C), times a learnable scale (as in normalised-softmax
  losses: cosine-valued logits in [-1, 1] are too flat for softmax on their own).
- L_lat: triplet on MaxMean with batch-hard mining inside the P x K batch. The
  paper's eq. 5 has no margin; a small margin (default 0.2) keeps hard triplets
  informative after they are ordered correctly.
A global model (one chunk per track, L = 1) reduces both to the ByteCover2
losses on cosine similarity, so the baseline uses the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from index.maxmean import maxmean


class LocalAlignmentLoss(nn.Module):
    def __init__(self, n_classes: int, dim: int, proxy_length: int = 4, margin: float = 0.2, scale: float = 16.0):
        super().__init__()
        self.proxies = nn.Parameter(F.normalize(torch.randn(n_classes, proxy_length, dim), dim=-1))
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())
        self.margin = margin

    def forward(self, embeddings: Tensor, mask: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """embeddings (B, N, C) padded local embeddings with mask (B, N); labels (B,) work indices."""
        logits = maxmean(embeddings, self.proxies, query_mask=mask)  # (B, K)
        classification = F.cross_entropy(self.log_scale.exp() * logits, labels)
        similarity = maxmean(embeddings, embeddings, mask, mask)  # (B, B)
        triplet = batch_hard_triplet(similarity, labels, self.margin)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss": classification + triplet, "lac": classification, "lat": triplet, "accuracy": accuracy}


def batch_hard_triplet(similarity: Tensor, labels: Tensor, margin: float) -> Tensor:
    """mean over anchors of [s(hardest negative) - s(hardest positive) + margin]_+ ."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives = same & ~eye
    has_positive = positives.any(dim=1)
    hardest_positive = similarity.masked_fill(~positives, float("inf")).amin(dim=1)
    hardest_negative = similarity.masked_fill(same, float("-inf")).amax(dim=1)
    losses = F.relu(hardest_negative - hardest_positive + margin)
    return losses[has_positive].mean() if bool(has_positive.any()) else similarity.sum() * 0
