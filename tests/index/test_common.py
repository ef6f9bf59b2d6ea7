import os
import stat
from pathlib import Path

import pytest
import torch

from index.common import DeviceUnavailable, choose_device, replaced_atomically, state_dict_sha256

WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"


def test_a_file_is_replaced_whole_or_left_as_it_was(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replaced_atomically(path) as file:
            file.write(b"half of the new")
            raise RuntimeError("the writer failed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["data.bin"]  # no temp file left
    for durable, before, after in ((False, b"old", b"new"), (True, b"new", b"newer")):
        with replaced_atomically(path, durable=durable) as file:
            file.write(after)
            assert path.read_bytes() == before  # readers see the old file until the block ends
        assert path.read_bytes() == after and os.listdir(tmp_path) == ["data.bin"]
    with replaced_atomically(tmp_path / "private.bin", mode=0o600) as file:
        file.write(b"x")
    assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600


def test_the_committed_weight_files_keep_their_hashes():
    """Their headers (and the artifact's model_id) hold hashes that the loaders check: the shared loop must not move them."""
    from models.extractor import load_extractor, weights_digest
    from models.pitch_student import weights_id

    artifact = load_extractor(WEIGHTS / "extractor.pt", "cpu")
    assert artifact.model_id.endswith("-" + weights_digest(artifact.module.network))
    student = torch.load(WEIGHTS / "pitch_student" / "pitch_student.pt", map_location="cpu", weights_only=True)
    assert weights_id(student["state_dict"]) == student["header"]["weights_id"]
    teacher = torch.load(WEIGHTS / "basic_pitch" / "basic_pitch_icassp2022.pt", map_location="cpu", weights_only=True)
    assert state_dict_sha256(teacher["state_dict"], with_layout=True) == teacher["header"]["weights_sha256"]


def test_the_hash_variants_differ_where_they_should():
    weights = {"w": torch.ones(2, 3), "count": torch.tensor(7)}  # an int64 buffer, as BatchNorm keeps
    plain, as_float, with_layout = (state_dict_sha256(weights, **options) for options in
                                    ({}, {"as_float32": True}, {"with_layout": True}))
    assert len({plain, as_float, with_layout}) == 3
    assert state_dict_sha256({"w": torch.ones(2, 3)}) == state_dict_sha256({"w": torch.ones(2, 3)}, as_float32=True)
    assert state_dict_sha256({"w": torch.ones(3, 2).t()}) == state_dict_sha256({"w": torch.ones(2, 3)})  # C order


def test_the_device_is_cuda_when_present_and_a_missing_one_is_refused():
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_device(None) == choose_device("auto") and choose_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
            choose_device("cuda:0")
