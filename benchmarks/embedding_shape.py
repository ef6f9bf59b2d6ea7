"""Measure the shape of the shipped model's local embeddings for the synthetic benchmark catalogues.

Embeds the cached renders of a corpus split (or, with --audio, real recordings through the artifact's own
front end: the game soundtracks the shipped 2DFTM head was fitted on) with an extractor artifact and writes the mean's
length and the covariance spectrum of the unit embeddings (see `synthetic.EmbeddingShape`) to
benchmarks/embedding_shape.json, with where they came from. The basis itself is not kept: the
benchmarks draw a random one, which changes no distance statistics.

    .venv/bin/python benchmarks/embedding_shape.py [--cache cache/corpus] [--works 400]
    .venv/bin/python benchmarks/embedding_shape.py --audio /usr/share/games/warzone2100/music ... --cache cache/fit
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from synthetic import MODEL_SHAPE_FILE, EmbeddingShape
from models.training.dataset import FeatureCorpus
from models.training.distil import audio_files
from models.training.recording_list import cached_features, feature_key
from models.extractor import load_extractor
from models.training.train import artifact_embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/weights/extractor.pt"))
    parser.add_argument("--cache", type=Path, default=Path("cache/corpus"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--works", type=int, default=400)
    parser.add_argument("--audio", type=Path, nargs="+", default=[],
                        help="folders of real recordings to embed instead of a corpus split (features cached in --cache)")
    parser.add_argument("--out", type=Path, default=MODEL_SHAPE_FILE)
    args = parser.parse_args()
    extractor = load_extractor(args.model, "cpu")
    embed = artifact_embedder(extractor.module)
    if args.audio:
        files = audio_files(args.audio)
        spectrograms = cached_features(files, extractor.module.frontend.spectrogram, extractor.config.sample_rate,
                                       args.cache, feature_key(extractor.config), skipped=[])
        source = f"{len(spectrograms)} recordings under {', '.join(map(str, args.audio))}"
    else:
        corpus = FeatureCorpus.from_cache(args.cache, args.split, limit_works=args.works)
        spectrograms = [s for versions in corpus.versions for s in versions]
        source = f"{args.cache}/{args.split}: {len(corpus.work_ids)} works, {corpus.version_count} versions"
    vectors = np.concatenate([embed(torch.from_numpy(s)).numpy() for s in spectrograms])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    eigenvalues = np.clip(np.sort(np.linalg.eigvalsh(np.cov(vectors.T)))[::-1], 0.0, None)
    shape = EmbeddingShape(float(np.linalg.norm(vectors.mean(axis=0))), eigenvalues)
    args.out.write_text(json.dumps({
        "model_id": extractor.model_id,
        "source": f"{source}, {len(vectors)} local embeddings",
        "mean_norm": round(shape.mean_norm, 5),
        "participation_ratio": round(shape.participation_ratio, 2),
        "eigenvalues": [float(f"{v:.4g}") for v in eigenvalues],
    }, indent=1) + "\n")
    print(f"{args.out}: mean norm {shape.mean_norm:.3f}, participation ratio {shape.participation_ratio:.1f} "
          f"of {len(eigenvalues)} dimensions, from {len(vectors)} embeddings")


if __name__ == "__main__":
    main()
