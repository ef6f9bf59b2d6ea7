import math

import pytest
import torch

from models.config import ExtractorConfig
from models.frontend import FrontEnd, chunk_starts, normalise, pool_time
from tests.conftest import SAMPLE_RATE, tune

CFG = ExtractorConfig()


@pytest.fixture(scope="module")
def frontend():
    return FrontEnd(CFG)


def nominal_starts(seconds: float) -> list[float]:
    """The chunking rule in seconds: 20 s chunks every 10 s, plus one aligned to the end."""
    if seconds <= CFG.chunk_seconds:
        return [0.0]
    starts = [10.0 * k for k in range(int((seconds - 20.0) // 10.0) + 1)]
    if starts[-1] + 20.0 < seconds:
        starts.append(seconds - 20.0)
    return starts


@pytest.mark.parametrize("seconds", [0.5, 6.0, 19.9, 20.0, 20.1, 30.0, 245.0])
def test_chunk_boundaries(frontend, seconds):
    waveform = torch.from_numpy(tune(seconds, seed=2))
    chunks, starts = frontend(waveform)
    expected = nominal_starts(seconds)
    assert starts.tolist() == pytest.approx(expected, abs=CFG.frame_seconds)
    frames = waveform.shape[0] // CFG.cqt_hop + 1
    chunk_frames = min(frames, CFG.frames_per_chunk)
    assert chunks.shape == (len(expected), 1, 84, max(1, chunk_frames // CFG.time_pool))
    # the chunks cover the whole track: nothing is dropped at the end
    last_end = float(starts[-1]) + chunk_frames * CFG.frame_seconds
    assert last_end >= seconds - CFG.frame_seconds
    # and no chunk is zero-padded: every pooled frame of a musical chunk has energy
    assert bool((chunks.amax(dim=2) > 0).all())


def test_full_chunk_is_43_frames_at_pool_20(frontend):
    chunks, _ = frontend(torch.from_numpy(tune(30.0, seed=4)))
    assert chunks.shape[-1] == 43 == CFG.frames_per_chunk // 20


def test_chunk_starts_edge_cases():
    assert chunk_starts(10, 862, 430.66) == [0]
    assert chunk_starts(862, 862, 430.66) == [0]
    assert chunk_starts(863, 862, 430.66) == [0, 1]
    assert chunk_starts(1293, 862, 430.66) == [0, 431]
    assert chunk_starts(1294, 862, 430.66) == [0, 431, 432]


def test_chunks_are_cut_from_the_track_spectrogram(frontend):
    """The chunk starting at frame f is exactly frames f.. of the whole-track CQT, pooled and normalised."""
    waveform = torch.from_numpy(tune(40.0, seed=5))
    spec = frontend.spectrogram(waveform)
    chunks, starts = frontend.chunk(spec)
    for index, start in enumerate(starts.tolist()):
        first = round(start / CFG.frame_seconds)
        piece = spec[:, first : first + CFG.frames_per_chunk].unsqueeze(0)
        expected = normalise(pool_time(piece, CFG.time_pool), CFG.log_gain)[0]
        assert torch.allclose(chunks[index, 0], expected, atol=1e-6)


def test_normalisation_is_loudness_invariant_and_bounded(frontend):
    waveform = torch.from_numpy(tune(25.0, seed=6))
    loud, _ = frontend(waveform)
    quiet, _ = frontend(0.05 * waveform)
    assert torch.allclose(loud, quiet, atol=1e-4)
    assert float(loud.min()) >= 0.0
    assert torch.allclose(loud.amax(dim=(1, 2, 3)), torch.ones(loud.shape[0]), atol=1e-6)


def test_pool_time_of_a_short_chunk_is_its_mean():
    x = torch.arange(2 * 3 * 7, dtype=torch.float32).reshape(2, 3, 7)
    assert torch.allclose(pool_time(x, 20), x.mean(dim=-1, keepdim=True))
    assert pool_time(x, 3).shape == (2, 3, 2)
    assert torch.allclose(pool_time(x, 3)[..., 1], x[..., 3:6].mean(dim=-1))


def test_paper_pooling_factor_100_also_works():
    frontend = FrontEnd(CFG.replace(time_pool=100))
    chunks, _ = frontend(torch.from_numpy(tune(30.0, seed=7)))
    assert chunks.shape == (2, 1, 84, math.floor(CFG.frames_per_chunk / 100))


def test_scripted_front_end_equals_eager(frontend):
    waveform = torch.from_numpy(tune(33.0, seed=8))
    scripted = torch.jit.script(frontend)
    (a, sa), (b, sb) = frontend(waveform), scripted(waveform)
    assert torch.allclose(a, b, atol=1e-6) and torch.equal(sa, sb)


# -- the pitch features (basic-pitch's note posteriors on the CQT grid) -------------------------


@pytest.fixture(scope="module")
def pitch_frontend():
    return FrontEnd(CFG.replace(features="pitch")).eval()


@pytest.mark.parametrize("samples", [SAMPLE_RATE // 2, 256 * 7 + 3, 512 * 40, SAMPLE_RATE * 21 + 1])
def test_pitch_features_sit_on_the_cqt_frame_grid(pitch_frontend, frontend, samples):
    waveform = torch.from_numpy(tune(samples / SAMPLE_RATE + 0.01, seed=1)[:samples])
    with torch.inference_mode():
        pitch = pitch_frontend.spectrogram(waveform)
        cqt = frontend.spectrogram(waveform)
    assert pitch.shape == (88, cqt.shape[1])
    assert 0.0 <= float(pitch.min()) and float(pitch.max()) <= 1.0  # posteriors


def test_pitch_features_light_up_the_played_note(pitch_frontend):
    from tests.conftest import tone

    with torch.inference_mode():
        notes = pitch_frontend.spectrogram(torch.from_numpy(tone(440.0, 3.0)))  # A4 = MIDI 69
    assert int(notes[:, 20:-20].mean(dim=1).argmax()) == 69 - 21
    chunks, starts = pitch_frontend.chunk(notes)
    assert chunks.shape[:3] == (1, 1, 88) and starts.tolist() == [0.0]


def test_pitch_features_are_refused_with_another_hop():
    with pytest.raises(ValueError, match="cqt_hop = 512"):
        FrontEnd(CFG.replace(features="pitch", cqt_hop=256))


def test_an_unknown_feature_kind_is_refused():
    with pytest.raises(ValueError, match="features='chords' must be one of"):
        ExtractorConfig(features="chords")


def test_folded_note_chunks_ignore_the_octave_and_wrap_the_pitch_classes():
    frontend = FrontEnd(CFG.replace(features="pitch", fold_octaves=True, log_gain=10.0))
    notes = torch.zeros(88, 900)
    notes[60 - 21] = 1.0  # C4
    octave_up = torch.zeros(88, 900)
    octave_up[72 - 21] = 1.0  # C5
    chunks, _ = frontend.chunk(notes)
    assert chunks.shape == (2, 1, 36, 43)  # three stacked cycles of 12 pitch classes
    torch.testing.assert_close(chunks, frontend.chunk(octave_up)[0])
    assert chunks[0, 0, :, 0].nonzero().flatten().tolist() == [0, 12, 24]  # C in every cycle
    with pytest.raises(ValueError, match="fold_octaves needs note features"):
        CFG.replace(fold_octaves=True)
