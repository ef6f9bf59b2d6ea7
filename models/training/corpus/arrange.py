"""Turning one work into one version: the ways real covers differ, applied to MIDI.

key (transposition), tempo, General MIDI programs, arrangement (parts dropped,
a bass line added), structure (a section skipped or repeated, a later start)
and dynamics. All choices come from the `rng` handed in, so a version is
reproducible from its seed.
"""

from __future__ import annotations

import copy

import numpy as np
import pretty_midi

MIN_NOTE_SECONDS = 0.05  # shorter notes can collapse to zero ticks and hang the synthesiser
MELODY_PROGRAMS = [0, 1, 4, 5, 11, 16, 19, 22, 24, 25, 26, 40, 41, 56, 60, 64, 65, 66, 68, 71, 73, 80, 81]
ACCOMPANIMENT_PROGRAMS = [0, 1, 2, 4, 5, 6, 16, 18, 24, 25, 26, 27, 46, 48, 49, 50, 52, 88, 89, 90]
BASS_PROGRAMS = [32, 33, 34, 35, 36, 38, 39]
SEGMENT_SECONDS = 8.0  # structure edits work on segments of this length


def role(instrument: pretty_midi.Instrument, index: int) -> str:
    name = instrument.name.lower()
    if instrument.is_drum:
        return "drums"
    if "bass" in name or 32 <= instrument.program <= 39:
        return "bass"
    if "melody" in name or index == 0:
        return "melody"
    return "accompaniment"


def plan_version(rng: np.random.Generator, original: bool) -> dict:
    """The edits of one version. `original` keeps the work as written (the first version of a work)."""
    if original:
        return {"transpose": 0, "tempo": 1.0, "drop": [], "add_bass": False, "programs": "keep",
                "start_offset": 0.0, "skip_segment": None, "repeat_segment": None, "velocity": 1.0}
    return {
        "transpose": int(rng.integers(-6, 6)),
        "tempo": float(np.exp(rng.uniform(np.log(0.75), np.log(1.33)))),
        "drop": [r for r, p in (("accompaniment", 0.3), ("drums", 0.5), ("bass", 0.3)) if rng.random() < p]
        + (["melody"] if rng.random() < 0.15 else []),
        "add_bass": bool(rng.random() < 0.4),
        "programs": "random",
        "start_offset": float(rng.uniform(0, 15)) if rng.random() < 0.5 else 0.0,
        "skip_segment": int(rng.integers(1, 8)) if rng.random() < 0.3 else None,
        "repeat_segment": int(rng.integers(0, 8)) if rng.random() < 0.3 else None,
        "velocity": float(rng.uniform(0.7, 1.1)),
    }


def arrange(midi: pretty_midi.PrettyMIDI, plan: dict, rng: np.random.Generator, max_seconds: float) -> pretty_midi.PrettyMIDI:
    """A new MIDI with the plan applied, keeping `max_seconds` of the (edited) score before the tempo change.

    Cutting in score time, not in rendered time, keeps the versions of a work on the same music: a cut
    after the tempo change would give a slow version less of the song than a fast one, and positives
    that share no music teach a model timbre instead of notes.
    """
    parts = [(role(inst, i), inst) for i, inst in enumerate(midi.instruments) if inst.notes]
    kept = [(r, inst) for r, inst in parts if r not in plan["drop"]] or parts[:1]
    if plan["add_bass"] and not any(r == "bass" for r, _ in kept):
        kept.append(("bass", _bass_line(midi)))
    time_map = _structure(midi.get_end_time(), plan)
    out = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    for part_role, inst in kept:
        program = inst.program if plan["programs"] == "keep" else _program(part_role, rng)
        new = pretty_midi.Instrument(program=0 if inst.is_drum else program, is_drum=inst.is_drum, name=part_role)
        for note in inst.notes:
            for start, end in time_map(note.start, note.end):
                if start >= max_seconds:
                    continue
                end = min(max(end, start + MIN_NOTE_SECONDS), max_seconds)
                start, end = start / plan["tempo"], end / plan["tempo"]
                pitch = note.pitch if inst.is_drum else note.pitch + plan["transpose"]
                if 0 <= pitch <= 127 and end - start >= MIN_NOTE_SECONDS / 2:
                    velocity = int(np.clip(note.velocity * plan["velocity"], 1, 127))
                    new.notes.append(pretty_midi.Note(velocity, pitch, start, end))
        if new.notes:
            out.instruments.append(new)
    return out


def truncate(midi: pretty_midi.PrettyMIDI, max_seconds: float) -> pretty_midi.PrettyMIDI:
    """The MIDI as played, pedal included, up to `max_seconds` (for real performances)."""
    out = copy.deepcopy(midi)
    for inst in out.instruments:
        inst.notes = [
            pretty_midi.Note(n.velocity, n.pitch, n.start, min(max(n.end, n.start + MIN_NOTE_SECONDS), max_seconds))
            for n in inst.notes
            if n.start < max_seconds - MIN_NOTE_SECONDS
        ]
        inst.control_changes = [c for c in inst.control_changes if c.time < max_seconds]
        inst.pitch_bends = [b for b in inst.pitch_bends if b.time < max_seconds]
    return out


def _program(part_role: str, rng: np.random.Generator) -> int:
    choices = {"melody": MELODY_PROGRAMS, "bass": BASS_PROGRAMS}.get(part_role, ACCOMPANIMENT_PROGRAMS)
    return int(rng.choice(choices))


def _bass_line(midi: pretty_midi.PrettyMIDI) -> pretty_midi.Instrument:
    """The lowest sounding pitch of each beat, an octave down: a plausible bass for any arrangement."""
    bass = pretty_midi.Instrument(program=33, name="bass")
    notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes]
    beats = midi.get_beats()
    for start, end in zip(beats[:-1], beats[1:]):
        sounding = [n.pitch for n in notes if n.start < end and n.end > start]
        if sounding:
            pitch = min(sounding) - 12
            while pitch > 52:
                pitch -= 12
            if pitch >= 24:
                bass.notes.append(pretty_midi.Note(90, pitch, float(start), float(end) * 0.98 + float(start) * 0.02))
    return bass


def _structure(duration: float, plan: dict):
    """A function mapping a note's (start, end) to its placements after the structure edits."""
    count = int(np.ceil(duration / SEGMENT_SECONDS)) or 1
    order = list(range(count))
    if plan["skip_segment"] is not None and plan["skip_segment"] < count and count > 2:
        order.remove(plan["skip_segment"])
    if plan["repeat_segment"] is not None and plan["repeat_segment"] in order:
        at = order.index(plan["repeat_segment"])
        order.insert(at + 1, plan["repeat_segment"])
    offset = plan["start_offset"]

    def place(start: float, end: float) -> list[tuple[float, float]]:
        source = int(start // SEGMENT_SECONDS)
        placements = []
        for position, segment in enumerate(order):
            if segment == source:
                shift = (position - segment) * SEGMENT_SECONDS - offset
                segment_end = (segment + 1) * SEGMENT_SECONDS
                new_start, new_end = start + shift, min(end, segment_end + 0.5) + shift
                if new_start >= 0:
                    placements.append((new_start, new_end))
        return placements

    return place
