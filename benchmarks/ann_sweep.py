"""Two-stage search against all-pairs MaxMean over a grid of HNSW settings: recall@10 and time.

Builds a LocalIndex of synthetic tracks (`synthetic.catalogue`) once per (M, ef_construction),
computes the all-pairs top 10 of every query once, then for every (K, ef) times the two-stage
search and scores its top 10 against the all-pairs top 10. The index alone, without the store:
`benchmarks/service.py` measures the same index code behind the service.

    .venv/bin/python benchmarks/ann_sweep.py --tracks 20000 --shape model isotropic --k 50 100 --ef 100 400
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
from synthetic import EmbeddingShape, Sampler, add_in_batches, queries

from index.defaults import EF_CONSTRUCTION, EF_SEARCH, HNSW_M, K_NEIGHBOURS
from index.local_index import LocalIndex


def build(tracks: int, versions: int, chunks: int, sampler: Sampler, correlation: float, m: int,
          ef_construction: int) -> tuple[LocalIndex, list[np.ndarray], float]:
    """The index, each work's content, and the seconds the build took (1,000 tracks per add_many)."""
    index = LocalIndex(sampler.dim, m=m, ef_construction=ef_construction, initial_capacity=tracks * chunks + 1024)
    starts = np.arange(chunks) * 10.0
    started = time.perf_counter()
    contents = add_in_batches(index.add_many, lambda track_id, vectors: (track_id, vectors, starts),
                              tracks, versions, chunks, sampler, correlation)
    return index, contents, time.perf_counter() - started


def sweep(index: LocalIndex, queries: list[np.ndarray], settings: list[tuple[int, int]]) -> list[dict]:
    """For each (K, ef): median two-stage time, recall@10 and top-1 agreement against all-pairs MaxMean."""
    exact, all_pairs_s = [], []
    for rows in queries:
        started = time.perf_counter()
        exact.append([m.track_id for m in index.search_exhaustive(rows, top_k=10)])
        all_pairs_s.append(time.perf_counter() - started)
    results = []
    for k, ef in settings:
        index.set_search(k_neighbours=k, ef_search=ef)
        two_stage_s, recalls, top1 = [], [], []
        for rows, truth in zip(queries, exact):
            started = time.perf_counter()
            found = [m.track_id for m in index.search(rows, top_k=10)]
            two_stage_s.append(time.perf_counter() - started)
            recalls.append(len(set(found) & set(truth)) / len(truth))
            top1.append(found[:1] == truth[:1])
        results.append({"k": k, "ef": index.ef, "two_stage_ms": 1000 * statistics.median(two_stage_s),
                        "all_pairs_ms": 1000 * statistics.median(all_pairs_s),
                        "recall_at_10": float(np.mean(recalls)), "worst_recall": float(np.min(recalls)),
                        "top1_agreement": float(np.mean(top1))})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=20000)
    parser.add_argument("--chunks", type=int, default=17, help="local embeddings per track: 17 is a 3-minute track")
    parser.add_argument("--versions", type=int, default=10, help="catalogue tracks per work")
    parser.add_argument("--query-chunks", type=int, default=2, help="2 is a 30 s clip (20 s chunks, 10 s hop)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--correlation", type=float, default=0.75,
                        help="of a version's (and a query's) deviation with its work's content")
    parser.add_argument("--shape", nargs="+", choices=["model", "isotropic"], default=["model"])
    parser.add_argument("--m", type=int, nargs="+", default=[HNSW_M])  # defaults: the service's (index/defaults.py)
    parser.add_argument("--ef-construction", type=int, nargs="+", default=[EF_CONSTRUCTION])
    parser.add_argument("--k", type=int, nargs="+", default=[K_NEIGHBOURS])
    parser.add_argument("--ef", type=int, nargs="+", default=[EF_SEARCH])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"# {args.tracks} tracks x {args.chunks} chunks, works of {args.versions}, {args.queries} queries of "
          f"{args.query_chunks} chunks, correlation {args.correlation}")
    print("| shape | M | ef_construction | build | K | ef | two-stage | all-pairs | speed-up | recall@10 | worst query | top-1 agrees |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape_name in args.shape:
        shape = EmbeddingShape.named(shape_name)
        for m in args.m:
            for ef_construction in args.ef_construction:
                sampler = Sampler(shape, np.random.default_rng(args.seed))
                index, contents, build_s = build(args.tracks, args.versions, args.chunks, sampler,
                                                 args.correlation, m, ef_construction)
                asked = queries(contents, args.queries, args.chunks, args.query_chunks, sampler, args.correlation)
                for r in sweep(index, asked, list(itertools.product(args.k, args.ef))):
                    print(f"| {shape_name} | {m} | {ef_construction} | {build_s:.0f} s | {r['k']} | {r['ef']} | "
                          f"{r['two_stage_ms']:.2f} ms | {r['all_pairs_ms']:.1f} ms | "
                          f"{r['all_pairs_ms'] / r['two_stage_ms']:.0f}x | {r['recall_at_10']:.3f} | "
                          f"{r['worst_recall']:.1f} | {r['top1_agreement']:.2f} |", flush=True)
                del index


if __name__ == "__main__":
    main()
