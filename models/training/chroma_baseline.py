"""A no-learning baseline: the 2D Fourier transform magnitude of chroma patches (2DFTM).

Bertin-Mahieux & Ellis, "Large-scale cover song recognition using the 2D
Fourier transform magnitude" (ISMIR 2012), computed from the same raw CQT the
networks see, so it plugs into `models.training.evaluation.evaluate` as an `embed`:

1. fold the 84 CQT bins into 12 chroma bins (sum over the 7 octaves);
2. average-pool time to about 2.5 frames/s (the paper uses beat-synchronous
   chroma, about 2 beats/s; we have no beat tracker and need none for a baseline);
3. divide each frame by its max, then raise it to `POWER` (the paper's
   power-law step, which sharpens the dominant pitch classes); a silent frame
   becomes flat (all ones);
4. cut patches of `PATCH_FRAMES` frames every `PATCH_HOP` frames and take the
   magnitude of each patch's 2D FFT: a transposition is a circular shift along
   chroma and a time offset a shift along time, and the magnitude ignores both;
5. the median over patches is the track's one vector, L2-normalised (no PCA).

A query shorter than one patch (about 30 s) is zero-padded to one patch: the
vector keeps its dimension, and the FFT of the padded patch is a smoothed
spectrum of the short excerpt, not a spectrum of invented repetitions.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import ExtractorConfig
from models.fourier import scaled_frames
from models.frontend import pitch_classes, pool_time

Fold = Callable[[Tensor], Tensor]  # (bins, frames) -> (12, frames), row 0 is C

_CONFIG = ExtractorConfig()
FRAMES_PER_SECOND = 2.5  # target chroma rate after pooling
POOL = max(1, round(1.0 / (FRAMES_PER_SECOND * _CONFIG.frame_seconds)))  # 17 CQT frames -> 2.53 frames/s
PATCH_FRAMES = 75  # the paper's patch length (75 beats there; ~30 s here)
PATCH_HOP = 1
POWER = 1.96  # the paper's exponent on the max-normalised chroma
SILENCE = 1e-8  # a pooled chroma frame whose max is at or below this counts as silent
CHROMA_BINS = _CONFIG.cqt_bins_per_octave
DIM = CHROMA_BINS * PATCH_FRAMES  # 900


def fold_to_chroma(spectrogram: Tensor) -> Tensor:
    """(bins, frames) CQT -> (12, frames): energy summed over octaves. Bin 0 is C1, so row 0 is C."""
    if spectrogram.shape[0] % CHROMA_BINS:
        raise ValueError(f"{spectrogram.shape[0]} CQT bins are not a whole number of octaves of {CHROMA_BINS}")
    return pitch_classes(spectrogram.float(), notes=False)


def fold_notes_to_chroma(notes: Tensor) -> Tensor:
    """(88, frames) note posteriors (MIDI 21..108, the "pitch" features) -> (12, frames), row 0 is C."""
    return pitch_classes(notes.float(), notes=True)


def chroma_frames(spectrogram: Tensor, pool: int = POOL, power: float = POWER, fold: Fold = fold_to_chroma) -> Tensor:
    """(bins, frames) CQT -> (12, T) pooled chroma, each frame scaled to max 1, then raised to `power`
    (silent frames flat: the 2DFTM head's `scaled_frames`)."""
    return scaled_frames(pool_time(fold(spectrogram).unsqueeze(0), pool)[0], power, SILENCE)


def patch_2dftm(chroma: Tensor, patch: int = PATCH_FRAMES, hop: int = PATCH_HOP) -> Tensor:
    """(12, T) -> (P, 12 * patch) 2D FFT magnitudes of the patches; T < patch is zero-padded to one patch."""
    if chroma.shape[1] < patch:
        chroma = F.pad(chroma, (0, patch - chroma.shape[1]))
    patches = chroma.unfold(1, patch, hop).permute(1, 0, 2)  # (P, 12, patch)
    return torch.fft.fft2(patches).abs().flatten(start_dim=1)


def chroma_2dftm(spectrogram: Tensor, fold: Fold = fold_to_chroma) -> Tensor:
    """(84, frames) raw CQT magnitude -> (1, 900) L2-normalised 2DFTM vector (median over patches).

    With `fold=fold_notes_to_chroma` it takes the (88, frames) "pitch" features instead (see `pitch_2dftm`).
    """
    if spectrogram.dim() != 2 or spectrogram.shape[1] < 1:
        raise ValueError(f"expected a (bins, frames) spectrogram with frames >= 1, got {tuple(spectrogram.shape)}")
    magnitudes = patch_2dftm(chroma_frames(spectrogram, fold=fold))
    vector = magnitudes.median(dim=0).values
    return F.normalize(vector, dim=0).unsqueeze(0)


def pitch_2dftm(notes: Tensor) -> Tensor:
    """(88, frames) basic-pitch note posteriors on the CQT grid -> (1, 900): 2DFTM on a learnt pitch-class profile."""
    return chroma_2dftm(notes, fold=fold_notes_to_chroma)
