import pytest
import torch

from models.config import ExtractorConfig
from models.extractor import ArtifactError, Extractor, export_extractor, load_extractor
from models.network import ResNetIBN
from tests.conftest import tune


@pytest.mark.parametrize("seconds", [6.0, 30.0, 245.0])
def test_exported_artifact_equals_eager(narrow_artifact, narrow_network, seconds):
    path, stored = narrow_artifact
    loaded = load_extractor(path, "cpu")
    eager = Extractor(stored, narrow_network).eval()
    waveform = torch.from_numpy(tune(seconds, seed=11))
    with torch.inference_mode():
        vectors, starts = eager(waveform)
    result = loaded.embed_waveform(waveform)
    assert result.vectors.shape == (len(starts), 512)
    assert torch.allclose(result.vectors, vectors, atol=1e-5)
    assert torch.equal(result.starts_s, starts)
    assert result.duration_s == pytest.approx(seconds, abs=1e-3)


def test_reference_width_exports_and_matches(tmp_path):
    config = ExtractorConfig(width=64)
    torch.manual_seed(5)
    net = ResNetIBN.from_config(config).eval()
    stored = export_extractor(net, config, tmp_path / "wide.pt")
    loaded = load_extractor(tmp_path / "wide.pt", "cpu")
    waveform = torch.from_numpy(tune(25.0, seed=12))
    with torch.inference_mode():
        vectors, _ = Extractor(stored, net).eval()(waveform)
    assert loaded.config.channels == 2048
    assert torch.allclose(loaded.embed_waveform(waveform).vectors, vectors, atol=1e-5)


def test_the_artifact_carries_its_config(narrow_artifact, narrow_config):
    path, stored = narrow_artifact
    loaded = load_extractor(path, "cpu")
    assert loaded.config == stored
    assert loaded.config.width == narrow_config.width == 16
    assert loaded.model_id.startswith("untrained-") and len(loaded.model_id) > len("untrained-")


def test_model_id_follows_the_weights(tmp_path, narrow_network, narrow_config):
    same = export_extractor(narrow_network, narrow_config, tmp_path / "a.pt")
    again = export_extractor(narrow_network, narrow_config, tmp_path / "b.pt")
    torch.manual_seed(99)
    other = export_extractor(ResNetIBN.from_config(narrow_config).eval(), narrow_config, tmp_path / "c.pt")
    assert same.model_id == again.model_id != other.model_id


def test_long_tracks_are_batched_without_changing_the_result(tmp_path, narrow_network, narrow_config):
    small_batches = narrow_config.replace(max_batch_chunks=4)
    export_extractor(narrow_network, small_batches, tmp_path / "small.pt")
    export_extractor(narrow_network, narrow_config, tmp_path / "big.pt")
    waveform = torch.from_numpy(tune(600.0, seed=13))  # ten minutes: 59 chunks
    a = load_extractor(tmp_path / "small.pt", "cpu").embed_waveform(waveform)
    b = load_extractor(tmp_path / "big.pt", "cpu").embed_waveform(waveform)
    assert a.vectors.shape == (59, 512)
    assert torch.allclose(a.vectors, b.vectors, atol=1e-5)


def test_a_caller_expectation_that_disagrees_is_refused_naming_both(narrow_artifact):
    path, stored = narrow_artifact
    load_extractor(path, "cpu", expect={"embedding_dim": 512, "model_id": stored.model_id})
    with pytest.raises(ArtifactError) as caught:
        load_extractor(path, "cpu", expect={"embedding_dim": 256})
    assert "embedding_dim" in str(caught.value) and "512" in str(caught.value) and "256" in str(caught.value)
    with pytest.raises(ArtifactError, match="model_id"):
        load_extractor(path, "cpu", expect={"model_id": "someone-else"})


def test_a_config_that_disagrees_with_the_module_is_refused(narrow_artifact, tmp_path):
    path, stored = narrow_artifact
    tampered = tmp_path / "tampered.pt"
    module = torch.jit.load(str(path))
    torch.jit.save(module, str(tampered), _extra_files={"config.json": stored.replace(sample_rate=44100).to_json()})
    with pytest.raises(ArtifactError) as caught:
        load_extractor(tampered, "cpu")
    assert "sample_rate" in str(caught.value) and "44100" in str(caught.value) and "22050" in str(caught.value)


def test_unusable_files_are_refused(tmp_path, narrow_artifact):
    with pytest.raises(ArtifactError, match="no extractor artifact"):
        load_extractor(tmp_path / "missing.pt", "cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a TorchScript extractor"):
        load_extractor(junk, "cpu")
    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.load(str(narrow_artifact[0])), str(bare))
    with pytest.raises(ArtifactError, match="config.json"):
        load_extractor(bare, "cpu")


def test_auto_device_is_cuda_when_present_else_cpu(narrow_artifact):
    loaded = load_extractor(narrow_artifact[0], "auto")
    assert loaded.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the CPU path is checked above")
def test_cuda_artifact_matches_cpu(narrow_artifact):
    waveform = torch.from_numpy(tune(45.0, seed=14))
    cpu = load_extractor(narrow_artifact[0], "cpu").embed_waveform(waveform)
    gpu = load_extractor(narrow_artifact[0], "cuda").embed_waveform(waveform)
    assert torch.allclose(cpu.vectors, gpu.vectors, atol=1e-3)


def test_invalid_configs_fail_fast_with_the_reason():
    with pytest.raises(ValueError, match="time_pool"):
        ExtractorConfig(time_pool=0)
    with pytest.raises(ValueError, match="octaves"):
        ExtractorConfig(cqt_bins=80)
    with pytest.raises(ValueError, match="unknown extractor config fields"):
        ExtractorConfig.from_dict({"sample_rate": 22050, "colour": "blue"})


def test_a_pitch_feature_extractor_exports_into_one_file_and_matches_eager(tmp_path):
    config = ExtractorConfig(width=8, features="pitch", log_gain=10.0)
    torch.manual_seed(0)
    network = ResNetIBN.from_config(config).eval()
    path = tmp_path / "pitch.pt"
    stored = export_extractor(network, config, path)
    loaded = load_extractor(path, "cpu", expect={"features": "pitch"})
    assert loaded.config.features == "pitch" and stored.model_id == loaded.model_id
    waveform = torch.from_numpy(tune(25.0, seed=2))
    result = loaded.embed_waveform(waveform)
    with torch.inference_mode():
        eager, _ = Extractor(config, network).eval()(waveform)
    assert result.vectors.shape == (2, 512)
    torch.testing.assert_close(result.vectors, eager, atol=1e-4, rtol=0)
    with pytest.raises(ArtifactError, match="features: artifact has 'pitch', expected 'cqt'"):
        load_extractor(path, "cpu", expect={"features": "cqt"})
