"""MaxMean similarity (ByteCover3 eq. 1), batched: the one implementation the loss and the reranker share.

MaxMean(X, Y) = mean over x_i in X of max over y_j in Y of cos(x_i, y_j), with
the shorter sequence as X (the measure is not symmetric; on a tie the query
goes first). Sequences of different lengths are padded and carry a mask
(True = a real feature).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_table(query: Tensor, candidates: Tensor, unit: bool = False) -> Tensor:
    """(B, M, C) x (D, N, C) -> (B, D, M, N) cosine similarities; unit=True: the rows are unit already."""
    if not unit:
        query, candidates = F.normalize(query, dim=-1), F.normalize(candidates, dim=-1)
    return torch.einsum("bmc,dnc->bdmn", query, candidates)


def maxmean(
    query: Tensor,
    candidates: Tensor,
    query_mask: Optional[Tensor] = None,
    candidate_mask: Optional[Tensor] = None,
) -> Tensor:
    """MaxMean of each query against each candidate.

    query: (M, C) or (B, M, C); candidates: (D, N, C); masks (M,)/(B, M) and (D, N), bool.
    Returns (D,) for one query, (B, D) for a batch. Every sequence needs at least one real feature.
    """
    single, query, query_mask, candidate_mask = _batched(query, candidates, query_mask, candidate_mask)
    table = _masked_table(query, candidates, query_mask, candidate_mask)
    scores = _maxmean_of_table(table, query_mask, candidate_mask)
    return scores[0] if single else scores


def maxmean_best_pair(
    query: Tensor,
    candidates: Tensor,
    query_mask: Optional[Tensor] = None,
    candidate_mask: Optional[Tensor] = None,
    unit: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """MaxMean plus, per candidate, the indices of its single highest-cosine (query, candidate) feature pair.

    Same arguments as maxmean; unit=True skips normalising rows that are unit vectors already (the
    index stores them so), which is a third of a rerank's time. Returns (scores, query_index, candidate_index), each (D,) or (B, D);
    the pair tells a caller which chunks aligned, from the same table the score comes from.
    """
    single, query, query_mask, candidate_mask = _batched(query, candidates, query_mask, candidate_mask)
    table = _masked_table(query, candidates, query_mask, candidate_mask, unit)
    scores = _maxmean_of_table(table, query_mask, candidate_mask)
    n = table.shape[3]
    best = table.flatten(2).argmax(dim=2)  # (B, D) into the masked M*N table
    query_index, candidate_index = best // n, best % n
    if single:
        return scores[0], query_index[0], candidate_index[0]
    return scores, query_index, candidate_index


def _batched(
    query: Tensor, candidates: Tensor, query_mask: Optional[Tensor], candidate_mask: Optional[Tensor]
) -> tuple[bool, Tensor, Tensor, Tensor]:
    """Give a single query a batch dimension, fill in absent masks, refuse empty sequences."""
    single = query.dim() == 2
    if single:
        query = query.unsqueeze(0)
        query_mask = None if query_mask is None else query_mask.unsqueeze(0)
    batch, m, _ = query.shape
    count, n, _ = candidates.shape
    if query_mask is None:
        query_mask = torch.ones(batch, m, dtype=torch.bool, device=query.device)
    if candidate_mask is None:
        candidate_mask = torch.ones(count, n, dtype=torch.bool, device=candidates.device)
    if bool((query_mask.sum(dim=1) == 0).any()) or bool((candidate_mask.sum(dim=1) == 0).any()):
        raise ValueError("every query and candidate needs at least one unmasked feature")
    return single, query, query_mask, candidate_mask


def _masked_table(
    query: Tensor, candidates: Tensor, query_mask: Tensor, candidate_mask: Tensor, unit: bool = False
) -> Tensor:
    """(B, D, M, N) cosines with -inf wherever either side is padding."""
    valid = query_mask[:, None, :, None] & candidate_mask[None, :, None, :]
    return cosine_table(query, candidates, unit).masked_fill(~valid, float("-inf"))


def _maxmean_of_table(table: Tensor, query_mask: Tensor, candidate_mask: Tensor) -> Tensor:
    """(B, D, M, N) masked table -> (B, D) MaxMean, the shorter sequence first."""
    query_len = query_mask.sum(dim=1)
    candidate_len = candidate_mask.sum(dim=1)
    # query first: for each query feature its best candidate feature, averaged over the query
    best_for_query = table.amax(dim=3).masked_fill(~query_mask[:, None, :], 0.0)
    query_first = best_for_query.sum(dim=2) / query_len[:, None]
    # candidate first (it is the shorter one): the same from the candidate's side
    best_for_candidate = table.amax(dim=2).masked_fill(~candidate_mask[None, :, :], 0.0)
    candidate_first = best_for_candidate.sum(dim=2) / candidate_len[None, :]
    return torch.where(query_len[:, None] <= candidate_len[None, :], query_first, candidate_first)


def pad_sequences(sequences: list[Tensor]) -> tuple[Tensor, Tensor]:
    """[(N_i, C)] -> padded (D, N_max, C) and mask (D, N_max)."""
    if not sequences:
        raise ValueError("pad_sequences needs at least one sequence")
    longest = max(s.shape[0] for s in sequences)
    padded = sequences[0].new_zeros(len(sequences), longest, sequences[0].shape[1])
    mask = torch.zeros(len(sequences), longest, dtype=torch.bool, device=sequences[0].device)
    for i, sequence in enumerate(sequences):
        padded[i, : sequence.shape[0]] = sequence
        mask[i, : sequence.shape[0]] = True
    return padded, mask
