"""Stage 3's cost: the shipped artifact's analysis of a clip, and the alignment re-rank of the stage-2 top N.

Catalogue tracks are 3.5-minute pitch-class sequences at the artifact's sequence rate (random, so the
cost is that of real ones: the kernel does the same work whatever the values). For each query length
and N, the median of `--repeats` calls of index.fusion.rerank, as the service calls it; and the median
time of the artifact's `analyse` (CQT, pitch student, 2DFTM, sequence) on a clip of that length.

    .venv/bin/python benchmarks/stage3.py [--model models/weights/extractor.pt] [--threads 1]
"""

from __future__ import annotations

import argparse
import numpy as np
import torch

from index.fusion import rerank
from index.local_index import Match
from models.extractor import load_extractor
from extractor import median_ms  # benchmarks/extractor.py: the same timing rule

TRACK_SECONDS = 210.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/weights/extractor.pt")
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 30.0, 60.0])
    parser.add_argument("--top-n", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extractor = load_extractor(args.model, "cpu")
    if extractor.stage3 is None:
        raise SystemExit(f"{args.model} has no stage 3")
    fusion, alignment = extractor.stage3
    rng = np.random.default_rng(0)
    frame_s = extractor.config.sequence_frame_seconds
    frames = int(TRACK_SECONDS / frame_s)
    catalogue = [rng.integers(0, 256, (12, frames), dtype=np.uint8) for _ in range(max(args.top_n))]
    rate = extractor.config.sample_rate
    print(f"model {extractor.model_id}, {args.threads} thread(s); tracks of {TRACK_SECONDS:g} s = {frames} frames")
    print("| query | analyse (ms) | " + " | ".join(f"rerank N={n} (ms)" for n in args.top_n) + " |")
    print("|---|---|" + "---|" * len(args.top_n))
    for seconds in args.lengths:
        waveform = torch.from_numpy(rng.standard_normal(int(seconds * rate)).astype(np.float32) * 0.1)
        analyse = median_ms(lambda: extractor.embed_waveform(waveform), args.repeats)
        query = extractor.embed_waveform(waveform).sequence
        cells = []
        for n in args.top_n:
            matches = [Match(f"t{i}", 0.5, 0, 0, 0.0, 0.0) for i in range(n)]
            settings = fusion.__class__(**{**fusion.__dict__, "top_n": n})
            cells.append(median_ms(lambda: rerank(matches, query, catalogue[:n], seconds, frame_s, settings, alignment),
                                   args.repeats))
        print(f"| {seconds:g} s | {analyse:.1f} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
