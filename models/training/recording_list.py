"""Recordings listed as `work_id,performance_id,path` (SHS100K / CLEWS style), and their cached features.

Training (`coverid train --csv`) and evaluation (`coverid evaluate --csv`) read
real audio from such a list. Paths are relative to the list's folder. Each
recording is decoded by the project's own decoder and turned into features by
a caller-given function (the front end's whole-track CQT, or another
representation); the features, not the audio, are cached as float16 `.npy`
under `cache / feature_key`, so a rerun skips decoding. `feature_key` must
change whenever the function's output would (see `feature_key`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from models.audio import AudioError, decode_audio
from models.config import ExtractorConfig

COLUMNS = ("work_id", "performance_id", "path")
Features = Callable[[Tensor], Tensor]  # (samples,) waveform at the config's rate -> (bins, frames)


class RecordingListError(ValueError):
    """The list cannot be used as given; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class ListedRecording:
    work_id: str
    performance_id: str
    path: Path  # absolute


def read_recording_list(table: str | os.PathLike) -> list[ListedRecording]:
    """Parse and check the list; every problem is reported with its line, and nothing is decoded yet."""
    table = Path(table)
    if not table.is_file():
        raise RecordingListError(f"recording list {table} does not exist")
    with open(table, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise RecordingListError(f"{table}: header must name {', '.join(COLUMNS)}; missing {', '.join(missing)}")
        listed, seen = [], set()
        for line, row in enumerate(reader, start=2):
            work, performance, path = (row[c].strip() if row[c] else "" for c in COLUMNS)
            if not (work and performance and path):
                raise RecordingListError(f"{table}:{line}: work_id, performance_id and path must all be set")
            if "/" in performance or "\\" in performance or performance.startswith("."):
                raise RecordingListError(f"{table}:{line}: performance_id {performance!r} must not look like a path")
            if performance in seen:
                raise RecordingListError(f"{table}:{line}: performance_id {performance!r} is listed twice")
            seen.add(performance)
            # the audio need not exist once its features are cached (keep features, not audio): checked when decoded
            listed.append(ListedRecording(work, performance, (table.parent / path).resolve()))
    if not listed:
        raise RecordingListError(f"{table} lists no recordings")
    return listed


def feature_key(config: ExtractorConfig) -> str:
    """Cache key of the front end's whole-track features: changes with every setting that changes them."""
    digest = hashlib.sha1(json.dumps(config.front_end_settings(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{config.features}-{digest}"


def _source_tag(path: Path) -> str:
    # the same id in another list (another file) must not reuse a stale entry; the path, not the file's
    # contents, so the cache still serves once the audio is deleted
    return hashlib.sha1(str(path).encode()).hexdigest()[:10]


def cached_features(
    listed: list[ListedRecording],
    features: Features,
    sample_rate: int,
    cache: str | os.PathLike,
    feature_key: str,
    progress: Optional[Callable[[int, int], None]] = None,
    skipped: Optional[list] = None,
) -> list[np.ndarray]:
    """Features (bins, frames) float16 of every listed recording, computed once and cached.

    A recording that cannot be decoded stops the run, unless `skipped` is given: then it is left out and its
    error appended there (a game package ships a truncated Ogg)."""
    folder = Path(cache) / feature_key
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for done, rec in enumerate(listed, start=1):
        try:
            out.append(_cached(rec, folder / f"{rec.performance_id}-{_source_tag(rec.path)}.npy", features, sample_rate))
        except RecordingListError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
        if progress:
            progress(done, len(listed))
    return out


def _cached(rec: ListedRecording, target: Path, features: Features, sample_rate: int) -> np.ndarray:
    if not target.exists():
        if not rec.path.is_file():
            raise RecordingListError(f"{rec.path} ({rec.performance_id}) does not exist and has no cached features")
        try:
            waveform = decode_audio(rec.path, sample_rate)
        except AudioError as err:
            raise RecordingListError(f"{rec.path} ({rec.performance_id}): {err}") from err
        with torch.inference_mode():
            spec = features(waveform).float().cpu().numpy().astype(np.float16)
        partial = target.with_suffix(".partial.npy")
        np.save(partial, spec)
        partial.replace(target)  # atomic: an interrupted run never leaves a truncated cache entry
    return np.load(target)

