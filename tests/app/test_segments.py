"""A set list through the real service: the three example covers joined, with unrelated noise between two of
them, against a catalogue of the originals; /identify/segments names each work in order, and where it changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.app.conftest import running_service

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = ROOT / "models" / "weights" / "extractor.pt"
EXAMPLES = ROOT / "examples"
ORDER = ["song-2", "song-3", "song-1"]
NOISE_S = 4.0


@pytest.fixture(params=["sqlite"])
def shipped_service(request, tmp_path):
    yield from running_service(request, tmp_path, SHIPPED_MODEL, {})


def set_list(tmp_path: Path) -> tuple[Path, list[float]]:
    """The covers in ORDER, with NOISE_S of quiet noise after the first; and the true start of each cover."""
    parts, starts, at = [], [], 0.0
    rate = None
    for i, name in enumerate(ORDER):
        audio, rate = sf.read(EXAMPLES / "covers" / f"{name}.ogg", dtype="float32", always_2d=True)
        starts.append(at)
        parts.append(audio.mean(axis=1))
        at += len(parts[-1]) / rate
        if i == 0:
            parts.append(0.05 * np.random.default_rng(0).standard_normal(int(NOISE_S * rate)).astype(np.float32))
            at += NOISE_S
    path = tmp_path / "set.flac"
    sf.write(path, np.concatenate(parts), rate)
    return path, starts


def test_a_set_list_gets_one_span_per_work_in_order(shipped_service, tmp_path):
    upload, starts = set_list(tmp_path)
    with httpx.Client(base_url=shipped_service.url, timeout=300) as client:
        for name in ORDER:
            data = (EXAMPLES / "originals" / f"{name}.ogg").read_bytes()
            assert client.post("/catalog", files={"file": ("o.ogg", data)}, data={"track_id": name}).status_code == 201
        answer = client.post("/identify/segments", files={"file": ("set.flac", upload.read_bytes())})
    assert answer.status_code == 200, answer.text
    spans = answer.json()["spans"]
    found = [s for s in spans if s["track_id"] is not None]
    assert [s["track_id"] for s in found] == ORDER, spans
    assert spans[0]["start_s"] == 0.0 and spans[-1]["end_s"] == answer.json()["query_duration_s"]
    assert all(a["end_s"] == b["start_s"] for a, b in zip(spans, spans[1:]))  # they tile the upload
    for span, start in zip(found[1:], starts[1:]):  # each change of work within one chunk hop of the truth
        assert abs(span["start_s"] - start) <= 10.0, (span, start)
    assert all(isinstance(s["is_match"], bool) and 0 <= s["confidence"] <= 1 for s in found)

    shown = subprocess.run([sys.executable, "-m", "app.cli", "identify", "--segments", str(upload),
                            "--url", shipped_service.url], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    printed = [next(word for word in line.split() if word.startswith("song-"))
               for line in shown.stdout.splitlines()[1:] if "song-" in line]
    assert printed == ORDER, shown.stdout
