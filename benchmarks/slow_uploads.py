"""An ordinary /identify while slow uploaders hold connections: its latency without and with them, side by side.

Each slow uploader sends the headers of a 1 MB multipart /identify and the first bytes of its body, then nothing
more (a stalled upload, held until the service's body deadline). Against a running service:

    .venv/bin/python benchmarks/slow_uploads.py --url http://127.0.0.1:8000 [--uploaders 16] [--requests 15]
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import time
from urllib.parse import urlparse

import httpx
import numpy as np
import soundfile as sf

RATE = 22050


def clip(seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    tone = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) * 0.2
    out = io.BytesIO()
    sf.write(out, tone.astype(np.float32), RATE, format="FLAC")
    return out.getvalue()


def timed_identifies(url: str, data: bytes, requests: int) -> tuple[list[float], list[int]]:
    times, statuses = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(requests):
            started = time.perf_counter()
            answer = client.post("/identify", files={"file": ("clip.flac", data)})
            times.append(1000 * (time.perf_counter() - started))
            statuses.append(answer.status_code)
    return times, statuses


def stalled_uploaders(url: str, count: int) -> list[socket.socket]:
    target = urlparse(url)
    head = (f"POST /identify HTTP/1.1\r\nHost: {target.hostname}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n").encode()
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((target.hostname, target.port), timeout=10)
        sock.sendall(head)
        sockets.append(sock)
    return sockets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--uploaders", type=int, default=16)
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the identify clip")
    args = parser.parse_args()
    data = clip(args.seconds)
    with httpx.Client(base_url=args.url, timeout=60) as client:  # something to find
        client.post("/catalog", files={"file": ("ref.flac", clip(60.0))})
    timed_identifies(args.url, data, 2)  # warm-up
    alone, alone_status = timed_identifies(args.url, data, args.requests)
    held = stalled_uploaders(args.url, args.uploaders)
    try:
        time.sleep(1.0)
        beside, beside_status = timed_identifies(args.url, data, args.requests)
    finally:
        for sock in held:
            sock.close()
    print(f"| condition | identify p50 | max | statuses |\n|---|---|---|---|")
    print(f"| alone | {statistics.median(alone):.1f} ms | {max(alone):.1f} ms | {sorted(set(alone_status))} |")
    print(f"| {args.uploaders} stalled uploads connected | {statistics.median(beside):.1f} ms | {max(beside):.1f} ms "
          f"| {sorted(set(beside_status))} |")
    print(f"ratio of medians: {statistics.median(beside) / statistics.median(alone):.2f}")


if __name__ == "__main__":
    main()
