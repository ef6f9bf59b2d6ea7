"""Shared fixtures: audio the tests synthesise themselves, and exported extractor artifacts."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from models.config import ExtractorConfig
from models.extractor import export_extractor
from models.network import ResNetIBN
from models.training.synth import random_tune, render_notes

SAMPLE_RATE = ExtractorConfig.sample_rate

# (soundfile format, subtype, file sample rate) for every format users upload
FORMATS = {
    "wav": ("WAV", "PCM_16", 44100),
    "flac": ("FLAC", "PCM_16", 44100),
    "ogg": ("OGG", "VORBIS", 44100),
    "opus": ("OGG", "OPUS", 48000),
    "mp3": ("MP3", "MPEG_LAYER_III", 44100),
}


def tone(freq: float, seconds: float, rate: int = SAMPLE_RATE, amplitude: float = 0.3, harmonics: int = 3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    out = sum(amplitude * 0.5 ** k * np.sin(2 * np.pi * freq * (k + 1) * t) for k in range(harmonics))
    return out.astype(np.float32)


def encode(audio: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def tune(seconds: float, seed: int = 0, rate: int = SAMPLE_RATE) -> np.ndarray:
    return render_notes(random_tune(seconds, seed=seed), rate, seconds, seed=seed)


def tune_wav(seconds: float, seed: int, start_s: float = 0.0) -> bytes:
    """A 16-bit WAV upload of `tune(seconds, seed)` from `start_s` on (a clip of that track when start_s > 0)."""
    return encode(tune(seconds, seed=seed)[int(start_s * SAMPLE_RATE):], SAMPLE_RATE, "WAV", "PCM_16")


@pytest.fixture(scope="session")
def narrow_config() -> ExtractorConfig:
    return ExtractorConfig(width=16)


@pytest.fixture(scope="session")
def narrow_network(narrow_config) -> ResNetIBN:
    torch.manual_seed(0)
    return ResNetIBN.from_config(narrow_config).eval()


@pytest.fixture(scope="session")
def narrow_artifact(tmp_path_factory, narrow_network, narrow_config):
    """An exported width-16 extractor: (path, stored config)."""
    path = tmp_path_factory.mktemp("artifact") / "extractor.pt"
    stored = export_extractor(narrow_network, narrow_config, path)
    return path, stored


@pytest.fixture(scope="session")
def shared_data():
    """The read-only MIDI corpora beside the checkout (../shared/data)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if not root.exists():
        pytest.fail(f"shared data not found at {root}: the checkout must sit beside shared/")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny tensors: on a busy 2-core machine a second intra-op thread only adds spin-waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rewrite_snapshot(source: Path, target: Path, format_version: int, drop: tuple[str, ...] = ()) -> None:
    """A copy of an index snapshot whose header claims another format version, without the members named in `drop`:
    what an older (or newer) coverid would have written, for the tests that it is refused or rebuilt."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            if name.startswith(drop):
                continue
            data = old.read(name)
            if name == "header.json":
                data = json.dumps({**json.loads(data), "format_version": format_version}).encode()
            new.writestr(name, data)
