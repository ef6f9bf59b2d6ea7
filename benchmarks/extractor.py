"""Extractor speed per stage: decode+resample, features, network, total (bytes -> embeddings).

Runs on whatever device `--device` names (CPU by default). Audio is a synthetic
44.1 kHz stereo tune, encoded in memory as MP3 (what short-video uploads mostly
are) and as WAV. Weights are freshly initialised: speed does not depend on them.
nnAudio's CQT1992v2 is timed side by side as the baseline the CQT replaces.
`--features` times each network input kind side by side (cqt; pitch: basic-pitch's
notes; student: the CQT plus the distilled pitch student).

    .venv/bin/python benchmarks/extractor.py [--repeats 15] [--widths 16 64] [--features cqt pitch student]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from nnAudio.features import CQT1992v2

from models.config import FEATURES, ExtractorConfig
from models.extractor import export_extractor, load_extractor
from models.network import ResNetIBN
from models.pitch_student import PitchStudent, save_student
from models.training.synth import random_tune, render_notes

SOURCE_RATE = 44100


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def encoded_tune(seconds: float, fmt: str, subtype: str) -> bytes:
    mono = render_notes(random_tune(seconds, seed=1), SOURCE_RATE, seconds)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([mono, 0.8 * mono], axis=1), SOURCE_RATE, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _untrained_student(folder: Path) -> str:
    """Speed does not depend on the weights: an untrained pitch student stands in for the installed one."""
    import models.frontend

    path = folder / "pitch_student.pt"
    student_id = save_student(PitchStudent(), path, {"note": "untrained, for timing"})
    models.frontend.DEFAULT_STUDENT = path
    return student_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 240.0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--features", nargs="+", default=["cqt"], choices=sorted(FEATURES))
    args = parser.parse_args()

    print(f"# {platform.node()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads · device {args.device} · median of {args.repeats}")
    uploads = {s: {"mp3": encoded_tune(s, "MP3", "MPEG_LAYER_III"), "wav": encoded_tune(s, "WAV", "PCM_16")}
               for s in args.seconds}
    print("| width (C) | features | audio | decode+resample mp3 | decode+resample wav | features | chunk+network | total mp3 | "
          "total wav | x real time (mp3) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        student_id = _untrained_student(Path(tmp)) if "student" in args.features else ""
        for width, features in [(w, f) for w in args.widths for f in args.features]:
            config = ExtractorConfig(width=width, features=features,
                                     pitch_student_id=student_id if features == "student" else "")
            path = Path(tmp) / f"w{width}-{features}.pt"
            export_extractor(ResNetIBN.from_config(config).eval(), config, path)
            extractor = load_extractor(path, args.device)
            module = extractor.module
            for seconds in args.seconds:
                mp3, wav = uploads[seconds]["mp3"], uploads[seconds]["wav"]
                waveform = extractor.decode(mp3).to(extractor.device)
                spectrogram = module.frontend.spectrogram(waveform)
                chunks, _ = module.frontend.chunk(spectrogram)
                decode_mp3 = median_ms(lambda: extractor.decode(mp3), args.repeats)
                decode_wav = median_ms(lambda: extractor.decode(wav), args.repeats)
                cqt = median_ms(lambda: module.frontend.spectrogram(waveform), args.repeats)
                network = median_ms(lambda: module.embed_chunks(module.frontend.chunk(spectrogram)[0]), args.repeats)
                total_mp3 = median_ms(lambda: extractor.embed(mp3), args.repeats)
                total_wav = median_ms(lambda: extractor.embed(wav), args.repeats)
                print(f"| {width} ({config.channels}) | {features} | {seconds:g} s, {chunks.shape[0]} chunks | {decode_mp3:.1f} ms | "
                      f"{decode_wav:.1f} ms | {cqt:.1f} ms | {network:.1f} ms | {total_mp3:.1f} ms | {total_wav:.1f} ms | "
                      f"{1000 * seconds / total_mp3:.0f}x |")
        if "cqt" not in args.features:
            return
        base = ExtractorConfig()
        extractor = load_extractor(Path(tmp) / f"w{args.widths[-1]}-cqt.pt", args.device)
        module = extractor.module
        reference = CQT1992v2(sr=base.sample_rate, hop_length=base.cqt_hop, fmin=base.cqt_fmin, n_bins=base.cqt_bins,
                              bins_per_octave=base.cqt_bins_per_octave, verbose=False).to(args.device)
        print("\n| CQT of | nnAudio CQT1992v2 | this project's MultiRateCQT | speed-up |")
        print("|---|---|---|---|")
        for seconds in args.seconds:
            waveform = extractor.decode(uploads[seconds]["wav"]).to(extractor.device)
            before = median_ms(lambda: reference(waveform), args.repeats)
            after = median_ms(lambda: module.frontend.spectrogram(waveform), args.repeats)
            print(f"| {seconds:g} s | {before:.1f} ms | {after:.1f} ms | {before / after:.1f}x |")


if __name__ == "__main__":
    main()
