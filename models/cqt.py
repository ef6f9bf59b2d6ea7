"""A constant-Q transform that is fast on a CPU and scripts with TorchScript.

nnAudio's CQT1992v2 convolves the full-rate signal with one kernel per bin,
padded to the longest one (16,384 taps for C1 at 22,050 Hz): about 0.6 s for
240 s of audio on two cores. It also builds its padding module inside
`forward`, which `torch.jit.script` rejects.

Here the kernels still come from nnAudio (`create_cqt_kernels`, the same
function CQT1992v2 uses), but only the top octave's: 12 kernels of at most
256 taps. Each lower octave reuses them on the signal decimated by two once
more (the multi-rate scheme of Schoerkhuber & Klapuri's CQT2010), so every
octave costs the same small convolution. The output follows CQT1992v2's
conventions (frames centred on multiples of the hop, zero padding, librosa
scaling by sqrt(kernel length)); tests compare the two.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from nnAudio.utils import create_cqt_kernels
from torch import Tensor, nn

DECIMATION_TAPS = 31  # half-band low-pass; passband flat to ~0.15 fs, stopband from ~0.35 fs
DECIMATION_BLOCK = 128  # input samples per row of the decimation matrix product


def _halfband_lowpass(taps: int) -> np.ndarray:
    """Blackman-windowed sinc with its cut-off at a quarter of the sample rate, unit DC gain."""
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(0.5 * n) * np.blackman(taps)
    return h / h.sum()


def _decimation_matrix(taps: int, block: int) -> Tensor:
    """Filter-and-keep-every-second-sample as one matrix: (block + taps - 1, block // 2).

    A strided 1-tap-channel conv1d is pathologically slow on CPU for long inputs
    (about 100 ms per 240 s here); the same filter as a GEMM over overlapping
    blocks is an order of magnitude faster and exact.
    """
    h = _halfband_lowpass(taps)
    matrix = np.zeros((block + taps - 1, block // 2), dtype=np.float32)
    for j in range(block // 2):
        matrix[2 * j : 2 * j + taps, j] = h
    return torch.from_numpy(matrix)


class MultiRateCQT(nn.Module):
    """(samples,) waveform -> (bins, frames) CQT magnitude, frames = samples // hop + 1."""

    def __init__(
        self,
        sample_rate: int,
        hop: int,
        fmin: float,
        n_bins: int,
        bins_per_octave: int,
        window: str = "hann",
    ):
        super().__init__()
        self.n_octaves = n_bins // bins_per_octave
        self.bins_per_octave = bins_per_octave
        self.hop = hop
        q = 1.0 / (2 ** (1.0 / bins_per_octave) - 1)
        top_fmin = fmin * 2 ** (self.n_octaves - 1)
        kernels, width, _, _ = create_cqt_kernels(q, sample_rate, top_fmin, bins_per_octave, bins_per_octave, 1, window)
        self.kernel_width = int(width)
        # real and imaginary parts stacked as output channels: (2 * bins_per_octave, 1, width)
        stacked = np.concatenate([kernels.real, kernels.imag]).astype(np.float32)
        self.register_buffer("kernels", torch.from_numpy(stacked).T.contiguous(), persistent=False)  # (width, 2 * bpo)
        # librosa normalisation: scale each bin by sqrt of its full-rate kernel length
        freqs = fmin * 2.0 ** (np.arange(n_bins) / bins_per_octave)
        lengths = np.ceil(q * sample_rate / freqs)
        self.register_buffer("scale", torch.tensor(np.sqrt(lengths), dtype=torch.float32).view(-1, 1), persistent=False)
        self.register_buffer("decimator", _decimation_matrix(DECIMATION_TAPS, DECIMATION_BLOCK), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        n_frames = waveform.shape[-1] // self.hop + 1
        signal = waveform.reshape(-1)
        hop = self.hop
        half = self.kernel_width // 2
        octaves: List[Tensor] = []
        for octave in range(self.n_octaves):
            if octave > 0:
                signal = self._decimate(signal)
                hop = hop // 2
            # frame i covers the kernel width centred on sample i * hop (zero padding at the ends)
            needed = (n_frames - 1) * hop + self.kernel_width
            padded = F.pad(signal, (half, max(0, needed - signal.shape[0] - half)))
            windows = padded.unfold(0, self.kernel_width, hop)[:n_frames]  # (frames, width)
            response = (windows @ self.kernels).T  # (2 * bpo, frames)
            real, imag = response.split(self.bins_per_octave, dim=0)
            octaves.append(torch.sqrt(real * real + imag * imag))
        octaves.reverse()  # computed top octave first; bins run low to high
        return torch.cat(octaves, dim=0) * self.scale

    def _decimate(self, signal: Tensor) -> Tensor:
        """Low-pass and halve the rate: output sample j sits on input sample 2j."""
        n = signal.shape[0]
        block = self.decimator.shape[1] * 2
        halo = self.decimator.shape[0] - block
        n_blocks = (n + block - 1) // block
        padded = F.pad(signal, (halo // 2, n_blocks * block - n + halo - halo // 2))
        rows = padded.unfold(0, block + halo, block)  # (blocks, block + halo)
        return (rows @ self.decimator).reshape(-1)[: (n + 1) // 2]


def cqt_frames(n_samples: int, hop: int) -> int:
    """Frames the CQT yields for `n_samples` samples (centred frames)."""
    return n_samples // hop + 1


def bin_frequency(fmin: float, bins_per_octave: int, index: int) -> float:
    return fmin * 2 ** (index / bins_per_octave)


def nearest_bin(fmin: float, bins_per_octave: int, frequency: float) -> int:
    return int(round(bins_per_octave * math.log2(frequency / fmin)))
