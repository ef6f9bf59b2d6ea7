"""Synthetic catalogues of local embeddings for the index benchmarks, shaped like a cover catalogue.

A work is a sequence of "content" vectors; each version covers a stretch of it (a random start)
with its own deviation, and a query is a few chunks of a new version. Vectors are drawn from a
Gaussian `EmbeddingShape`: either isotropic (every direction equally likely, unrelated chunks
near-orthogonal: the hardest case for a graph index, since nothing leads towards a target), or
the shape the shipped model's embeddings have (a mean direction and a steep eigenvalue spectrum,
measured by `benchmarks/embedding_shape.py` and kept in `embedding_shape.json`) in a random basis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np

MODEL_SHAPE_FILE = Path(__file__).with_name("embedding_shape.json")
SHIFT = 6  # versions start up to 6 chunks (60 s) apart in their work
Item = TypeVar("Item")


@dataclass(frozen=True)
class EmbeddingShape:
    """Unit embeddings ~ normalise(mean + Gaussian with this covariance spectrum), in some basis."""

    mean_norm: float  # length of the mean of unit embeddings: 0 when there is no common direction
    eigenvalues: np.ndarray  # (dim,) covariance spectrum of the unit embeddings around their mean

    @classmethod
    def isotropic(cls, dim: int) -> "EmbeddingShape":
        return cls(0.0, np.full(dim, 1.0 / dim))

    @classmethod
    def named(cls, name: str, dim: int = 512) -> "EmbeddingShape":
        """"model" (the measured shape, from embedding_shape.json) or "isotropic" (of `dim` dimensions)."""
        if name == "model":
            return cls.load()
        if name == "isotropic":
            return cls.isotropic(dim)
        raise ValueError(f"unknown embedding shape {name!r}; available: 'model', 'isotropic'")

    @classmethod
    def load(cls, path: Path = MODEL_SHAPE_FILE) -> "EmbeddingShape":
        fields = json.loads(Path(path).read_text())
        return cls(float(fields["mean_norm"]), np.asarray(fields["eigenvalues"], dtype=np.float64))

    @property
    def dim(self) -> int:
        return len(self.eigenvalues)

    @property
    def participation_ratio(self) -> float:
        """The effective number of dimensions: (sum of eigenvalues)^2 / sum of their squares."""
        return float(self.eigenvalues.sum() ** 2 / (self.eigenvalues**2).sum())


class Sampler:
    """Draws vectors of one shape in one random basis (so every track of a catalogue shares it)."""

    def __init__(self, shape: EmbeddingShape, rng: np.random.Generator):
        self.rng = rng
        self.dim = shape.dim
        basis, _ = np.linalg.qr(rng.standard_normal((shape.dim, shape.dim)))
        self._axes = basis * np.sqrt(shape.eigenvalues)[None, :]  # column i: eigen-direction i, scaled
        self._mean = basis[:, 0] * shape.mean_norm if shape.mean_norm else np.zeros(shape.dim)

    def centred(self, count: int) -> np.ndarray:
        """(count, dim) Gaussian deviations from the mean, of the shape's covariance."""
        return self.rng.standard_normal((count, self._axes.shape[1])) @ self._axes.T

    def version_of(self, content: np.ndarray, correlation: float) -> np.ndarray:
        """Unit vectors whose deviation from the mean correlates `correlation` with `content`'s (N, dim)."""
        own = self.centred(len(content))
        return unit(self._mean + correlation * content + np.sqrt(1 - correlation**2) * own)


def catalogue(works: int, versions: int, chunks: int, sampler: Sampler, correlation: float
              ) -> Iterator[tuple[np.ndarray, list[tuple[str, np.ndarray]]]]:
    """Yield per work its content (chunks + SHIFT, dim) and its `versions` tracks as (track_id, vectors (chunks, dim))."""
    for work in range(works):
        content = sampler.centred(chunks + SHIFT)
        tracks = []
        for version in range(versions):
            first = int(sampler.rng.integers(0, SHIFT + 1))
            tracks.append((f"work-{work}-v{version}", sampler.version_of(content[first : first + chunks], correlation)))
        yield content, tracks


def add_in_batches(add: Callable[[list[Item]], None], item: Callable[[str, np.ndarray], Item], tracks: int,
                   versions: int, chunks: int, sampler: Sampler, correlation: float, batch: int = 1000
                   ) -> list[np.ndarray]:
    """Hand `tracks` synthetic tracks to `add`, `batch` at a time, each made by item(track_id, vectors).

    Returns each work's content, which `queries` draws from.
    """
    contents, pending = [], []
    for content, work_tracks in catalogue(tracks // versions, versions, chunks, sampler, correlation):
        contents.append(content)
        pending.extend(item(track_id, vectors) for track_id, vectors in work_tracks)
        if len(pending) >= batch:
            add(pending)
            pending = []
    if pending:
        add(pending)
    return contents


def query(content: np.ndarray, chunks: int, length: int, sampler: Sampler, correlation: float) -> np.ndarray:
    """`length` chunks of a new version, from the stretch every catalogued version covers.

    Versions cover chunks [first, first + chunks) with first <= SHIFT, so [SHIFT, chunks) is common
    to all: each version of the work is then a true match, and the all-pairs top 10 are the
    versions rather than ties among unrelated tracks.
    """
    first = int(sampler.rng.integers(SHIFT, chunks - length + 1))
    return sampler.version_of(content[first : first + length], correlation)


def queries(contents: list[np.ndarray], count: int, chunks: int, length: int, sampler: Sampler,
            correlation: float) -> list[np.ndarray]:
    """`count` queries of `length` chunks, each from a random work (see `query`)."""
    return [query(contents[int(sampler.rng.integers(len(contents)))], chunks, length, sampler, correlation)
            for _ in range(count)]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
