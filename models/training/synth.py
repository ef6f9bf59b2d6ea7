"""A tiny additive synthesiser: note lists to audio, for tests, demos and benchmarks.

Not the training corpus renderer (that uses real soundfonts); just enough to make
pitched, musical test audio without any external tool.
"""

from __future__ import annotations

import numpy as np

Note = tuple[float, float, float]  # (MIDI pitch, start seconds, duration seconds)


def midi_to_hz(pitch: float) -> float:
    return 440.0 * 2 ** ((pitch - 69) / 12)


def render_notes(
    notes: list[Note], sample_rate: int, seconds: float, harmonics: int = 4, brightness: float = 0.6, seed: int = 0
) -> np.ndarray:
    """Mono float32 audio: each note a decaying sum of `harmonics` partials; peak normalised to 0.5."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(round(seconds * sample_rate)), dtype=np.float64)
    for pitch, start, duration in notes:
        first = int(start * sample_rate)
        length = min(int(duration * sample_rate), out.size - first)
        if length <= 0:
            continue
        t = np.arange(length) / sample_rate
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-3.0 * t / max(duration, 1e-3))
        freq = midi_to_hz(pitch)
        tone = np.zeros(length)
        for k in range(1, harmonics + 1):
            if k * freq < sample_rate / 2:
                tone += brightness ** (k - 1) * np.sin(2 * np.pi * k * freq * t + rng.uniform(0, 2 * np.pi))
        out[first : first + length] += envelope * tone
    peak = np.abs(out).max()
    return (0.5 * out / peak if peak > 0 else out).astype(np.float32)


def random_tune(seconds: float, seed: int, beat: float = 0.4, low: int = 48, high: int = 84) -> list[Note]:
    """A seeded random melody over a repeating bass line: distinct seeds give distinct works."""
    rng = np.random.default_rng(seed)
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    root = int(rng.integers(low, low + 12))
    notes: list[Note] = []
    steps = int(seconds / beat)
    motif = rng.integers(0, 14, size=8)
    for i in range(steps):
        degree = int(motif[i % 8] + (i // 16) % 3)
        pitch = root + 12 + 12 * (degree // 7) + int(scale[degree % 7])
        notes.append((float(min(pitch, high)), i * beat, beat * 0.9))
        if i % 4 == 0:
            notes.append((float(root - 12 + scale[(i // 4) % 3 * 2]), i * beat, beat * 3.8))
    return notes
