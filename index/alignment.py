"""Stage 3: local alignment of pitch-class sequences (Serra, Serra & Andrzejak 2009, "Qmax"), batched over candidates.

A cover keeps the order of a song's harmonic and melodic events even when it changes key,
tempo and instrumentation. Given the query's pitch-class sequence and every candidate's:

1. transposition: each candidate is rolled along the pitch classes by the shift that best
   matches its global profile to the query's (the optimal transposition index, OTI);
2. a cross-recurrence plot: frames are stacked `embed_frames` at a time (a delay embedding, so
   a match is a short phrase, not one chord), unit-normalised, and two stacked frames recur
   when each is among the other's `kappa` nearest (mutual nearest neighbours by cosine distance);
3. Qmax: the longest curved path of recurrences, allowing tempo changes (steps (1, 1), (2, 1)
   and (1, 2)), with a penalty `gap_onset` to open a disruption and `gap_extension` per step of it.

The recursion of row i needs only rows i - 1 and i - 2, so each row is computed for every
column of every candidate at once: the Python loop runs over query frames only. The score is
the best path length divided by the query's stacked frames: the share of the query that aligns.
`qmax_reference` is the plain, slow definition the tests compare the batched kernel with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AlignmentSettings:
    embed_frames: int = 5  # frames stacked per recurrence (2 s at 2.4 frames/s; Serra 2009: 9 to 10 beats)
    kappa: float = 0.095  # share of nearest neighbours that recur
    gap_onset: float = 0.5  # penalty to open a disruption (Serra 2009: 5; 0.5, as Essentia, aligned real covers better here)
    gap_extension: float = 0.5  # penalty per further step of it (gamma_e)


@dataclass(frozen=True)
class Alignment:
    scores: Tensor  # (B,) best path length / query's stacked frames
    query_end: Tensor  # (B,) query frame where the best path ends (input frames, not stacked)
    reference_end: Tensor  # (B,) candidate frame where it ends
    shifts: Tensor  # (B,) transposition applied to each candidate, in semitones


def transposition_shifts(query: Tensor, candidates: Tensor) -> Tensor:
    """(12, n) and (B, 12, m) -> (B,) shift k such that the candidate rolled by k best matches the query's profile."""
    q = F.normalize(query.float().sum(dim=-1), dim=0)  # (12,)
    r = F.normalize(candidates.float().sum(dim=-1), dim=-1)  # (B, 12)
    rolled = torch.stack([torch.roll(r, k, dims=1) for k in range(12)], dim=1)  # (B, 12 shifts, 12)
    return (rolled @ q).argmax(dim=1)


def roll_pitch_classes(candidates: Tensor, shifts: Tensor) -> Tensor:
    """(B, 12, m) each rolled along the pitch classes by its shift: row p of the result is row p - shift."""
    index = (torch.arange(12, device=candidates.device)[None, :] - shifts[:, None]) % 12  # (B, 12)
    return candidates.gather(1, index[:, :, None].expand_as(candidates))


def stack_frames(sequence: Tensor, embed_frames: int) -> Tensor:
    """(..., 12, T) -> (..., T - embed_frames + 1, 12 * embed_frames) unit vectors (T shorter than one stack: one, padded)."""
    if sequence.shape[-1] < embed_frames:
        sequence = F.pad(sequence, (0, embed_frames - sequence.shape[-1]))
    stacked = sequence.unfold(-1, embed_frames, 1)  # (..., 12, T', E)
    stacked = stacked.movedim(-3, -2).flatten(start_dim=-2)  # (..., T', E * 12)
    return F.normalize(stacked.float(), dim=-1)


def cross_recurrence(query: Tensor, candidates: Tensor, lengths: Tensor, settings: AlignmentSettings) -> Tensor:
    """(12, n), (B, 12, m) padded and (B,) true lengths -> (B, n', m') bool cross-recurrence plots of the stacked frames."""
    q = stack_frames(query, settings.embed_frames)  # (n', d)
    r = stack_frames(candidates, settings.embed_frames)  # (B, m', d)
    stacked_lengths = (lengths - settings.embed_frames + 1).clamp_min(1)
    valid = torch.arange(r.shape[1], device=r.device)[None, :] < stacked_lengths[:, None]  # (B, m')
    distance = 1.0 - torch.einsum("id,bjd->bij", q, r)
    distance = distance.masked_fill(~valid[:, None, :], float("inf"))
    # kappa nearest neighbours of each query frame among the candidate's frames, and of each candidate frame
    k_row = (settings.kappa * stacked_lengths.float()).round().long().clamp_min(1)  # (B,)
    nearest = distance.topk(int(k_row.max()), dim=2, largest=False, sorted=True).values  # (B, n', k)
    row_threshold = nearest.gather(2, (k_row - 1)[:, None, None].expand(-1, q.shape[0], 1))
    k_col = max(1, int(round(settings.kappa * q.shape[0])))
    col_threshold = distance.topk(k_col, dim=1, largest=False).values[:, -1:, :]  # (B, 1, m')
    return (distance <= row_threshold) & (distance <= col_threshold) & valid[:, None, :]


def qmax(recurrence: Tensor, gap_onset: float, gap_extension: float) -> tuple[Tensor, Tensor, Tensor]:
    """(B, n, m) bool -> best Qmax path length (B,), and the (row, column) where it ends, batched over rows."""
    batch, rows, cols = recurrence.shape
    hits = recurrence.float()
    zero = hits.new_zeros(batch, cols + 2)
    q1, q2, c1, c2 = zero, zero, zero, zero  # Q and C of rows i - 1 and i - 2, two zero columns in front
    best = hits.new_zeros(batch)
    best_row = torch.zeros(batch, dtype=torch.long, device=hits.device)
    best_col = torch.zeros(batch, dtype=torch.long, device=hits.device)
    for i in range(rows):
        diagonal, slow, fast = q1[:, 1:-1], q2[:, 1:-1], q1[:, :-2]  # from (i-1, j-1), (i-2, j-1), (i-1, j-2)
        grown = torch.maximum(torch.maximum(diagonal, slow), fast) + 1.0
        # a disruption costs gap_onset where the predecessor was a recurrence, gap_extension where it was not
        penalties = [c1[:, 1:-1], c2[:, 1:-1], c1[:, :-2]]
        decayed = [q - (gap_extension + (gap_onset - gap_extension) * c) for q, c in zip((diagonal, slow, fast), penalties)]
        kept = torch.maximum(torch.maximum(decayed[0], decayed[1]), decayed[2]).clamp_min(0.0)
        row = torch.where(recurrence[:, i], grown, kept)
        row_best, row_col = row.max(dim=1)
        better = row_best > best
        best = torch.where(better, row_best, best)
        best_row = torch.where(better, torch.full_like(best_row, i), best_row)
        best_col = torch.where(better, row_col, best_col)
        q2, q1 = q1, F.pad(row, (2, 0))
        c2, c1 = c1, F.pad(hits[:, i], (2, 0))
    return best, best_row, best_col


def align(query: Tensor, candidates: list[Tensor], settings: AlignmentSettings = AlignmentSettings()) -> Alignment:
    """Align the (12, n) query with every (12, m_b) candidate; sequences of any numeric dtype (uint8 as stored)."""
    if not candidates:
        empty = torch.zeros(0)
        return Alignment(empty, empty.long(), empty.long(), empty.long())
    lengths = torch.tensor([c.shape[-1] for c in candidates], device=query.device)
    width = max(int(lengths.max()), settings.embed_frames)
    padded = torch.stack([F.pad(c.float(), (0, width - c.shape[-1])) for c in candidates])  # (B, 12, m)
    query = query.float()
    shifts = transposition_shifts(query, padded)
    recurrence = cross_recurrence(query, roll_pitch_classes(padded, shifts), lengths, settings)
    best, row, col = qmax(recurrence, settings.gap_onset, settings.gap_extension)
    # a stacked frame spans embed_frames input frames: the path ends at the last of them
    last = settings.embed_frames - 1
    return Alignment(best / recurrence.shape[1], row + last, col + last, shifts)


def qmax_reference(recurrence: list[list[bool]], gap_onset: float, gap_extension: float) -> float:
    """The Qmax recursion written out cell by cell (Serra et al. 2009, eq. 5), for the tests."""
    rows, cols = len(recurrence), len(recurrence[0])
    q = [[0.0] * cols for _ in range(rows)]

    def at(i: int, j: int) -> tuple[float, bool]:
        return (q[i][j], recurrence[i][j]) if i >= 0 and j >= 0 else (0.0, False)

    best = 0.0
    for i in range(rows):
        for j in range(cols):
            previous = [at(i - 1, j - 1), at(i - 2, j - 1), at(i - 1, j - 2)]
            if recurrence[i][j]:
                q[i][j] = max(value for value, _ in previous) + 1.0
            else:
                q[i][j] = max([0.0] + [value - (gap_onset if hit else gap_extension) for value, hit in previous])
            best = max(best, q[i][j])
    return best
