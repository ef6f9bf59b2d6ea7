"""Local 2D Fourier-magnitude embeddings of pitch classes: an embedding head invariant by construction.

The head reads each 20 s chunk of note salience the front end cuts (88 notes, pooled to a few
frames per second) and returns one vector per chunk, so retrieval keeps ByteCover3's shape
(local embeddings, HNSW, MaxMean). Per chunk:

1. fold the 88 notes into 12 pitch classes (row 0 is C);
2. scale every frame to max 1 and raise it to `power` (sharpens the dominant pitch classes;
   a silent frame becomes flat, so silence still gives a non-zero vector);
3. cut patches of `patch_frames` frames at every frame (a chunk shorter than one patch is
   zero-padded to one) and take each patch's 2D FFT magnitude: a transposition is a circular
   shift along the pitch classes and a time offset a shift along time, and the magnitude of
   the transform ignores both;
4. the median over patches, unit-normalised, then a linear projection (PCA, optionally
   whitened, fitted without labels on real recordings: models/training/fit_fourier.py) and unit norm.

Only half of the time frequencies are kept (`rfft`): the magnitude of a real signal's 2D FFT
is symmetric, so the other half repeats it. Bertin-Mahieux & Ellis (ISMIR 2012) use the same
transform on one 75-beat patch per track; here it is local, as ByteCover3's embeddings are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.basic_pitch import fold_to_pitch_class

PITCH_CLASSES = 12


def fourier_dim(patch_frames: int) -> int:
    """Length of the raw (unprojected) vector: 12 pitch-class frequencies x patch_frames // 2 + 1 time frequencies."""
    return PITCH_CLASSES * (patch_frames // 2 + 1)


def scaled_frames(classes: Tensor, power: float, silence: float = 1e-8) -> Tensor:
    """(..., 12, T) pitch classes, every frame scaled to max 1 and raised to `power`; a frame whose loudest pitch
    class is at or below `silence` says nothing about pitch and becomes flat (never zero, so even an all-silent
    clip gets a vector the index accepts)."""
    peak = classes.amax(dim=-2, keepdim=True)
    flat = torch.ones_like(classes)
    return torch.where(peak <= silence, flat, classes / peak.clamp_min(silence)).pow(power)


def pitch_class_frames(notes: Tensor, power: float) -> Tensor:
    """(N, 88, T) note salience -> (N, 12, T) pitch classes, scaled frame by frame (`scaled_frames`)."""
    return scaled_frames(fold_to_pitch_class(notes.transpose(1, 2)).transpose(1, 2), power)


def patch_magnitudes(classes: Tensor, patch_frames: int) -> Tensor:
    """(N, 12, T) -> (N, P, 12 * (patch_frames // 2 + 1)) 2D FFT magnitudes of every patch (hop 1)."""
    if classes.shape[-1] < patch_frames:
        classes = F.pad(classes, (0, patch_frames - classes.shape[-1]))
    patches = classes.unfold(2, patch_frames, 1).permute(0, 2, 1, 3)  # (N, P, 12, patch)
    return torch.fft.rfft2(patches).abs().flatten(start_dim=2)


class Local2DFTM(nn.Module):
    """(N, 1, 88, T) pooled chunks of note salience -> (N, embedding_dim) unit vectors."""

    def __init__(self, patch_frames: int, power: float, embedding_dim: int):
        super().__init__()
        self.patch_frames = patch_frames
        self.power = power
        raw = fourier_dim(patch_frames)
        if not 1 <= embedding_dim <= raw:
            raise ValueError(f"embedding_dim={embedding_dim} must be in [1, {raw}] for patch_frames={patch_frames}")
        # the projection: identity until fitted (models/training/fit_fourier.py), stored with the artifact's weights
        self.register_buffer("mean", torch.zeros(raw))
        self.register_buffer("projection", torch.eye(raw)[:, :embedding_dim].contiguous())

    @classmethod
    def from_config(cls, config) -> "Local2DFTM":
        return cls(config.patch_frames, config.fourier_power, config.embedding_dim)

    def raw(self, chunks: Tensor) -> Tensor:
        """(N, 1, 88, T) -> (N, 12 * (patch_frames // 2 + 1)) unit vectors before the projection."""
        classes = pitch_class_frames(chunks[:, 0].float(), self.power)
        median = patch_magnitudes(classes, self.patch_frames).median(dim=1).values
        return F.normalize(median, dim=-1)

    def forward(self, chunks: Tensor) -> Tensor:
        projected = (self.raw(chunks) - self.mean) @ self.projection
        return F.normalize(projected, dim=-1)

    def set_projection(self, mean: Tensor, projection: Tensor) -> None:
        if mean.shape != self.mean.shape or projection.shape != self.projection.shape:
            raise ValueError(f"projection shapes {tuple(mean.shape)}, {tuple(projection.shape)} do not match "
                             f"{tuple(self.mean.shape)}, {tuple(self.projection.shape)}")
        self.mean.copy_(mean)
        self.projection.copy_(projection)
