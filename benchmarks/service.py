"""Service benchmarks: identify latency over HTTP, two-stage vs all-pairs, ingest throughput, memory per track.

For each catalogue size, synthetic local embeddings (`--chunks` per track,
works of `--versions` versions each, shaped like the shipped model's: see `synthetic.py`) go through the
same store (SQLite) and index code as the service; the index snapshot is
saved so the real server, started afterwards with uvicorn on loopback, loads it. Then:
- identify: p50/p95 of POST /identify with a real 30 s audio clip, client-side wall time;
- two-stage vs all-pairs: in-process LocalIndex.search vs search_exhaustive for
  2-chunk queries (a 30 s clip of a new version of a catalogued work), with recall@10 of
  the two-stage top 10 against the all-pairs top 10;
- ingest: POST /catalog of real audio, seconds of audio per second;
- memory: resident memory of the server process and store size, per track.

    .venv/bin/python benchmarks/service.py --tracks 1000 100000 [--model models/weights/extractor.pt]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import soundfile as sf

from app.catalog import Catalog, IndexSettings
from app.settings import Settings
from app.store import SQLiteStore, TrackRecord
from index.defaults import EF_CONSTRUCTION, EF_SEARCH, HNSW_M, K_NEIGHBOURS
from index.local_index import LocalIndex
from models.extractor import load_extractor
from models.training.synth import random_tune, render_notes
from ann_sweep import sweep
from synthetic import EmbeddingShape, Sampler, add_in_batches, queries

RATE = 22050


def fill(data_dir: Path, tracks: int, args: argparse.Namespace, model_id: str, sampler: Sampler,
         sequence_seconds: float = 0.0) -> tuple[LocalIndex, list[np.ndarray], float]:
    """Insert synthetic tracks through store + index, as POST /catalog/batch does (1,000 per store write).

    Returns the index, each work's content (queries are made from it) and tracks per second. With
    `sequence_seconds` (the artifact's stage-3 frame period) every track also gets a random pitch-class sequence.
    """
    store = SQLiteStore(data_dir)  # a new, empty store: the catalogue starts from an empty index of the chosen shape
    index = LocalIndex(sampler.dim, k_neighbours=args.k, m=args.m, ef_construction=args.ef_construction,
                       ef_search=args.ef, initial_capacity=tracks * args.chunks + 1024)
    catalog = Catalog(store, index, model_id, IndexSettings(sampler.dim, args.k, args.ef, args.m, args.ef_construction), Settings().retry_after_s)
    starts = (np.arange(args.chunks) * 10.0).astype(np.float32)
    duration_s = 10.0 * args.chunks + 10
    started = time.perf_counter()
    # stage 3 aligns each candidate's pitch-class sequence: random ones cost what real ones do
    frames = int(duration_s / sequence_seconds) if sequence_seconds else 0
    rng = np.random.default_rng(tracks)
    contents = add_in_batches(
        catalog.ingest_many,
        lambda track_id, vectors: TrackRecord(track_id, None, None, {}, duration_s, model_id, time.time(), vectors, starts,
                                              rng.integers(0, 256, (12, frames), dtype=np.uint8) if frames else None),
        tracks, args.versions, args.chunks, sampler, args.correlation,
    )
    rate = tracks / (time.perf_counter() - started)
    catalog.save_snapshot(data_dir / "index.snapshot")
    store.close()
    return index, contents, rate


def audio_bytes(seconds: float, seed: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, render_notes(random_tune(seconds, seed=seed), RATE, seconds, seed=seed), RATE, format="FLAC")
    return buffer.getvalue()


def serve(model: Path, data_dir: Path, port: int, args: argparse.Namespace, extra_env: Optional[dict] = None
          ) -> subprocess.Popen:
    env = {**os.environ, "COVERID_MODEL_PATH": str(model), "COVERID_DATA_DIR": str(data_dir), "COVERID_DEVICE": "cpu",
           "COVERID_LOG_LEVEL": "warning", "COVERID_K_NEIGHBOURS": str(args.k), "COVERID_EF_SEARCH": str(args.ef),
           "COVERID_HNSW_M": str(args.m), "COVERID_HNSW_EF_CONSTRUCTION": str(args.ef_construction), **(extra_env or {})}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                                "--log-level", "warning"], env=env)
    for _ in range(6000):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the service did not become ready")


def identify_times(port: int, clip: bytes, requests: int) -> tuple[list[float], list[dict]]:
    """POST /identify of `clip` `requests` times after a warm-up: each one's wall time (s) and its timings_ms."""
    latencies, stages = [], []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        client.post("/identify", files={"file": ("clip.flac", clip)})  # warm-up
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post("/identify", files={"file": ("clip.flac", clip)})
            latencies.append(time.perf_counter() - started)
            stages.append(response.raise_for_status().json()["timings_ms"])
    return latencies, stages


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def catalogue_arguments(parser: argparse.ArgumentParser) -> None:
    """The synthetic catalogue's shape and the search settings, as this script and milvus_backend.py take them."""
    parser.add_argument("--chunks", type=int, default=17, help="local embeddings per track: 17 is a 3-minute track")
    parser.add_argument("--versions", type=int, default=10, help="catalogue tracks per work")
    parser.add_argument("--query-chunks", type=int, default=2, help="2 is a 30 s clip (20 s chunks, 10 s hop)")
    parser.add_argument("--correlation", type=float, default=0.75,
                        help="of a version's (and a query's) deviation with its work's content")
    parser.add_argument("--shape", choices=["model", "isotropic"], default="model",
                        help="of the synthetic embeddings (see synthetic.py)")
    # defaults: the service's (index/defaults.py)
    parser.add_argument("--k", type=int, default=K_NEIGHBOURS, help="HNSW neighbours per query chunk")
    parser.add_argument("--ef", type=int, default=EF_SEARCH, help="HNSW query beam")
    parser.add_argument("--m", type=int, default=HNSW_M, help="HNSW links per node")
    parser.add_argument("--ef-construction", type=int, default=EF_CONSTRUCTION)
    parser.add_argument("--model", type=Path, default=Path("models/weights/extractor.pt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, nargs="+", default=[1000])
    catalogue_arguments(parser)
    parser.add_argument("--sweep", nargs="*", default=[], metavar="K:EF",
                        help="more (K, ef) pairs for the in-process comparison, e.g. 50:200 100:400")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--ingest-tracks", type=int, default=10)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    extractor = load_extractor(args.model, "cpu")
    dim, model_id = extractor.config.embedding_dim, extractor.model_id
    clip = audio_bytes(30.0, seed=7)
    shape = EmbeddingShape.named(args.shape, dim)
    print(f"# {args.model} ({model_id}); {args.chunks} chunks per track; {args.shape} shape; K {args.k}, "
          f"ef {args.ef}, M {args.m}, ef_construction {args.ef_construction}; median of {args.requests} requests")
    print("| tracks | fill (tracks/s) | identify p50 | identify p95 | two-stage | all-pairs | speed-up | recall@10 | "
          "server RSS | RSS per track | store per track |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tracks in args.tracks:
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            data_dir = Path(tmp)
            sampler = Sampler(shape, np.random.default_rng(tracks))
            stage3 = extractor.stage3 is not None
            index, contents, fill_rate = fill(data_dir, tracks, args, model_id, sampler,
                                              extractor.config.sequence_frame_seconds if stage3 else 0.0)
            asked = queries(contents, args.queries, args.chunks, args.query_chunks, sampler, args.correlation)
            settings = [(args.k, args.ef)] + [tuple(int(v) for v in pair.split(":")) for pair in args.sweep]
            compare, *others = sweep(index, asked, settings)
            print(f"# {tracks} tracks in process: fill {fill_rate:.0f} tracks/s, {compare}", flush=True)  # kept if the server fails
            for other in others:
                print(f"# {tracks} tracks in process, K {other['k']}, ef {other['ef']}: {other}", flush=True)
            del index, contents
            started = time.perf_counter()
            process = serve(args.model, data_dir, args.port, args)
            print(f"# {tracks} tracks: the server was ready {time.perf_counter() - started:.1f} s after its start "
                  "(cold start from the snapshot)", flush=True)
            try:
                latencies, stages = identify_times(args.port, clip, args.requests)
                rss = rss_mib(process.pid)
            finally:
                process.terminate()
                process.wait()
            store_mib = (data_dir / "catalog.sqlite3").stat().st_size / 2**20
            p50, p95 = np.percentile(latencies, [50, 95]) * 1000
            print(f"| {tracks} | {fill_rate:.0f} | {p50:.1f} ms | {p95:.1f} ms | {compare['two_stage_ms']:.2f} ms | "
                  f"{compare['all_pairs_ms']:.1f} ms | {compare['all_pairs_ms'] / compare['two_stage_ms']:.0f}x | "
                  f"{compare['recall_at_10']:.3f} | {rss:.0f} MiB | {1024 * rss / tracks:.1f} KiB | "
                  f"{1024 * store_mib / tracks:.1f} KiB |", flush=True)
            print(f"# {tracks} tracks, server-side stage medians (ms): "
                  + ", ".join(f"{name} {statistics.median(s[name] for s in stages):.1f}" for name in stages[0]), flush=True)
    # ingest throughput with real audio through HTTP
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        process = serve(args.model, Path(tmp), args.port, args)
        try:
            uploads = [audio_bytes(240.0, seed=100 + i) for i in range(args.ingest_tracks)]
            with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120) as client:
                t = time.perf_counter()
                for data in uploads:
                    client.post("/catalog", files={"file": ("t.flac", data)}).raise_for_status()
                elapsed = time.perf_counter() - t
        finally:
            process.terminate()
            process.wait()
    print(f"\ningest: {args.ingest_tracks} x 240 s FLAC over HTTP in {elapsed:.1f} s = "
          f"{240 * args.ingest_tracks / elapsed:.0f} s of audio per second")


if __name__ == "__main__":
    main()
