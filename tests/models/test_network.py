import pytest
import torch

from models.config import ExtractorConfig
from models.network import IBN, ResNetIBN, init_reduction_from_pca


@pytest.mark.parametrize("width", [16, 64])
def test_shapes_for_narrow_and_reference_width(width):
    config = ExtractorConfig(width=width)
    torch.manual_seed(0)
    net = ResNetIBN.from_config(config).eval()
    x = torch.rand(3, 1, 84, 43)
    with torch.inference_mode():
        fmap = net.feature_map(x)
        out = net(x)
    assert net.channels == config.channels == 32 * width
    assert fmap.shape == (3, 32 * width, 6, 3)  # H = 6 for 84 bins: the last stage keeps stride 1
    assert out.shape == (3, 512)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_reference_width_has_paper_channels():
    assert ExtractorConfig(width=64).channels == 2048


def test_ibn_in_stages_one_to_three_only():
    net = ResNetIBN(width=8)
    for index, stage in enumerate(net.stages):
        has_ibn = all(isinstance(block.norm1, IBN) for block in stage)
        assert has_ibn == (index < 3)


def test_chunks_are_embedded_independently_in_eval_mode():
    torch.manual_seed(1)
    net = ResNetIBN(width=8).eval()
    x = torch.rand(4, 1, 84, 43)
    with torch.inference_mode():
        together = net(x)
        alone = torch.cat([net(x[i : i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_short_inputs_down_to_one_frame():
    net = ResNetIBN(width=8).eval()
    with torch.inference_mode():
        assert net(torch.rand(2, 1, 84, 1)).shape == (2, 512)


def test_a_training_step_reaches_every_parameter():
    torch.manual_seed(2)
    net = ResNetIBN(width=8).train()
    out = net(torch.rand(4, 1, 84, 43))
    (out @ out.T).triu(1).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_pca_initialisation_decorrelates_and_orders_by_variance():
    torch.manual_seed(3)
    mixing = torch.randn(64, 64)
    features = (torch.randn(2000, 64) * torch.linspace(5, 0.1, 64)) @ mixing
    reduction = torch.nn.Linear(64, 16)
    init_reduction_from_pca(reduction, features)
    with torch.no_grad():
        projected = reduction(features)
    assert torch.allclose(projected.mean(dim=0), torch.zeros(16), atol=1e-3)
    cov = torch.cov(projected.T)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    assert float(off_diagonal.abs().max()) < 1e-3 * float(cov.diag().max())
    assert bool((cov.diag()[:-1] >= cov.diag()[1:]).all())


def test_pca_initialisation_with_fewer_samples_than_dimensions_stays_full_rank():
    reduction = torch.nn.Linear(32, 16)
    init_reduction_from_pca(reduction, torch.randn(5, 32))
    assert torch.linalg.matrix_rank(reduction.weight.detach()) == 16


def test_pca_initialisation_rejects_wrong_feature_size():
    with pytest.raises(ValueError, match=r"\(n, 32\)"):
        init_reduction_from_pca(torch.nn.Linear(32, 16), torch.randn(10, 31))
