"""Training data: cached features grouped by work, P x K batches, crops and feature-domain augmentation.

A sample is a whole cached version or a random crop of it; either way it goes
through `FrontEnd.chunk`, the same chunking as serving. Within one batch all
full-length samples are trimmed to the shortest of them and all crops share
one length, so every group stacks into one network call without padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import ExtractorConfig
from models.frontend import FrontEnd, shift_bins
from models.training.recording_list import cached_features, feature_key, read_recording_list


@dataclass
class FeatureCorpus:
    """Spectrograms (bins, frames) float16 of every version, grouped by work."""

    work_ids: list[str]
    versions: list[list[np.ndarray]]  # versions[w] = spectrograms of work w

    @property
    def version_count(self) -> int:
        return sum(len(v) for v in self.versions)

    def summary(self) -> dict:
        return {"works": len(self.work_ids), "versions": self.version_count}

    @classmethod
    def concat(cls, corpora: list["FeatureCorpus"]) -> "FeatureCorpus":
        """Several corpora as one (e.g. two caches); a work id found twice is refused, not merged."""
        work_ids = [w for c in corpora for w in c.work_ids]
        if len(set(work_ids)) != len(work_ids):
            raise ValueError("the corpora share work ids; a work must live in one cache")
        return cls(work_ids, [v for c in corpora for v in c.versions])

    @classmethod
    def from_cache(cls, cache: Path, split: str, limit_works: Optional[int] = None, min_versions: int = 1,
                   expect: Optional[ExtractorConfig] = None) -> "FeatureCorpus":
        """The cached versions of `split`; with `expect`, a cache of another front end's features is refused."""
        if expect is not None:
            check_front_end(cache, expect)
        work_ids, versions = [], []
        for folder in sorted((cache / split).iterdir()):
            files = sorted(folder.glob("v*.npy"))
            if len(files) >= min_versions:
                work_ids.append(folder.name)
                versions.append([np.load(f) for f in files])
            if limit_works and len(work_ids) >= limit_works:
                break
        if not work_ids:
            raise ValueError(f"no cached versions under {cache / split}; run `coverid corpus` first")
        return cls(work_ids, versions)

    @classmethod
    def from_csv(cls, table: Path, config: ExtractorConfig, cache: Path) -> "FeatureCorpus":
        """Real recordings listed as `work_id,performance_id,path` (SHS100K-style); CQTs cached under `cache`."""
        frontend = FrontEnd(config).eval()
        listed = read_recording_list(table)
        spectrograms = cached_features(listed, frontend.spectrogram, config.sample_rate, cache / "features",
                                       feature_key(config))
        grouped: dict[str, list[np.ndarray]] = {}
        for rec, spec in zip(listed, spectrograms):
            grouped.setdefault(rec.work_id, []).append(spec)
        return cls(sorted(grouped), [grouped[w] for w in sorted(grouped)])


FRONT_END_MARKER = "frontend.json"  # written by `coverid corpus` (models/corpus/build.py)


def stored_front_end(cache: Path) -> Optional[dict]:
    """What a corpus cache's marker records (corpus format and front-end settings), or None without one."""
    marker = cache / FRONT_END_MARKER
    if not marker.exists():
        return None
    return {"features": "cqt", **json.loads(marker.read_text())}  # caches from before the pitch features


def check_front_end(cache: Path, config: ExtractorConfig) -> None:
    """Refuse a corpus cache whose features another front end made."""
    stored = stored_front_end(cache)
    if stored is None:
        raise ValueError(f"{cache / FRONT_END_MARKER} is missing; build the cache with `coverid corpus --cache {cache}`")
    stored.pop("corpus_format", None)
    if stored != config.front_end_settings():
        raise ValueError(f"cache {cache} holds features of {stored}, the model needs {config.front_end_settings()}; "
                         f"build a cache with `coverid corpus --features {config.features}`")


@dataclass(frozen=True)
class BatchPlan:
    works_per_batch: int = 16  # P
    versions_per_work: int = 4  # K
    min_crop_seconds: float = 6.0
    max_crop_seconds: float = 60.0
    max_transpose_bins: int = 6  # up to a tritone either way: every key is reachable
    stretch: tuple[float, float] = (0.85, 1.18)
    freq_mask_bins: int = 6
    time_mask_fraction: float = 0.1
    # What a real cover has that a render lacks, added in the feature domain (all off by default):
    background_probability: float = 0.0  # mix in a real recording's features (the sampler's `backgrounds`)
    background_level: tuple[float, float] = (0.3, 1.0)
    clutter_per_second: float = 0.0  # spurious short notes, as a transcriber finds in a dense real mix
    smear_probability: float = 0.0  # sung or bent notes: blurred in time, leaking into neighbour semitones


@dataclass
class Batch:
    chunks: list[Tensor]  # groups of (n, 1, bins, T) with equal T
    owners: list[Tensor]  # per group: (n,) index of the sample each chunk belongs to
    labels: Tensor  # (B,) work index per sample


class BatchSampler:
    """P works x K versions; each work's versions alternate between full length and a crop (1:1).

    `backgrounds` are features of real recordings (same rows as the corpus) mixed into versions
    with `plan.background_probability`: added for CQT magnitudes, the element-wise maximum for note
    posteriors (a transcriber reports the notes of both sources).
    """

    def __init__(self, corpus: FeatureCorpus, frontend: FrontEnd, frame_seconds: float, plan: BatchPlan, seed: int,
                 backgrounds: Optional[list[np.ndarray]] = None, notes: bool = False):
        self.corpus = corpus
        self.frontend = frontend
        self.frame_seconds = frame_seconds
        self.plan = plan
        self.rng = np.random.default_rng(seed)
        self.backgrounds = backgrounds or []
        self.notes = notes
        if plan.background_probability and not self.backgrounds:
            raise ValueError("background mixing needs background recordings")
        self.multi = [w for w, v in enumerate(corpus.versions) if len(v) >= 2]
        if len(self.multi) < plan.works_per_batch:
            raise ValueError(f"need {plan.works_per_batch} works with 2+ versions, have {len(self.multi)}")

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.sample()

    def sample(self) -> Batch:
        plan, rng = self.plan, self.rng
        works = rng.choice(self.multi, size=plan.works_per_batch, replace=False)
        picks = []
        for w in works:
            count = len(self.corpus.versions[w])
            picks += [(int(w), int(v)) for v in rng.choice(count, plan.versions_per_work, replace=count < plan.versions_per_work)]
        specs = [self._augment(torch.from_numpy(self.corpus.versions[w][v].astype(np.float32))) for w, v in picks]
        full = specs[0::2]
        crops = specs[1::2]
        full_frames = min(s.shape[1] for s in full)
        crop_frames = int(rng.uniform(plan.min_crop_seconds, plan.max_crop_seconds) / self.frame_seconds)
        samples = [s[:, :full_frames] for s in full] + [self._crop(s, crop_frames) for s in crops]
        order = list(range(0, len(specs), 2)) + list(range(1, len(specs), 2))
        labels = torch.tensor([picks[i][0] for i in order])
        groups: dict[int, list[tuple[int, Tensor]]] = {}
        for index, spec in enumerate(samples):
            chunks, _ = self.frontend.chunk(spec)
            groups.setdefault(chunks.shape[-1], []).append((index, chunks))
        chunk_groups = [torch.cat([c for _, c in g]) for g in groups.values()]
        owners = [torch.cat([torch.full((c.shape[0],), i) for i, c in g]) for g in groups.values()]
        return Batch(chunk_groups, owners, labels)

    def _crop(self, spec: Tensor, frames: int) -> Tensor:
        if spec.shape[1] <= frames:
            return spec
        start = int(self.rng.integers(0, spec.shape[1] - frames))
        return spec[:, start : start + frames]

    def _augment(self, spec: Tensor) -> Tensor:
        plan, rng = self.plan, self.rng
        spec = shift_bins(spec, int(rng.integers(-plan.max_transpose_bins, plan.max_transpose_bins + 1)))
        factor = float(rng.uniform(*plan.stretch))
        frames = max(2, int(spec.shape[1] * factor))
        spec = F.interpolate(spec[None], size=frames, mode="linear", align_corners=False)[0]
        if self.backgrounds and rng.random() < plan.background_probability:
            spec = self._mix_background(spec)
        if plan.smear_probability and rng.random() < plan.smear_probability:
            spec = self._smear(spec)
        if plan.clutter_per_second:
            spec = self._clutter(spec)
        if plan.freq_mask_bins:
            width = int(rng.integers(0, plan.freq_mask_bins + 1))
            low = int(rng.integers(0, spec.shape[0] - width + 1))
            spec[low : low + width] = 0
        if plan.time_mask_fraction:
            width = int(rng.uniform(0, plan.time_mask_fraction) * spec.shape[1])
            start = int(rng.integers(0, spec.shape[1] - width + 1))
            spec[:, start : start + width] = 0
        return spec


    def _mix_background(self, spec: Tensor) -> Tensor:
        rng = self.rng
        source = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        frames = spec.shape[1]
        start = int(rng.integers(0, max(1, source.shape[1] - frames + 1)))
        piece = torch.from_numpy(source[:, start : start + frames].astype(np.float32))
        if piece.shape[1] < frames:  # a short recording loops
            piece = piece.repeat(1, frames // piece.shape[1] + 1)[:, :frames]
        piece = shift_bins(piece, int(rng.integers(-6, 7)))
        level = float(rng.uniform(*self.plan.background_level))
        if self.notes:
            return torch.maximum(spec, level * piece)
        return spec + level * piece * (spec.mean() / (piece.mean() + 1e-6))

    def _smear(self, spec: Tensor) -> Tensor:
        rng = self.rng
        width = int(rng.choice([3, 5, 7, 9]))
        spec = F.avg_pool1d(spec[None], width, stride=1, padding=width // 2, count_include_pad=False)[0]
        leak = float(rng.uniform(0.2, 0.6))
        spec = torch.maximum(spec, leak * torch.maximum(shift_bins(spec, 1), shift_bins(spec, -1)))
        # a register-dependent gain: a voice or an instrument stands out in its own range
        anchors = torch.from_numpy(rng.uniform(0.4, 1.0, size=5).astype(np.float32))
        gain = F.interpolate(anchors[None, None], size=spec.shape[0], mode="linear", align_corners=True)[0, 0]
        return spec * gain[:, None]

    def _clutter(self, spec: Tensor) -> Tensor:
        rng = self.rng
        bins, frames = spec.shape
        count = rng.poisson(self.plan.clutter_per_second * frames * self.frame_seconds)
        spec = spec.clone()
        peak = float(spec.max()) or 1.0
        for _ in range(count):
            row, start, length = int(rng.integers(bins)), int(rng.integers(frames)), int(rng.integers(2, 25))
            level = peak * float(rng.uniform(0.2, 0.8))
            spec[row, start : start + length] = torch.clamp(spec[row, start : start + length], min=level)
        return spec


def read_version_meta(cache: Path, split: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / split).glob("*/v*.json"))]
