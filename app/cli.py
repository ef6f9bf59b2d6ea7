"""`coverid`: the command-line entry point (declared in pyproject.toml). Parses, calls, prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

from app.settings import SettingsInvalid, get_settings
from models.audio import AudioError
from models.config import FEATURES, ExtractorConfig
from models.dataset import BatchPlan
from models.distil import DistilConfig
from models.evaluation import QUERY_SECONDS
from models.extractor import ArtifactError, export_extractor, load_extractor
from models.network import ResNetIBN
from models.recording_list import RecordingListError
from models.synth import random_tune, render_notes


def _cmd_export(args: argparse.Namespace) -> int:
    if args.output.exists() and args.if_missing:
        print(f"{args.output} exists; kept")
        return 0
    if args.checkpoint:
        from models.train import load_checkpoint

        network, config, state = load_checkpoint(args.checkpoint)
        corpus = state["corpus"]
        if args.features and args.features != config.features:
            # the pitch features and the student's are both 88 note rows on the CQT grid: one can stand in for the other
            if {args.features, config.features} != {"pitch", "student"}:
                raise ArtifactError(f"a network trained on {config.features} features cannot read {args.features}")
            config = config.replace(features=args.features, pitch_student_id=_student_id_for(args.features))
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
    print(f"wrote {args.output} (model_id {stored.model_id}, width {stored.width}, time_pool {stored.time_pool})")
    return 0


FOURIER_TIME_POOL = 9  # 2DFTM frame rate: 22050 / 512 / 9 = 4.8 frames/s


def _fitted_2dftm(args: argparse.Namespace):
    """The local 2DFTM head on note features, its projection fitted on the real recordings under --fit-audio."""
    from models.distil import audio_files
    from models.fit_fourier import fit_head
    from models.fourier import Local2DFTM, fourier_dim
    from models.frontend import FrontEnd
    from models.recording_list import cached_features, feature_key

    features = args.features or "student"
    config = ExtractorConfig(features=features, pitch_student_id=_student_id_for(features), head="2dftm",
                             time_pool=args.time_pool or FOURIER_TIME_POOL, log_gain=0.0, patch_frames=args.patch_frames,
                             fourier_power=args.power,
                             embedding_dim=args.embedding_dim if args.fit_audio else fourier_dim(args.patch_frames))
    head = Local2DFTM.from_config(config)
    summary = "no projection"
    if args.fit_audio:
        frontend = FrontEnd(config).eval()
        files = audio_files(args.fit_audio)
        skipped: list[str] = []
        arrays = cached_features(files, frontend.spectrogram, config.sample_rate, args.fit_cache, feature_key(config),
                                 _progress_line(f"{features} features of the fit audio", with_failures=False), skipped)
        for error in skipped:
            print(f"skipped: {error}", file=sys.stderr)
        fitted = fit_head(frontend, head, [torch.from_numpy(a) for a in arrays], args.whiten, args.seed)
        summary = (f"PCA to {config.embedding_dim} (whiten {args.whiten:g}) fitted on {fitted['vectors']} local vectors of "
                   f"{fitted['recordings']} recordings under {', '.join(str(p) for p in args.fit_audio)}")
    config = config.replace(model_version=args.version or f"2dftm-p{config.patch_frames}-d{config.embedding_dim}",
                            training_data=args.training_data or summary)
    return head.eval(), config


def _student_id_for(features: str) -> str:
    """The installed pitch student's id when `features` is "student", else ''."""
    from models.pitch_student import DEFAULT_WEIGHTS, student_id

    if features != "student":
        return ""
    found = student_id()
    if not found:
        raise ArtifactError(f"no pitch student at {DEFAULT_WEIGHTS}; train one with `coverid distil --install`")
    return found


def _cmd_distil(args: argparse.Namespace) -> int:
    import shutil

    from models.distil import DistilConfig, audio_files, distil, pairs
    from models.pitch_student import DEFAULT_WEIGHTS

    torch.set_num_threads(args.threads)
    files = audio_files(args.audio)
    skipped: list[str] = []
    arrays = pairs(files, args.cache, _progress_line("teacher pairs", with_failures=False), skipped)
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


def _valid_recordings(cache: Path, limit_works: int | None, data: Path):
    """The cached validation versions, each labelled with its piece (see asap_piece_ids)."""
    from models.corpus.works import asap_piece_ids
    from models.dataset import FeatureCorpus
    from models.evaluation import Recording

    metadata = data / "asap" / "metadata.csv"
    pieces = asap_piece_ids(data / "asap") if metadata.exists() else {}
    corpus = FeatureCorpus.from_cache(cache, "valid", limit_works=limit_works)
    return [
        Recording(f"{work}/v{i:02d}", pieces.get(work, work), torch.from_numpy(spec))
        for work, versions in zip(corpus.work_ids, corpus.versions)
        for i, spec in enumerate(versions)
    ]


def _cmd_train(args: argparse.Namespace) -> int:
    from models.dataset import FeatureCorpus
    from models.train import TrainConfig, global_config, train, validation_callback

    torch.set_num_threads(args.threads)
    config = ExtractorConfig(width=args.width, time_pool=args.time_pool, features=args.features, log_gain=args.log_gain,
                             pitch_student_id=_student_id_for(args.features), fold_octaves=args.fold_octaves)
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
    backgrounds = _background_features(args.backgrounds, args.background_cache, config) if args.backgrounds else None
    train_config = TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed, batch=plan,
                               backgrounds=tuple(str(p) for p in args.backgrounds),
                               proxy_length=1 if args.global_model else args.proxy_length,
                               validate_every=args.validate_every, max_minutes=args.max_minutes,
                               init_from=str(args.init_from) if args.init_from else None)
    validate = None
    if args.validate_works:
        validate = validation_callback(_valid_recordings(args.cache, args.validate_works, args.data), config)
    train(corpus, config, train_config, args.run_dir, validate, report=lambda r: print(json.dumps(r), file=sys.stderr, flush=True),
          backgrounds=backgrounds)
    return 0


def _background_features(folders: list[Path], cache: Path, config: ExtractorConfig) -> list:
    """The real recordings under `folders` as the network's input rows: CQT magnitudes, or basic-pitch's notes
    for note features (the student's stand-in). Cached with the distillation pairs, so `distil` and `train` share them."""
    from models.distil import CQT_BINS, audio_files, pairs

    skipped: list[str] = []
    arrays = pairs(audio_files(folders), cache, skipped=skipped)
    for message in skipped:
        print(f"background skipped: {message}", file=sys.stderr)
    rows = slice(0, CQT_BINS) if config.features == "cqt" else slice(CQT_BINS, None)
    return [a[rows] for a in arrays]


def _csv_recordings(table: Path, cache: Path, config: ExtractorConfig, spectrogram=None):
    """Recordings of a `work_id,performance_id,path` list as whole-track features of `config`'s front end (cached).

    `spectrogram` computes them (an artifact's own front end); by default the shared FrontEnd built from `config`.
    """
    from models.evaluation import Recording
    from models.frontend import FrontEnd
    from models.recording_list import cached_features, feature_key, read_recording_list

    listed = read_recording_list(table)
    spectrogram = spectrogram or FrontEnd(config).eval().spectrogram
    label = f"{config.features} features"
    spectrograms = cached_features(listed, spectrogram, config.sample_rate, cache / "features", feature_key(config),
                                   _progress_line(label, with_failures=False))
    return [Recording(rec.performance_id, rec.work_id, torch.from_numpy(spec)) for rec, spec in zip(listed, spectrograms)]


def _service_index(dim: int, k_neighbours: int):
    """The first stage as the service builds it (its HNSW M and ef), with the evaluation's K."""
    from index.local_index import LocalIndex

    settings = get_settings()
    return LocalIndex(dim, k_neighbours=k_neighbours, ef_search=settings.ef_search, m=settings.hnsw_m)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from models.chroma_baseline import chroma_2dftm, pitch_2dftm
    from models.evaluation import evaluate, write_report
    from models.recording_list import feature_key
    from models.train import artifact_embedder

    torch.set_num_threads(args.threads)
    k_neighbours = args.k or get_settings().k_neighbours
    methods = []  # (name, front-end config, the front end's spectrogram or None for the shared one, embed)
    for spec in args.model:
        name, _, path = spec.partition("=")
        loaded = load_extractor(path, "cpu")
        methods.append((name, loaded.config, loaded.module.frontend.spectrogram, artifact_embedder(loaded.module)))
    if args.chroma:
        methods.append(("2DFTM chroma (no learning)", ExtractorConfig(), None, chroma_2dftm))
    if args.pitch_chroma:
        methods.append(("2DFTM basic-pitch chroma (no learning)", ExtractorConfig(features="pitch"), None, pitch_2dftm))
    if args.student_chroma:
        student = ExtractorConfig(features="student", pitch_student_id=_student_id_for("student"))
        methods.append(("2DFTM pitch-student chroma", student, None, pitch_2dftm))
    results = {}
    for previous in args.include:  # results computed earlier with the same protocol (same recordings and seed)
        results.update(json.loads(previous.read_text()))
    recordings_by_front_end: dict = {}
    for name, config, spectrogram, embed in methods:
        key = feature_key(config)
        if key not in recordings_by_front_end:
            if args.csv:
                recordings_by_front_end[key] = _csv_recordings(args.csv, args.cache, config, spectrogram)
            elif config.features == "cqt":
                recordings_by_front_end[key] = _valid_recordings(args.cache, args.limit_works, args.data)
            else:
                raise RecordingListError(f"{name}: the rendered validation cache holds CQTs; evaluate {config.features} "
                                         "features on a --csv list of recordings")
        recordings = recordings_by_front_end[key]
        if args.query_shift:
            name = f"{name}, queries {args.query_shift:+d} semitones"
        print(f"evaluating {name} on {len(recordings)} recordings", file=sys.stderr, flush=True)
        results[name] = evaluate(embed, recordings, args.seed, k_neighbours=k_neighbours, exhaustive=not args.two_stage_only,
                                 lengths=args.lengths, query_shift=args.query_shift, index_factory=_service_index,
                                 clips_per_length=args.clips_per_length)
        results[name]["protocol"]["recordings_from"] = str(args.csv) if args.csv else f"{args.cache} (valid split)"
        results[name]["protocol"]["features"] = config.features
    written = write_report(results, args.out)
    print(Path(written["markdown"]).read_text())
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


def _progress_line(label: str, with_failures: bool = True):
    """A progress callback printing one updating line to stderr: report(done, total[, failed])."""
    started = time.monotonic()

    def report(done: int, total: int, failed: int = 0) -> None:
        elapsed = time.monotonic() - started
        failures = f" ({failed} failed)" if with_failures else ""
        print(f"\r{label}: {done}/{total}{failures} {elapsed:.0f} s", end="" if done < total else "\n",
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
    config = ExtractorConfig(features=args.features, pitch_student_id=_student_id_for(args.features))
    done, errors = build(jobs, args.cache, config, args.workers,
                         _progress_line("rendering"))
    for error in errors[:20]:
        print(f"skipped: {error}", file=sys.stderr)
    print(f"{done} of {len(jobs)} versions cached in {args.cache} ({len(errors)} failed)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.http_protocol import protocol_with_deadlines

    settings = get_settings()
    # one worker: the extractor and the index live in the process (see README, "Scaling")
    uvicorn.run("app.main:app", host=args.host, port=args.port, log_level=settings.log_level,
                http=protocol_with_deadlines(settings.header_timeout_s, settings.body_timeout_s))
    return 0


def _auth_headers(key: str | None) -> dict:
    key = key or os.environ.get("COVERID_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


DATA = Path("../shared/data")
SERVICE_URL = os.environ.get("COVERID_URL", "http://127.0.0.1:8000")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3"}


def _cmd_ingest(args: argparse.Namespace) -> int:
    import httpx

    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        print(f"error: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {args.folder}", file=sys.stderr)
        return 2
    report = _progress_line("ingesting")
    failed = 0
    with httpx.Client(base_url=args.url, timeout=300, headers=_auth_headers(args.api_key)) as client:
        for done, path in enumerate(files, 1):
            fields = {"track_id": path.stem if args.ids_from_names else None, "title": path.stem}
            response = client.post("/catalog", files={"file": (path.name, path.read_bytes())},
                                   data={k: v for k, v in fields.items() if v}, params={"replace": str(args.replace).lower()})
            if response.status_code != 201:
                failed += 1
                print(f"\nskipped {path}: {response.status_code} {response.json().get('detail')}", file=sys.stderr)
            report(done, len(files), failed)
    print(f"{len(files) - failed} of {len(files)} files catalogued")
    return 0 if failed == 0 else 1


def _cmd_identify(args: argparse.Namespace) -> int:
    import httpx

    with httpx.Client(base_url=args.url, timeout=120, headers=_auth_headers(args.api_key)) as client:
        response = client.post("/identify", files={"file": (args.file.name, args.file.read_bytes())},
                               params={"top_k": args.top_k})
    if response.status_code != 200:
        print(f"error: {response.status_code} {response.json().get('detail')}", file=sys.stderr)
        return 2
    body = response.json()
    print(f"{args.file}: {body['query_duration_s']:.1f} s, {body['n_segments']} segments, "
          f"{body['timings_ms']['total']:.0f} ms")
    for rank, match in enumerate(body["matches"], 1):
        print(f"{rank:>3}. {match['track_id']}  {match['title'] or ''}  score {match['score']:.3f}  "
              f"clip {match['query_start_s']:.0f} s ~ track {match['reference_start_s']:.0f} s")
    return 0


def _cmd_examples(args: argparse.Namespace) -> int:
    from models.corpus.examples import write_examples

    for path in write_examples(args.out, args.seconds):
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coverid", description="Cover song identification on short clips")
    commands = parser.add_subparsers(dest="command", required=True)

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
    evaluation.add_argument("--lengths", type=float, nargs="+", default=list(QUERY_SECONDS),
                            help="clip lengths in seconds (the full track is always a query)")
    evaluation.add_argument("--clips-per-length", type=int, default=1,
                            help="clips cut per recording and length (the paper: 1; more shrink the noise of a small set)")
    evaluation.add_argument("--query-shift", type=int, default=0,
                            help="transpose every query by this many semitones (tests key invariance)")
    evaluation.add_argument("--limit-works", type=int)
    evaluation.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    evaluation.add_argument("--seed", type=int, default=0)
    evaluation.set_defaults(run=_cmd_evaluate)

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

    serve = commands.add_parser("serve", help="run the HTTP service (settings from COVERID_* variables)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_cmd_serve)

    ingest = commands.add_parser("ingest", help="catalogue every audio file under a folder through the service")
    ingest.add_argument("folder", type=Path)
    ingest.add_argument("--url", default=SERVICE_URL, help="default: COVERID_URL or %(default)s")
    ingest.add_argument("--api-key", help="default: COVERID_API_KEY")
    ingest.add_argument("--ids-from-names", action="store_true", help="track_id = file name without extension")
    ingest.add_argument("--replace", action="store_true")
    ingest.set_defaults(run=_cmd_ingest)

    ident = commands.add_parser("identify", help="ask the service which catalogue tracks a clip covers")
    ident.add_argument("file", type=Path)
    ident.add_argument("--url", default=SERVICE_URL, help="default: COVERID_URL or %(default)s")
    ident.add_argument("--api-key", help="default: COVERID_API_KEY")
    ident.add_argument("--top-k", type=int, default=5)
    ident.set_defaults(run=_cmd_identify)

    examples = commands.add_parser("examples", help="render the example songs (original and cover of each)")
    examples.add_argument("--out", type=Path, default=Path("examples"))
    examples.add_argument("--seconds", type=float, default=45.0)
    examples.set_defaults(run=_cmd_examples)

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
    except (AudioError, ArtifactError, RecordingListError, SettingsInvalid) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
