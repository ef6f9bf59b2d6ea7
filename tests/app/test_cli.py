"""The CLI as a user runs it: a real subprocess on real files."""

import subprocess
import sys

import pytest


def coverid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300)


def test_export_then_embed_a_generated_file(tmp_path):
    model = tmp_path / "extractor.pt"
    audio = tmp_path / "demo.flac"
    assert coverid("export", "--output", str(model), "--width", "8").returncode == 0
    assert coverid("demo-audio", str(audio), "--seconds", "35").returncode == 0
    result = coverid("embed", str(audio), "--model", str(model), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "embeddings (3, 512)" in result.stdout  # 35 s: chunks at 0, 10 and 15 s
    assert "chunk starts (s): 0.00, 10.01, 15.00" in result.stdout


def test_bad_audio_is_a_clear_error_not_a_traceback(tmp_path):
    model = tmp_path / "extractor.pt"
    assert coverid("export", "--output", str(model), "--width", "8").returncode == 0
    junk = tmp_path / "notes.txt"
    junk.write_text("not audio at all " * 50)
    result = coverid("embed", str(junk), "--model", str(model))
    assert result.returncode == 2
    assert result.stderr.startswith("error: not a readable audio file") and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["embed", "x.wav", "--model", "missing.pt"]])
def test_missing_model_names_the_fix(args, tmp_path):
    result = coverid(*args)
    assert result.returncode == 2 and "coverid export" in result.stderr
