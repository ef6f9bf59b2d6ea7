import pytest
import torch
import torch.nn.functional as F

from index.maxmean import maxmean, maxmean_best_pair, pad_sequences


def reference_maxmean(x: torch.Tensor, y: torch.Tensor) -> float:
    """Eq. 1 written as the paper states it, with plain loops."""
    if x.shape[0] > y.shape[0]:
        x, y = y, x
    total = 0.0
    for i in range(x.shape[0]):
        total += max(float(F.cosine_similarity(x[i], y[j], dim=0)) for j in range(y.shape[0]))
    return total / x.shape[0]


def random_sequences(lengths, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) for n in lengths]


@pytest.mark.parametrize("query_len", [1, 3, 5, 9])
def test_matches_the_double_loop_with_masks(query_len):
    candidates = random_sequences([1, 2, 3, 5, 9, 12], seed=query_len)
    query = random_sequences([query_len], seed=100 + query_len)[0]
    padded, mask = pad_sequences(candidates)
    scores = maxmean(query, padded, candidate_mask=mask)
    expected = torch.tensor([reference_maxmean(query, c) for c in candidates])
    assert scores.shape == (len(candidates),)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_batched_queries_with_their_own_masks():
    queries = random_sequences([1, 4, 7], seed=1)
    candidates = random_sequences([2, 6, 1, 4], seed=2)
    q, q_mask = pad_sequences(queries)
    c, c_mask = pad_sequences(candidates)
    scores = maxmean(q, c, q_mask, c_mask)
    expected = torch.tensor([[reference_maxmean(a, b) for b in candidates] for a in queries])
    assert scores.shape == (3, 4)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_the_shorter_sequence_goes_first():
    # a long candidate containing the query's features scores 1 either way round
    query = random_sequences([2], seed=3)[0]
    candidate = torch.cat([query, random_sequences([6], seed=4)[0]])
    assert float(maxmean(query, candidate[None])[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(maxmean(candidate, query[None])[0]) == pytest.approx(1.0, abs=1e-6)


def test_padding_values_never_leak_into_the_score():
    query, candidate = random_sequences([3, 4], seed=5)
    padded = torch.cat([candidate, 1000 * query[:1]])[None]  # padding equal to a query feature
    mask = torch.tensor([[True] * 4 + [False]])
    assert torch.allclose(maxmean(query, padded, candidate_mask=mask), maxmean(query, candidate[None]), atol=1e-6)


def test_empty_sequences_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        maxmean(torch.randn(2, 8), torch.randn(1, 3, 8), candidate_mask=torch.zeros(1, 3, dtype=torch.bool))


def test_gradients_flow_for_the_loss():
    query = torch.randn(2, 3, 8, requires_grad=True)
    proxies = torch.randn(5, 4, 8, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    maxmean(query, proxies, query_mask=mask).sum().backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(proxies.grad).all()
    assert float(query.grad[0, 2].abs().sum()) == 0.0  # a padded feature gets no gradient


def reference_best_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    table = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    best = int(table.argmax())
    return best // y.shape[0], best % y.shape[0]


def test_best_pair_gives_the_maxmean_score_and_the_highest_cosine_pair():
    candidates = random_sequences([1, 3, 7, 12], seed=6)
    query = random_sequences([4], seed=7)[0]
    padded, mask = pad_sequences(candidates)
    scores, query_index, candidate_index = maxmean_best_pair(query, padded, candidate_mask=mask)
    assert torch.allclose(scores, maxmean(query, padded, candidate_mask=mask), atol=1e-6)
    for d, candidate in enumerate(candidates):
        assert (int(query_index[d]), int(candidate_index[d])) == reference_best_pair(query, candidate)


def test_unit_skips_normalising_and_gives_the_same_result_for_unit_rows():
    candidates = [F.normalize(c, dim=-1) for c in random_sequences([2, 5, 9], seed=11)]
    query = F.normalize(random_sequences([3], seed=12)[0], dim=-1)
    padded, mask = pad_sequences(candidates)
    normalised = maxmean_best_pair(query, padded, candidate_mask=mask)
    trusted = maxmean_best_pair(query, padded, candidate_mask=mask, unit=True)
    assert torch.allclose(trusted[0], normalised[0], atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(trusted[1:], normalised[1:]))
    # rows that are not unit are not fixed up when the caller vouches for them: the flag is a promise
    assert torch.allclose(maxmean_best_pair(2 * query, padded, candidate_mask=mask, unit=True)[0], 2 * normalised[0])


def test_best_pair_never_points_into_padding():
    # padding equal to a query feature would be the best pair if it were not masked
    query, candidate = random_sequences([3, 2], seed=8)
    padded = torch.cat([candidate, query])[None]
    mask = torch.tensor([[True, True, False, False, False]])
    _, query_index, candidate_index = maxmean_best_pair(query, padded, candidate_mask=mask)
    assert int(candidate_index[0]) < 2
    assert (int(query_index[0]), int(candidate_index[0])) == reference_best_pair(query, candidate)


def test_best_pair_batched_with_query_masks():
    queries = random_sequences([2, 5], seed=9)
    candidates = random_sequences([4, 1, 6], seed=10)
    q, q_mask = pad_sequences(queries)
    c, c_mask = pad_sequences(candidates)
    scores, query_index, candidate_index = maxmean_best_pair(q, c, q_mask, c_mask)
    assert scores.shape == query_index.shape == candidate_index.shape == (2, 3)
    assert torch.allclose(scores, maxmean(q, c, q_mask, c_mask), atol=1e-6)
    for b, query in enumerate(queries):
        for d, candidate in enumerate(candidates):
            assert (int(query_index[b, d]), int(candidate_index[b, d])) == reference_best_pair(query, candidate)
