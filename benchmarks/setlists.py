"""Set lists through the service's own segments path (app.segmentation.identify_segments), on real recordings.

One version of every work of a recording list goes into a catalogue (through app.pipeline.ingest, as
POST /catalog does). Each set list joins 4 to 8 other versions of random works, whole, with 3 s crossfades,
and between some of them 3 to 6 s of unrelated audio (a stretch of a file under --filler) faded in and out.
The set list is encoded to FLAC in memory and identified as POST /identify/segments does. Reported:

- right seconds: the share of the set list's seconds labelled with the right work (unrelated audio: no work);
- boundary error: per true change of work (the middle of a crossfade, or of an unrelated stretch), the distance
  to the nearest reported change; the median over all set lists;
- spans with a wrong work: spans naming a work that plays in less than half of them (counted, and their seconds);
- the seconds of unrelated audio labelled with a work;
- the latency of each set list, and of one upload of --long-minutes minutes.

    .venv/bin/python benchmarks/setlists.py --csv ../shared/data/covers80-dev/list.csv \\
        --filler /usr/share/games/warzone2100/music [--sets 20] [--long-minutes 60]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from app.catalog import Catalog, IndexSettings
from app.pipeline import Embedder, ingest, load_decision
from app.segmentation import identify_segments
from app.settings import Settings
from app.store import open_store
from index.defaults import calibration_beside
from models.audio import decode_audio
from models.extractor import load_extractor
from models.training.distil import audio_files
from models.training.recording_list import read_recording_list

CROSSFADE_S = 3.0
STEP_S = 0.5  # resolution of the per-second comparison


def flac(audio: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1, 1), rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def join(pieces: list[tuple[str | None, np.ndarray]], rate: int) -> tuple[np.ndarray, list[tuple[float, float, str | None]]]:
    """Pieces crossfaded end to start; the truth as (start, end, work) with each crossfade split at its middle."""
    fade = int(CROSSFADE_S * rate)
    out = pieces[0][1].copy()
    truth = []
    start = 0.0
    for work, audio in pieces[1:]:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        overlap_at = len(out) - fade
        boundary = (overlap_at + fade / 2) / rate
        truth.append((start, boundary, pieces[len(truth)][0]))
        start = boundary
        mixed = out[overlap_at:] * (1 - ramp) + audio[:fade] * ramp
        out = np.concatenate([out[:overlap_at], mixed, audio[fade:]])
    truth.append((start, len(out) / rate, pieces[-1][0]))
    return out, truth


def labels_at(intervals, times: np.ndarray) -> list:
    out = [None] * len(times)
    for start, end, label in intervals:
        for i in np.flatnonzero((times >= start) & (times < end)):
            out[i] = label
    return out


def changes(intervals) -> list[float]:
    return [b[0] for a, b in zip(intervals, intervals[1:]) if a[2] != b[2]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--filler", type=Path, action="append", required=True, help="folder of unrelated audio")
    parser.add_argument("--model", default="models/weights/extractor.pt")
    parser.add_argument("--calibration", type=Path, help="default: calibration.json beside the model")
    parser.add_argument("--no-decision", action="store_true", help="keep every span unchecked (no calibration)")
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--long-minutes", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    extractor = load_extractor(args.model, "cpu")
    rate = extractor.config.sample_rate
    settings = Settings()
    decision, why = (None, "--no-decision") if args.no_decision else \
        load_decision(args.calibration or calibration_beside(args.model), settings.false_match_rate, extractor)
    print(f"match decision: {'on' if decision else 'off (' + why + ')'}", flush=True)
    embedder = Embedder(extractor, decision=decision)
    by_work = defaultdict(list)
    for rec in read_recording_list(args.csv):
        by_work[rec.work_id].append(rec)
    works = sorted(w for w, recs in by_work.items() if len(recs) >= 2)
    catalogued = {w: rng.choice(by_work[w]) for w in works}
    played = {w: next(r for r in by_work[w] if r is not catalogued[w]) for w in works}
    fillers = [listed.path for listed in audio_files(args.filler)]

    with tempfile.TemporaryDirectory() as data_dir:
        store = open_store(Path(data_dir), None, 5.0)
        catalog, _ = Catalog.open(store, extractor.model_id, Path(data_dir) / "index.snapshot",
                                  IndexSettings.of(settings, extractor.config.embedding_dim), 5)
        started = time.perf_counter()
        for work, rec in catalogued.items():
            ingest(embedder, catalog, rec.path.read_bytes(), 1e9, track_id=work)
        print(f"catalogue: {len(catalogued)} tracks in {time.perf_counter() - started:.0f} s", flush=True)

        audio_cache: dict[str, np.ndarray] = {}

        def audio_of(work: str) -> np.ndarray:
            if work not in audio_cache:
                audio_cache[work] = decode_audio(played[work].path, rate).numpy()
            return audio_cache[work]

        right, boundary_errors, wrong_spans, wrong_span_s, filler_matched_s, filler_s, latencies = [], [], 0, 0.0, 0.0, 0.0, []
        for number in range(args.sets):
            chosen = rng.sample(works, rng.randint(4, 8))
            pieces: list = []
            for i, work in enumerate(chosen):
                pieces.append((work, audio_of(work)))
                if i < len(chosen) - 1 and rng.random() < 0.5:
                    filler = decode_audio(rng.choice(fillers), rate).numpy()
                    length = int(rng.uniform(3.0, 6.0) * rate) + 2 * int(CROSSFADE_S * rate)
                    first = rng.randrange(0, max(1, len(filler) - length))
                    pieces.append((None, filler[first : first + length]))
            audio, truth = join(pieces, rate)
            tic = time.perf_counter()
            result = identify_segments(embedder, catalog, flac(audio, rate), 3.0, 1e9)
            latencies.append(time.perf_counter() - tic)
            found = [(s.start_s, s.end_s, s.track_id) for s in result.spans]
            times = np.arange(0.0, len(audio) / rate, STEP_S)
            expected, labelled = labels_at(truth, times), labels_at(found, times)
            right.append(float(np.mean([a == b for a, b in zip(expected, labelled)])))
            reported = changes(found)
            boundary_errors += [min((abs(b - r) for r in reported), default=float("inf")) for b in changes(truth)]
            for start, end, work in found:
                inside = [e for t, e in zip(times, expected) if start <= t < end]
                if work is not None and inside and sum(e == work for e in inside) < len(inside) / 2:
                    wrong_spans += 1
                    wrong_span_s += end - start
            filler_s += STEP_S * sum(e is None for e in expected)
            filler_matched_s += STEP_S * sum(e is None and f is not None for e, f in zip(expected, labelled))
            print(f"set {number}: {len(chosen)} works, {len(audio) / rate / 60:.1f} min, right {right[-1]:.3f}, "
                  f"{len(found)} spans, {latencies[-1]:.1f} s", flush=True)

        long_pieces, total = [], 0.0
        while total < args.long_minutes * 60:
            work = rng.choice(works)
            long_pieces.append((work, audio_of(work)))
            total += len(long_pieces[-1][1]) / rate
        long_audio, _ = join(long_pieces, rate)
        long_audio = long_audio[: int(args.long_minutes * 60 * rate)]
        tic = time.perf_counter()
        long_result = identify_segments(embedder, catalog, flac(long_audio, rate), 3.0, 1e9)
        long_s = time.perf_counter() - tic
        catalog.close()

    figures = {
        "sets": args.sets, "catalogue_tracks": len(catalogued), "decision": decision is not None,
        "right_seconds_mean": statistics.mean(right), "right_seconds_min": min(right),
        "boundary_error_median_s": statistics.median(boundary_errors), "boundaries": len(boundary_errors),
        "boundary_within_10s": float(np.mean(np.array(boundary_errors) <= 10.0)),
        "wrong_spans": wrong_spans, "wrong_span_seconds": wrong_span_s,
        "unrelated_seconds": filler_s, "unrelated_seconds_labelled": filler_matched_s,
        "latency_median_s": statistics.median(latencies),
        "long_upload_minutes": args.long_minutes, "long_upload_s": long_s,
        "long_upload_timings_ms": long_result.timings_ms, "long_upload_spans": len(long_result.spans),
    }
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
