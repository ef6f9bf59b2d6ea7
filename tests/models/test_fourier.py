from pathlib import Path

import pytest
import torch

from models.config import ExtractorConfig
from models.extractor import Extractor, export_extractor, load_extractor
from models.training.fit_fourier import fit_head, pca_projection
from models.fourier import Local2DFTM, fourier_dim, patch_magnitudes, pitch_class_frames
from models.frontend import FrontEnd

CONFIG = ExtractorConfig(features="pitch", head="2dftm", time_pool=9, log_gain=0.0, patch_frames=48, embedding_dim=300)


def notes(frames, seed=0):
    """(1, 1, 88, frames) random note salience: a few active notes per frame."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, 88, frames, generator=g) > 0.9).float() * torch.rand(1, 1, 88, frames, generator=g)


def test_a_circular_pitch_shift_gives_the_same_vector():
    head = Local2DFTM(48, 1.96, fourier_dim(48))
    x = notes(95)
    classes = pitch_class_frames(x[:, 0], 1.96)
    for shift in (1, 5, 11):
        shifted = patch_magnitudes(torch.roll(classes, shift, dims=1), 48)
        assert torch.allclose(shifted, patch_magnitudes(classes, 48), atol=1e-4)
    # an octave is the same pitch class: moving every note up 12 rows changes nothing
    up = torch.zeros_like(x)
    up[:, :, 12:] = x[:, :, :-12]
    x[:, :, -12:] = 0
    assert torch.allclose(head(up), head(x), atol=1e-5)


def test_a_circular_time_shift_within_a_patch_gives_the_same_vector():
    head = Local2DFTM(48, 1.96, fourier_dim(48))
    x = notes(48, seed=1)  # one patch: a circular shift in time is a phase change of every frequency
    assert torch.allclose(head(torch.roll(x, 17, dims=3)), head(x), atol=1e-5)
    # a real offset inside a longer chunk moves some patches in and out; the median barely moves
    long = notes(120, seed=2)
    a, b = head(long[..., :100]), head(long[..., 6:106])
    assert torch.nn.functional.cosine_similarity(a, b).item() > 0.95


def test_other_music_gives_another_vector():
    head = Local2DFTM(48, 1.96, fourier_dim(48))
    same = torch.nn.functional.cosine_similarity(head(notes(95, 3)), head(notes(95, 3)))
    other = torch.nn.functional.cosine_similarity(head(notes(95, 3)), head(notes(95, 4)))
    assert same.item() == pytest.approx(1.0) and other.item() < 0.999


def test_silence_and_a_clip_shorter_than_a_patch_still_embed():
    head = Local2DFTM(48, 1.96, 64)
    out = head(torch.cat([torch.zeros(1, 1, 88, 20), notes(20)]))
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_pca_projection_whitens_the_kept_axes():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(2000, 10, generator=g) * torch.linspace(5, 0.1, 10)
    mean, matrix = pca_projection(data, 4, whiten=0.5)
    projected = (data - mean) @ matrix
    assert torch.allclose(projected.var(dim=0), torch.ones(4), atol=0.1)
    with pytest.raises(ValueError, match="more than"):
        pca_projection(data[:3], 4, whiten=0.5)


def test_the_fitted_head_exports_and_reloads_with_its_projection(tmp_path):
    config = CONFIG.replace(embedding_dim=16)
    head = Local2DFTM.from_config(config)
    frontend = FrontEnd(config)
    fitted = fit_head(frontend, head, [notes(3000, seed=s)[0, 0] for s in range(5)], whiten=0.5)
    assert fitted["vectors"] > 16
    path = tmp_path / "f.pt"
    stored = export_extractor(head, config, path)
    loaded = load_extractor(path, "cpu", expect={"head": "2dftm", "embedding_dim": 16})
    x = notes(95, seed=9)
    assert torch.allclose(loaded.module.embed_chunks(x), head(x), atol=1e-5)
    assert stored.model_id.startswith(config.model_version)
    with pytest.raises(ValueError, match="head"):
        ExtractorConfig(head="2dftm")  # needs note features


def test_pitch_sequence_is_uint8_pitch_classes_at_the_sequence_rate():
    frontend = FrontEnd(CONFIG)
    features = torch.zeros(88, 18 * 10)
    features[40, :] = 1.0  # MIDI 61: C#
    sequence = frontend.pitch_sequence(features)
    assert sequence.dtype == torch.uint8 and sequence.shape == (12, 10)
    assert (sequence[1] == 255).all() and sequence[[0, *range(2, 12)]].sum() == 0
    scripted = torch.jit.script(Extractor(CONFIG))
    assert torch.equal(scripted.frontend.pitch_sequence(features), sequence)


SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights"


def test_the_shipped_artifact_carries_the_committed_student_and_matches_the_eager_pipeline():
    from models.pitch_student import load_student

    loaded = load_extractor(SHIPPED / "extractor.pt", "cpu", expect={"head": "2dftm", "features": "student"})
    student = load_student(SHIPPED / "pitch_student" / "pitch_student.pt")
    assert loaded.config.pitch_student_id == student.weights_id
    scripted = {k: v for k, v in loaded.module.frontend.features.student.state_dict().items()}
    assert scripted.keys() == student.state_dict().keys()
    assert all(torch.equal(scripted[k], v) for k, v in student.state_dict().items())
    # the same audio through the artifact and through the eager modules built from the same parts
    eager = Extractor(loaded.config)
    eager.network.set_projection(loaded.module.network.mean, loaded.module.network.projection)
    t = torch.arange(22050 * 25) / 22050
    waveform = 0.3 * torch.sin(2 * torch.pi * 440.0 * t) + 0.2 * torch.sin(2 * torch.pi * 659.3 * t) * (t > 12)
    vectors, starts, sequence = loaded.module.analyse(waveform)
    eager_vectors, eager_starts, eager_sequence = eager.analyse(waveform)
    assert torch.allclose(vectors, eager_vectors, atol=1e-4) and torch.equal(starts, eager_starts)
    assert torch.equal(sequence, eager_sequence)
    assert loaded.stage3 is not None and loaded.stage3[0].top_n > 0
