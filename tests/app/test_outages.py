"""A frozen or stopped Redis: /identify keeps answering from memory, everything else fails fast with Retry-After."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.app.conftest import ServiceProcess, started_redis
from tests.conftest import tune_wav

TIMEOUT_S = 3.0  # well above an identify on a busy CI machine, so "faster than the timeout" means "did not wait"
RETRY_AFTER_S = 8



@pytest.fixture
def service_on_redis(tmp_path, narrow_artifact):
    server = started_redis(tmp_path / "redis")
    service = ServiceProcess({"COVERID_MODEL_PATH": str(narrow_artifact[0]), "COVERID_DEVICE": "cpu",
                              "COVERID_DATA_DIR": str(tmp_path / "data"), "COVERID_REDIS_URL": server.url,
                              "COVERID_STORE_TIMEOUT_S": str(TIMEOUT_S), "COVERID_RETRY_AFTER_S": str(RETRY_AFTER_S)},
                             tmp_path / "service.log")
    service.start()
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for seed in range(2):
            answer = client.post("/catalog", files={"file": ("t.wav", tune_wav(30, seed))},
                                 data={"track_id": f"song-{seed}", "title": f"Song {seed}"})
            assert answer.status_code == 201, answer.text
        yield server, client
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)  # never leave a stopped process behind
    service.stop()
    server.stop()


def timed(call):
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def identify(client: httpx.Client) -> httpx.Response:
    return client.post("/identify", files={"file": ("clip.wav", tune_wav(30, 1, start_s=15))})


def test_a_frozen_redis_costs_at_most_the_store_timeout(service_on_redis):
    server, client = service_on_redis
    assert identify(client).json()["matches"][0]["title"] == "Song 1"
    os.kill(server.process.pid, signal.SIGSTOP)

    first, seconds = timed(lambda: identify(client))
    assert first.status_code == 200 and seconds < TIMEOUT_S + 5
    body = first.json()
    assert body["metadata_unavailable"] is True
    assert body["matches"][0]["track_id"] == "song-1" and body["matches"][0]["title"] is None
    second, seconds = timed(lambda: identify(client))  # the store is not asked again within Retry-After
    assert second.status_code == 200 and second.json()["metadata_unavailable"] and seconds < TIMEOUT_S

    for call in (lambda: client.get("/readyz"), lambda: client.get("/catalog/song-0")):
        answer, seconds = timed(call)
        assert answer.status_code == 503 and seconds < 2 * TIMEOUT_S + 5, (answer.text, seconds)
        assert answer.headers["Retry-After"] == str(RETRY_AFTER_S) and "store" in answer.json()["detail"]

    os.kill(server.process.pid, signal.SIGCONT)
    time.sleep(RETRY_AFTER_S + 0.5)
    assert client.get("/readyz").status_code == 200
    back = identify(client).json()
    assert back["metadata_unavailable"] is False and back["matches"][0]["title"] == "Song 1"


def test_a_stopped_redis_still_lets_identify_answer(service_on_redis):
    server, client = service_on_redis
    server.stop(crash=True)
    answer = identify(client)
    assert answer.status_code == 200 and answer.json()["metadata_unavailable"] is True
    assert answer.json()["matches"][0]["track_id"] == "song-1"
    ingest = client.post("/catalog", files={"file": ("t.wav", tune_wav(30, 5))})
    assert ingest.status_code == 503 and ingest.headers["Retry-After"] == str(RETRY_AFTER_S)


def test_a_stopped_milvus_gets_503_with_retry_after_and_nothing_stored_is_lost(tmp_path, narrow_artifact):
    from tests.app.conftest import MilvusServer

    (tmp_path / "milvus").mkdir()
    engine = MilvusServer(tmp_path / "milvus")
    engine.start()
    service = ServiceProcess({"COVERID_MODEL_PATH": str(narrow_artifact[0]), "COVERID_DEVICE": "cpu",
                              "COVERID_DATA_DIR": str(tmp_path / "data"), "COVERID_MILVUS_URI": engine.uri,
                              "COVERID_STORE_TIMEOUT_S": str(TIMEOUT_S), "COVERID_RETRY_AFTER_S": str(RETRY_AFTER_S),
                              "COVERID_SYNC_INTERVAL_S": "0.5"}, tmp_path / "service.log")
    service.start()
    try:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            for seed in range(2):
                added = client.post("/catalog", files={"file": ("t.wav", tune_wav(30, seed))}, data={"track_id": f"song-{seed}"})
                assert added.status_code == 201, added.text
            engine.stop()
            for call in (lambda: identify(client), lambda: client.get("/readyz"),
                         lambda: client.post("/catalog", files={"file": ("t.wav", tune_wav(30, 5))}, data={"track_id": "new"})):
                answer, seconds = timed(call)
                assert answer.status_code == 503 and seconds < 2 * TIMEOUT_S + 5, (answer.text, seconds)
                assert answer.headers["Retry-After"] == str(RETRY_AFTER_S) and "Milvus" in answer.json()["detail"]
            assert client.get("/catalog/song-0").status_code == 200  # the store still answers
            assert client.get("/catalog/new").status_code == 404  # the refused ingest left nothing half-stored

            engine.start()  # same data directory: the engine comes back with what it held
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert identify(client).json()["matches"][0]["track_id"] == "song-1"
            retried = client.post("/catalog", files={"file": ("t.wav", tune_wav(30, 5))}, data={"track_id": "new"})
            assert retried.status_code == 201, retried.text
    finally:
        service.stop()
        engine.stop()
