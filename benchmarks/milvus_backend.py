"""The first stage in Milvus, measured as `service.py` measures the in-process index: recall, latency, memory, fill.

A Milvus server (milvus-lite's gRPC server, in its own process, as a deployment runs Milvus) holds the first
stage; the catalogue is SQLite. The synthetic catalogue is `service.py`'s, with the same seeds, so a run of
both scripts at one size compares the backends on the same tracks and queries:
- fill: tracks per second through `Catalog.ingest_many` (store, then engine), 1,000 tracks per batch;
- recall@10 of the served search (engine stage 1, MaxMean over the candidates read from the store) against
  all-pairs MaxMean over every stored vector, and the median time of each;
- identify: p50/p95 of POST /identify with a real 30 s clip, the service started with COVERID_MILVUS_URI;
- memory: resident memory of the engine's process and of the service's.

    .venv/bin/python benchmarks/milvus_backend.py --tracks 10000
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from service import audio_bytes, catalogue_arguments, identify_times, rss_mib, serve
from synthetic import EmbeddingShape, Sampler, add_in_batches, queries

from app.catalog import Catalog, IndexSettings
from app.settings import Settings
from app.store import SQLiteStore, TrackRecord
from models.extractor import load_extractor


def start_engine(directory: Path, port: int) -> subprocess.Popen:
    # the engine builds its graph with every core, as hnswlib does for the in-process index, whatever the
    # OMP_NUM_THREADS that keeps the service's torch on one thread
    env = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
    process = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(directory),
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    for _ in range(600):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    raise RuntimeError("the Milvus server did not listen")


def all_pairs_top10(vectors: np.ndarray, offsets: np.ndarray, track_ids: list[str], rows: np.ndarray) -> list[str]:
    """MaxMean of a short query (rows no more than any track's chunks) against every track: its top 10."""
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    scores = np.maximum.reduceat(rows @ vectors.T, offsets, axis=1).mean(axis=0)
    return [track_ids[i] for i in np.argsort(-scores, kind="stable")[:10]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=10000)
    catalogue_arguments(parser)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--engine-port", type=int, default=19531)
    args = parser.parse_args()
    extractor = load_extractor(args.model, "cpu")
    dim, model_id = extractor.config.embedding_dim, extractor.model_id
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        data_dir = Path(tmp)
        engine = start_engine(data_dir / "milvus", args.engine_port)
        uri = f"http://127.0.0.1:{args.engine_port}"
        try:
            store = SQLiteStore(data_dir)
            settings = IndexSettings(dim, args.k, args.ef, args.m, args.ef_construction, engine_uri=uri,
                                     engine_collection="bench")
            catalog, _ = Catalog.open(store, model_id, data_dir / "index.snapshot", settings, Settings().retry_after_s)
            sampler = Sampler(EmbeddingShape.named(args.shape, dim), np.random.default_rng(args.tracks))  # service.py's seeds
            frames = int((10.0 * args.chunks + 10) / extractor.config.sequence_frame_seconds)
            rng = np.random.default_rng(args.tracks)
            starts = (np.arange(args.chunks) * 10.0).astype(np.float32)
            held: list[np.ndarray] = []
            track_ids: list[str] = []

            def record(track_id: str, vectors: np.ndarray) -> TrackRecord:
                held.append(vectors)
                track_ids.append(track_id)
                return TrackRecord(track_id, None, None, {}, 10.0 * args.chunks + 10, model_id, time.time(), vectors,
                                   starts, rng.integers(0, 256, (12, frames), dtype=np.uint8))

            started = time.perf_counter()
            contents = add_in_batches(catalog.ingest_many, record, args.tracks, args.versions, args.chunks, sampler,
                                      args.correlation)
            catalog._index.flush()  # a bulk load ends by sealing what it wrote, which the engine then indexes
            fill_rate = args.tracks / (time.perf_counter() - started)
            print(f"# fill {fill_rate:.0f} tracks/s", flush=True)
            vectors = np.concatenate(held)
            offsets = np.arange(0, len(vectors), args.chunks)
            asked = queries(contents, args.queries, args.chunks, args.query_chunks, sampler, args.correlation)
            served_s, exact_s, recalls = [], [], []
            for rows in asked:
                t = time.perf_counter()
                truth = all_pairs_top10(vectors, offsets, track_ids, rows)
                exact_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                found = [m.track_id for m in catalog.search(rows, top_k=10)]
                served_s.append(time.perf_counter() - t)
                recalls.append(len(set(found) & set(truth)) / 10)
            print(f"# in process: served {1000 * statistics.median(served_s):.1f} ms, all-pairs "
                  f"{1000 * statistics.median(exact_s):.1f} ms, recall@10 {np.mean(recalls):.3f} (worst "
                  f"{np.min(recalls):.1f})", flush=True)
            catalog.close()
            held.clear()
            service = serve(args.model, data_dir, args.port, args, {"COVERID_MILVUS_URI": uri,
                                                                    "COVERID_MILVUS_COLLECTION": "bench"})
            try:
                latencies, stages = identify_times(args.port, audio_bytes(30.0, seed=7), args.requests)
                service_rss, engine_rss = rss_mib(service.pid), rss_mib(engine.pid)
            finally:
                service.terminate()
                service.wait()
        finally:
            engine.terminate()
            engine.wait()
    p50, p95 = np.percentile(latencies, [50, 95]) * 1000
    print("| backend | tracks | fill (tracks/s) | identify p50 | identify p95 | served / all-pairs in process | "
          "recall@10 | service RSS | engine RSS |")
    print(f"| Milvus (milvus-lite server) | {args.tracks} | {fill_rate:.0f} | {p50:.1f} ms | {p95:.1f} ms | "
          f"{1000 * statistics.median(served_s):.1f} / {1000 * statistics.median(exact_s):.1f} ms | "
          f"{np.mean(recalls):.3f} | {service_rss:.0f} MiB | {engine_rss:.0f} MiB |")
    print("# server-side stage medians (ms): "
          + ", ".join(f"{name} {statistics.median(s[name] for s in stages):.1f}" for name in stages[0]))


if __name__ == "__main__":
    main()
