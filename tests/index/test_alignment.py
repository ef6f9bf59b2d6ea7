import pytest
import torch

from index import alignment
from index.alignment import (
    AlignmentSettings,
    align,
    cross_recurrence,
    kth_largest_by_partition,
    kth_largest_by_topk,
    qmax,
    qmax_reference,
    stack_frames,
    transposition_shifts,
)
from index.fusion import FusionSettings, fuse, stage3_order


def random_plots(batch, rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, rows, cols, generator=g) < density


@pytest.mark.parametrize("gaps", [(5.0, 0.5), (0.5, 0.5), (1.0, 0.1)])
@pytest.mark.parametrize("density", [0.05, 0.2, 0.5])
def test_batched_qmax_equals_the_cell_by_cell_recursion(gaps, density):
    plots = random_plots(4, 23, 31, density, seed=int(density * 100))
    best, _, _ = qmax(plots, *gaps)
    expected = torch.tensor([qmax_reference(p.tolist(), *gaps) for p in plots])
    assert torch.allclose(best, expected, atol=1e-5)


def test_a_diagonal_run_scores_its_length_and_ends_where_it_ends():
    plot = torch.zeros(1, 12, 15, dtype=torch.bool)
    for k in range(7):
        plot[0, 2 + k, 5 + k] = True
    best, row, col = qmax(plot, 5.0, 0.5)
    assert best.item() == 7.0 and row.item() == 8 and col.item() == 11


C_MAJOR = torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1])


def chroma_tune(frames, seed):
    """A (12, frames) sequence of random chords (peaked random pitch-class profiles, held 2 to 5 frames)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(12, frames)
    t = 0
    while t < frames:
        hold = int(torch.randint(2, 6, (1,), generator=g))
        out[:, t : t + hold] = (torch.rand(12, 1, generator=g) ** 4)
        t += hold
    out += 0.3 * C_MAJOR[:, None]  # one key throughout, as a song has: what the transposition estimate reads
    return out + 0.05 * torch.rand(12, frames, generator=g)


def test_transposition_shift_undoes_a_key_change():
    tune = chroma_tune(200, seed=1)
    candidates = torch.stack([torch.roll(tune, k, dims=0) for k in range(12)])
    shifts = transposition_shifts(tune, candidates)
    assert shifts.tolist() == [(-k) % 12 for k in range(12)]


def test_a_transposed_slower_excerpt_aligns_and_unrelated_music_does_not():
    tune = chroma_tune(300, seed=2)
    query = tune[:, 100:160]
    # the same passage 3 semitones up and 25% slower, inside a longer track
    slower = torch.nn.functional.interpolate(torch.roll(tune, 3, dims=0)[None], scale_factor=1.25, mode="nearest")[0]
    others = [chroma_tune(300, seed=s) for s in range(10, 15)]
    result = align(query, [slower, *others])
    assert result.shifts[0].item() == 9
    assert result.scores[0] > 0.5
    assert result.scores[0] > 2 * result.scores[1:].max()
    # the path ends where the excerpt ends, in both recordings (within a stacked frame)
    assert abs(result.query_end[0].item() - 59) <= 9
    assert abs(result.reference_end[0].item() - 160 * 1.25) <= 12


def test_candidates_of_different_lengths_score_as_they_do_alone():
    tune = chroma_tune(240, seed=3)
    query = tune[:, 40:100]
    candidates = [tune, chroma_tune(90, seed=4), tune[:, :130], chroma_tune(400, seed=5)]
    together = align(query, candidates).scores
    alone = torch.cat([align(query, [c]).scores for c in candidates])
    assert torch.allclose(together, alone, atol=1e-6)


def test_a_query_shorter_than_one_stack_and_no_candidates():
    assert align(torch.rand(12, 3), [torch.rand(12, 50)]).scores.shape == (1,)
    assert align(torch.rand(12, 30), []).scores.shape == (0,)


def test_recurrence_keeps_only_mutual_nearest_neighbours():
    settings = AlignmentSettings(embed_frames=1, kappa=0.1)
    query, candidate = torch.rand(12, 40), torch.rand(12, 50)
    plot = cross_recurrence(query, candidate[None], torch.tensor([50]), settings)[0]
    assert plot.sum(dim=1).max() <= 5 and plot.sum(dim=0).max() <= 4


def test_fusion_weight_grows_with_length_and_order_is_stable():
    settings = FusionSettings(short_weight=0.2, long_weight=0.8, short_seconds=10, long_seconds=60)
    assert settings.alignment_weight(6) == 0.2 and settings.alignment_weight(200) == 0.8
    assert settings.alignment_weight(35) == pytest.approx(0.5)
    fused = fuse(torch.tensor([0.9, 0.5, 0.5]), torch.tensor([0.1, 0.6, 0.6]), 0.5)
    assert torch.allclose(fused, torch.tensor([0.5, 0.55, 0.55]))
    assert stage3_order(fused).tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="short_weight"):
        FusionSettings(short_weight=1.5)


def test_kth_largest_by_partition_equals_topk_with_a_k_per_candidate():
    values = torch.rand(6, 9, 40, generator=torch.Generator().manual_seed(3))
    values[2, :, 30:] = float("-inf")  # a shorter candidate's padding, as cross_recurrence masks it
    k = torch.tensor([1, 4, 7, 40, 2, 4]).view(6, 1, 1)
    index = k.expand(6, 9, 1)
    expected = torch.sort(values, dim=-1, descending=True).values.gather(-1, index - 1)
    assert torch.equal(kth_largest_by_partition(values, index), expected)
    assert torch.equal(kth_largest_by_topk(values, index), expected)


def recurrence_by_sorting(query, candidate, settings):
    """The mutual kappa-nearest-neighbour plot of one candidate, from fully sorted cosine distances."""
    q, r = stack_frames(query, settings.embed_frames), stack_frames(candidate, settings.embed_frames)
    distance = 1.0 - q @ r.T
    k_row = max(1, round(settings.kappa * r.shape[0]))
    k_col = max(1, round(settings.kappa * q.shape[0]))
    row = distance.sort(dim=1).values[:, k_row - 1 : k_row]
    col = distance.sort(dim=0).values[k_col - 1 : k_col, :]
    return (distance <= row + 1e-6) & (distance <= col + 1e-6)


def test_batched_recurrence_equals_the_sorted_definition_for_candidates_of_different_lengths():
    settings = AlignmentSettings()
    g = torch.Generator().manual_seed(5)
    query = torch.rand(12, 31, generator=g)
    candidates = [torch.rand(12, m, generator=g) for m in (60, 23, 47)]
    padded = torch.stack([torch.nn.functional.pad(c, (0, 60 - c.shape[1])) for c in candidates])
    plots = cross_recurrence(query, padded, torch.tensor([60, 23, 47]), settings)
    for plot, candidate in zip(plots, candidates):
        stacked = candidate.shape[1] - settings.embed_frames + 1
        assert torch.equal(plot[:, :stacked], recurrence_by_sorting(query, candidate, settings))
        assert not plot[:, stacked:].any()


def test_more_candidates_than_one_cpu_block_score_as_they_do_alone():
    tune = chroma_tune(200, seed=6)
    query = tune[:, 50:110]
    candidates = [chroma_tune(80 + 7 * s, seed=20 + s) for s in range(alignment.CPU_BLOCK + 3)]
    candidates[alignment.CPU_BLOCK + 1] = tune
    together = align(query, candidates)
    assert together.scores.shape == (len(candidates),)
    assert together.scores.argmax().item() == alignment.CPU_BLOCK + 1
    for b in (0, alignment.CPU_BLOCK - 1, alignment.CPU_BLOCK + 1, alignment.CPU_BLOCK + 2):
        alone = align(query, [candidates[b]])
        assert torch.allclose(together.scores[b], alone.scores[0], atol=1e-6)
        assert together.reference_end[b] == alone.reference_end[0] and together.shifts[b] == alone.shifts[0]
