"""Load: many concurrent identify clients while ingest and delete churn, against a real server on loopback.

For each store (SQLite, or Redis on a redis-server started here) and each client count, a fresh
`coverid serve` process gets a small catalogue of real audio, then for `--seconds`:
- `clients` closed-loop identify clients (each sends its next 20 s clip when the last answer arrives);
- one churn client that ingests a new track and deletes an old one, in turn.
Reported per run: identify answers per second, p50/p95/p99 latency of the accepted (200) answers,
the p99 of the time the server itself spent on them (their `timings_ms.total`: decode to answer), 503s with
Retry-After (back-pressure), other errors (any status >= 500 other than those 503s, or a failed
connection), and the server's peak resident memory (VmHWM).

The load clients share the 2 cores with the server, so under heavy load their own latencies include
time their process waits for the CPU. A light probe therefore also sends a tiny request every 0.2 s
over a raw socket and times the server's first answer byte: how quickly a refusal really comes.

    .venv/bin/python benchmarks/load.py --clients 4 16 64 --stores sqlite redis --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from models.training.synth import random_tune, render_notes

RATE = 22050


def wav(seconds: float, seed: int, start_s: float = 0.0) -> bytes:
    audio = render_notes(random_tune(seconds, seed=seed), RATE, seconds, seed=seed)[int(start_s * RATE):]
    buffer = io.BytesIO()
    sf.write(buffer, audio, RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                               env={**os.environ, **env}, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def refusal_probe(url: str, stop: float, out: dict) -> None:
    """A tiny complete request (an invalid body: 400 when admitted, 503 when the queue is full), timed to its status line."""
    host, port = url.removeprefix("http://").split(":")
    request = (b"POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
               b"Content-Length: 10\r\n\r\nnot a form")
    while time.monotonic() < stop:
        started = time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(request)
                status = sock.recv(12)[9:12].decode()
            out.setdefault(status, []).append(time.monotonic() - started)
        except OSError as err:
            out.setdefault(type(err).__name__, []).append(time.monotonic() - started)
        time.sleep(0.2)


async def identify_client(client: httpx.AsyncClient, clips: list[bytes], stop: float, out: dict) -> None:
    i = 0
    while time.monotonic() < stop:
        started = time.monotonic()
        try:
            answer = await client.post("/identify", files={"file": ("c.wav", clips[i % len(clips)])})
            seconds = time.monotonic() - started
            if answer.status_code == 200:
                out["latency"].append(seconds)
                out["server_time"].append(answer.json()["timings_ms"]["total"] / 1000)
            elif answer.status_code == 503 and "retry-after" in answer.headers:
                out["rejected"] += 1
                out["reject_latency"].append(seconds)
                await asyncio.sleep(float(answer.headers["retry-after"]) / 10)  # a polite client backs off
            else:
                out["errors"].append(answer.status_code)
        except httpx.HTTPError as err:
            out["errors"].append(type(err).__name__)
        i += 1


async def churn_client(client: httpx.AsyncClient, tracks: list[bytes], stop: float, out: dict) -> None:
    i = 0
    while time.monotonic() < stop:
        try:
            added = await client.post("/catalog", files={"file": ("t.wav", tracks[i % len(tracks)])},
                                      data={"track_id": f"churn-{i}"})
            out["ingest"][added.status_code] = out["ingest"].get(added.status_code, 0) + 1
            if i >= 2:
                gone = await client.delete(f"/catalog/churn-{i - 2}")
                out["delete"][gone.status_code] = out["delete"].get(gone.status_code, 0) + 1
        except httpx.HTTPError as err:
            out["errors"].append(type(err).__name__)
        i += 1


async def run_load(url: str, clients: int, seconds: float, clips: list[bytes], tracks: list[bytes]) -> dict:
    out = {"latency": [], "server_time": [], "reject_latency": [], "rejected": 0, "errors": [], "ingest": {},
           "delete": {}, "probe": {}}
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        stop = time.monotonic() + seconds
        probe = threading.Thread(target=refusal_probe, args=(url, stop, out["probe"]), daemon=True)
        probe.start()
        await asyncio.gather(churn_client(client, tracks, stop, out),
                             *(identify_client(client, clips, stop, out) for _ in range(clients)))
        probe.join()
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "redis"], default=["sqlite", "redis"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--catalog", type=int, default=20, help="tracks catalogued before the load")
    parser.add_argument("--model", type=Path, default=Path("models/weights/extractor.pt"))
    args = parser.parse_args()

    tracks = [wav(60, seed) for seed in range(args.catalog)]
    clips = [wav(40, seed, start_s=20) for seed in range(8)]  # 20 s clips of catalogued tracks
    churn = [wav(60, 1000 + seed) for seed in range(6)]
    rows = []
    for store in args.stores:
        for clients in args.clients:
            with tempfile.TemporaryDirectory() as scratch:
                env = {"COVERID_MODEL_PATH": str(args.model), "COVERID_DEVICE": "cpu",
                       "COVERID_DATA_DIR": f"{scratch}/data", "COVERID_LOG_LEVEL": "warning"}
                redis = None
                if store == "redis":
                    port = free_port()
                    redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "",
                                              "--appendonly", "yes", "--dir", scratch], stdout=subprocess.DEVNULL)
                    time.sleep(0.5)
                    env["COVERID_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
                server, url = start_server(env, Path(scratch) / "server.log")
                try:
                    with httpx.Client(base_url=url, timeout=120) as client:
                        for i, track in enumerate(tracks):
                            client.post("/catalog", files={"file": ("t.wav", track)}, data={"track_id": f"t{i}"})
                    out = asyncio.run(run_load(url, clients, args.seconds, clips, churn))
                    rss = peak_rss_mib(server.pid)
                finally:
                    server.terminate()
                    server.wait(timeout=60)
                    if redis:
                        redis.terminate()
                        redis.wait(timeout=30)
            row = {"store": store, "clients": clients, "identify_per_s": len(out["latency"]) / args.seconds,
                   "p50_ms": percentile(out["latency"], 50), "p95_ms": percentile(out["latency"], 95),
                   "p99_ms": percentile(out["latency"], 99), "server_p99_ms": percentile(out["server_time"], 99),
                   "rejected": out["rejected"], "reject_p99_ms": percentile(out["reject_latency"], 99),
                   "probe": {status: (len(times), percentile(times, 99)) for status, times in out["probe"].items()},
                   "errors": len(out["errors"]),
                   "peak_rss_mib": rss, "ingest": out["ingest"], "delete": out["delete"]}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    print("| store | clients | identify/s | p50 ms | p95 ms | p99 ms | server p99 ms | 503 (Retry-After) | their p99 ms "
          "| probe: answers, p99 ms | errors | peak RSS MiB | ingest statuses | delete statuses |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        probe = ", ".join(f"{status} x{n} {p99:.0f}" for status, (n, p99) in sorted(r["probe"].items()))
        print(f"| {r['store']} | {r['clients']} | {r['identify_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['server_p99_ms']:.0f} | {r['rejected']} | {r['reject_p99_ms']:.0f} | {probe} | "
              f"{r['errors']} | {r['peak_rss_mib']:.0f} | {r['ingest']} | {r['delete']} |")


if __name__ == "__main__":
    main()
