"""Slow-loris: a client that trickles its request is cut off at the header or body deadline."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from app.routes.common import CLIENT_POLL_S, while_connected
from tests.app.conftest import running_service

HEADER_S = 1.0
BODY_S = 2.0


@pytest.fixture(params=["sqlite"])
def service(request, tmp_path, narrow_artifact):
    env = {"COVERID_HEADER_TIMEOUT_S": str(HEADER_S), "COVERID_BODY_TIMEOUT_S": str(BODY_S)}
    yield from running_service(request, tmp_path, narrow_artifact[0], env)


def trickle(url: str, first: bytes, byte: bytes, every_s: float, limit_s: float) -> float:
    """Send `first`, then one `byte` every `every_s`; the seconds until the server closed the connection."""
    target = urlparse(url)
    started = time.monotonic()
    with socket.create_connection((target.hostname, target.port), timeout=limit_s) as sock:
        sock.sendall(first)
        while time.monotonic() - started < limit_s:
            time.sleep(every_s)
            try:
                sock.sendall(byte)
                sock.settimeout(0.01)
                if sock.recv(1) == b"":
                    return time.monotonic() - started
            except (BlockingIOError, socket.timeout):
                continue
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
            finally:
                sock.settimeout(limit_s)
    return float("inf")


def test_trickled_headers_are_cut_off_at_the_header_deadline(service):
    closed_after = trickle(service.url, b"POST /identify HTTP/1.1\r\nHost: x\r\n", b"X", 0.2, 15)
    assert HEADER_S <= closed_after < HEADER_S + 3


def test_a_trickled_body_is_cut_off_at_the_body_deadline(service):
    head = b"POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    closed_after = trickle(service.url, head, b"\0", 0.2, 15)
    assert BODY_S <= closed_after < BODY_S + 3


def test_an_ordinary_request_is_not_cut(service):
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    with httpx.Client(base_url=service.url) as client:  # one kept-alive connection, idle past the header deadline
        assert client.get("/healthz").status_code == 200
        time.sleep(HEADER_S + 0.5)
        assert client.get("/healthz").status_code == 200


def test_model_work_stops_when_its_client_disconnects():
    """while_connected (what /identify and /catalog run their decode under) over a real uvicorn: a client that
    sends its request and leaves stops the work at its next check, instead of holding a core to the end."""
    started, stopped = threading.Event(), threading.Event()

    def work(seconds: float, should_stop) -> str:
        started.set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if should_stop():
                stopped.set()
                return "stopped"
            time.sleep(0.01)
        return "finished"

    app = FastAPI()

    @app.post("/work")
    async def route(request: Request, seconds: float = 30.0) -> str:
        await request.body()
        return await while_connected(request, work, seconds)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        # a client that waits gets the answer
        assert httpx.post(f"http://127.0.0.1:{port}/work?seconds=0.3", content=b"hi").json() == "finished"
        assert not stopped.is_set()
        started.clear()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /work HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            assert started.wait(5)
        left = time.monotonic()
        assert stopped.wait(5)
        assert time.monotonic() - left < CLIENT_POLL_S + 1.0
    finally:
        server.should_exit = True
        thread.join(10)
