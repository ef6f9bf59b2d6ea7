"""Memory, fill rate and snapshot save/load of the in-process index alone (no store, no server), per track.

Fills a LocalIndex with synthetic tracks in the shipped model's shape (`synthetic.py`; 17 chunks, 128-d), reads the
process's resident memory before and after, then saves a snapshot and loads it back (cold start without the store).
`--module` runs another version of index/local_index.py, for side-by-side figures: the one before 2026-12-03's
change kept float32 rerank vectors and each track's pitch-class sequence, and takes a sequence per track
(`--sequence-seconds`, the artifact's frame period; random values cost what real ones do).

    git show 97039f2:index/local_index.py > build/old_local_index.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/index_memory.py --tracks 30000 [--module build/old_local_index.py]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from service import rss_mib
from synthetic import EmbeddingShape, Sampler, add_in_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=30000)
    parser.add_argument("--chunks", type=int, default=17)
    parser.add_argument("--module", type=Path, default=Path("index/local_index.py"))
    parser.add_argument("--sequence-seconds", type=float, default=0.0,
                        help="give each track a 180 s pitch-class sequence at this frame period (old module only)")
    args = parser.parse_args()
    local_index = load_module(args.module)
    sampler = Sampler(EmbeddingShape.load(), np.random.default_rng(args.tracks))
    rng = np.random.default_rng(1)
    frames = int(180 / args.sequence_seconds) if args.sequence_seconds else 0
    starts = np.arange(args.chunks) * 10.0

    def item(track_id: str, vectors: np.ndarray) -> tuple:
        if frames:
            return track_id, vectors, starts, rng.integers(0, 256, (12, frames), dtype=np.uint8)
        return track_id, vectors, starts

    index = local_index.LocalIndex(sampler.dim, initial_capacity=args.tracks * args.chunks)
    before = rss_mib_self()
    started = time.perf_counter()
    add_in_batches(index.add_many, item, args.tracks, 10, args.chunks, sampler, 0.75)
    fill_s = time.perf_counter() - started
    gc.collect()
    per_track_kib = (rss_mib_self() - before) * 1024 / args.tracks
    with tempfile.TemporaryDirectory(dir=".") as scratch:
        path = Path(scratch) / "index.snapshot"
        started = time.perf_counter()
        index.save(path, model_id="m")
        save_s = time.perf_counter() - started
        size_kib = path.stat().st_size / 1024 / args.tracks
        del index
        gc.collect()
        started = time.perf_counter()
        local_index.LocalIndex.load(path, "m", sampler.dim)
        load_s = time.perf_counter() - started
    print(f"| {args.module} | {args.tracks} | {args.tracks / fill_s:.0f} tracks/s | {per_track_kib:.2f} KiB | "
          f"{size_kib:.2f} KiB | {save_s:.1f} s | {load_s:.1f} s |")


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"measured_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def rss_mib_self() -> float:
    return rss_mib(int(Path("/proc/self/stat").read_text().split()[0]))


if __name__ == "__main__":
    main()
