"""Feature-domain augmentation that makes renders look like transcriptions of real mixes."""

import numpy as np
import pytest
import torch

from models.config import ExtractorConfig
from models.training.dataset import BatchPlan, BatchSampler, FeatureCorpus
from models.frontend import FrontEnd

NOTES = ExtractorConfig(features="pitch")


def note_corpus(works=4, versions=2, frames=400):
    """Each work one sustained note row: easy to see what an augmentation adds."""
    made = []
    for w in range(works):
        spec = np.zeros((88, frames), dtype=np.float16)
        spec[20 + 5 * w] = 1.0
        made.append([spec.copy() for _ in range(versions)])
    return FeatureCorpus([f"w{w}" for w in range(works)], made)


def sampler(plan, backgrounds=None, notes=True):
    quiet = dict(max_transpose_bins=0, stretch=(1.0, 1.0), freq_mask_bins=0, time_mask_fraction=0.0,
                 works_per_batch=2, versions_per_work=2)
    return BatchSampler(note_corpus(), FrontEnd(ExtractorConfig()), NOTES.frame_seconds,
                        BatchPlan(**{**quiet, **plan}), seed=0, backgrounds=backgrounds, notes=notes)


def one_version():
    return torch.from_numpy(note_corpus().versions[0][0].astype(np.float32))


def test_with_every_option_off_a_version_is_unchanged():
    spec = one_version()
    assert torch.equal(sampler({})._augment(spec.clone()), spec)


def test_a_background_adds_its_notes_and_keeps_the_works_own():
    background = np.zeros((88, 1000), dtype=np.float16)
    background[60] = 1.0
    out = sampler({"background_probability": 1.0, "background_level": (0.5, 0.5)}, [background])._augment(one_version())
    assert torch.all(out[20] == 1.0)  # the work's note is kept (maximum, not a sum)
    lit = (out[:, 0] > 0).nonzero().flatten().tolist()
    assert len(lit) == 2 and 20 in lit and 54 <= lit[1] <= 66  # the background's row, transposed by up to 6
    assert out[lit[1]].max() == pytest.approx(0.5)


def test_a_short_background_loops_to_the_versions_length():
    background = np.zeros((88, 30), dtype=np.float16)
    background[60] = 1.0
    out = sampler({"background_probability": 1.0, "background_level": (1.0, 1.0)}, [background])._augment(one_version())
    assert out.shape == (88, 400) and (out.sum(dim=0) >= 2).all()


def test_background_mixing_without_recordings_is_refused():
    with pytest.raises(ValueError, match="background"):
        sampler({"background_probability": 0.5})


def test_clutter_adds_short_spurious_notes_at_about_the_asked_rate():
    s = sampler({"clutter_per_second": 2.0})
    spec = one_version()
    out = s._augment(spec.clone())
    seconds = spec.shape[1] * NOTES.frame_seconds
    added = ((out > 0) & (spec == 0)).any(dim=1).sum().item()
    assert 1 <= added <= 4 * seconds  # rows touched; some land on the same row
    assert torch.all(out[20] == 1.0) and out.max() <= 1.0


def test_smear_blurs_onsets_and_leaks_into_neighbour_semitones():
    spec = torch.zeros(88, 100)
    spec[40, 50:60] = 1.0
    out = sampler({"smear_probability": 1.0})._smear(spec)
    assert out[39, 55] > 0 and out[41, 55] > 0  # neighbours lit
    assert out[40, 48] > 0 or out[40, 61] > 0  # the note's edges blurred in time
    assert out[40, 55] < 1.0 + 1e-6 and out[70].abs().sum() == 0  # nothing appears far away
