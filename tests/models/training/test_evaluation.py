import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from index.maxmean import maxmean, pad_sequences
from models.config import ExtractorConfig
from models.training.evaluation import (
    LENGTH_KEYS,
    QUERY_SECONDS,
    Recording,
    average_precision,
    build_queries,
    evaluate,
    rank_of_first_relevant,
    scores_for,
    skipped_clips,
    write_report,
)

FRAME_SECONDS = ExtractorConfig().frame_seconds
WINDOW = 431  # frames of one local embedding (10 s) in the toy embeds below


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- a stand-in with LocalIndex's API, so these tests do not need hnswlib ------------


@dataclass
class FakeMatch:
    track_id: str
    score: float
    query_start_s: float = 0.0  # stage 3 moves these when an alignment places the clip
    reference_start_s: float = 0.0


class FakeIndex:
    """Exact two-stage search: stage one keeps the tracks holding one of the k nearest chunks of any query chunk."""

    def __init__(self, dim: int, k_neighbours: int = 50):
        self.k_neighbours = k_neighbours
        self.ids: list[str] = []
        self.vectors: list[torch.Tensor] = []

    def add(self, track_id, vectors, starts_s=None):
        self.ids.append(track_id)
        self.vectors.append(torch.from_numpy(vectors))

    def _rank(self, query, ids):
        seqs = [self.vectors[self.ids.index(i)] for i in ids]
        padded, mask = pad_sequences(seqs)
        scores = maxmean(torch.from_numpy(query), padded, candidate_mask=mask)
        return sorted((FakeMatch(i, float(s)) for i, s in zip(ids, scores)), key=lambda m: -m.score)

    def search(self, query, top_k, k_neighbours=None):
        k = k_neighbours or self.k_neighbours
        owners = [i for i, v in zip(self.ids, self.vectors) for _ in range(v.shape[0])]
        chunks = torch.nn.functional.normalize(torch.cat(self.vectors), dim=1)
        sims = torch.nn.functional.normalize(torch.from_numpy(query), dim=1) @ chunks.T
        nearest = sims.topk(min(k, chunks.shape[0]), dim=1).indices.flatten().tolist()
        reached = sorted({owners[n] for n in nearest})
        return self._rank(query, reached)[:top_k]

    def search_exhaustive(self, query, top_k):
        return self._rank(query, self.ids)[:top_k]


class BlindIndex(FakeIndex):
    """Stage one reaches nothing: every two-stage score is the paper's 0."""

    def search(self, query, top_k, k_neighbours=None):
        return []


def fake_factory(dim, k_neighbours):
    return FakeIndex(dim, k_neighbours)


# -- toy data and embeds ---------------------------------------------------------------


def toy_recordings(works=6, per_work=2, seconds=(65.0, 45.0), shared=True, seed=0) -> list[Recording]:
    """Each work is a spectral profile; its recordings are that profile under their own envelope and noise.
    With shared=False every recording gets its own profile: same-work recordings have nothing in common."""
    g = torch.Generator().manual_seed(seed)
    recs = []
    for w in range(works):
        profile = torch.rand(84, generator=g) ** 4
        for r in range(per_work):
            if not shared:
                profile = torch.rand(84, generator=g) ** 4
            frames = int(round(seconds[r % len(seconds)] / FRAME_SECONDS))
            t = torch.arange(frames, dtype=torch.float32)
            envelope = 1.0 + 0.5 * torch.sin(t / (20.0 + 7 * r))
            spec = profile[:, None] * envelope[None] + 0.05 * torch.rand(84, frames, generator=g)
            recs.append(Recording(f"w{w}r{r}", f"w{w}", spec.half()))
    return recs


def mean_spectrum_embed(spectrogram: torch.Tensor) -> torch.Tensor:
    """One local vector per 10 s window: the window's mean spectrum. Same work -> nearly the same vectors."""
    return torch.stack([piece.float().mean(dim=1) for piece in torch.split(spectrogram, WINDOW, dim=1)])


def random_embed(spectrogram: torch.Tensor) -> torch.Tensor:
    """Deterministic noise keyed on the content: carries no information about the work."""
    key = int(spectrogram.float().sum().item() * 1000) % (2**31)
    return torch.randn(1, 84, generator=torch.Generator().manual_seed(key))


# -- metrics ---------------------------------------------------------------------------


def test_ap_and_rank_of_hand_made_rankings():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert average_precision(scores, [1, 0, 1, 0, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert rank_of_first_relevant(scores, [1, 0, 1, 0, 0]) == 1
    assert average_precision(scores, [0, 1, 0, 0, 0]) == pytest.approx(0.5)
    assert rank_of_first_relevant(scores, [0, 1, 0, 0, 0]) == 2
    assert average_precision(scores, [0, 0, 0, 1, 1]) == pytest.approx((1 / 4 + 2 / 5) / 2)
    assert rank_of_first_relevant(scores, [0, 0, 0, 1, 1]) == 4
    # the order of the items does not matter, only their scores
    assert average_precision([0.7, 0.9, 0.5, 0.8, 0.6], [0, 0, 0, 1, 0]) == pytest.approx(0.5)


def test_ties_are_pessimistic_for_rank_and_block_wise_for_ap():
    scores = [0.9, 0.5, 0.5, 0.1]
    relevant = [0, 1, 0, 0]
    assert rank_of_first_relevant(scores, relevant) == 3  # the tied non-relevant item goes first
    assert average_precision(scores, relevant) == pytest.approx(1 / 3)  # precision at the end of the tie block
    # all tied (the two-stage case where nothing was reached): AP = share of relevant items
    assert average_precision([0.0] * 5, [0, 1, 0, 1, 0]) == pytest.approx(2 / 5)
    assert rank_of_first_relevant([0.0] * 5, [0, 1, 0, 1, 0]) == 4


def test_ap_matches_the_textbook_definition_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.permutation(30).astype(float)
        relevant = rng.random(30) < 0.2
        relevant[rng.integers(30)] = True
        order = np.argsort(-scores)
        hits = np.cumsum(relevant[order])
        precision_at_hits = hits[relevant[order]] / (np.flatnonzero(relevant[order]) + 1)
        assert average_precision(scores, relevant) == pytest.approx(precision_at_hits.mean())
        assert average_precision(scores, relevant) == pytest.approx(average_precision_score(relevant, scores))


def test_metrics_refuse_rankings_without_relevant_items_or_mismatched_lengths():
    with pytest.raises(ValueError, match="no relevant"):
        average_precision([0.3, 0.2], [0, 0])
    with pytest.raises(ValueError, match="no relevant"):
        rank_of_first_relevant([0.3, 0.2], [False, False])
    with pytest.raises(ValueError, match="same length"):
        average_precision([0.3, 0.2, 0.1], [1, 0])


def test_unreached_tracks_score_zero():
    matches = [FakeMatch("a", 0.8), FakeMatch("c", -0.2)]
    assert scores_for(matches, {"a": 0, "b": 1, "c": 2}).tolist() == [0.8, 0.0, -0.2]


# -- queries ---------------------------------------------------------------------------


def test_queries_are_seeded_cut_on_the_frame_grid_and_skip_long_clips():
    recs = toy_recordings(works=2)
    queries = build_queries(recs, seed=3)
    again = build_queries(recs, seed=3)
    assert [(q.recording_id, q.length, q.start_frame) for q in queries] == [
        (q.recording_id, q.length, q.start_frame) for q in again
    ]
    other = build_queries(recs, seed=4)
    assert [q.start_frame for q in queries] != [q.start_frame for q in other]

    by_rec = {}
    for q in queries:
        by_rec.setdefault(q.recording_id, []).append(q)
    for rec in recs:
        qs = by_rec[rec.recording_id]
        assert qs[0].length == "full" and qs[0].spectrogram.shape == rec.spectrogram.shape
        total = rec.spectrogram.shape[1]
        expected = [str(s) for s in QUERY_SECONDS if round(s / FRAME_SECONDS) <= total]
        assert [q.length for q in qs[1:]] == expected
        for q in qs[1:]:
            n = round(int(q.length) / FRAME_SECONDS)
            assert q.spectrogram.shape == (84, n)
            assert 0 <= q.start_frame <= total - n
            assert torch.equal(q.spectrogram, rec.spectrogram[:, q.start_frame : q.start_frame + n])
    # the 45 s recordings cannot give 50 s and 60 s clips; the 65 s ones give all nine
    assert skipped_clips(recs) == {**{str(s): 0 for s in QUERY_SECONDS}, "50": 2, "60": 2}
    assert len(queries) == 2 * 10 + 2 * 8


def test_clip_positions_do_not_depend_on_the_other_recordings():
    recs = toy_recordings(works=3)
    starts_all = {(q.recording_id, q.length): q.start_frame for q in build_queries(recs, seed=1)}
    starts_one = {(q.recording_id, q.length): q.start_frame for q in build_queries(recs[3:4], seed=1)}
    assert all(starts_all[key] == start for key, start in starts_one.items())


def test_extra_clips_per_length_keep_the_first_draw_and_add_others():
    recs = toy_recordings(works=3)
    one = build_queries(recs, seed=1, lengths=(6, 10))
    three = build_queries(recs, seed=1, lengths=(6, 10), clips_per_length=3)
    assert sum(q.length == "6" for q in three) == 3 * sum(q.length == "6" for q in one)
    assert sum(q.length == "full" for q in three) == len(recs)  # the full track is one query whatever the draws
    first = {(q.recording_id, q.length): q.start_frame for q in one}
    drawn: dict = {}
    for q in three:
        drawn.setdefault((q.recording_id, q.length), []).append(q.start_frame)
    assert all(drawn[key][0] == start for key, start in first.items())
    assert any(len(set(starts)) > 1 for key, starts in drawn.items() if key[1] != "full")
    with pytest.raises(ValueError, match="at least 1"):
        build_queries(recs, seed=1, clips_per_length=0)


# -- evaluate ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recordings():
    return toy_recordings()


@pytest.fixture(scope="module")
def good_results(recordings):
    return evaluate(mean_spectrum_embed, recordings, seed=0, index_factory=fake_factory)


@pytest.fixture(scope="module")
def random_results(recordings):
    return evaluate(random_embed, recordings, seed=0, index_factory=fake_factory, exhaustive=False)


def test_a_good_embed_finds_the_covers(good_results):
    results = good_results
    assert set(results) == {"two_stage", "exhaustive", "protocol"}
    for method in ("two_stage", "exhaustive"):
        assert list(results[method]) == list(LENGTH_KEYS)
        for key, row in results[method].items():
            assert row["queries"] == (6 if key in ("50", "60") else 12)
            assert row["mAP"] > 0.95 and row["MR1"] < 1.1, (method, key, row)
    assert results["protocol"]["skipped_clips"]["60"] == 6
    assert results["protocol"]["without_relevant"] == 0


def test_a_random_embed_is_at_chance(random_results):
    # one relevant item among 11 candidates: E[AP] = H(11)/11 = 0.27, E[rank] = 6
    rows = random_results["two_stage"].values()
    assert 0.1 < np.mean([row["mAP"] for row in rows]) < 0.5
    assert np.mean([row["MR1"] for row in rows]) > 3.0


def test_the_source_recording_is_left_out_of_its_ranking():
    """Same-work recordings share nothing here, so only the source itself could match a query well.
    Were it in the ranking (it is the same work, so relevant), every full-track query would have MR1 = 1."""
    recs = toy_recordings(shared=False, seed=5)
    results = evaluate(mean_spectrum_embed, recs, seed=0, index_factory=fake_factory)
    for method in ("two_stage", "exhaustive"):
        assert results[method]["full"]["MR1"] > 2.0
        assert results[method]["full"]["mAP"] < 0.6


def test_tracks_stage_one_does_not_reach_score_zero(recordings):
    results = evaluate(mean_spectrum_embed, recordings, seed=0, index_factory=lambda d, k: BlindIndex(d, k))
    for row in results["two_stage"].values():
        # all 11 candidates tie at 0: AP = 1/11, and the pessimistic rank puts the cover last
        assert row["mAP"] == pytest.approx(1 / 11)
        assert row["MR1"] == pytest.approx(11)
    assert results["exhaustive"]["full"]["mAP"] > 0.95


def test_works_with_a_single_recording_are_left_out_and_counted(recordings):
    lonely = Recording("solo", "solo-work", recordings[0].spectrogram[:, :300])  # 7 s
    results = evaluate(mean_spectrum_embed, [*recordings, lonely], seed=0, index_factory=fake_factory, exhaustive=False)
    assert set(results) == {"two_stage", "protocol"}
    assert results["protocol"]["without_relevant"] == 2  # its full track and its 6 s clip
    assert results["two_stage"]["full"]["queries"] == 12


def test_evaluate_refuses_duplicate_ids(recordings):
    with pytest.raises(ValueError, match="unique"):
        evaluate(mean_spectrum_embed, [recordings[0], recordings[0]], seed=0, index_factory=fake_factory)


def test_with_the_real_local_index(recordings):
    local_index = pytest.importorskip("index.local_index")
    results = evaluate(mean_spectrum_embed, recordings, seed=0, index_factory=lambda d, k: local_index.LocalIndex(d, k))
    assert all(row["mAP"] > 0.95 for row in results["two_stage"].values())
    assert all(row["mAP"] > 0.95 for row in results["exhaustive"].values())


def test_recall_at_10_measures_what_the_first_stage_lets_through(recordings):
    wide = evaluate(random_embed, recordings, seed=0, index_factory=fake_factory, k_neighbours=1000)
    narrow = evaluate(random_embed, recordings, seed=0, index_factory=fake_factory, k_neighbours=1)
    # with every chunk reached, two-stage is exhaustive; with one neighbour per chunk it keeps only a few tracks
    assert all(row["recall_at_10"] == 1.0 for row in wide["two_stage"].values())
    assert all(row["recall_at_10"] < 0.9 for row in narrow["two_stage"].values())
    assert "recall_at_10" not in evaluate(random_embed, recordings, seed=0, index_factory=fake_factory,
                                          exhaustive=False)["two_stage"]["full"]


# -- report ----------------------------------------------------------------------------


def test_write_report_writes_json_markdown_and_plot(tmp_path, good_results, random_results):
    good, rand = good_results, random_results
    paths = write_report({"mean-spectrum": good, "random": rand}, tmp_path / "report")

    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps({"mean-spectrum": good, "random": rand}))
    md = paths["markdown"].read_text()
    assert "| query length | queries | mean-spectrum mAP | mean-spectrum MR1 |" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "query length" not in line]
    assert [row.split(" | ")[0] for row in rows] == [f"| {s} s" for s in QUERY_SECONDS] + ["| full"]
    assert f"| {good['two_stage']['full']['mAP']:.3f} |" in rows[-1]
    assert rows[-1].endswith("| – |")  # the random model has no exhaustive run
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["plot"].stat().st_size > 5000


def test_shift_bins_transposes_without_wrapping():
    from models.frontend import shift_bins

    spec = torch.arange(12.0).reshape(6, 2)
    assert shift_bins(spec, 2).tolist() == [[0, 0], [0, 0], [0, 1], [2, 3], [4, 5], [6, 7]]
    assert shift_bins(spec, -1).tolist() == [[2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [0, 0]]
    assert torch.equal(shift_bins(spec, 0), spec)


def test_transposed_queries_cost_a_key_dependent_embedding_its_matches(recordings, good_results):
    shifted = evaluate(mean_spectrum_embed, recordings, seed=0, index_factory=fake_factory, exhaustive=False,
                       query_shift=5)
    assert shifted["protocol"]["query_shift"] == 5
    assert shifted["two_stage"]["full"]["mAP"] < good_results["two_stage"]["full"]["mAP"]
    unshifted = evaluate(mean_spectrum_embed, recordings, seed=0, index_factory=fake_factory, exhaustive=False,
                         query_shift=0)
    without_recall = {key: {k: v for k, v in row.items() if k != "recall_at_10"}
                      for key, row in good_results["two_stage"].items()}
    assert unshifted["two_stage"] == without_recall


def test_a_report_mixes_models_evaluated_on_different_lengths(recordings, good_results, tmp_path):
    few = evaluate(mean_spectrum_embed, recordings, seed=0, index_factory=fake_factory, exhaustive=False,
                   lengths=(10.0, 30.0))
    written = write_report({"all lengths": good_results, "two lengths": few}, tmp_path)
    rows = {line.split(" | ")[0]: line for line in written["markdown"].read_text().splitlines() if line.startswith("| ")}
    cells = {key: row.strip("| ").split(" | ") for key, row in rows.items()}  # length, queries, 4 per model
    assert cells["| 6 s"][6] == "–" and cells["| 30 s"][6] != "–"  # the second model's mAP
    assert cells["| 30 s"][5] == f"{good_results['two_stage']['30']['recall_at_10']:.3f}"  # the first model's recall
    assert written["plot"].stat().st_size > 0


# -- stage 3 and the match decision ---------------------------------------------------------


def toy_sequence(spectrogram: torch.Tensor) -> torch.Tensor:
    """(84, frames) -> (12, frames // 9) uint8 pitch classes: the octaves folded, 9 frames pooled, scaled to 255."""
    spec = spectrogram.float()
    frames = spec.shape[1] // 9 * 9
    classes = spec[:, :frames].reshape(7, 12, frames // 9, 9).sum(dim=(0, 3))
    return (255 * classes / classes.amax(dim=0, keepdim=True).clamp_min(1e-8)).round().to(torch.uint8)


def flat_calibration(mu: float):
    """A decision with the same law at every length, its bests near mu: is_match from about mu + 0.05 at 1 %."""
    from index.calibration import Calibration, fit_length

    return Calibration("toy", {}, 11, (fit_length(10.0, np.random.default_rng(0).gumbel(mu, 0.01, 100)),))


def test_stage3_reports_the_decision_it_would_make_as_false_matches_and_recall(recordings):
    from index.fusion import FusionSettings
    from models.training.evaluation import Stage3

    measured = {}
    for name, mu in (("never", 5.0), ("always", -5.0)):
        stage3 = Stage3(toy_sequence, FusionSettings(top_n=5), calibration=flat_calibration(mu))
        measured[name] = evaluate(mean_spectrum_embed, recordings, seed=0, index_factory=fake_factory,
                                  exhaustive=False, lengths=(10, 30), stage3=stage3)
    for key in ("full", "10", "30"):
        never, always = measured["never"]["three_stage"][key], measured["always"]["three_stage"][key]
        assert never["false_match_rate"] == 0.0 and never["recall_at_threshold"] == 0.0
        # every query's best other-work candidate passes a threshold under every score, and so does its cover,
        # which the good embed puts in the aligned top 5
        assert always["false_match_rate"] == 1.0 and always["recall_at_threshold"] == 1.0
        assert never["mAP"] == always["mAP"] > 0.9  # the decision does not change the ranking
    assert measured["never"]["protocol"]["false_match_rate"] == 0.01


def test_a_decision_on_a_hand_made_ranking():
    from index.fusion import FusionSettings
    from models.training.evaluation import Stage3, _match_decisions

    stage3 = Stage3(toy_sequence, FusionSettings(top_n=3), calibration=flat_calibration(0.3))
    threshold = flat_calibration(0.3).threshold(20.0, 10, 0.01)  # 10 tracks left once the one cover is removed
    ids = ["a", "cover", "b", "c"]
    for other, cover, expected in ((threshold + 0.01, 0.2, (True, False)), (threshold - 0.01, 0.9, (False, True))):
        scores = np.array([other, cover, 0.1, 0.95]) + np.array([3, 3, 3, 0])  # the 4th was not aligned
        assert _match_decisions(ids, scores, {"cover"}, 20.0, 11, stage3) == expected
    # only aligned candidates count: a cover beyond the top N never passes, whatever its stage-2 score
    assert _match_decisions(["a", "b", "c", "cover"], np.array([3.1, 3.1, 3.1, 0.99]), {"cover"}, 20.0, 11,
                            stage3) == (False, False)
