"""The pitch student: a small network on the CQT trained to give basic-pitch's notes (models/pitch_student.py, distil.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from models.config import ExtractorConfig
from models.training.distil import DistilConfig, audio_files, distil, pairs
from models.frontend import FrontEnd
from models.pitch_student import PitchStudent, StudentWeightsError, load_student, local_db, save_student
from tests.conftest import SAMPLE_RATE, tune

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("frames", [1, 3, 4, 5, 430])
def test_the_student_keeps_the_cqt_frame_grid_and_gives_posteriors(frames):
    student = torch.jit.script(PitchStudent(channels=4).eval())
    cqt = torch.rand(84, frames)
    with torch.inference_mode():
        notes = student(cqt)
        batched = student(cqt.unsqueeze(0).repeat(2, 1, 1))
    assert notes.shape == (88, frames) and batched.shape == (2, 88, frames)
    assert 0.0 <= float(notes.min()) and float(notes.max()) <= 1.0
    torch.testing.assert_close(batched[1], notes)


def test_the_student_input_ignores_loudness_and_is_local():
    cqt = torch.rand(1, 84, 300) + 1e-3
    torch.testing.assert_close(local_db(cqt * 10.0), local_db(cqt), atol=1e-5, rtol=0)
    # a loud passage 10 s away does not change a quiet frame's input (2 s reference window)
    louder = cqt.clone()
    louder[..., 250:] *= 1000.0
    torch.testing.assert_close(local_db(louder)[..., :100], local_db(cqt)[..., :100])
    assert float(local_db(cqt).min()) >= 0.0 and float(local_db(cqt).max()) == pytest.approx(1.0)


def test_weights_round_trip_and_a_damaged_file_is_refused(tmp_path):
    torch.manual_seed(0)
    student = PitchStudent(channels=4, time_stride=2).eval()
    path = tmp_path / "student.pt"
    save_student(student, path, {"note": "test"})
    loaded = load_student(path)
    cqt = torch.rand(84, 50)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(cqt), student(cqt))
    stored = torch.load(path, weights_only=True)
    stored["state_dict"]["conv1.bias"] += 1.0
    torch.save(stored, path)
    with pytest.raises(StudentWeightsError, match="damaged"):
        load_student(path)
    with pytest.raises(StudentWeightsError, match="coverid distil"):
        load_student(tmp_path / "missing.pt")


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    for seed in range(10):
        sf.write(folder / f"tune{seed}.ogg", tune(6.0, seed=seed), SAMPLE_RATE)
    (folder / "broken.ogg").write_bytes(b"OggS" + bytes(500))  # a damaged file among them
    files = audio_files([folder])
    skipped: list[str] = []
    return files, pairs(files, folder / "cache", skipped=skipped), skipped


def test_teacher_pairs_stack_the_cqt_on_the_teachers_notes(tiny_pairs):
    files, arrays, skipped = tiny_pairs
    assert len(files) == 11 and len(arrays) == 10
    assert len(skipped) == 1 and "broken.ogg" in skipped[0]
    assert all(a.shape[0] == 84 + 88 and a.dtype == np.float16 for a in arrays)
    notes = arrays[0][84:].astype(np.float32)
    assert 0.0 <= notes.min() and notes.max() <= 1.0 and notes.max() > 0.3  # the tune's notes are found


def test_a_short_distillation_learns_and_writes_an_installable_student(tiny_pairs, tmp_path, monkeypatch):
    _, arrays, _ = tiny_pairs
    config = DistilConfig(steps=30, batch=4, crop_seconds=4.0, channels=4, log_every=10, lr=3e-3)
    path = distil(arrays, config, tmp_path / "run", {"audio": ["synthetic"]})
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30]
    assert log[-1]["loss"] < log[0]["loss"] and log[-1]["held_out_loss"] < log[0]["held_out_loss"]
    student = load_student(path)
    assert student.channels == 4

    # installed, it becomes the "student" features of the one front end
    import models.frontend as frontend_module
    from models.pitch_student import student_id

    monkeypatch.setattr(frontend_module, "DEFAULT_STUDENT", path)
    config = ExtractorConfig(features="student", pitch_student_id=student_id(path))
    waveform = torch.from_numpy(tune(21.0, seed=3))
    with torch.inference_mode():
        notes = FrontEnd(config).eval().spectrogram(waveform)
        cqt = FrontEnd(ExtractorConfig()).eval().spectrogram(waveform)
    assert notes.shape == (88, cqt.shape[1])
    with pytest.raises(ValueError, match="needs pitch student 'other'"):
        FrontEnd(config.replace(pitch_student_id="other"))
