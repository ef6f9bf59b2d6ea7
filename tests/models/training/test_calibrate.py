"""Fitting the match decision: every recording its own work, clips against the others, a distribution per length."""

import numpy as np
import pytest

from index.fusion import FusionSettings
from models.training.calibrate import absent_work_bests, fit_calibration
from models.training.evaluation import Stage3
from tests.models.training.test_evaluation import (FRAME_SECONDS, fake_factory, mean_spectrum_embed, toy_recordings,
                                                   toy_sequence)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bests_come_from_the_other_recordings_and_fit_per_length():
    recordings = toy_recordings(works=6, per_work=2, shared=False, seed=3)  # 12 unrelated recordings
    stage3 = Stage3(toy_sequence, FusionSettings(top_n=4))
    bests, ranked_against = absent_work_bests(mean_spectrum_embed, recordings, stage3, FRAME_SECONDS,
                                              lengths=(10, 30), clips_per_length=3, index_factory=fake_factory)
    assert ranked_against == 11
    assert sorted(bests) == [10.0, 30.0] and all(len(b) == 36 for b in bests.values())  # 12 recordings x 3 clips
    # with its source in the catalogue each clip would find itself (fused score near 1); left out, no clip does
    assert max(max(b) for b in bests.values()) < 0.95
    fitted = fit_calibration(bests, "toy", stage3, catalogue_tracks=11, fitted_on="toys", min_queries=30)
    assert [f.seconds for f in fitted.lengths] == [10.0, 30.0] and fitted.catalogue_tracks == 11
    assert fitted.stage3["top_n"] == 4 and fitted.lengths[0].queries == 36
    for seconds, scores in bests.items():  # about 1 % of the fitted bests pass their own threshold: 0 or 1 of 36
        assert sum(s >= fitted.threshold(seconds, 11, 0.01) for s in scores) <= 2
    with pytest.raises(ValueError, match="no length has 50"):
        fit_calibration(bests, "toy", stage3, catalogue_tracks=11, fitted_on="toys")


def test_a_clip_is_ranked_only_against_other_sources():
    """Two recordings of one work in one source (a game's recurring theme): alone, a clip of one finds the other
    (a match, not chance); with sources, the whole source is left out and only unrelated recordings remain."""
    recordings = toy_recordings(works=4, per_work=2, shared=True, seed=4)  # w0r0 and w0r1 share their profile
    stage3 = Stage3(toy_sequence, FusionSettings(top_n=4))
    kwargs = dict(lengths=(30,), clips_per_length=2, index_factory=fake_factory)
    alone, _ = absent_work_bests(mean_spectrum_embed, recordings, stage3, FRAME_SECONDS, **kwargs)
    sources = {rec.recording_id: rec.work_id for rec in recordings}  # each work's two recordings: one source
    apart, ranked_against = absent_work_bests(mean_spectrum_embed, recordings, stage3, FRAME_SECONDS,
                                              sources=sources, **kwargs)
    assert ranked_against == 6
    assert np.median(apart[30.0]) < np.median(alone[30.0]) - 0.1
