"""How large K must be for stage 1 to reach the all-pairs top 10, with EXACT neighbours, as the catalogue grows.

Stage 1 keeps each query chunk's K nearest stored chunks; a track none of them belongs to is never reranked. With
exact neighbours (no graph error at all) the recall@10 of stages 1 and 2 against all-pairs MaxMean is then bounded
by K alone: this script measures that bound in the synthetic catalogue of `synthetic.py` (the shipped model's
measured shape), without building a graph. Vectors are generated block by block (float16 between blocks) and the
K nearest kept by partial sorts, so a million tracks fit in about 7 GB and five minutes on one core.

`--whiten ALPHA` ranks stage 1 in a whitened space instead (x -> C^(-ALPHA/2) (x - mean), unit length; C the
covariance of the first block), with the rerank and the all-pairs reference still on the stored vectors: the
lever of a first-stage space where unrelated chunks stop crowding into the same few directions.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exact_stage1.py --tracks 1000000 --queries 200 [--whiten 0.5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from synthetic import EmbeddingShape, Sampler, catalogue, queries

KS = [50, 100, 200, 400, 800, 1600, 3200]
BLOCK_TRACKS = 5000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--whiten", type=float, default=0.0, help="stage 1's whitening power: 0 none, 1 full")
    parser.add_argument("--chunks", type=int, default=17)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--correlation", type=float, default=0.75)
    args = parser.parse_args()
    started = time.time()
    sampler = Sampler(EmbeddingShape.load(), np.random.default_rng(args.tracks))
    blocks, contents, pending = [], [], []
    for content, tracks in catalogue(args.tracks // args.versions, args.versions, args.chunks, sampler, args.correlation):
        contents.append(content)
        pending.extend(vectors for _, vectors in tracks)
        if len(pending) >= BLOCK_TRACKS:
            blocks.append(np.stack(pending).astype(np.float16))
            pending = []
    if pending:
        blocks.append(np.stack(pending).astype(np.float16))
    asked = np.concatenate(queries(contents, args.queries, args.chunks, 2, sampler, args.correlation))  # (2 Q, dim)
    stage1 = whitening(blocks[0].astype(np.float32).reshape(-1, asked.shape[1]), args.whiten)
    asked1 = stage1(asked)
    kmax = KS[-1]
    near_scores = np.full((len(asked), kmax), -9, np.float32)  # each query chunk's kmax nearest so far
    near_slots = np.zeros((len(asked), kmax), np.int64)
    best_scores = np.full((args.queries, 10), -9, np.float32)  # each query's all-pairs top 10 so far
    best_tracks = np.zeros((args.queries, 10), np.int64)
    first = 0
    for block in blocks:
        vectors = block.astype(np.float32).reshape(-1, asked.shape[1])
        cosines = asked @ vectors.T
        nearness = asked1 @ stage1(vectors).T if args.whiten else cosines
        slots = first * args.chunks + np.arange(len(vectors))
        near_scores, near_slots = keep_top(near_scores, near_slots, nearness, slots, kmax)
        maxmean = cosines.reshape(args.queries, 2, len(block), args.chunks).max(axis=3).mean(axis=1)
        best_scores, best_tracks = keep_top(best_scores, best_tracks, maxmean, first + np.arange(len(block)), 10)
        first += len(block)
    order = np.argsort(-near_scores, axis=1)
    near_tracks = np.take_along_axis(near_slots, order, axis=1) // args.chunks  # nearest first
    print(f"# {args.tracks} tracks x {args.chunks} chunks, {args.queries} two-chunk queries, whitening {args.whiten}; "
          f"{time.time() - started:.0f} s")
    print("| K | recall@10 with exact stage 1 |\n|---|---|")
    for k in KS:
        recall = [np.mean([t in set(near_tracks[2 * q, :k]) | set(near_tracks[2 * q + 1, :k]) for t in best_tracks[q]])
                  for q in range(args.queries)]
        print(f"| {k} | {np.mean(recall):.4f} |", flush=True)


def whitening(sample: np.ndarray, power: float):
    """x -> unit(C^(-power/2) (x - mean)) with C the sample's covariance; the identity (unit x) for power 0."""
    mean = sample.mean(axis=0)
    eigenvalues, basis = np.linalg.eigh(np.cov((sample - mean).T))
    transform = (basis * eigenvalues ** (-power / 2)) @ basis.T

    def apply(x: np.ndarray) -> np.ndarray:
        y = (x - mean) @ transform.T if power else x
        return (y / np.linalg.norm(y, axis=-1, keepdims=True)).astype(np.float32)
    return apply


def keep_top(scores: np.ndarray, labels: np.ndarray, new_scores: np.ndarray, new_labels: np.ndarray, k: int):
    """Each row's k highest of (scores, new_scores) with their labels, unordered."""
    every = np.concatenate([scores, new_scores], axis=1)
    every_labels = np.concatenate([labels, np.broadcast_to(new_labels, new_scores.shape)], axis=1)
    top = np.argpartition(-every, k - 1, axis=1)[:, :k]
    return np.take_along_axis(every, top, axis=1), np.take_along_axis(every_labels, top, axis=1)


if __name__ == "__main__":
    main()
