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


def test_evaluate_on_a_list_of_recordings_reports_every_method_and_caches_features(tmp_path):
    import json

    import soundfile as sf

    from models.training.synth import random_tune, render_notes

    rate = 22050
    rows = ["work_id,performance_id,path"]
    for work in range(3):  # two versions of each work: the same notes in another timbre
        notes = random_tune(40, seed=work)
        for version, (harmonics, brightness) in enumerate([(4, 0.6), (2, 0.3)]):
            path = tmp_path / f"w{work}v{version}.flac"
            sf.write(path, render_notes(notes, rate, 40, harmonics=harmonics, brightness=brightness), rate)
            rows.append(f"w{work},w{work}-{version},{path.name}")
    table = tmp_path / "list.csv"
    table.write_text("\n".join(rows) + "\n")
    model = tmp_path / "extractor.pt"
    assert coverid("export", "--output", str(model), "--width", "8").returncode == 0

    args = ["evaluate", "--csv", str(table), "--cache", str(tmp_path / "cache"), "--model", f"untrained={model}",
            "--chroma", "--pitch-chroma", "--lengths", "10", "30", "--out", str(tmp_path / "report"), "--threads", "1"]
    result = coverid(*args)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert set(report) == {"untrained", "2DFTM chroma (no learning)", "2DFTM basic-pitch chroma (no learning)"}
    chroma = report["2DFTM chroma (no learning)"]
    assert chroma["protocol"]["recordings"] == 6 and chroma["protocol"]["works"] == 3
    assert set(chroma["two_stage"]) == {"full", "10", "30"}
    assert chroma["two_stage"]["full"]["queries"] == 6
    assert chroma["two_stage"]["full"]["mAP"] == 1.0  # same notes, other timbre: pitch classes find it
    assert (tmp_path / "report" / "map_vs_length.png").stat().st_size > 0
    assert report["2DFTM basic-pitch chroma (no learning)"]["two_stage"]["full"]["mAP"] == 1.0
    assert report["untrained"]["two_stage"]["full"]["recall_at_10"] == 1.0  # 6 tracks: the first stage reaches all
    # features cached once per front end: the CQT's (the model and chroma share it) and basic-pitch's
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "features").iterdir()) == ["cqt", "pitch"]
    assert len(list((tmp_path / "cache" / "features").glob("*/*.npy"))) == 12

    # a rerun reads the cached features and gives the same figures
    assert coverid(*args).returncode == 0
    assert json.loads((tmp_path / "report" / "evaluation.json").read_text()) == report


def test_evaluate_names_a_bad_list(tmp_path):
    table = tmp_path / "list.csv"
    table.write_text("work_id,performance_id,path\nw0,p0,missing.flac\n")
    result = coverid("evaluate", "--csv", str(table), "--chroma", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "missing.flac (p0) does not exist" in result.stderr and "Traceback" not in result.stderr
