"""A sung melody line: the melody part rendered as a voice instead of a General MIDI instrument.

Most real covers are sung, and a transcriber hears a voice differently from a keyboard: the pitch
scoops from one note to the next (portamento), wavers around it (vibrato, jitter), and the timbre is
set by vowel formants and breath rather than by a patch. A source-filter model gives all of that:
harmonics of a glottal-like source, weighted by the formants of a vowel chosen per note.
Everything comes from the `rng` handed in, so a version stays reproducible from its seed.
"""

from __future__ import annotations

import numpy as np

CONTROL_RATE = 200  # Hz: pitch, vibrato and vowel move this often; harmonics are summed per sample
MAX_HARMONIC_HZ = 5000  # above the third formant little of a voice is left: harmonics past this are skipped
# (F1, F2, F3) in Hz of the vowels a, e, i, o, u (averages for an adult voice)
VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [300, 2200, 3000], [570, 840, 2410], [320, 800, 2240]], float)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])
FORMANT_LEVELS = np.array([1.0, 0.5, 0.25])
LEGATO_GAP_S = 0.15  # rests shorter than this are sung through: the pitch glides instead of stopping


def plan_voice(rng: np.random.Generator) -> dict:
    """One singer's manner: how much vibrato, how slow the glides, how breathy, how bright."""
    return {
        "vibrato_hz": float(rng.uniform(4.8, 6.5)),
        "vibrato_cents": float(rng.uniform(15, 60)),
        "glide_s": float(rng.uniform(0.03, 0.09)),
        "breath": float(rng.uniform(0.01, 0.06)),
        "tilt": float(rng.uniform(0.8, 1.6)),  # source roll-off: amplitude of harmonic k is k ** -tilt
        "octave": int(rng.choice([-12, 0, 0, 0, 12])),  # sung in another register than the part is written
    }


def sing(notes: list[tuple[float, float, float]], voice: dict, sample_rate: int, seconds: float,
         rng: np.random.Generator) -> np.ndarray:
    """Mono float32 audio of `notes` (MIDI pitch, start s, end s) sung with `voice`; peak 0.5, silent in rests."""
    steps = int(np.ceil(seconds * CONTROL_RATE)) + 1
    pitch, loudness, vowel = _score_contours(notes, voice["octave"], steps, rng)
    pitch = _glide(pitch, voice["glide_s"])
    t = np.arange(steps) / CONTROL_RATE
    wobble = 1 + 0.2 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 2 * np.pi))  # vibrato depth drifts
    pitch = pitch + wobble * voice["vibrato_cents"] / 100 * np.sin(2 * np.pi * voice["vibrato_hz"] * t)
    pitch = pitch + 0.08 * np.cumsum(rng.standard_normal(steps)) / np.sqrt(np.arange(1, steps + 1))  # jitter
    formants = _glide_rows(VOWELS[vowel], 0.06)

    samples = int(round(seconds * sample_rate))
    at = np.arange(samples) / sample_rate * CONTROL_RATE
    f0 = 440.0 * 2 ** ((np.interp(at, np.arange(steps), pitch) - 69) / 12)
    amplitude = np.interp(at, np.arange(steps), loudness)
    formant_hz = np.stack([np.interp(at, np.arange(steps), formants[:, i]) for i in range(3)], axis=1)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    out = np.zeros(samples)
    for k in range(1, int(min(sample_rate / 2, MAX_HARMONIC_HZ) / f0.min()) + 1):
        frequency = k * f0
        audible = frequency < min(sample_rate / 2, MAX_HARMONIC_HZ)
        if not audible.any():
            break
        gain = k ** -voice["tilt"] * _formant_gain(frequency, formant_hz)
        out += np.where(audible, gain * np.sin(k * phase), 0.0)
    breath = rng.standard_normal(samples)
    breath = np.diff(breath, prepend=0.0)  # high-passed: air, not rumble
    out = amplitude * (out + voice["breath"] * breath * np.abs(out).max())
    peak = np.abs(out).max()
    return (0.5 * out / peak if peak > 0 else out).astype(np.float32)


def _score_contours(notes, octave: int, steps: int, rng: np.random.Generator):
    """Pitch (MIDI, NaN in rests), loudness envelope and vowel index at the control rate."""
    pitch = np.full(steps, np.nan)
    loudness = np.zeros(steps)
    vowel = np.zeros(steps, dtype=int)
    ordered = sorted(notes, key=lambda n: n[1])
    for i, (note, start, end) in enumerate(ordered):
        following = ordered[i + 1][1] if i + 1 < len(ordered) else np.inf
        if 0 < following - end < LEGATO_GAP_S:
            end = following  # legato: carry the note to the next one
        first, last = int(start * CONTROL_RATE), min(int(end * CONTROL_RATE), steps)
        if last <= first:
            continue
        pitch[first:last] = note + octave
        length = last - first
        attack, release = min(8, length // 2), min(12, length // 2)  # 40 ms in, 60 ms out
        envelope = np.ones(length)
        envelope[:attack] = np.linspace(0, 1, attack, endpoint=False) if attack else envelope[:attack]
        if release:
            envelope[-release:] = np.minimum(envelope[-release:], np.linspace(1, 0, release))
        loudness[first:last] = np.maximum(loudness[first:last], envelope * rng.uniform(0.7, 1.0))
        vowel[first:last] = rng.integers(len(VOWELS))
    return pitch, loudness, vowel


def _glide(pitch: np.ndarray, glide_s: float) -> np.ndarray:
    """Portamento: a one-pole glide towards each note's pitch; rests hold the last pitch (they are silent)."""
    held = pitch.copy()
    known = ~np.isnan(held)
    if not known.any():
        return np.full_like(pitch, 60.0)
    held[: np.argmax(known)] = held[np.argmax(known)]
    for i in range(1, len(held)):
        if np.isnan(held[i]):
            held[i] = held[i - 1]
    return _glide_rows(held[:, None], glide_s)[:, 0]


def _glide_rows(values: np.ndarray, glide_s: float) -> np.ndarray:
    alpha = 1 - np.exp(-1 / (glide_s * CONTROL_RATE))
    out = np.array(values, dtype=float)
    for i in range(1, len(out)):
        out[i] = out[i - 1] + alpha * (out[i] - out[i - 1])
    return out


def _formant_gain(frequency: np.ndarray, formant_hz: np.ndarray) -> np.ndarray:
    """The vowel's spectral envelope at each harmonic: three resonances over a small floor."""
    gain = np.full(frequency.shape, 0.02)
    for i in range(3):
        gain += FORMANT_LEVELS[i] * np.exp(-0.5 * ((frequency - formant_hz[:, i]) / FORMANT_BANDWIDTHS[i]) ** 2)
    return gain
