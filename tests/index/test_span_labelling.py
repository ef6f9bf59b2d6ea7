"""Spans of a long upload from hand-made chunk matches: chunks labelled together, runs merged, seconds tiled."""

import numpy as np
import pytest

from index.segments import ChunkSpan, absorb_short_spans, label_chunks, span_seconds, spans_of


def chunk_matrix(best: list[int], candidates: int = 3, match: float = 0.8, other: float = 0.4) -> np.ndarray:
    scores = np.full((len(best), candidates), other)
    scores[np.arange(len(best)), best] = match
    return scores


def test_runs_of_one_best_track_become_spans_in_order():
    labels = label_chunks(chunk_matrix([0, 0, 0, 2, 2, 1, 1, 1]))
    assert labels.tolist() == [0, 0, 0, 2, 2, 1, 1, 1]
    assert spans_of(labels) == [ChunkSpan(0, 2, 0), ChunkSpan(3, 4, 2), ChunkSpan(5, 7, 1)]


def test_a_one_chunk_flicker_is_absorbed_but_a_real_change_is_kept():
    scores = chunk_matrix([0, 0, 0, 0, 0, 0])
    scores[2] = [0.55, 0.6, 0.3]  # one chunk leans to track 1 by 0.05, less than a switch costs (2 x 0.1)
    assert label_chunks(scores, switch_penalty=0.1).tolist() == [0] * 6
    assert label_chunks(scores, switch_penalty=0.0).tolist() == [0, 0, 1, 0, 0, 0]  # labelled alone, it flickers
    # two chunks that clearly belong to another track pay for their two switches
    assert label_chunks(chunk_matrix([0, 0, 1, 1, 0, 0]), switch_penalty=0.1).tolist() == [0, 0, 1, 1, 0, 0]


def test_label_chunks_matches_brute_force_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(30):
        scores = rng.random((5, 3))
        penalty = 0.2

        def total(path):
            return sum(scores[t, c] for t, c in enumerate(path)) - penalty * sum(a != b for a, b in zip(path, path[1:]))

        paths = np.array(np.meshgrid(*[range(3)] * 5, indexing="ij")).reshape(5, -1).T
        best = max(total(p) for p in paths)
        assert total(label_chunks(scores, penalty)) == pytest.approx(best)


def test_span_seconds_tile_the_upload_splitting_each_overlap_in_the_middle():
    starts = np.arange(0.0, 80.0, 10.0)  # 8 chunks of 20 s every 10 s: an upload of 90 s
    spans = [ChunkSpan(0, 2, 0), ChunkSpan(3, 7, 1)]
    # chunk 2 covers 20-40 s and chunk 3 30-50 s: the overlap 30-40 s is split at 35 s
    assert span_seconds(spans, starts, 20.0, 90.0) == [(0.0, 35.0), (35.0, 90.0)]
    assert span_seconds([ChunkSpan(0, 0, 0)], starts[:1], 20.0, 12.0) == [(0.0, 12.0)]


def test_bad_matrices_are_refused():
    for bad in (np.zeros((0, 3)), np.zeros((3, 0)), np.zeros(3)):
        with pytest.raises(ValueError, match="chunks, candidates"):
            label_chunks(bad)


def test_a_run_shorter_than_three_chunks_goes_to_the_neighbour_it_resembles_more():
    scores = chunk_matrix([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    scores[4:6, 2] = 0.7  # the two chunks of track 1 resemble track 2 more than track 0
    spans = absorb_short_spans(spans_of(label_chunks(scores)), scores, min_chunks=3)
    assert spans == [ChunkSpan(0, 3, 0), ChunkSpan(4, 10, 2)]
    # long enough runs stay; a lone short span stays (the upload may be one short clip)
    long_enough = [ChunkSpan(0, 2, 0), ChunkSpan(3, 5, 1)]
    assert absorb_short_spans(long_enough, scores, 3) == long_enough
    assert absorb_short_spans([ChunkSpan(0, 1, 1)], scores, 3) == [ChunkSpan(0, 1, 1)]
