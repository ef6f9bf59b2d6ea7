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

from dataclasses import dataclass, fields

import numpy as np
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


def kth_largest(values: Tensor, k: Tensor, overwrite: bool = False) -> Tensor:
    """(..., L) and k (1-based, broadcast against values[..., :1]) -> (..., 1) the k-th largest along the last axis.
    With `overwrite` the values may be reordered in place (a copy of a large plot saved).

    On the CPU numpy's introselect (np.partition) is several times faster than torch.topk for the plots stage 3
    sees (2.8 against 16 ms for 50 x 68 x 500); on an accelerator the values stay there and topk runs there.
    """
    index = k.expand(*values.shape[:-1], 1)
    if values.device.type == "cpu":
        return kth_largest_by_partition(values, index, overwrite)
    return kth_largest_by_topk(values, index)


def kth_largest_by_partition(values: Tensor, index: Tensor, overwrite: bool = False) -> Tensor:
    at = (values.shape[-1] - index).numpy()  # the k-th largest sits at position L - k once partitioned
    array = values.detach().numpy()
    if overwrite and array.flags.c_contiguous:
        array.partition(np.unique(at), axis=-1)
    else:
        array = np.partition(array, np.unique(at), axis=-1)
    return torch.from_numpy(np.take_along_axis(array, at, axis=-1))


def kth_largest_by_topk(values: Tensor, index: Tensor) -> Tensor:
    return values.topk(int(index.max()), dim=-1, sorted=True).values.gather(-1, index - 1)


def cross_recurrence(query: Tensor, candidates: Tensor, lengths: Tensor, settings: AlignmentSettings) -> Tensor:
    """(12, n), (B, 12, m) padded and (B,) true lengths -> (B, n', m') bool cross-recurrence plots of the stacked frames."""
    q = stack_frames(query, settings.embed_frames)  # (n', d)
    r = stack_frames(candidates, settings.embed_frames)  # (B, m', d)
    stacked_lengths = (lengths - settings.embed_frames + 1).clamp_min(1)
    valid = torch.arange(r.shape[1], device=r.device)[None, :] < stacked_lengths[:, None]  # (B, m')
    # cosine similarity in both layouts, so that each nearest-neighbour search runs along a contiguous last axis
    by_candidate = torch.matmul(r, q.T).masked_fill_(~valid[:, :, None], float("-inf"))  # (B, m', n')
    by_query = by_candidate.transpose(1, 2).contiguous()  # (B, n', m')
    # kappa nearest neighbours of each query frame among the candidate's frames, and of each candidate frame
    k_row = (settings.kappa * stacked_lengths.float()).round().long().clamp_min(1)  # (B,)
    row_threshold = kth_largest(by_query, k_row[:, None, None])  # (B, n', 1)
    k_col = torch.tensor(max(1, int(round(settings.kappa * q.shape[0]))), device=q.device)
    col_threshold = kth_largest(by_candidate, k_col.view(1, 1, 1), overwrite=True).transpose(1, 2)  # (B, 1, m')
    return (by_query >= row_threshold) & (by_query >= col_threshold) & valid[:, None, :]


def qmax(recurrence: Tensor, gap_onset: float, gap_extension: float) -> tuple[Tensor, Tensor, Tensor]:
    """(B, n, m) bool -> best Qmax path length (B,), and the (row, column) where it ends, batched over rows."""
    batch, rows, cols = recurrence.shape
    # Rows i - 1 and i - 2 of Q, and the penalty of leaving each of their cells (gap_onset where it was a
    # recurrence, gap_extension where not), live in rings of three rows with two zero columns in front, so the
    # predecessors (i-1, j-1), (i-2, j-1) and (i-1, j-2) are plain views. Small buffers written in place: a
    # whole-plot buffer cost more in page faults than the recursion itself.
    q = recurrence.new_zeros(3, batch, cols + 2, dtype=torch.float32)
    penalty = torch.zeros_like(q)
    grown, kept, step, hit = (q.new_empty(batch, cols) for _ in range(4))
    row_best = q.new_empty(rows, batch)
    row_col = torch.empty(rows, batch, dtype=torch.long, device=q.device)
    for i in range(rows):
        now, last, before = i % 3, (i - 1) % 3, (i - 2) % 3
        diagonal, slow, fast = q[last, :, 1:-1], q[before, :, 1:-1], q[last, :, :-2]
        torch.maximum(diagonal, slow, out=grown)
        torch.maximum(grown, fast, out=grown)
        torch.sub(diagonal, penalty[last, :, 1:-1], out=kept)
        torch.sub(slow, penalty[before, :, 1:-1], out=step)
        torch.maximum(kept, step, out=kept)
        torch.sub(fast, penalty[last, :, :-2], out=step)
        torch.maximum(kept, step, out=kept)
        kept.clamp_min_(0.0)
        # a recurrence grows the best path into it, any other cell keeps what survives the penalty; written
        # with 0/1 weights, not torch.where, which costs about 20x more per row on the CPU
        hit.copy_(recurrence[:, i])
        grown.add_(1.0).sub_(kept).mul_(hit).add_(kept)
        q[now, :, 2:] = grown
        torch.mul(hit, gap_onset - gap_extension, out=penalty[now, :, 2:]).add_(gap_extension)
        torch.max(grown, dim=1, out=(row_best[i], row_col[i]))
    best, best_row = row_best.max(dim=0)  # the first row holding the best, as the first column within it
    return best, best_row, row_col.gather(0, best_row[None])[0]


CPU_BLOCK = 50  # candidates aligned at once on the CPU (see align)


def align(query: Tensor, candidates: list[Tensor], settings: AlignmentSettings = AlignmentSettings()) -> Alignment:
    """Align the (12, n) query with every (12, m_b) candidate; sequences of any numeric dtype (uint8 as stored)."""
    if not candidates:
        empty = torch.zeros(0)
        return Alignment(empty, empty.long(), empty.long(), empty.long())
    # on the CPU, blocks of candidates whose plots stay in cache: 200 at once cost 1.4x four blocks of 50
    block = len(candidates) if query.device.type != "cpu" else CPU_BLOCK
    parts = [align_block(query, candidates[start : start + block], settings) for start in range(0, len(candidates), block)]
    if len(parts) == 1:
        return parts[0]
    return Alignment(*(torch.cat([getattr(part, field.name) for part in parts]) for field in fields(Alignment)))



def align_block(query: Tensor, candidates: list[Tensor], settings: AlignmentSettings) -> Alignment:
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
