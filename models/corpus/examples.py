"""The audio files in examples/: invented songs, each as an original and a cover rendering.

Rendered by the corpus builder itself (procedural works, arrangement plans,
fluidsynth, recording chain), so they carry no third-party rights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from models.corpus import procedural
from models.corpus.arrange import arrange, plan_version
from models.corpus.render import apply_chain, available_soundfonts, plan_chain, synthesise

EXAMPLE_SEEDS = (101, 202, 303)
SAMPLE_RATE = 22050


def render_example(seed: int, cover: bool, seconds: float, work_dir: str) -> np.ndarray:
    """The original (as written, piano-like, clean) or a cover (other key, tempo, instruments, room)."""
    rng = np.random.default_rng([seed, int(cover)])
    plan = plan_version(rng, original=not cover)
    if cover:  # a clearly different but recognisable version: whole melody kept
        plan.update(drop=[d for d in plan["drop"] if d != "melody"], skip_segment=None, start_offset=0.0)
    fonts = available_soundfonts()
    font = fonts["fluidr3"] if not cover and "fluidr3" in fonts else fonts[sorted(fonts)[-1]]
    midi = arrange(procedural.generate(seed), plan, rng, seconds)
    audio = synthesise(midi, font, SAMPLE_RATE, reverb=cover, work_dir=work_dir)
    return apply_chain(audio, SAMPLE_RATE, plan_chain(rng, clean=not cover), rng)


def write_examples(out: Path, seconds: float = 45.0, clip: tuple[float, float] = (12.0, 20.0)) -> list[Path]:
    """song-N-original.ogg, song-N-cover.ogg for each seed, and a clip of the last cover."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for number, seed in enumerate(EXAMPLE_SEEDS, 1):
        for kind in ("original", "cover"):
            audio = render_example(seed, kind == "cover", seconds, str(out))
            path = out / f"song-{number}-{kind}.ogg"
            sf.write(path, audio, SAMPLE_RATE, format="OGG", subtype="VORBIS")
            written.append(path)
    start, length = clip
    cover = sf.read(written[-1], dtype="float32")[0]
    path = out / f"clip-song-{len(EXAMPLE_SEEDS)}-cover-{length:g}s.ogg"
    sf.write(path, cover[int(start * SAMPLE_RATE) : int((start + length) * SAMPLE_RATE)], SAMPLE_RATE,
             format="OGG", subtype="VORBIS")
    return [*written, path]
