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
UPLOAD_SLOTS = 4
QUEUE_WAIT_S = 0.5


@pytest.fixture(params=["sqlite"])
def small_queue_service(request, tmp_path, narrow_artifact):
    env = {"COVERID_QUEUE_SIZE": str(QUEUE_SIZE), "COVERID_UPLOAD_SLOTS": str(UPLOAD_SLOTS),
           "COVERID_QUEUE_WAIT_S": str(QUEUE_WAIT_S), "COVERID_RETRY_AFTER_S": "2"}
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


def test_slow_uploads_hold_upload_places_not_the_queue_and_full_upload_places_refuse_from_the_headers(
        small_queue_service):
    """Uploads still arriving hold upload places (UPLOAD_SLOTS), not the model's queue: an ordinary identify
    still gets in; once every upload place is held, a further request is refused before its body is sent."""
    url = small_queue_service.url
    target = urlparse(url)
    head = ("POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 1000000\r\n\r\n")
    clip = tune_wav(10, 0)
    holders = []
    try:
        for _ in range(UPLOAD_SLOTS - 1):
            holders.append(socket.create_connection((target.hostname, target.port), timeout=10))
            holders[-1].sendall(head.encode() + b"--b\r\n")  # a slow upload: most of its body never comes
        _wait_for(lambda: _metric(url, "coverid_uploads_in_flight") == UPLOAD_SLOTS - 1)
        assert _metric(url, "coverid_model_queue_depth") == 0
        # more stalled uploads than the queue has places, and an ordinary client is still served
        answer = httpx.post(f"{url}/identify", files={"file": ("c.wav", clip)}, timeout=60)
        assert answer.status_code == 200, answer.text
        holders.append(socket.create_connection((target.hostname, target.port), timeout=10))
        holders[-1].sendall(head.encode() + b"--b\r\n")
        _wait_for(lambda: _metric(url, "coverid_uploads_in_flight") == UPLOAD_SLOTS)
        answer = raw_request_head(url, head, 0)  # only the head: the answer cannot wait for a body
        assert answer.startswith("HTTP/1.1 503"), answer[:200]
        assert "retry-after: 2" in answer.lower() and "uploads" in answer
        assert 'route="/identify",status="503"' in httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/catalog").status_code == 200  # routes without the model are not queued
    finally:
        for sock in holders:
            sock.close()
    _wait_for(lambda: _metric(url, "coverid_uploads_in_flight") == 0)  # the uploaders' places came back
    answer = httpx.post(f"{url}/identify", files={"file": ("c.wav", clip)}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert _metric(url, "coverid_model_queue_depth") == 0


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
