"""Train the pitch student (models/pitch_student.py) to predict basic-pitch's notes from the CQT.

Pairs come from audio files the caller names (real recordings: the game soundtracks in
Debian's warzone2100-music, wesnoth-1.16-music and singularity-music, never the validation
covers): each file's CQT and teacher notes are computed once by the shared front end and
cached as one float16 (84 + 88, frames) array (`cached_features`). Every step draws random
crops, averages both over the student's `time_stride`, and minimises the binary cross-entropy
between the student's notes and the teacher's (soft targets). Every `holdout_every`-th file
is held out; its loss is logged, never trained on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import ExtractorConfig
from models.frontend import FrontEnd
from models.pitch_student import PitchStudent, save_student
from models.training.recording_list import ListedRecording, cached_features, feature_key

AUDIO_SUFFIXES = (".ogg", ".opus", ".mp3", ".flac", ".wav")
CQT_BINS = ExtractorConfig().cqt_bins


@dataclass(frozen=True)
class DistilConfig:
    steps: int = 3000
    batch: int = 16
    crop_seconds: float = 12.0
    lr: float = 1e-3
    channels: int = 16
    time_stride: int = 4
    holdout_every: int = 10
    log_every: int = 50
    seed: int = 0
    max_minutes: Optional[float] = None


def audio_files(folders: list[Path]) -> list[ListedRecording]:
    """Every audio file under the folders, sorted, as list entries named by their path (one "work" each)."""
    files = sorted(p for folder in folders for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {', '.join(map(str, folders))}")
    return [ListedRecording(str(i), f"{i:04d}-{p.stem.replace('/', '_')[:40]}", p.resolve()) for i, p in enumerate(files)]


def pair_features(config: ExtractorConfig = ExtractorConfig()) -> Callable[[Tensor], Tensor]:
    """(samples,) -> (84 + 88, frames): the CQT stacked on basic-pitch's notes, both on the CQT grid."""
    cqt = FrontEnd(config.replace(features="cqt")).eval()
    teacher = FrontEnd(config.replace(features="pitch")).eval()

    def features(waveform: Tensor) -> Tensor:
        return torch.cat([cqt.spectrogram(waveform), teacher.spectrogram(waveform)])

    return features


def pairs(files: list[ListedRecording], cache: Path, progress=None, skipped: Optional[list] = None) -> list[np.ndarray]:
    """The cached (84 + 88, frames) pair of every file that decodes; a file that does not (a game package
    ships one truncated Ogg) is left out and its error appended to `skipped`."""
    config = ExtractorConfig()
    key = f"distil-pairs-{feature_key(config.replace(features='pitch'))}"  # CQT settings + basic-pitch
    return cached_features(files, pair_features(config), config.sample_rate, cache, key, progress, skipped)


def background_features(folders: list[Path], cache: Path, config: ExtractorConfig, skipped: Optional[list] = None) -> list:
    """The real recordings under `folders` as the network's input rows: CQT magnitudes, or basic-pitch's notes for
    note features (the student's stand-in). Cached with the distillation pairs, so `distil` and `train` share them."""
    arrays = pairs(audio_files(folders), cache, skipped=skipped)
    rows = slice(0, CQT_BINS) if config.features == "cqt" else slice(CQT_BINS, None)
    return [a[rows] for a in arrays]


def _batch(arrays: list[np.ndarray], rng: np.random.Generator, size: int, frames: int, stride: int):
    """(size, 84, frames // stride) CQT and (size, 88, frames // stride) teacher notes, averaged over `stride`."""
    weights = np.array([a.shape[1] for a in arrays], dtype=np.float64)
    picks = rng.choice(len(arrays), size=size, p=weights / weights.sum())
    crops = []
    for i in picks:
        a = arrays[i]
        length = min(frames, a.shape[1]) // stride * stride
        start = int(rng.integers(0, a.shape[1] - length + 1))
        crops.append(torch.from_numpy(a[:, start : start + length].astype(np.float32)))
    length = min(c.shape[1] for c in crops)
    x = torch.stack([c[:, :length] for c in crops])
    x = F.avg_pool1d(x, stride)
    return x[:, :CQT_BINS], x[:, CQT_BINS:]


def loss_on(student: PitchStudent, cqt: Tensor, teacher: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(student.logits(cqt), teacher.clamp(0, 1))


def distil(
    arrays: list[np.ndarray],
    config: DistilConfig,
    out: Path,
    provenance: dict,
    report: Callable[[dict], None] = lambda record: None,
) -> Path:
    """Train a student on the pairs; writes out/log.jsonl and out/pitch_student.pt (the weights with a header)."""
    held = [a for i, a in enumerate(arrays) if i % config.holdout_every == config.holdout_every - 1]
    train = [a for i, a in enumerate(arrays) if i % config.holdout_every != config.holdout_every - 1]
    if not train or not held:
        raise ValueError(f"need at least {config.holdout_every} files to train and hold one out, got {len(arrays)}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    held_rng = np.random.default_rng(config.seed + 1)
    frames = int(config.crop_seconds / ExtractorConfig().frame_seconds)
    held_batches = [_batch(held, held_rng, config.batch, frames, config.time_stride) for _ in range(4)]
    student = PitchStudent(config.channels, config.time_stride)
    optimiser = torch.optim.Adam(student.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(out / "log.jsonl", "a") as log:
        for step in range(1, config.steps + 1):
            cqt, teacher = _batch(train, rng, config.batch, frames, config.time_stride)
            loss = loss_on(student, cqt, teacher)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            out_of_time = config.max_minutes is not None and time.monotonic() - started > 60 * config.max_minutes
            if step % config.log_every == 0 or step == config.steps or out_of_time:
                with torch.no_grad():
                    held_loss = float(np.mean([float(loss_on(student, c, t)) for c, t in held_batches]))
                record = {"step": step, "loss": round(float(loss.detach()), 5), "held_out_loss": round(held_loss, 5),
                          "minutes": round((time.monotonic() - started) / 60, 2)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                report(record)
            if out_of_time:
                break
    path = out / "pitch_student.pt"
    save_student(student.eval(), path, {**provenance, "distil": asdict(config), "steps_done": step,
                                        "train_files": len(train), "held_out_files": len(held)})
    return path
