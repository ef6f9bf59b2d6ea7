"""The sung melody line: present where the melody is, at the melody's pitch, silent in its rests."""

import numpy as np
import pytest

from models.config import ExtractorConfig
from models.training.corpus import build as corpus_build
from models.training.corpus.build import Job, render_job
from models.training.corpus.voice import plan_voice, sing
from models.training.corpus.works import procedural_works
from models.frontend import FrontEnd

RATE = 22050
MELODY = [(60, 0.2, 0.8), (64, 0.85, 1.4), (67, 1.6, 2.3), (72, 2.6, 3.2)]


def autocorrelation_pitch(segment: np.ndarray, rate: int = RATE) -> float:
    """The MIDI pitch of a segment's strongest period between 60 Hz and 1 kHz."""
    segment = segment - segment.mean()
    correlation = np.correlate(segment, segment, "full")[len(segment) - 1:]
    low, high = int(rate / 1000), int(rate / 60)
    lag = low + int(np.argmax(correlation[low:high]))
    return 69 + 12 * np.log2(rate / lag / 440)


@pytest.fixture
def voice():
    return {**plan_voice(np.random.default_rng(0)), "octave": 0, "vibrato_cents": 50.0}


def test_the_sung_line_follows_the_melody_and_rests_with_it(voice):
    audio = sing(MELODY, voice, RATE, 3.6, np.random.default_rng(1))
    for pitch, start, end in MELODY:
        middle = (start + end) / 2
        sung = autocorrelation_pitch(audio[int((middle - 0.1) * RATE):int((middle + 0.1) * RATE)])
        assert abs(sung - pitch) < 0.5, (pitch, sung)  # within a quarter tone, vibrato and glides included
    loud = np.sqrt(np.mean(audio[int(0.3 * RATE):int(0.7 * RATE)] ** 2))
    assert np.sqrt(np.mean(audio[int(2.35 * RATE):int(2.55 * RATE)] ** 2)) < 0.01 * loud  # a rest is silent
    assert np.abs(audio[int(3.3 * RATE):]).max() == 0.0


def test_a_sung_line_is_not_a_steady_tone(voice):
    """Vibrato: the pitch of one held note moves (a keyboard's would not)."""
    audio = sing([(69, 0.0, 2.0)], voice, RATE, 2.0, np.random.default_rng(2))
    pitches = [autocorrelation_pitch(audio[int(t * RATE):int((t + 0.04) * RATE)]) for t in np.arange(0.5, 1.8, 0.02)]
    assert 0.2 < np.ptp(pitches) < 2.5 and abs(np.median(pitches) - 69) < 0.5


def test_the_same_seed_sings_the_same(voice):
    first = sing(MELODY, voice, RATE, 3.6, np.random.default_rng(5))
    assert np.array_equal(first, sing(MELODY, voice, RATE, 3.6, np.random.default_rng(5)))
    assert not np.array_equal(first, sing(MELODY, voice, RATE, 3.6, np.random.default_rng(6)))


def test_a_rendered_version_with_a_voice_sings_its_melody(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_build, "SUNG_PROBABILITY", 1.0)
    work = procedural_works(1, seed=3)[0]
    job = Job(work, version=1, seed=11, max_seconds=12.0)
    spectrogram, meta = render_job(job, FrontEnd(ExtractorConfig()).eval(), RATE, str(tmp_path))
    assert meta["plan"]["voice"]["vibrato_hz"] > 0
    assert np.isfinite(spectrogram.astype(np.float32)).all() and spectrogram.shape[0] == 84
    monkeypatch.setattr(corpus_build, "SUNG_PROBABILITY", 0.0)
    unsung, plain = render_job(job, FrontEnd(ExtractorConfig()).eval(), RATE, str(tmp_path))
    assert plain["plan"]["voice"] is None and plain["plan"]["transpose"] == meta["plan"]["transpose"]
    assert not np.array_equal(unsung, spectrogram)
