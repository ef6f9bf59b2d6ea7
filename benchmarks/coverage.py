"""How large K must be, without HNSW: recall@10 of exact per-chunk top-K candidates against all-pairs MaxMean.

Stage one of the two-stage search makes a track a candidate when one of its chunks is among the K
nearest of some query chunk. This measures that rule with exact nearest neighbours (one matrix
product), so the loss it shows is K's alone; what `ann_sweep.py` loses beyond it is HNSW's.

    .venv/bin/python benchmarks/coverage.py --tracks 100000 --k 50 100 200 400 800
"""

from __future__ import annotations

import argparse

import numpy as np
from synthetic import EmbeddingShape, Sampler, catalogue, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100000)
    parser.add_argument("--chunks", type=int, default=17)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--query-chunks", type=int, default=2)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--correlation", type=float, default=0.75)
    parser.add_argument("--shape", choices=["model", "isotropic"], default="model")
    parser.add_argument("--k", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = EmbeddingShape.named(args.shape)
    sampler = Sampler(shape, np.random.default_rng(args.seed))
    vectors = np.empty((args.tracks * args.chunks, shape.dim), dtype=np.float32)
    contents = []
    for content, tracks in catalogue(args.tracks // args.versions, args.versions, args.chunks, sampler,
                                     args.correlation):
        first = len(contents) * args.versions * args.chunks
        vectors[first : first + len(tracks) * args.chunks] = np.concatenate([rows for _, rows in tracks])
        contents.append(content)
    owner = np.repeat(np.arange(args.tracks), args.chunks)
    recalls: dict[int, list[float]] = {k: [] for k in args.k}
    for rows in queries(contents, args.queries, args.chunks, args.query_chunks, sampler, args.correlation):
        table = rows @ vectors.T  # (query chunks, catalogue chunks)
        # MaxMean with the query (the shorter side) first: best chunk per query chunk, meaned
        scores = table.reshape(len(rows), args.tracks, args.chunks).max(axis=2).mean(axis=0)
        top10 = set(np.argpartition(-scores, 10)[:10].tolist())
        for k in args.k:
            candidates = set(owner[np.argpartition(-table, k, axis=1)[:, :k].ravel()].tolist())
            recalls[k].append(len(top10 & candidates) / 10)
    print(f"# {args.tracks} tracks x {args.chunks} chunks, {args.shape} shape, {args.queries} queries of "
          f"{args.query_chunks} chunks")
    print("| K | recall@10 of exact top-K candidates | worst query |")
    print("|---|---|---|")
    for k, values in recalls.items():
        print(f"| {k} | {np.mean(values):.3f} | {min(values):.1f} |")


if __name__ == "__main__":
    main()
