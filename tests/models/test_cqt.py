import numpy as np
import pytest
import torch
from nnAudio.features import CQT1992v2

from models.config import ExtractorConfig
from models.cqt import MultiRateCQT, bin_frequency, nearest_bin
from models.training.synth import midi_to_hz
from tests.conftest import SAMPLE_RATE, tone, tune

CFG = ExtractorConfig()


@pytest.fixture(scope="module")
def cqt():
    return MultiRateCQT(CFG.sample_rate, CFG.cqt_hop, CFG.cqt_fmin, CFG.cqt_bins, CFG.cqt_bins_per_octave)


def test_shape_is_84_bins_by_centred_frames(cqt):
    for n in (511, 512, 11025, 441000, 441001):
        assert cqt(torch.randn(n)).shape == (84, n // 512 + 1)


def test_matches_nnaudio_cqt1992v2(cqt):
    """Same kernels and conventions as nnAudio's reference CQT, computed multi-rate."""
    reference = CQT1992v2(
        sr=CFG.sample_rate, hop_length=CFG.cqt_hop, fmin=CFG.cqt_fmin, n_bins=CFG.cqt_bins,
        bins_per_octave=CFG.cqt_bins_per_octave, pad_mode="constant", verbose=False,
    )
    audio = torch.from_numpy(tune(12.0, seed=3)) + 0.01 * torch.randn(12 * SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference(audio)[0]
        actual = cqt(audio)
    assert actual.shape == expected.shape
    for octave in range(CFG.n_octaves):
        rows = slice(12 * octave, 12 * (octave + 1))
        error = (actual[rows] - expected[rows]).abs().sum() / expected[rows].abs().sum()
        assert error < 0.01, f"octave {octave}: relative error {float(error):.4f}"


@pytest.mark.parametrize("pitch", [36, 47, 60, 69, 81, 95])
def test_one_semitone_up_moves_the_peak_one_bin(cqt, pitch):
    peaks = []
    for p in (pitch, pitch + 1):
        spectrum = cqt(torch.from_numpy(tone(midi_to_hz(p), 2.0, harmonics=1)))
        peaks.append(int(spectrum[:, 10:-10].mean(dim=1).argmax()))
    assert peaks[1] == peaks[0] + 1
    assert peaks[0] == nearest_bin(CFG.cqt_fmin, 12, midi_to_hz(pitch))


def test_bin_frequencies_start_at_c1():
    assert bin_frequency(CFG.cqt_fmin, 12, 0) == pytest.approx(32.70)
    assert bin_frequency(CFG.cqt_fmin, 12, 83) == pytest.approx(3951.0, rel=1e-3)


def test_scripted_equals_eager(cqt):
    audio = torch.from_numpy(tune(7.3, seed=1))
    scripted = torch.jit.script(cqt)
    assert torch.allclose(scripted(audio), cqt(audio), atol=1e-6)
