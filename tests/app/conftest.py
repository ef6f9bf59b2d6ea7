"""Fixtures for the service tests: a real redis-server process on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import redis

from app.store import CatalogStore, SQLiteStore, TrackRecord
from app.store.base import to_blob
from app.store.sqlite import META_COLUMNS

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """redis-server with an fsync-always AOF in its own directory, so a restart shows what was durable."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()

    def _wait_ready(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"redis-server exited with {self.process.returncode}: {self._log()}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
            self.stop(crash=True)
            pytest.fail(f"redis-server did not answer PING on port {self.port} within {START_TIMEOUT_S} s: {self._log()}")
        finally:
            client.close()

    def _log(self) -> str:
        log = self.directory / "redis.log"
        return log.read_text()[-2000:] if log.exists() else "(no log)"

    def stop(self, crash: bool = False) -> None:
        """SIGTERM lets Redis shut down cleanly; crash=True is SIGKILL, as a power cut would be."""
        if self.process is None or self.process.poll() is not None:
            return
        if crash:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process.stderr.close()

    def restart(self, crash: bool = True) -> None:
        """Same port, same directory: the server reloads the AOF."""
        self.stop(crash=crash)
        self.start()


def started_redis(directory: Path) -> RedisServer:
    """A redis-server of one's own in `directory` (a test that stops, freezes or kills it)."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not on PATH: install it (Debian: apt-get install redis-server); "
                    "the store tests run against a real Redis")
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(executable, directory)
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = started_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


class MilvusServer:
    """The Milvus engine as a server of its own on loopback (milvus-lite's gRPC server), as replicas share one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import sys

        log = open(self.directory / "milvus.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.directory / "data"),
             "--host", "127.0.0.1", "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the Milvus server exited with {self.process.returncode}: {self._log()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"the Milvus server did not listen on {self.port} within 60 s: {self._log()}")

    def _log(self) -> str:
        return (self.directory / "milvus.log").read_text()[-2000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    server = MilvusServer(tmp_path_factory.mktemp("milvus"))
    server.start()
    yield server
    server.stop()


def milvus_env(server: MilvusServer, tmp_path: Path) -> dict[str, str]:
    """A service's settings for the first stage in `server`, in a collection of the test's own."""
    return {"COVERID_MILVUS_URI": server.uri, "COVERID_MILVUS_COLLECTION": f"t{abs(hash(tmp_path)) % 10**12}"}


class ServiceProcess:
    """`coverid serve` in its own process on loopback, as an operator (and the image) runs it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import os
        import sys

        import httpx

        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the service exited with {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the service was not ready within 120 s: {self.log_path.read_text()[-3000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=60)

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


def running_service(request, tmp_path: Path, model_path: Path, env: dict[str, str]):
    """Generator body of a service fixture parametrised by store ("sqlite" or "redis"; "milvus": Redis with the
    first stage in a Milvus server): starts the server on a fresh data dir (and a fresh Redis database), yields
    it, cleans up."""
    env = {"COVERID_MODEL_PATH": str(model_path), "COVERID_DEVICE": "cpu",
           "COVERID_DATA_DIR": str(tmp_path / "data"), **env}
    if request.param == "milvus":
        env.update(milvus_env(request.getfixturevalue("milvus_server"), tmp_path))
    if request.param in ("redis", "milvus"):
        server = request.getfixturevalue("redis_server")
        env["COVERID_REDIS_URL"] = server.url.replace("/0", f"/{1 + hash(tmp_path) % 14}")
    process = ServiceProcess(env, tmp_path / "service.log")
    process.start()
    yield process
    process.stop()
    if request.param in ("redis", "milvus"):
        redis.Redis.from_url(env["COVERID_REDIS_URL"]).flushdb()


def raw_request_head(url: str, head: str, first_body_bytes: int) -> str:
    """Send a request's head and the first bytes of a much larger declared body; return what the server answers."""
    target = urlparse(url)
    with socket.create_connection((target.hostname, target.port), timeout=10) as sock:
        sock.sendall(head.encode() + bytes(first_body_bytes))
        answer = b""
        while not answer.endswith(b"}"):  # the head and the JSON body may come in separate packets
            part = sock.recv(4096)
            if not part:
                break
            answer += part
        return answer.decode("latin-1")


def plant_raw_track(store: CatalogStore, track_id: str, title: str, metadata_text: str,
                    created_at: float = 500.0) -> None:
    """Write a track of model "m1" straight into `store`, past its checks, as an older coverid or another tool could:
    `metadata_text` is the stored JSON as is (it need not parse), and a lone surrogate in `title` is stored as
    each backend would hold one (SQLite: its bytes, which are not UTF-8; Redis: a \\ud800 escape in the JSON)."""
    vectors, starts = np.eye(2, 8, dtype=np.float32), np.array([0.0, 10.0], dtype=np.float32)
    if isinstance(store, SQLiteStore):
        row = (track_id, title.encode("utf-8", "surrogatepass"), None, metadata_text, 30.0, "m1", created_at, 8, 2,
               to_blob(starts), to_blob(vectors))
        conn = sqlite3.connect(store.path)
        with conn:  # commits; the triggers count the track and log the change as for any write
            conn.execute(f"INSERT INTO tracks ({META_COLUMNS}, vectors) VALUES "
                         "(?, CAST(? AS TEXT), ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        conn.close()
        return
    store.put(TrackRecord(track_id, "placeholder", None, {}, 30.0, "m1", created_at, vectors, starts))
    meta = (f'{{"title":{json.dumps(title)},"artist":null,"metadata":{metadata_text},'
            f'"duration_s":30.0,"created_at":{created_at!r}}}')
    client = redis.Redis.from_url(store.location)
    client.hset(f"{store.prefix}:track:{track_id}", "meta", meta)
    client.close()
