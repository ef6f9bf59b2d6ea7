"""Back-pressure: past the model's queue a request gets a quick 503 with Retry-After, never an unbounded wait."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.app.conftest import running_service
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
