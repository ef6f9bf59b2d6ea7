"""What an upload can make the server's decoder spend: CPU seconds per megabyte of upload, worst cases first.

Each row is a file an attacker (or an odd encoder) could send: high rates, many channels, and content that
compresses to almost nothing (digital near-silence), which maximises frames per uploaded byte. For each,
`decode_audio` runs as the service calls it (a 1200 s limit, the default `max_track_seconds`) and the
process CPU time is measured (time.process_time: what the upload costs the server whatever else runs).
Refused files are refused from the header; their cost is the refusal's.

    .venv/bin/python benchmarks/decode_cost.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import soundfile as sf

from models.audio import AudioError, decode_audio

SERVICE_RATE = 22050
MAX_TRACK_SECONDS = 1200.0


def near_silence(rate: int, channels: int, seconds: int, fmt: str = "FLAC", subtype: str = "PCM_16") -> bytes:
    """One click a second (so the file is not refused as silent); FLAC compresses the rest to a few bytes."""
    out = io.BytesIO()
    with sf.SoundFile(out, "w", rate, channels, format=fmt, subtype=subtype) as f:
        block = np.zeros((rate, channels), np.float32)
        block[0] = 0.5
        for _ in range(seconds):
            f.write(block)
    return out.getvalue()


def noise(rate: int, channels: int, seconds: int, fmt: str, subtype: str) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(0)
    with sf.SoundFile(out, "w", rate, channels, format=fmt, subtype=subtype) as f:
        for _ in range(seconds):
            f.write((0.1 * rng.standard_normal((rate, channels))).astype(np.float32))
    return out.getvalue()


def cost(data: bytes) -> tuple[float, str]:
    started = time.process_time()
    try:
        decode_audio(data, SERVICE_RATE, max_seconds=MAX_TRACK_SECONDS)
        outcome = "decoded"
    except AudioError as err:
        outcome = f"refused: {err.reason}"
    return time.process_time() - started, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30, help="length of each generated file")
    args = parser.parse_args()
    s = args.seconds
    cases = {
        f"FLAC near-silence, 384 kHz x 8 ch, {s} s (the issue's file, shorter)": lambda: near_silence(384_000, 8, s),
        f"FLAC near-silence, 192 kHz x 8 ch, {s} s": lambda: near_silence(192_000, 8, s),
        f"FLAC near-silence, 192 kHz x 1 ch, {s} s": lambda: near_silence(192_000, 1, s),
        f"FLAC near-silence, 48 kHz x 2 ch, {s} s": lambda: near_silence(48_000, 2, s),
        f"FLAC near-silence, 48 kHz x 2 ch, {4 * s} s": lambda: near_silence(48_000, 2, 4 * s),
        f"FLAC noise, 192 kHz x 8 ch, {s // 3} s": lambda: noise(192_000, 8, s // 3, "FLAC", "PCM_16"),
        f"WAV noise, 48 kHz x 2 ch, {s} s": lambda: noise(48_000, 2, s, "WAV", "PCM_16"),
        f"Ogg Vorbis noise, 48 kHz x 2 ch, {s} s": lambda: noise(48_000, 2, s, "OGG", "VORBIS"),
    }
    print("| upload | size (KB) | frames per byte | outcome | CPU (s) | CPU per MB of upload (s) |")
    print("|---|---|---|---|---|---|")
    for name, make in cases.items():
        data = make()
        info = sf.info(io.BytesIO(data))
        frames = info.frames
        seconds, outcome = cost(data)
        per_mb = seconds / (len(data) / 2**20)
        print(f"| {name} | {len(data) / 1024:,.0f} | {frames / len(data):,.1f} | {outcome} | {seconds:.3f} | {per_mb:.2f} |")


if __name__ == "__main__":
    main()
