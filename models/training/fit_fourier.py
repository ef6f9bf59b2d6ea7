"""Fit the 2DFTM head's projection (models/fourier.py) without labels, on real recordings that are not covers.

The raw 2D Fourier magnitudes are long (300 numbers for 10 s patches) and dominated by a few
directions every piece of music shares (the DC term, slow changes). A PCA fitted on the local
vectors of unrelated real music (the game soundtracks of Debian's warzone2100-music,
wesnoth-1.16-music and singularity-music; never the validation covers) keeps the directions
that vary between pieces, and whitening (dividing each by its eigenvalue to the power `whiten`)
stops the largest of them from deciding every cosine.

Vectors come from what the service embeds: every 20 s chunk of each recording, and as many
clips of 6 to 20 s cut at random (a short query is one chunk of its own length, whose vector is
a median over fewer patches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from models.config import ExtractorConfig
from models.fourier import Local2DFTM
from models.frontend import FrontEnd
from models.training.distil import audio_files
from models.training.recording_list import cached_features, feature_key

CLIP_SECONDS = (6.0, 20.0)


@torch.inference_mode()
def local_vectors(frontend: FrontEnd, head: Local2DFTM, spectrograms: Sequence[Tensor], seed: int = 0) -> Tensor:
    """(V, raw dim) unprojected vectors: every chunk of every (bins, frames) spectrogram, plus one random clip per chunk."""
    rng = np.random.default_rng(seed)
    out = []
    for spectrogram in spectrograms:
        chunks, _ = frontend.chunk(spectrogram.float())
        out.append(head.raw(chunks))
        for _ in range(chunks.shape[0]):
            frames = int(rng.uniform(*CLIP_SECONDS) / frontend.frame_seconds)
            if frames >= spectrogram.shape[1]:
                continue
            start = int(rng.integers(0, spectrogram.shape[1] - frames))
            clip, _ = frontend.chunk(spectrogram[:, start : start + frames].float())
            out.append(head.raw(clip))
    return torch.cat(out)


def pca_projection(vectors: Tensor, dim: int, whiten: float) -> tuple[Tensor, Tensor]:
    """The mean (raw,) and the (raw, dim) matrix onto the top `dim` principal axes, each scaled by eigenvalue ** -whiten."""
    if vectors.shape[0] <= dim:
        raise ValueError(f"need more than {dim} vectors to fit a {dim}-d projection, got {vectors.shape[0]}")
    x = vectors.double()
    mean = x.mean(dim=0)
    covariance = (x - mean).T @ (x - mean) / (x.shape[0] - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    top = torch.argsort(eigenvalues, descending=True)[:dim]
    scale = eigenvalues[top].clamp_min(1e-12).pow(-whiten)
    return mean.float(), (eigenvectors[:, top] * scale).float()


def fit_head(frontend: FrontEnd, head: Local2DFTM, spectrograms: Sequence[Tensor], whiten: float, seed: int = 0) -> dict:
    """Fit `head`'s projection in place on the spectrograms; returns a summary for the artifact's record."""
    vectors = local_vectors(frontend, head, spectrograms, seed)
    mean, projection = pca_projection(vectors, head.projection.shape[1], whiten)
    head.set_projection(mean, projection)
    return {"vectors": int(vectors.shape[0]), "recordings": len(spectrograms), "whiten": whiten}


def fitted_2dftm(config: ExtractorConfig, fit_audio: Sequence[Path], cache: Path, whiten: float, seed: int = 0,
                 progress=None, skipped: Optional[list] = None) -> tuple[Local2DFTM, str]:
    """The 2DFTM head for `config`, its projection fitted on the audio files under `fit_audio` (their features cached
    under `cache`); and a line saying what it was fitted on for the artifact's `training_data`."""
    head = Local2DFTM.from_config(config)
    if not fit_audio:
        return head.eval(), "no projection"
    frontend = FrontEnd(config).eval()
    arrays = cached_features(audio_files(list(fit_audio)), frontend.spectrogram, config.sample_rate, cache,
                             feature_key(config), progress, skipped if skipped is not None else [])
    fitted = fit_head(frontend, head, [torch.from_numpy(a) for a in arrays], whiten, seed)
    summary = (f"PCA to {config.embedding_dim} (whiten {whiten:g}) fitted on {fitted['vectors']} local vectors of "
               f"{fitted['recordings']} recordings under {', '.join(str(p) for p in fit_audio)}")
    return head.eval(), summary
