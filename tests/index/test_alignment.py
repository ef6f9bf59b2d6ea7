import pytest
import torch

from index.alignment import AlignmentSettings, align, cross_recurrence, qmax, qmax_reference, transposition_shifts
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
