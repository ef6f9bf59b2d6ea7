"""Invented works: chord progression, melody, bass and drums from a seed. Unlimited and cheap.

Each work is a short song form (A A B A) whose parts are named like POP909's
tracks (MELODY, PIANO, BASS, DRUMS) so the same arrangement code applies.
"""

from __future__ import annotations

import numpy as np
import pretty_midi

MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]
# progressions as scale degrees (0-based); each chord lasts one bar
PROGRESSIONS = [
    [0, 4, 5, 3], [0, 5, 3, 4], [5, 3, 0, 4], [0, 3, 4, 4], [1, 4, 0, 0],
    [0, 3, 0, 4], [0, 5, 1, 4], [3, 4, 2, 5], [0, 2, 3, 4], [5, 4, 3, 4],
]
RHYTHMS = [  # note lengths in beats, each summing to 4
    [1, 1, 1, 1], [2, 1, 1], [1, 1, 2], [0.5, 0.5, 1, 2], [1.5, 0.5, 1, 1], [0.5] * 8, [3, 1], [1, 0.5, 0.5, 2],
]


def chord_tones(scale: list[int], degree: int) -> list[int]:
    return [scale[(degree + step) % 7] + 12 * ((degree + step) // 7) for step in (0, 2, 4)]


def generate(seed: int) -> pretty_midi.PrettyMIDI:
    rng = np.random.default_rng(seed)
    scale = MAJOR if rng.random() < 0.6 else MINOR
    tonic = 55 + int(rng.integers(0, 12))
    beat = 60.0 / float(rng.uniform(80, 140))
    sections = {name: [PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))] for _ in range(2)] for name in "AB"}
    motifs = {name: [RHYTHMS[int(rng.integers(len(RHYTHMS)))] for _ in range(8)] for name in "AB"}
    melody, piano = pretty_midi.Instrument(0, name="MELODY"), pretty_midi.Instrument(0, name="PIANO")
    bass, drums = pretty_midi.Instrument(33, name="BASS"), pretty_midi.Instrument(0, is_drum=True, name="DRUMS")
    arpeggio = rng.random() < 0.5
    pitch_index = 7  # melody position on a two-octave scale ladder
    bar = 0
    for name in "AABA":
        chords = [degree for progression in sections[name] for degree in progression]
        for position, degree in enumerate(chords):
            start = bar * 4 * beat
            tones = chord_tones(scale, degree)
            _accompany(piano, tonic - 12, tones, start, beat, arpeggio)
            bass.notes.append(pretty_midi.Note(90, tonic - 24 + tones[0], start, start + 4 * beat * 0.95))
            _groove(drums, start, beat)
            t = start
            # the same section repeats the same melody: covers keep melodies, so works must have them
            melody_rng = np.random.default_rng([seed, ord(name), position])
            for length in motifs[name][position % 8]:
                pitch_index = int(np.clip(pitch_index + melody_rng.integers(-2, 3), 0, 13))
                pitch = tonic + scale[pitch_index % 7] + 12 * (pitch_index // 7)
                melody.notes.append(pretty_midi.Note(100, pitch, t, t + length * beat * 0.9))
                t += length * beat
            bar += 1
    midi = pretty_midi.PrettyMIDI()
    midi.instruments.extend([melody, piano, bass, drums])
    return midi


def _accompany(piano: pretty_midi.Instrument, base: int, tones: list[int], start: float, beat: float, arpeggio: bool) -> None:
    if arpeggio:
        for step in range(8):
            t = start + step * beat / 2
            piano.notes.append(pretty_midi.Note(70, base + tones[step % 3], t, t + beat / 2))
    else:
        for half in range(2):
            t = start + half * 2 * beat
            for tone in tones:
                piano.notes.append(pretty_midi.Note(75, base + tone, t, t + 2 * beat * 0.9))


def _groove(drums: pretty_midi.Instrument, start: float, beat: float) -> None:
    for step in range(8):
        t = start + step * beat / 2
        drums.notes.append(pretty_midi.Note(60, 42, t, t + 0.05))  # closed hi-hat
        if step in (0, 4):
            drums.notes.append(pretty_midi.Note(100, 36, t, t + 0.1))  # kick
        if step in (2, 6):
            drums.notes.append(pretty_midi.Note(90, 38, t, t + 0.1))  # snare
