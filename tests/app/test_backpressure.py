"""Back-pressure: past the model's queue a request gets a quick 503 with Retry-After, never an unbounded wait."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import pytest

from tests.app.conftest import raw_request_head, running_service
from tests.conftest import tune_wav

QUEUE_SIZE = 2
QUEUE_WAIT_S = 0.5


@pytest.fixture(params=["sqlite"])
def small_queue_service(request, tmp_path, narrow_artifact):
    env = {"COVERID_QUEUE_SIZE": str(QUEUE_SIZE), "COVERID_QUEUE_WAIT_S": str(QUEUE_WAIT_S), "COVERID_RETRY_AFTER_S": "2"}
    yield from running_service(request, tmp_path, narrow_artifact[0], env)


def test_overload_is_refused_quickly_with_retry_after(small_queue_service):
    url = small_queue_service.url
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/catalog", files={"file": ("t.wav", tune_wav(40, 0))}).status_code == 201
    clip = tune_wav(60, 0)  # the longest clips: each holds the model longest

    def one(_):
        started = time.monotonic()
        answer = httpx.post(f"{url}/identify", files={"file": ("c.wav", clip)}, timeout=60)
        return answer, time.monotonic() - started

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    statuses = [answer.status_code for answer, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    refused = [(answer, seconds) for answer, seconds in results if answer.status_code == 503]
    assert refused and statuses.count(200) >= 1
    for answer, _ in refused:
        assert answer.headers["Retry-After"] == "2" and "retry" in answer.json()["detail"]
    metrics = httpx.get(f"{url}/metrics").text
    rejected = sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("coverid_rejected_requests_total{"))
    assert rejected == len(refused)
    assert "coverid_model_queue_depth 0.0" in metrics  # every admitted request left the queue


def test_a_full_queue_refuses_from_the_headers_and_frees_places_when_uploaders_leave(small_queue_service):
    """Uploads still in flight hold the queue's places; a further request is refused before its body is sent."""
    url = small_queue_service.url
    target = urlparse(url)
    head = ("POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 1000000\r\n\r\n")
    holders = [socket.create_connection((target.hostname, target.port), timeout=10) for _ in range(QUEUE_SIZE)]
    try:
        for sock in holders:
            sock.sendall(head.encode() + b"--b\r\n")  # a slow upload: most of its body never comes
        _wait_for(lambda: _metric(url, "coverid_model_queue_depth") == QUEUE_SIZE)
        answer = raw_request_head(url, head, 0)  # only the head: the answer cannot wait for a body
        assert answer.startswith("HTTP/1.1 503"), answer[:200]
        assert "retry-after: 2" in answer.lower() and "retry" in answer
        assert 'route="/identify",status="503"' in httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/catalog").status_code == 200  # routes without the model are not queued
    finally:
        for sock in holders:
            sock.close()
    _wait_for(lambda: _metric(url, "coverid_model_queue_depth") == 0)  # the uploaders' places came back
    answer = httpx.post(f"{url}/identify", files={"file": ("c.wav", tune_wav(10, 0))}, timeout=60)
    assert answer.status_code == 200, answer.text


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


def _wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
