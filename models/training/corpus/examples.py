"""The audio files in examples/: invented songs, each as an original and a cover rendering.

Rendered by the corpus builder itself (procedural works, arrangement plans,
fluidsynth, recording chain), so they carry no third-party rights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi
import soundfile as sf

from models.training.corpus import procedural
from models.training.corpus.arrange import arrange, plan_version
from models.training.corpus.render import apply_chain, available_soundfonts, plan_chain, synthesise, write_audio

EXAMPLE_SEEDS = (10**9 + 1, 10**9 + 2, 10**9 + 3)  # outside every training range: procedural_works draws seed * 1_000_003 + i
SAMPLE_RATE = 22050


def render_rendition(midi: pretty_midi.PrettyMIDI, cover: bool, rng: np.random.Generator, seconds: float,
                     work_dir: str, **plan_overrides) -> tuple[np.ndarray, dict]:
    """The original (as written, piano soundfont, dry) or a cover: another tempo, in a room.

    The cover keeps the instruments and the soundfont: the shipped model still fails on many
    changes of soundfont or instruments (see models/weights/MODEL_CARD.md), and these files
    show what it does identify. `plan_overrides` change any edit of the cover (e.g.
    `tempo=0.9`, `transpose=2`, `programs="random"`). Returns the audio at SAMPLE_RATE and the plan.
    """
    plan = plan_version(rng, original=True)
    if cover:
        plan["tempo"] = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        plan.update(plan_overrides)
    fonts = available_soundfonts()
    font = fonts["fluidr3"] if "fluidr3" in fonts else fonts[sorted(fonts)[0]]
    audio = synthesise(arrange(midi, plan, rng, seconds), font, SAMPLE_RATE, reverb=cover, work_dir=work_dir)
    return apply_chain(audio, SAMPLE_RATE, plan_chain(rng, clean=True), rng), plan


def render_example(seed: int, cover: bool, seconds: float, work_dir: str) -> np.ndarray:
    """One rendering of the invented song `seed`."""
    rng = np.random.default_rng([seed, int(cover)])
    return render_rendition(procedural.generate(seed), cover, rng, seconds, work_dir)[0]


def write_examples(out: Path, seconds: float = 45.0, clip: tuple[float, float] = (12.0, 20.0)) -> list[Path]:
    """originals/song-N.ogg and covers/song-N.ogg for each seed, and clips/: a clip of the last cover.

    The folders match the first-five-minutes commands: catalogue `originals/`,
    identify the clip of a cover.
    """
    written = []
    for number, seed in enumerate(EXAMPLE_SEEDS, 1):
        for folder, cover in (("originals", False), ("covers", True)):
            path = out / folder / f"song-{number}.ogg"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(path, render_example(seed, cover, seconds, str(out)), SAMPLE_RATE, "OGG", "VORBIS")
            written.append(path)
    start, length = clip
    cover = sf.read(written[-1], dtype="float32")[0]
    path = out / "clips" / f"song-{len(EXAMPLE_SEEDS)}-cover-{length:g}s-from-{start:g}s.ogg"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, cover[int(start * SAMPLE_RATE) : int((start + length) * SAMPLE_RATE)], SAMPLE_RATE, "OGG", "VORBIS")
    return [*written, path]
