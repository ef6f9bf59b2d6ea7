"""Build the feature cache: one float16 CQT (the front end's `spectrogram`) per version, in parallel.

Layout: <cache>/<split>/<work_id>/v<NN>.npy (bins x frames) with a .json sidecar
holding the version's plan. A job whose .npy exists is skipped, and every file
is written to a temporary name and renamed, so an interrupted build resumes
where it stopped. <cache>/frontend.json records the front end's settings (features, CQT); a cache built
with other settings is refused.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import pretty_midi
import torch

from index.common import replaced_atomically
from models.config import ExtractorConfig
from models.training.corpus import procedural
from models.training.corpus.arrange import arrange, plan_version, truncate
from models.training.corpus.render import RenderError, apply_chain, available_soundfonts, plan_chain, synthesise
from models.training.corpus.voice import plan_voice, sing
from models.training.corpus.works import Work
from models.training.dataset import FRONT_END_MARKER, stored_front_end
from models.frontend import FrontEnd

# bump when a change to works, arrangement or rendering makes old cached versions unlike new ones
# (2: versions are cut in score time, before the tempo change; 3: some melodies are sung)
CORPUS_FORMAT = 3
SUNG_PROBABILITY = 0.6  # versions whose melody is a voice (models/corpus/voice.py), as most real covers are
VOICE_LEVEL_DB = (-3.0, 6.0)  # the voice's loudness over the band's


@dataclass(frozen=True)
class Job:
    work: Work
    version: int
    seed: int
    max_seconds: float

    def path(self, cache: Path) -> Path:
        return cache / self.work.split / self.work.work_id / f"v{self.version:02d}.npy"


def plan_jobs(works: Iterable[Work], versions_per_work: int, seed: int, max_seconds: float) -> list[Job]:
    """Rendered versions per work; a real-performance work (ASAP) gets one job per performance."""
    jobs = []
    for work in works:
        count = len(work.sources) if work.kind == "asap" else versions_per_work
        for version in range(count):
            job_seed = int(np.random.SeedSequence([seed, version, *work.work_id.encode()]).generate_state(1)[0])
            jobs.append(Job(work, version, job_seed, max_seconds))
    return jobs


def check_cache_settings(cache: Path, config: ExtractorConfig) -> None:
    wanted = {"corpus_format": CORPUS_FORMAT, **config.front_end_settings()}
    stored = stored_front_end(cache)
    if stored is not None:
        if stored != wanted:
            raise ValueError(f"cache {cache} was built with {stored}, not {wanted}; use another --cache")
    else:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / FRONT_END_MARKER).write_text(json.dumps(wanted, indent=2))


def build(
    jobs: list[Job],
    cache: Path,
    config: ExtractorConfig,
    workers: int,
    progress: Optional[Callable[[int, int, int], None]] = None,
) -> tuple[int, list[str]]:
    """Run the jobs not yet cached. Returns (versions now cached, error messages of failed jobs)."""
    check_cache_settings(cache, config)
    todo = [job for job in jobs if not job.path(cache).exists()]
    errors: list[str] = []
    done = len(jobs) - len(todo)
    # spawn, not fork: a forked pool hung here with idle workers near the end of a build; forking a
    # process that has loaded torch (OpenMP) is a known cause of such hangs
    # An executor, not multiprocessing.Pool: a Pool whose worker dies (a segfault in a codec did)
    # waits forever for the lost task; the executor raises BrokenProcessPool instead.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(config, str(cache))) as pool:
        try:
            for error in pool.map(_run_job, todo, chunksize=4):
                done += 1
                if error:
                    errors.append(error)
                if progress:
                    progress(done, len(jobs), len(errors))
        except BrokenProcessPool:
            raise RuntimeError(f"a render worker died after {done} of {len(jobs)} versions (a crash in a native "
                               "library); what is cached stays, so running the build again resumes") from None
    return len(jobs) - len(errors), errors


_FRONTEND: Optional[FrontEnd] = None
_CACHE: Optional[Path] = None
_RATE = 0


def _init_worker(config: ExtractorConfig, cache: str) -> None:
    global _FRONTEND, _CACHE, _RATE
    torch.set_num_threads(1)  # one process per core
    _FRONTEND = FrontEnd(config).eval()
    _CACHE = Path(cache)
    _RATE = config.sample_rate


def _run_job(job: Job) -> Optional[str]:
    try:
        spectrogram, meta = render_job(job, _FRONTEND, _RATE, str(_CACHE))
    except (RenderError, OSError, ValueError, IndexError, EOFError) as err:
        return f"{job.work.work_id} v{job.version}: {err}"
    _save(job.path(_CACHE), spectrogram, meta)
    return None


def render_job(job: Job, frontend: FrontEnd, rate: int, work_dir: str) -> tuple[np.ndarray, dict]:
    """MIDI -> version -> audio -> recording chain -> (bins, frames) float16 CQT."""
    rng = np.random.default_rng(job.seed)
    soundfonts = available_soundfonts()
    font = str(rng.choice(sorted(soundfonts)))
    if job.work.kind == "asap":
        midi = truncate(pretty_midi.PrettyMIDI(job.work.sources[job.version]), job.max_seconds)
        plan, chain = {"performance": os.path.basename(job.work.sources[job.version])}, plan_chain(rng, clean=True)
        font = "fluidr3" if "fluidr3" in soundfonts else font
    else:
        if job.work.kind == "procedural":
            source = procedural.generate(int(job.work.sources[0]))
            source_name = "procedural"
        else:
            index = 0 if job.version == 0 else int(rng.integers(len(job.work.sources)))
            source_name = os.path.basename(job.work.sources[index])
            source = pretty_midi.PrettyMIDI(job.work.sources[index])
        plan = plan_version(rng, original=job.version == 0)
        plan["source"] = source_name
        midi = arrange(source, plan, rng, job.max_seconds)
        chain = plan_chain(rng, clean=job.version == 0)
        plan["voice"] = plan_voice(rng) if rng.random() < SUNG_PROBABILITY else None
    if not midi.instruments or midi.get_end_time() < 1.0:
        raise ValueError("the version has no notes")
    audio = _perform(midi, plan.get("voice"), soundfonts[font], rate, rng, work_dir)
    audio = apply_chain(audio, rate, chain, rng)
    with torch.inference_mode():
        spectrogram = frontend.spectrogram(torch.from_numpy(audio)).numpy().astype(np.float16)
    meta = {"work_id": job.work.work_id, "version": job.version, "kind": job.work.kind, "soundfont": font,
            "seconds": round(audio.shape[0] / rate, 2), "plan": plan, "chain": chain}
    return spectrogram, meta


def _perform(midi: pretty_midi.PrettyMIDI, voice: Optional[dict], soundfont: str, rate: int,
             rng: np.random.Generator, work_dir: str) -> np.ndarray:
    """The version as audio: fluidsynth plays every part, except a melody given a `voice`, which is sung."""
    melody = next((inst for inst in midi.instruments if inst.name == "melody"), None) if voice else None
    if melody is None:
        return synthesise(midi, soundfont, rate, reverb=bool(rng.random() < 0.5), work_dir=work_dir)
    seconds = midi.get_end_time() + 0.5
    sung = sing([(n.pitch, n.start, n.end) for n in melody.notes], voice, rate, seconds, rng)
    midi.instruments.remove(melody)
    if not midi.instruments:
        return sung
    band = synthesise(midi, soundfont, rate, reverb=bool(rng.random() < 0.5), work_dir=work_dir)
    length = max(len(band), len(sung))
    band, sung = np.pad(band, (0, length - len(band))), np.pad(sung, (0, length - len(sung)))
    level = 10 ** (rng.uniform(*VOICE_LEVEL_DB) / 20) * _rms(band) / max(_rms(sung), 1e-9)
    return (band + level * sung).astype(np.float32)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))


def _save(path: Path, spectrogram: np.ndarray, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as handle:  # the .npy appears last: its presence means the version is complete
        np.save(handle, spectrogram)
        path.with_suffix(".json").write_text(json.dumps(meta))
