"""The service end to end: a real uvicorn process over loopback, real audio files, both stores."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from app.store import open_store
from tests.app.conftest import plant_raw_track, raw_request_head, running_service
from tests.conftest import SAMPLE_RATE, tune

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def flac(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="FLAC")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tracks() -> dict[str, bytes]:
    return {f"tune-{seed}": flac(tune(50.0, seed=seed)) for seed in range(3)}


@pytest.fixture(params=["sqlite", "redis", "milvus"])
def service(request, tmp_path, narrow_artifact):
    env = {
        "COVERID_API_KEYS": json.dumps([KEY]),
        "COVERID_MAX_UPLOAD_BYTES": str(3 * 2**20),
        "COVERID_MAX_CLIP_SECONDS": "70",
        "COVERID_MAX_TRACK_SECONDS": "120",
    }
    yield from running_service(request, tmp_path, narrow_artifact[0], env)


def add(client: httpx.Client, data: bytes, **fields) -> httpx.Response:
    params = {"replace": "true"} if fields.pop("replace", False) else None
    return client.post("/catalog", files={"file": ("track.flac", data)}, data=fields, params=params, headers=AUTH)


def test_catalogue_lifecycle_survives_restarts(service, tracks):
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for track_id, data in tracks.items():
            response = add(client, data, track_id=track_id, title=track_id.upper(), metadata='{"isrc": "X1"}')
            assert response.status_code == 201, response.text
            assert response.json()["n_segments"] == 4 and response.json()["duration_s"] == pytest.approx(50.0)
        clip = tune(50.0, seed=1)[int(12 * SAMPLE_RATE) : int(42 * SAMPLE_RATE)]
        found = client.post("/identify", files={"file": ("clip.flac", flac(clip))}, params={"top_k": 3}).json()
        assert found["matches"][0]["track_id"] == "tune-1"
        assert found["matches"][0]["is_match"] is None and found["matches"][0]["confidence"] is None  # no calibration
        assert set(found["timings_ms"]) >= {"decode", "embed", "search", "rerank", "total"}
        assert client.get("/catalog/tune-2").json()["metadata"] == {"isrc": "X1"}

    service.restart()  # clean stop: the index comes back from its snapshot
    with httpx.Client(base_url=service.url, timeout=60) as client:
        listing = client.get("/catalog", params={"limit": 2}).json()
        assert listing["total"] == 3 and len(listing["items"]) == 2
        assert client.delete("/catalog/tune-0", headers=AUTH).status_code == 204
        assert client.get("/catalog/tune-0").status_code == 404
        clip = tune(50.0, seed=0)[: 30 * SAMPLE_RATE]
        found = client.post("/identify", files={"file": ("clip.flac", flac(clip))}, params={"top_k": 5}).json()
        assert "tune-0" not in [m["track_id"] for m in found["matches"]]

    service.restart(kill=True)  # crash: the index is rebuilt from the store
    with httpx.Client(base_url=service.url, timeout=60) as client:
        ready = client.get("/readyz").json()
        assert ready["tracks"] == 2 and ready["vectors"] == 8
        clip = tune(50.0, seed=2)[: 20 * SAMPLE_RATE]
        assert client.post("/identify", files={"file": ("clip.flac", flac(clip))}).json()["matches"][0]["track_id"] == "tune-2"
        metrics = client.get("/metrics").text
        assert "coverid_stage_duration_seconds_bucket" in metrics and "coverid_catalog_tracks 2.0" in metrics


def test_bad_input_gets_a_clear_4xx_and_loses_nothing(service, tracks):
    with httpx.Client(base_url=service.url, timeout=60) as client:
        assert add(client, tracks["tune-0"], track_id="keep").status_code == 201
        uploads = {
            "empty file": b"",
            "not audio": b"hello, this is text and not a song\n" * 40,
            "corrupt flac": tracks["tune-1"][:2000] + bytes(4000) + tracks["tune-1"][6000:40000],
            "too short": flac(tune(1.0, seed=4)),
            "too long": flac(np.tile(tune(40.0, seed=5), 2)),
        }
        for name, data in uploads.items():
            response = client.post("/identify", files={"file": ("x", data)})
            assert response.status_code in (415, 422), (name, response.status_code, response.text)
            assert response.json()["detail"] and "Traceback" not in response.text
        assert client.post("/identify", files={"file": ("x", uploads["not audio"])}).status_code == 415
        checks = [
            (add(client, tracks["tune-1"], track_id="keep"), 409),
            (add(client, tracks["tune-1"], metadata="[1, 2]"), 422),
            (add(client, tracks["tune-1"], metadata="{oops"), 422),
            (add(client, tracks["tune-1"], metadata='{"bpm": NaN}'), 422),
            (add(client, tracks["tune-1"], metadata='{"a":' * 300 + "1" + "}" * 300), 422),  # past the limit
            (add(client, tracks["tune-1"], metadata="[" * 5000), 422),  # past json's recursion limit
            (add(client, tracks["tune-1"], metadata='{"isrc": ' + "9" * 5000 + "}"), 422),  # past int()'s digit limit
            (add(client, tracks["tune-1"], metadata='{"gain": 1e400}'), 422),  # no float holds it: inf
            (add(client, tracks["tune-1"], metadata='{"a": "' + "x" * 70000 + '"}'), 422),
            (add(client, tracks["tune-1"], track_id="bad id with spaces"), 422),
            (client.post("/catalog", files={"file": ("t", tracks["tune-1"])}), 401),
            (client.post("/catalog", files={"file": ("t", tracks["tune-1"])}, headers={"Authorization": "Bearer no"}), 401),
            (client.delete("/catalog/keep"), 401),
            (client.delete("/catalog/missing", headers=AUTH), 404),
            (client.get("/catalog/missing"), 404),
            (client.get("/catalog", params={"offset": 2**64}), 422),  # past SQLite's and Redis's 64-bit integers
            (client.post("/identify", files={"file": ("c", tracks["tune-0"])}, params={"top_k": 100000}), 422),
            (client.post("/identify", files={"file": ("c", bytes(4 * 2**20))}), 413),
            (client.post("/identify"), 422),
        ]
        for response, status in checks:
            assert response.status_code == status, (status, response.status_code, response.text)
            assert response.json().get("detail")
        # an integer past Python's digit limit: what to do about it, not how to reconfigure Python
        long_integer = add(client, tracks["tune-1"], metadata='{"n": 1' + "0" * 5000 + "}")
        assert long_integer.status_code == 422
        detail = long_integer.json()["detail"]
        assert "as a string" in detail and "set_int_max_str_digits" not in detail and "sys." not in detail, detail

        def chunked():  # no Content-Length: the limit holds while streaming
            yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            for _ in range(64):
                yield bytes(64 * 1024)

        streamed = client.post("/identify", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert streamed.status_code == 413
        # a replace with bad audio keeps the stored track
        assert add(client, b"not audio at all" * 100, track_id="keep", replace=True).status_code == 415
        assert client.get("/catalog/keep").json()["n_segments"] == 4
        assert client.get("/readyz").json()["tracks"] == 1


def test_text_that_is_not_unicode_is_refused_and_one_already_stored_breaks_no_read(service, tracks):
    with httpx.Client(base_url=service.url, timeout=60) as client:
        # JSON escapes of lone surrogates: a value, a key, deep inside
        for metadata in ('{"a": "\\ud800"}', '{"\\udfff": 1}', '{"a": ["x", {"b": "\\udc00 y"}]}'):
            response = add(client, tracks["tune-0"], track_id="bad", metadata=metadata)
            assert response.status_code == 422, response.text
            assert "lone surrogate" in response.json()["detail"] and "UTF-8" in response.json()["detail"]
        assert client.get("/catalog/bad").status_code == 404 and client.get("/catalog").json()["total"] == 0
        assert add(client, tracks["tune-0"], track_id="good").status_code == 201

        # one stored before such text was refused, as it was stored then
        with open_store(Path(service.env["COVERID_DATA_DIR"]), service.env.get("COVERID_REDIS_URL")) as store:
            plant_raw_track(store, "planted", title="T\ud800", metadata_text='{"a":"\\ud800","\\udfff":1}')
        listing = client.get("/catalog")
        assert listing.status_code == 200, listing.text
        assert sorted(item["track_id"] for item in listing.json()["items"]) == ["good", "planted"]
        planted = client.get("/catalog/planted")
        assert planted.status_code == 200, planted.text
        assert planted.json()["metadata"] == {"a": "\ufffd", "\ufffd": 1}
        assert planted.json()["title"].startswith("T\ufffd")
        assert client.delete("/catalog/planted", headers=AUTH).status_code == 204


def test_bulk_upload_skips_bad_files(service, tracks):
    with httpx.Client(base_url=service.url, timeout=120) as client:
        files = [("files", ("a.flac", tracks["tune-0"])), ("files", ("junk.txt", b"junk" * 100)),
                 ("files", ("b.flac", tracks["tune-1"]))]
        result = client.post("/catalog/batch", files=files, headers=AUTH).json()
        assert result["catalogued"] == 2 and result["failed"] == 1
        assert [item["status"] for item in result["items"]] == [201, 415, 201]
        assert result["items"][0]["track"]["title"] == "a"


def test_sigkill_during_bulk_ingest_keeps_every_acknowledged_track(service, tracks):
    acknowledged: list[str] = []
    stop = threading.Event()

    def ingest_forever():
        with httpx.Client(base_url=service.url, timeout=30) as client:
            for i in range(200):
                if stop.is_set():
                    return
                try:
                    response = add(client, tracks[f"tune-{i % 3}"], track_id=f"bulk-{i}")
                except httpx.HTTPError:
                    return
                if response.status_code == 201:
                    acknowledged.append(f"bulk-{i}")

    worker = threading.Thread(target=ingest_forever)
    worker.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    service.stop(kill=True)
    stop.set()
    worker.join(timeout=60)
    assert len(acknowledged) >= 4
    service.start()
    with httpx.Client(base_url=service.url, timeout=60) as client:
        listing = client.get("/catalog", params={"limit": 1000}).json()
        stored = {item["track_id"]: item for item in listing["items"]}
        assert set(acknowledged) <= set(stored)
        assert len(stored) <= len(acknowledged) + 1  # at most the one in flight when killed
        assert all(item["n_segments"] == 4 for item in stored.values())  # whole tracks only
        assert client.get("/readyz").json()["vectors"] == 4 * len(stored)


def test_concurrent_identify_ingest_and_delete_over_http(service, tracks):
    """Requests race in the server's thread pool: no 5xx, and the index ends equal to the store."""
    statuses: list[int] = []
    errors: list[BaseException] = []
    clip = flac(tune(50.0, seed=1)[: 20 * SAMPLE_RATE])

    def run(work):
        try:
            with httpx.Client(base_url=service.url, timeout=120) as client:
                work(client)
        except BaseException as err:  # surfaced below, not lost in the thread
            errors.append(err)

    def ingest(client):
        for i in range(6):
            statuses.append(add(client, tracks[f"tune-{i % 3}"], track_id=f"race-{i}").status_code)

    def delete(client):
        for i in range(6):
            statuses.append(client.delete(f"/catalog/race-{i}", headers=AUTH).status_code)

    def identify(client):
        for _ in range(8):
            statuses.append(client.post("/identify", files={"file": ("clip.flac", clip)}).status_code)

    threads = [threading.Thread(target=run, args=(work,)) for work in (ingest, delete, identify, identify)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len(statuses) == 6 + 6 + 16 and all(status in (200, 201, 204, 404) for status in statuses), statuses
    with httpx.Client(base_url=service.url, timeout=60) as client:
        stored = client.get("/catalog", params={"limit": 100}).json()["items"]
        ready = client.get("/readyz").json()
        assert ready["tracks"] == len(stored) and ready["vectors"] == 4 * len(stored)
        for item in stored:  # every stored track is findable: index and store agree
            found = client.post("/identify", files={"file": ("t.flac", tracks[f"tune-{int(item['track_id'][-1]) % 3}"])},
                                params={"top_k": 50}).json()
            assert item["track_id"] in [m["track_id"] for m in found["matches"]]


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
def test_a_request_without_its_key_is_refused_before_the_body_is_read(service):
    declared = 45 * 2**20  # far past the upload limit too: the key is checked first
    for method, path in (("POST", "/catalog"), ("POST", "/catalog/batch"), ("DELETE", "/catalog/x")):
        head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {declared}\r\n\r\n")
        answer = raw_request_head(service.url, head, 64 * 1024)  # the server answers with 99.9% still unsent
        assert answer.startswith("HTTP/1.1 401"), answer[:200]
        assert "WWW-Authenticate: Bearer".lower() in answer.lower() and "API key" in answer
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'coverid_requests_total{method="POST",route="/catalog",status="401"}' in metrics
