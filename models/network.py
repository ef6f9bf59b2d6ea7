"""ResNet50-IBN with GeM pooling and a PCA-FC reduction (ByteCover / ByteCover2 / ByteCover3).

Input (N, 1, F=84, T) pooled CQT chunks, output (N, embedding_dim) L2-normalised
local embeddings, one per chunk. Shapes for F = 84, T = 43 (20 s at pool 20):
stem (conv s2 + max-pool s2) -> (21, 11); layer1 -> (21, 11); layer2 s2 -> (11, 6);
layer3 s2 -> (6, 3); layer4 keeps stride 1 -> (6, 3) with C = 32 * width channels.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ExtractorConfig

EXPANSION = 4  # bottleneck output channels per "planes"
STAGE_BLOCKS = (3, 4, 6, 3)  # ResNet50


class IBN(nn.Module):
    """IBN-a: instance norm on the first half of the channels, batch norm on the rest."""

    def __init__(self, channels: int):
        super().__init__()
        self.half = channels // 2
        self.instance = nn.InstanceNorm2d(self.half, affine=True)
        self.batch = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: Tensor) -> Tensor:
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.instance(first.contiguous()), self.batch(second.contiguous())], dim=1)


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, planes: int, stride: int, ibn: bool):
        super().__init__()
        out_channels = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.norm1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.norm3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = F.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class GeM(nn.Module):
    """Generalised-mean pooling over frequency and time, with a learnable exponent."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C)
        return x.clamp_min(self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class ResNetIBN(nn.Module):
    def __init__(self, width: int = 64, embedding_dim: int = 512):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: List[nn.Module] = []
        in_channels = width
        # (planes, stride, IBN): IBN-a in stages 1-3; the last stage keeps stride 1 so H = 6 for 84 bins
        for index, (blocks, planes, stride, ibn) in enumerate(
            zip(STAGE_BLOCKS, (width, 2 * width, 4 * width, 8 * width), (1, 2, 2, 1), (True, True, True, False))
        ):
            layers: List[nn.Module] = []
            for block in range(blocks):
                layers.append(Bottleneck(in_channels, planes, stride if block == 0 else 1, ibn))
                in_channels = planes * EXPANSION
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.channels = in_channels
        self.pool = GeM()
        # PCA-FC (ByteCover2): a linear reduction that `init_reduction_from_pca` can start at the PCA solution,
        # then batch norm (ByteCover's BNNeck): it centres the embeddings, which otherwise start out nearly
        # parallel (cosine ~0.99 between unrelated tracks) and leave MaxMean nothing to separate
        self.reduction = nn.Linear(in_channels, embedding_dim)
        self.neck = nn.BatchNorm1d(embedding_dim)
        self._init_weights()

    @classmethod
    def from_config(cls, config: ExtractorConfig) -> "ResNetIBN":
        return cls(width=config.width, embedding_dim=config.embedding_dim)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, Bottleneck):  # residual branches start near zero: stable early training
                nn.init.constant_(module.norm3.weight, 0.1)

    def feature_map(self, x: Tensor) -> Tensor:
        """(N, 1, F, T) -> (N, C, H, W) before pooling."""
        return self.stages(self.stem(x))

    def pooled(self, x: Tensor) -> Tensor:
        """(N, 1, F, T) -> (N, C) GeM-pooled features, the input of the PCA-FC layer."""
        return self.pool(self.feature_map(x))

    def head(self, pooled: Tensor) -> Tensor:
        """(N, C) pooled features -> (N, embedding_dim): PCA-FC, BNNeck, L2 normalisation."""
        return F.normalize(self.neck(self.reduction(pooled)), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, F, T) -> (N, embedding_dim), L2-normalised."""
        return self.head(self.pooled(x))


@torch.no_grad()
def init_reduction_from_pca(reduction: nn.Linear, features: Tensor) -> None:
    """Set `reduction` to project onto the top principal components of `features` (n, C).

    With fewer samples than output dimensions the remaining rows keep their values
    but are orthogonalised against the principal ones (where C allows), so the map stays full rank.
    """
    out_dim, in_dim = reduction.weight.shape
    if features.ndim != 2 or features.shape[1] != in_dim:
        raise ValueError(f"features must be (n, {in_dim}), got {tuple(features.shape)}")
    mean = features.mean(dim=0)
    centred = (features - mean).double()
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(out_dim, vh.shape[0])
    weight = reduction.weight.double().clone()
    weight[:k] = vh[:k]
    if k < out_dim <= in_dim:
        rest, _ = torch.linalg.qr(torch.cat([vh[:k], weight[k:]]).T)
        weight[k:] = rest.T[k:]
    reduction.weight.copy_(weight.to(reduction.weight.dtype))
    reduction.bias.copy_(-(reduction.weight @ mean))
