import math

import pytest
import torch

from models.training.chroma_baseline import DIM, PATCH_FRAMES, POOL, chroma_2dftm, fold_to_chroma
from models.config import ExtractorConfig
from models.training.evaluation import Recording, evaluate
from models.training.synth import random_tune
from tests.models.training.test_evaluation import fake_factory

FRAME_SECONDS = ExtractorConfig().frame_seconds
C1 = 24  # MIDI pitch of CQT bin 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def notes_to_cqt(notes, seconds: float, transpose: int = 0) -> torch.Tensor:
    """A CQT-like (84, frames) magnitude straight from a note list: each note a decaying
    fundamental with its 2nd and 3rd harmonics (bins +12, +19), on the CQT frame grid."""
    frames = int(round(seconds / FRAME_SECONDS))
    spec = torch.full((84, frames), 1e-3)
    for pitch, start, duration in notes:
        first = math.ceil(start / FRAME_SECONDS)
        last = min(frames, math.ceil((start + duration) / FRAME_SECONDS))
        t = torch.arange(first, last) * FRAME_SECONDS - start
        envelope = torch.exp(-3 * t / duration)
        for offset, amplitude in ((0, 1.0), (12, 0.5), (19, 0.3)):
            b = int(pitch) - C1 + transpose + offset
            if 0 <= b < 84:
                spec[b, first:last] += amplitude * envelope
    return spec


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


@pytest.fixture(scope="module")
def tunes():
    return {seed: notes_to_cqt(random_tune(60.0, seed), 60.0) for seed in range(4)}


@pytest.mark.parametrize("frames", [1, POOL - 1, POOL * PATCH_FRAMES - 1, 2584])
def test_one_unit_vector_for_any_length(frames):
    spec = torch.rand(84, frames, generator=torch.Generator().manual_seed(frames)).half()  # float16, as cached
    out = chroma_2dftm(spec)
    assert out.shape == (1, DIM) and out.dtype == torch.float32
    assert float(out.norm()) == pytest.approx(1.0, abs=1e-5)
    assert bool(torch.isfinite(out).all())


def test_silence_gives_a_unit_vector():
    """Silent frames are flat chroma: a whole patch of them puts all its 2D FFT energy in the DC term."""
    out = chroma_2dftm(torch.zeros(84, POOL * PATCH_FRAMES))
    assert float(out[0, 0]) == pytest.approx(1.0, abs=1e-5)
    short = chroma_2dftm(torch.zeros(84, 300))  # zero-padded to a patch: not only DC, but never a zero vector
    assert float(short.norm()) == pytest.approx(1.0, abs=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="bins, frames"):
        chroma_2dftm(torch.rand(1, 84, 100))
    with pytest.raises(ValueError, match="whole number of octaves"):
        fold_to_chroma(torch.rand(80, 10))


def test_fold_sums_every_octave_into_its_pitch_class():
    spec = torch.zeros(84, 3)
    spec[0, 0] = 1.0  # C1
    spec[12 * 3, 0] = 2.0  # C4
    spec[12 * 5 + 7, 1] = 1.0  # G6
    chroma = fold_to_chroma(spec)
    assert chroma.shape == (12, 3)
    assert chroma[0, 0] == 3.0 and chroma[7, 1] == 1.0 and float(chroma.sum()) == 4.0


@pytest.mark.parametrize("semitones", [3, -5, 7])
def test_transposition_barely_moves_the_vector(tunes, semitones):
    for seed, spec in tunes.items():
        moved = notes_to_cqt(random_tune(60.0, seed), 60.0, transpose=semitones)
        assert cosine(chroma_2dftm(spec), chroma_2dftm(moved)) > 0.99


def test_an_octave_roll_of_the_cqt_is_invisible(tunes):
    spec = tunes[0]
    rolled = torch.roll(spec, shifts=12, dims=0)  # the top octave wraps round to the bottom: same chroma
    assert torch.allclose(chroma_2dftm(spec), chroma_2dftm(rolled), atol=1e-5)


def test_a_crop_stays_close_and_other_tunes_are_further(tunes):
    for seed, spec in tunes.items():
        full = chroma_2dftm(spec)
        crop = cosine(full, chroma_2dftm(spec[:, 300:]))  # the first 7 s cut off
        window = cosine(full, chroma_2dftm(spec[:, 400:2100]))  # a 40 s excerpt
        others = [cosine(full, chroma_2dftm(o)) for s, o in tunes.items() if s != seed]
        assert crop > 0.98 and window > 0.97
        # the raw 2DFTM of any two tunes shares a large low-frequency part (no PCA here),
        # so "clearly lower" is a margin, not a small number
        assert max(others) < 0.96
        assert max(others) < min(crop, window) - 0.02


def test_a_transposed_10_s_clip_is_nearest_its_own_tune(tunes):
    database = {seed: chroma_2dftm(spec) for seed, spec in tunes.items()}
    frames = round(10.0 / FRAME_SECONDS)
    for seed in tunes:
        clip = notes_to_cqt(random_tune(60.0, seed), 60.0, transpose=2)[:, 700 : 700 + frames]
        query = chroma_2dftm(clip)
        assert max(database, key=lambda s: cosine(query, database[s])) == seed


def test_plugs_into_evaluate(tunes):
    """Each work: the tune and a louder cover a minor third up. Full tracks must find their cover."""
    recordings = []
    for seed, spec in tunes.items():
        recordings.append(Recording(f"t{seed}", f"w{seed}", spec.half()))
        cover = 2.0 * notes_to_cqt(random_tune(60.0, seed), 60.0, transpose=3)
        recordings.append(Recording(f"c{seed}", f"w{seed}", cover.half()))
    results = evaluate(chroma_2dftm, recordings, seed=0, index_factory=fake_factory)
    assert results["exhaustive"]["full"]["queries"] == 8
    assert results["exhaustive"]["full"]["mAP"] > 0.95
    assert results["two_stage"]["full"]["mAP"] == pytest.approx(results["exhaustive"]["full"]["mAP"])
    assert results["exhaustive"]["30"]["mAP"] > 0.9


def test_the_pitch_features_fold_to_chroma_with_c_first():
    from models.training.chroma_baseline import fold_notes_to_chroma

    notes = torch.zeros(88, 5)
    notes[60 - 21, 0] = 1.0  # middle C
    notes[69 - 21, 1] = 1.0  # A4
    notes[21 - 21, 2] = 1.0  # A0, the lowest note
    notes[108 - 21, 3] = 1.0  # C8, the highest
    chroma = fold_notes_to_chroma(notes)
    assert chroma.shape == (12, 5)
    assert chroma.argmax(dim=0)[:4].tolist() == [0, 9, 9, 0]


def test_pitch_2dftm_of_a_transposed_note_roll_stays_close():
    from models.training.chroma_baseline import pitch_2dftm

    def roll(notes, transpose=0):  # basic-pitch-like (88, frames) note posteriors straight from a note list
        frames = int(round(40 / FRAME_SECONDS))
        out = torch.zeros(88, frames)
        for pitch, start, duration in notes:
            first, last = int(start / FRAME_SECONDS), int((start + duration) / FRAME_SECONDS)
            if 0 <= int(pitch) + transpose - 21 < 88:
                out[int(pitch) + transpose - 21, first:last] = 0.9
        return out

    base = [random_tune(40, seed=s) for s in range(3)]
    vectors = [pitch_2dftm(roll(n)) for n in base]
    shifted = pitch_2dftm(roll(base[0], transpose=3))
    assert vectors[0].shape == (1, DIM)
    others = max(cosine(shifted, v) for v in vectors[1:])
    assert cosine(shifted, vectors[0]) > 0.98 and cosine(shifted, vectors[0]) > others
