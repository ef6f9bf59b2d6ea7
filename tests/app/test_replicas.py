"""Two real server processes on one real redis-server converge on the same catalogue: each with its own in-process
index, or both on one Milvus server holding the first stage."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.app.conftest import ServiceProcess, milvus_env, started_redis
from tests.conftest import tune_wav

SYNC_S = 0.5
WITHIN_S = SYNC_S + 5  # the stated delay plus the time to fetch and index a track on a busy CI machine



@pytest.fixture(params=["in-process", "milvus"])
def replicas(request, tmp_path, narrow_artifact):
    server = started_redis(tmp_path / "redis")
    engine = milvus_env(request.getfixturevalue("milvus_server"), tmp_path) if request.param == "milvus" else {}
    processes = []
    for name in ("a", "b"):
        env = {"COVERID_MODEL_PATH": str(narrow_artifact[0]), "COVERID_DEVICE": "cpu", "COVERID_REDIS_URL": server.url,
               "COVERID_DATA_DIR": str(tmp_path / f"data-{name}"), "COVERID_SYNC_INTERVAL_S": str(SYNC_S), **engine}
        processes.append(ServiceProcess(env, tmp_path / f"service-{name}.log"))
        processes[-1].start()
    clients = [httpx.Client(base_url=p.url, timeout=60) for p in processes]
    yield processes, clients
    for client in clients:
        client.close()
    for process in processes:
        process.stop()
    server.stop()


def eventually(check, within_s: float = WITHIN_S):
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def top(client: httpx.Client, clip: bytes) -> str | None:
    matches = client.post("/identify", files={"file": ("c.wav", clip)}).json()["matches"]
    return matches[0]["track_id"] if matches else None


def test_ingest_and_delete_through_one_replica_are_seen_by_the_other(replicas):
    processes, (a, b) = replicas
    clip = tune_wav(40, 7, start_s=12)
    assert a.post("/catalog", files={"file": ("t.wav", tune_wav(40, 7))}, data={"track_id": "song-7"}).status_code == 201
    assert a.post("/catalog", files={"file": ("t.wav", tune_wav(40, 8))}, data={"track_id": "song-8"}).status_code == 201
    assert eventually(lambda: top(b, clip) == "song-7")
    assert eventually(lambda: b.get("/readyz").json()["vectors"] == a.get("/readyz").json()["vectors"])

    assert a.delete("/catalog/song-7").status_code == 204
    assert eventually(lambda: top(b, clip) != "song-7")

    # and the other way round, with a replace of the survivor's content
    replaced = b.post("/catalog", files={"file": ("t.wav", tune_wav(40, 7))}, data={"track_id": "song-8"},
                      params={"replace": "true"})
    assert replaced.status_code == 201
    assert eventually(lambda: top(a, clip) == "song-8")


def test_a_restarted_replica_starts_from_its_snapshot_and_catches_up(replicas):
    """In process: from the snapshot it wrote, then the store's log. On Milvus: from the shared collection."""
    processes, (a, b) = replicas
    milvus = "COVERID_MILVUS_URI" in processes[1].env
    assert a.post("/catalog", files={"file": ("t.wav", tune_wav(40, 1))}, data={"track_id": "one"}).status_code == 201
    assert eventually(lambda: b.get("/readyz").json()["tracks"] == 1)
    processes[1].stop()  # a clean stop writes b's snapshot, at its generation
    logged = len(processes[1].log_path.read_text())
    assert a.post("/catalog", files={"file": ("t.wav", tune_wav(40, 2))}, data={"track_id": "two"}).status_code == 201
    processes[1].start()
    b.base_url = processes[1].url
    assert ("Milvus collection" if milvus else "index snapshot") in processes[1].log_path.read_text()[logged:]
    assert top(b, tune_wav(40, 2, start_s=10)) == "two"  # replayed from the log at start-up, not lost
