"""`coverid`: the command-line entry point (declared in pyproject.toml). Parses, calls, prints."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

from app.settings import get_settings
from models.audio import AudioError
from models.config import ExtractorConfig
from models.extractor import ArtifactError, export_extractor, load_extractor
from models.network import ResNetIBN
from models.synth import random_tune, render_notes


def _cmd_export(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    config = ExtractorConfig(width=args.width, time_pool=args.time_pool, model_version="untrained")
    if args.output.exists() and args.if_missing:
        print(f"{args.output} exists; kept")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    stored = export_extractor(ResNetIBN.from_config(config).eval(), config, args.output)
    print(f"wrote {args.output} (model_id {stored.model_id}, width {stored.width}, untrained weights)")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    settings = get_settings()
    extractor = load_extractor(args.model or settings.model_path, args.device or settings.device)
    result = extractor.embed(args.file, max_seconds=settings.max_track_seconds)
    print(f"model {extractor.model_id} on {extractor.device}")
    print(f"{args.file}: {result.duration_s:.2f} s -> embeddings {tuple(result.vectors.shape)}")
    print("chunk starts (s): " + ", ".join(f"{s:.2f}" for s in result.starts_s.tolist()))
    return 0


def _cmd_demo_audio(args: argparse.Namespace) -> int:
    rate = 22050
    audio = render_notes(random_tune(args.seconds, seed=args.seed), rate, args.seconds, seed=args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sf.write(args.output, audio, rate)
    print(f"wrote {args.output} ({args.seconds:g} s)")
    return 0


def _progress_line(label: str):
    """A progress callback printing one updating line to stderr."""
    started = time.monotonic()

    def report(done: int, total: int, failed: int) -> None:
        elapsed = time.monotonic() - started
        print(f"\r{label}: {done}/{total} ({failed} failed) {elapsed:.0f} s", end="" if done < total else "\n",
              file=sys.stderr, flush=True)

    return report


def _cmd_corpus(args: argparse.Namespace) -> int:
    from models.corpus.build import build, plan_jobs
    from models.corpus.works import asap_works, pop909_works, procedural_works

    works = []
    if "valid" in args.splits:
        works += asap_works(args.data / "asap")
    if "train" in args.splits:
        works += pop909_works(args.data / "pop909")[: args.pop909_works] + procedural_works(args.procedural, args.seed)
    jobs = plan_jobs(works, args.versions, args.seed, args.seconds)
    done, errors = build(jobs, args.cache, ExtractorConfig(), args.workers, _progress_line("rendering"))
    for error in errors[:20]:
        print(f"skipped: {error}", file=sys.stderr)
    print(f"{done} of {len(jobs)} versions cached in {args.cache} ({len(errors)} failed)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coverid", description="Cover song identification on short clips")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="write an extractor artifact with freshly initialised weights")
    export.add_argument("--output", type=Path, required=True)
    export.add_argument("--width", type=int, default=ExtractorConfig.width, help="base width; 64 gives C = 2048")
    export.add_argument("--time-pool", type=int, default=ExtractorConfig.time_pool)
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--if-missing", action="store_true", help="keep an existing file")
    export.set_defaults(run=_cmd_export)

    embed = commands.add_parser("embed", help="print the local embeddings' shape and chunk times of an audio file")
    embed.add_argument("file", type=Path)
    embed.add_argument("--model", type=Path, help="extractor artifact (default: COVERID_MODEL_PATH)")
    embed.add_argument("--device", help="auto, cpu or cuda (default: COVERID_DEVICE)")
    embed.set_defaults(run=_cmd_embed)

    corpus = commands.add_parser("corpus", help="render MIDI works into versions and cache their CQT features")
    corpus.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding pop909/ and asap/")
    corpus.add_argument("--cache", type=Path, default=Path("cache/corpus"))
    corpus.add_argument("--splits", nargs="+", default=["valid", "train"], choices=["train", "valid"])
    corpus.add_argument("--versions", type=int, default=3, help="rendered versions per training work")
    corpus.add_argument("--pop909-works", type=int, default=909)
    corpus.add_argument("--procedural", type=int, default=300, help="invented works added to training")
    corpus.add_argument("--seconds", type=float, default=75.0, help="cap on a version's rendered length")
    corpus.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.set_defaults(run=_cmd_corpus)

    demo = commands.add_parser("demo-audio", help="write a synthetic tune to an audio file")
    demo.add_argument("output", type=Path)
    demo.add_argument("--seconds", type=float, default=45.0)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_cmd_demo_audio)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (AudioError, ArtifactError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
