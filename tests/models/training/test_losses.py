import torch
import torch.nn.functional as F

from models.training.losses import LocalAlignmentLoss, batch_hard_triplet


def test_batch_hard_triplet_on_known_similarities():
    labels = torch.tensor([0, 0, 1, 1])
    similarity = torch.tensor([
        [1.0, 0.9, 0.2, 0.3],
        [0.9, 1.0, 0.5, 0.1],
        [0.2, 0.5, 1.0, 0.4],
        [0.3, 0.1, 0.4, 1.0],
    ])
    # anchors: 0 -> pos 0.9, neg 0.3; 1 -> 0.9, 0.5; 2 -> 0.4, 0.5; 3 -> 0.4, 0.3
    expected = torch.tensor([0.0, 0.0, 0.1 + 0.2, 0.0 + 0.1]).clamp_min(0).mean()
    margin_free = torch.tensor([0.0, 0.0, 0.1, 0.0]).mean()
    assert torch.isclose(batch_hard_triplet(similarity, labels, 0.2), torch.tensor([0.0, 0.0, 0.3, 0.1]).mean())
    assert torch.isclose(batch_hard_triplet(similarity, labels, 0.0), margin_free)
    assert expected > 0


def clustered(labels: torch.Tensor, chunks: int, dim: int, noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(int(labels.max()) + 1, dim, generator=g), dim=-1)
    return F.normalize(centres[labels][:, None, :] + noise * torch.randn(len(labels), chunks, dim, generator=g), dim=-1)


def test_lal_is_lower_when_embeddings_agree_with_labels():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mask = torch.ones(8, 3, dtype=torch.bool)
    loss = LocalAlignmentLoss(n_classes=4, dim=16, proxy_length=2)
    with torch.no_grad():  # proxies at the class centres, as after training
        loss.proxies.copy_(clustered(torch.arange(4), 2, 16, 0.0, seed=1))
    good = loss(clustered(labels, 3, 16, 0.05, seed=1), mask, labels)
    shuffled = loss(clustered(labels[torch.randperm(8)], 3, 16, 0.05, seed=1), mask, labels)
    assert good["loss"] < shuffled["loss"]
    assert good["accuracy"] == 1.0 and float(good["lat"]) == 0.0


def test_lal_gradients_reach_embeddings_proxies_and_scale_with_padding():
    labels = torch.tensor([0, 0, 1, 1])
    embeddings = torch.randn(4, 5, 16, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3, [True] * 1 + [False] * 4, [True] * 5])
    loss = LocalAlignmentLoss(n_classes=2, dim=16)
    loss(embeddings, mask, labels)["loss"].backward()
    assert torch.isfinite(embeddings.grad).all() and float(embeddings.grad[1, 2:].abs().sum()) == 0.0
    assert loss.proxies.grad is not None and loss.log_scale.grad is not None
