"""The model commands of `coverid`: export, embed, corpus, train, evaluate, calibrate, distil, examples, demo-audio.

Registered by app/cli.py only when one of them (or the whole help) is asked for, so the service's
commands never load torch or the training room. Each parses, calls a library function, prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional

import soundfile as sf
import torch

from app.console import progress_line
from app.settings import SHIPPED_MODEL, get_settings
from index.alignment import AlignmentSettings
from index.defaults import calibration_beside
from index.fusion import FusionSettings
from models.audio import AudioError
from models.config import FEATURES, ExtractorConfig
from models.extractor import ArtifactError, export_extractor, load_extractor
from models.network import ResNetIBN
from models.pitch_student import StudentWeightsError, installed_student_id
from models.training.dataset import BatchPlan
from models.training.recording_list import RecordingListError
from models.training.distil import DistilConfig
from models.training.synth import random_tune, render_notes

DATA = Path("../shared/data")
FOURIER_TIME_POOL = 9  # 2DFTM frame rate: 22050 / 512 / 9 = 4.8 frames/s
# what a user can fix: printed as one line, exit status 2
USER_ERRORS = (AudioError, ArtifactError, StudentWeightsError, RecordingListError)


def _cmd_export(args: argparse.Namespace) -> int:
    if args.output.exists() and args.if_missing:
        print(f"{args.output} exists; kept")
        return 0
    if args.checkpoint:
        from models.training.train import load_checkpoint

        network, config, state = load_checkpoint(args.checkpoint)
        corpus = state["corpus"]
        if args.features and args.features != config.features:
            # the pitch features and the student's are both 88 note rows on the CQT grid: one can stand in for the other
            if {args.features, config.features} != {"pitch", "student"}:
                raise ArtifactError(f"a network trained on {config.features} features cannot read {args.features}")
            config = config.replace(features=args.features, pitch_student_id=installed_student_id(args.features))
        config = config.replace(
            model_version=args.version or f"step{state['step']}",
            training_data=args.training_data or f"{corpus['works']} works, {corpus['versions']} rendered versions",
        )
    elif args.head == "2dftm":
        network, config = _fitted_2dftm(args)
    else:
        torch.manual_seed(args.seed)
        config = ExtractorConfig(width=args.width, time_pool=args.time_pool or ExtractorConfig.time_pool,
                                 model_version="untrained")
        network = ResNetIBN.from_config(config).eval()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    stored = export_extractor(network, config, args.output)
    shape = f"2DFTM head, patch {stored.patch_frames}, {stored.embedding_dim}-d" if stored.head == "2dftm" else \
        f"width {stored.width}"
    print(f"wrote {args.output} (model_id {stored.model_id}, {shape}, time_pool {stored.time_pool})")
    return 0


def _fitted_2dftm(args: argparse.Namespace):
    """The local 2DFTM head on note features, its projection fitted on the real recordings under --fit-audio."""
    from models.fourier import fourier_dim
    from models.training.fit_fourier import fitted_2dftm

    features = args.features or "student"
    config = ExtractorConfig(features=features, pitch_student_id=installed_student_id(features), head="2dftm",
                             time_pool=args.time_pool or FOURIER_TIME_POOL, log_gain=0.0, patch_frames=args.patch_frames,
                             fourier_power=args.power,
                             embedding_dim=args.embedding_dim if args.fit_audio else fourier_dim(args.patch_frames))
    skipped: list[str] = []
    head, summary = fitted_2dftm(config, args.fit_audio, args.fit_cache, args.whiten, args.seed,
                                 progress_line(f"{features} features of the fit audio", with_failures=False), skipped)
    for error in skipped:
        print(f"skipped: {error}", file=sys.stderr)
    # stage 3's settings travel in the artifact, written out in full, so a later change of a default cannot
    # change what this artifact computes
    stage3 = {**dataclasses.asdict(FusionSettings(top_n=args.stage3_top_n, short_weight=args.fusion_weights[0],
                                                  long_weight=args.fusion_weights[1])),
              **dataclasses.asdict(AlignmentSettings())}
    config = config.replace(model_version=args.version or f"2dftm-p{config.patch_frames}-d{config.embedding_dim}",
                            training_data=args.training_data or summary, stage3=stage3)
    return head, config


def _cmd_distil(args: argparse.Namespace) -> int:
    import shutil

    from models.training.distil import DistilConfig, audio_files, distil, pairs
    from models.pitch_student import DEFAULT_WEIGHTS

    torch.set_num_threads(args.threads)
    files = audio_files(args.audio)
    skipped: list[str] = []
    arrays = pairs(files, args.cache, progress_line("teacher pairs", with_failures=False), skipped)
    for error in skipped:
        print(f"skipped: {error}", file=sys.stderr)
    config = DistilConfig(steps=args.steps, max_minutes=args.max_minutes, channels=args.channels, seed=args.seed)
    provenance = {"teacher": "basic-pitch 0.4.0 (models/weights/basic_pitch)",
                  "audio": [str(folder) for folder in args.audio], "files": len(arrays)}
    path = args.run_dir / "pitch_student.pt"
    if path.exists():  # a finished run is kept, so `make model` can be rerun after an interruption
        print(f"{path} exists; kept")
    else:
        path = distil(arrays, config, args.run_dir, provenance,
                      report=lambda r: print(json.dumps(r), file=sys.stderr, flush=True))
        print(f"wrote {path}")
    if args.install:
        DEFAULT_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DEFAULT_WEIGHTS)
        print(f"installed as {DEFAULT_WEIGHTS}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from models.training.dataset import FeatureCorpus
    from models.training.evaluation import rendered_recordings
    from models.training.train import TrainConfig, global_config, train, validation_callback

    torch.set_num_threads(args.threads)
    config = ExtractorConfig(width=args.width, time_pool=args.time_pool, features=args.features, log_gain=args.log_gain,
                             pitch_student_id=installed_student_id(args.features), fold_octaves=args.fold_octaves)
    if args.global_model:
        config = global_config(config)
    if args.csv:  # real recordings: work_id,performance_id,path
        corpus = FeatureCorpus.from_csv(args.csv, config, args.cache)
    else:
        corpus = FeatureCorpus.concat([FeatureCorpus.from_cache(cache, "train", limit_works=args.limit_works, expect=config)
                                       for cache in [args.cache, *args.extra_cache]])
    print(f"training on {corpus.summary()} -> {args.run_dir}", file=sys.stderr)
    plan = BatchPlan(works_per_batch=args.works_per_batch, versions_per_work=args.versions_per_work,
                     max_transpose_bins=args.transpose_bins, stretch=tuple(args.stretch),
                     background_probability=args.background_probability if args.backgrounds else 0.0,
                     clutter_per_second=args.clutter, smear_probability=args.smear)
    backgrounds = _backgrounds(args, config) if args.backgrounds else None
    train_config = TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed, batch=plan,
                               backgrounds=tuple(str(p) for p in args.backgrounds),
                               proxy_length=1 if args.global_model else args.proxy_length,
                               validate_every=args.validate_every, max_minutes=args.max_minutes,
                               init_from=str(args.init_from) if args.init_from else None)
    validate = None
    if args.validate_works:
        validate = validation_callback(rendered_recordings(args.cache, args.validate_works, args.data), config)
    train(corpus, config, train_config, args.run_dir, validate, report=lambda r: print(json.dumps(r), file=sys.stderr, flush=True),
          backgrounds=backgrounds)
    return 0


def _backgrounds(args: argparse.Namespace, config: ExtractorConfig) -> list:
    from models.training.distil import background_features

    skipped: list[str] = []
    arrays = background_features(args.backgrounds, args.background_cache, config, skipped)
    for message in skipped:
        print(f"background skipped: {message}", file=sys.stderr)
    return arrays


def _service_index(dim: int, k_neighbours: int):
    """The first stage as the service builds it (its HNSW M and ef), with the evaluation's K."""
    from index.local_index import LocalIndex

    settings = get_settings()
    return LocalIndex(dim, k_neighbours=k_neighbours, ef_search=settings.ef_search, m=settings.hnsw_m,
                      ef_construction=settings.hnsw_ef_construction)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from models.training.chroma_baseline import chroma_2dftm, pitch_2dftm
    from models.training.compare import Method, compare
    from models.training.evaluation import QUERY_SECONDS
    from models.training.train import artifact_embedder

    torch.set_num_threads(args.threads)
    methods = []
    for spec in args.model:
        name, _, path = spec.partition("=")
        loaded = load_extractor(path, "cpu")
        calibration = args.calibration or calibration_beside(path)
        stage3 = None if args.no_stage3 else _stage3(loaded, calibration, get_settings().false_match_rate)
        methods.append(Method(name, loaded.config, artifact_embedder(loaded.module), loaded.module.frontend.spectrogram,
                              stage3))
    if args.chroma:
        methods.append(Method("2DFTM chroma (no learning)", ExtractorConfig(), chroma_2dftm))
    if args.pitch_chroma:
        methods.append(Method("2DFTM basic-pitch chroma (no learning)", ExtractorConfig(features="pitch"), pitch_2dftm))
    if args.student_chroma:
        student = ExtractorConfig(features="student", pitch_student_id=installed_student_id("student"))
        methods.append(Method("2DFTM pitch-student chroma", student, pitch_2dftm))
    results = {}
    for previous in args.include:  # results computed earlier with the same protocol (same recordings and seed)
        results.update(json.loads(previous.read_text()))
    results.update(compare(
        methods, csv=args.csv, cache=args.cache, data=args.data, limit_works=args.limit_works, seed=args.seed,
        k_neighbours=args.k or get_settings().k_neighbours, exhaustive=not args.two_stage_only,
        lengths=args.lengths or QUERY_SECONDS, query_shift=args.query_shift, clips_per_length=args.clips_per_length,
        index_factory=_service_index,
        progress=lambda label: progress_line(label, with_failures=False),
        report=lambda line: print(line, file=sys.stderr, flush=True)))
    from models.training.evaluation import write_report

    written = write_report(results, args.out)
    print(Path(written["markdown"]).read_text())
    return 0


def _stage3(loaded, calibration_path: Optional[Path] = None, false_match_rate: float = 0.01):
    """The artifact's stage 3 as the evaluation runs it, with the match decision when a calibration for this model
    and these stage-3 settings is at `calibration_path`; None when the artifact has no stage 3."""
    from app.pipeline import load_decision
    from models.training.evaluation import Stage3

    if loaded.stage3 is None:
        return None
    calibration = None
    if calibration_path is not None and calibration_path.is_file():
        decision, mismatch = load_decision(calibration_path, false_match_rate, loaded)
        if decision is None:
            print(f"calibration {calibration_path} not used: {mismatch}", file=sys.stderr)
        else:
            calibration = decision.calibration
    return Stage3(loaded.module.frontend.pitch_sequence, *loaded.stage3, calibration, false_match_rate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from models.training.calibrate import absent_work_bests, fit_calibration
    from models.training.distil import audio_files
    from models.training.evaluation import Recording
    from models.training.recording_list import cached_features, feature_key
    from models.training.train import artifact_embedder

    torch.set_num_threads(args.threads)
    loaded = load_extractor(args.model, "cpu")
    stage3 = _stage3(loaded)
    if stage3 is None:
        raise ArtifactError(f"{args.model} has no stage 3: its scores are MaxMean only, which this fit does not cover")
    recordings, skipped = [], []
    listed = audio_files(args.audio)
    sources = {rec.performance_id: next(str(f) for f in args.audio if rec.path.is_relative_to(Path(f).resolve()))
               for rec in listed}
    show = progress_line("features", with_failures=False)
    for done, rec in enumerate(listed, start=1):
        arrays = cached_features([rec], loaded.module.frontend.spectrogram, loaded.config.sample_rate, args.cache,
                                 feature_key(loaded.config), skipped=skipped)
        recordings += [Recording(rec.performance_id, rec.performance_id, torch.from_numpy(a)) for a in arrays]
        show(done, len(listed))
    for error in skipped:
        print(f"skipped: {error}", file=sys.stderr)
    bests, ranked_against = absent_work_bests(
        artifact_embedder(loaded.module), recordings, stage3, loaded.config.frame_seconds, seed=args.seed,
        clips_per_length=args.clips_per_length, k_neighbours=get_settings().k_neighbours, index_factory=_service_index,
        progress=progress_line("clips", with_failures=False),
        sources={r.recording_id: sources[r.recording_id] for r in recordings} if len(args.audio) > 1 else None)
    if args.bests_out:  # the raw bests, to look at their tail or refit without the hour of queries
        args.bests_out.write_text(json.dumps({f"{s:g}": b for s, b in sorted(bests.items())}) + "\n")
    fitted_on = (f"{len(recordings)} real recordings under {', '.join(map(str, args.audio))}, each its own work; "
                 f"{args.clips_per_length} clips per length, each against the recordings of the other folders "
                 f"({ranked_against:.0f} on average)")
    calibration = fit_calibration(bests, loaded.model_id, stage3, round(ranked_against), fitted_on)
    out = args.out or calibration_beside(args.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    calibration.save(out)
    rate = get_settings().false_match_rate
    for fit in calibration.lengths:
        threshold = calibration.threshold(fit.seconds, calibration.catalogue_tracks, rate)
        print(f"{fit.seconds:>5g} s: {fit.queries} clips, median best {fit.body[50]:.4f}, 90th percentile "
              f"{fit.body[-1]:.4f}, tail scale {fit.tail_scale:.4f}, "
              f"is_match from {threshold:.4f} at a false-match rate of {rate:g}")
    print(f"wrote {out}")
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


def _cmd_corpus(args: argparse.Namespace) -> int:
    from models.training.corpus.build import build, plan_jobs
    from models.training.corpus.works import asap_works, pop909_works, procedural_works

    works = []
    if "valid" in args.splits:
        works += asap_works(args.data / "asap")
    if "train" in args.splits:
        works += pop909_works(args.data / "pop909")[: args.pop909_works] + procedural_works(args.procedural, args.seed)
    jobs = plan_jobs(works, args.versions, args.seed, args.seconds)
    config = ExtractorConfig(features=args.features, pitch_student_id=installed_student_id(args.features))
    done, errors = build(jobs, args.cache, config, args.workers,
                         progress_line("rendering"))
    for error in errors[:20]:
        print(f"skipped: {error}", file=sys.stderr)
    print(f"{done} of {len(jobs)} versions cached in {args.cache} ({len(errors)} failed)")
    return 0


def _cmd_examples(args: argparse.Namespace) -> int:
    from models.training.corpus.examples import write_examples

    for path in write_examples(args.out, args.seconds):
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


def add_model_commands(commands) -> None:
    export = commands.add_parser("export", help="write an extractor artifact (from a checkpoint, or freshly initialised)")
    export.add_argument("--output", type=Path, required=True)
    export.add_argument("--checkpoint", type=Path, help="training checkpoint to export")
    export.add_argument("--version", help="model_version recorded in the artifact")
    export.add_argument("--training-data", help="training data summary recorded in the artifact")
    export.add_argument("--width", type=int, default=ExtractorConfig.width, help="base width; 64 gives C = 2048")
    export.add_argument("--time-pool", type=int, help=f"default {ExtractorConfig.time_pool}; with --head 2dftm "
                        f"{FOURIER_TIME_POOL} (about 4.8 frames/s)")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--if-missing", action="store_true", help="keep an existing file")
    export.add_argument("--features", choices=["pitch", "student"],
                        help="serve a network trained on pitch features with the pitch student's (or back); "
                        "with --head 2dftm, the note features it reads (default: student)")
    export.add_argument("--head", choices=["resnet", "2dftm"], default="resnet",
                        help="2dftm: local 2D Fourier magnitudes of pitch classes (no training; see models/fourier.py)")
    export.add_argument("--fit-audio", type=Path, action="append", default=[],
                        help="with --head 2dftm: folder of real recordings (never the validation covers) to fit "
                        "the PCA projection on, repeatable; none: no projection")
    export.add_argument("--fit-cache", type=Path, default=Path("cache/fit"), help="where their features are cached")
    export.add_argument("--whiten", type=float, default=0.5, help="with --head 2dftm: PCA axes scaled by eigenvalue ** -WHITEN")
    export.add_argument("--embedding-dim", type=int, default=128, help="with --head 2dftm: dimensions kept by the PCA")
    export.add_argument("--patch-frames", type=int, default=ExtractorConfig.patch_frames,
                        help="with --head 2dftm: 2D Fourier patch length in pooled frames")
    export.add_argument("--power", type=float, default=ExtractorConfig.fourier_power,
                        help="with --head 2dftm: power on the max-scaled pitch classes")
    export.add_argument("--stage3-top-n", type=int, default=FusionSettings.top_n,
                        help="with --head 2dftm: stage-2 candidates aligned per query (0: no stage 3)")
    export.add_argument("--fusion-weights", type=float, nargs=2, default=(FusionSettings.short_weight, FusionSettings.long_weight),
                        metavar=("SHORT", "LONG"), help="with --head 2dftm: weight of the alignment score for a query of "
                        f"{FusionSettings.short_seconds:g} s or less and of {FusionSettings.long_seconds:g} s or more")
    export.set_defaults(run=_cmd_export)

    embed = commands.add_parser("embed", help="print the local embeddings' shape and chunk times of an audio file")
    embed.add_argument("file", type=Path)
    embed.add_argument("--model", type=Path, help="extractor artifact (default: COVERID_MODEL_PATH)")
    embed.add_argument("--device", help="auto, cpu or cuda (default: COVERID_DEVICE)")
    embed.set_defaults(run=_cmd_embed)

    corpus = commands.add_parser("corpus", help="render MIDI works into versions and cache their CQT features")
    corpus.add_argument("--data", type=Path, default=DATA, help="folder holding pop909/ and asap/")
    corpus.add_argument("--cache", type=Path, default=Path("cache/corpus"))
    corpus.add_argument("--splits", nargs="+", default=["valid", "train"], choices=["train", "valid"])
    corpus.add_argument("--versions", type=int, default=3, help="rendered versions per training work")
    corpus.add_argument("--pop909-works", type=int, default=909)
    corpus.add_argument("--procedural", type=int, default=1000, help="invented works added to training")
    corpus.add_argument("--seconds", type=float, default=75.0, help="cap on a version's rendered length")
    corpus.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--features", choices=sorted(FEATURES), default="cqt",
                        help="what to cache per version: the CQT, or basic-pitch's note posteriors (pitch)")
    corpus.set_defaults(run=_cmd_corpus)

    trainer = commands.add_parser("train", help="train with the local alignment loss on the cached corpus")
    trainer.add_argument("--cache", type=Path, default=Path("cache/corpus"))
    trainer.add_argument("--data", type=Path, default=DATA, help="folder holding asap/ (its metadata names the pieces)")
    trainer.add_argument("--extra-cache", type=Path, action="append", default=[],
                         help="another corpus cache whose train split is added (repeatable)")
    trainer.add_argument("--init-from", type=Path, help="fine-tune: start the network from this checkpoint")
    trainer.add_argument("--run", dest="run_dir", type=Path, required=True, help="run directory (resumed if it has a checkpoint)")
    trainer.add_argument("--csv", type=Path, help="train on real audio listed as work_id,performance_id,path")
    trainer.add_argument("--steps", type=int, default=1200)
    trainer.add_argument("--lr", type=float, default=1e-3)
    trainer.add_argument("--width", type=int, default=16)
    trainer.add_argument("--features", choices=sorted(FEATURES), default="cqt",
                         help="network input; the caches must hold the same features (coverid corpus --features)")
    trainer.add_argument("--fold-octaves", action="store_true",
                         help="with note features: fold each chunk's notes into 12 pitch classes before the network")
    trainer.add_argument("--log-gain", type=float, default=ExtractorConfig.log_gain,
                         help="per-chunk compression log1p(gain * x) / log1p(gain) of the max-normalised input")
    trainer.add_argument("--time-pool", type=int, default=ExtractorConfig.time_pool)
    trainer.add_argument("--proxy-length", type=int, default=4)
    trainer.add_argument("--works-per-batch", type=int, default=16)
    trainer.add_argument("--versions-per-work", type=int, default=4)
    trainer.add_argument("--transpose-bins", type=int, default=BatchPlan.max_transpose_bins,
                         help="augmentation: random transposition of up to this many CQT bins (semitones)")
    trainer.add_argument("--stretch", type=float, nargs=2, default=BatchPlan.stretch, metavar=("LOW", "HIGH"),
                         help="augmentation: random tempo factor range")
    trainer.add_argument("--backgrounds", type=Path, nargs="+", default=[],
                         help="folders of real recordings mixed into versions as background (e.g. the game soundtracks)")
    trainer.add_argument("--background-cache", type=Path, default=Path("cache/distil"),
                         help="where their features are cached (shared with `coverid distil`)")
    trainer.add_argument("--background-probability", type=float, default=0.5)
    trainer.add_argument("--clutter", type=float, default=BatchPlan.clutter_per_second,
                         help="augmentation: spurious short notes per second")
    trainer.add_argument("--smear", type=float, default=BatchPlan.smear_probability,
                         help="augmentation: chance a version's notes are blurred in time and pitch (sung lines)")
    trainer.add_argument("--global-model", action="store_true", help="ByteCover2-style baseline: one GeM per track")
    trainer.add_argument("--limit-works", type=int)
    trainer.add_argument("--validate-works", type=int, default=60, help="validation pieces for the log (0: none)")
    trainer.add_argument("--validate-every", type=int, default=200)
    trainer.add_argument("--max-minutes", type=float, help="stop (checkpointed) after this much wall-clock time")
    trainer.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    trainer.add_argument("--seed", type=int, default=0)
    trainer.set_defaults(run=_cmd_train)

    evaluation = commands.add_parser("evaluate", help="the paper's protocol on the validation split or a list of recordings")
    evaluation.add_argument("--csv", type=Path, help="evaluate on the recordings of this work_id,performance_id,path "
                            "list (paths relative to it) instead of the rendered validation split")
    evaluation.add_argument("--cache", type=Path, default=Path("cache/corpus"),
                            help="rendered corpus cache; with --csv, where the recordings' features are cached")
    evaluation.add_argument("--data", type=Path, default=DATA, help="folder holding asap/ (its metadata names the pieces)")
    evaluation.add_argument("--model", action="append", default=[], help="NAME=PATH of an extractor artifact")
    evaluation.add_argument("--chroma", action="store_true", help="add the no-learning 2DFTM baseline")
    evaluation.add_argument("--pitch-chroma", action="store_true",
                            help="add 2DFTM on basic-pitch's note posteriors folded to pitch classes (no learning "
                            "beyond the pretrained pitch model; --csv only)")
    evaluation.add_argument("--student-chroma", action="store_true",
                            help="the same on the installed pitch student's notes (how well it stands in for basic-pitch)")
    evaluation.add_argument("--out", type=Path, required=True)
    evaluation.add_argument("--include", type=Path, action="append", default=[],
                            help="an evaluation.json from an earlier run to add to the report")
    evaluation.add_argument("--k", type=int,
                            help="HNSW neighbours per query chunk (default: the service's, COVERID_K_NEIGHBOURS; "
                            "the paper's is 50)")
    evaluation.add_argument("--two-stage-only", action="store_true")
    evaluation.add_argument("--lengths", type=float, nargs="+",
                            help="clip lengths in seconds (default: the paper's 6 to 60; the full track is always a query)")
    evaluation.add_argument("--no-stage3", action="store_true",
                            help="leave out stage 3 (alignment of the top N) for artifacts that carry it")
    evaluation.add_argument("--clips-per-length", type=int, default=1,
                            help="clips cut per recording and length (the paper: 1; more shrink the noise of a small set)")
    evaluation.add_argument("--query-shift", type=int, default=0,
                            help="transpose every query by this many semitones (tests key invariance)")
    evaluation.add_argument("--limit-works", type=int)
    evaluation.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    evaluation.add_argument("--seed", type=int, default=0)
    evaluation.add_argument("--calibration", type=Path,
                            help="measure the is_match decision (false-match rate, recall) with this calibration "
                            "(default: calibration.json beside each model), when it was fitted for the model; the "
                            "rate is COVERID_FALSE_MATCH_RATE")
    evaluation.set_defaults(run=_cmd_evaluate)

    calibrate = commands.add_parser("calibrate", help="fit the is_match decision on real recordings that cover "
                                    "nothing in their catalogue (each file its own work; never the validation set)")
    calibrate.add_argument("--audio", type=Path, action="append", required=True,
                           help="folder of audio files, repeatable: give two or more, one per source (a game, an "
                           "album); a clip is ranked against the other folders' recordings only")
    calibrate.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    calibrate.add_argument("--cache", type=Path, default=Path("cache/fit"), help="where the recordings' features are cached")
    calibrate.add_argument("--out", type=Path, help="default: calibration.json beside the model, where the service "
                           "looks for it")
    calibrate.add_argument("--clips-per-length", type=int, default=5)
    calibrate.add_argument("--bests-out", type=Path, help="also write each clip's best score here (JSON)")
    calibrate.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.set_defaults(run=_cmd_calibrate)

    distiller = commands.add_parser("distil", help="train the pitch student: basic-pitch's notes from the CQT")
    distiller.add_argument("--audio", type=Path, action="append", required=True,
                           help="folder of audio files (real recordings; never the validation covers), repeatable")
    distiller.add_argument("--cache", type=Path, default=Path("cache/distil"), help="where the teacher pairs are cached")
    distiller.add_argument("--run", dest="run_dir", type=Path, required=True, help="output folder (log, weights)")
    distiller.add_argument("--steps", type=int, default=DistilConfig.steps)
    distiller.add_argument("--channels", type=int, default=DistilConfig.channels)
    distiller.add_argument("--max-minutes", type=float)
    distiller.add_argument("--install", action="store_true", help="copy the weights to models/weights/pitch_student/")
    distiller.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    distiller.add_argument("--seed", type=int, default=0)
    distiller.set_defaults(run=_cmd_distil)

    examples = commands.add_parser("examples", help="render the example songs (original and cover of each)")
    examples.add_argument("--out", type=Path, default=Path("examples"))
    examples.add_argument("--seconds", type=float, default=45.0)
    examples.set_defaults(run=_cmd_examples)

    demo = commands.add_parser("demo-audio", help="write a synthetic tune to an audio file")
    demo.add_argument("output", type=Path)
    demo.add_argument("--seconds", type=float, default=45.0)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_cmd_demo_audio)
