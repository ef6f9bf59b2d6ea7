"""The service's match decision: which calibration it loads, and what each match carries."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from app.pipeline import load_decision, match_decisions
from index.alignment import AlignmentSettings
from index.calibration import Calibration, CalibrationError, MatchDecision, fit_length
from index.fusion import FusionSettings

STAGE3 = (FusionSettings(), AlignmentSettings())


def extractor(model_id="m1", stage3=STAGE3):
    """What load_decision reads of a loaded artifact: its model id and stage-3 settings."""
    return SimpleNamespace(model_id=model_id, stage3=stage3)


@pytest.fixture
def calibration_file(tmp_path):
    path = tmp_path / "calibration.json"
    bests = np.random.default_rng(0).gumbel(0.4, 0.02, 400)
    Calibration("m1", {**vars(STAGE3[0]), **vars(STAGE3[1])}, 80, (fit_length(10.0, bests),)).save(path)
    return path


def test_the_calibration_for_the_model_is_loaded_with_the_rate(calibration_file):
    decision, why = load_decision(calibration_file, 0.05, extractor())
    assert why == "" and decision.false_match_rate == 0.05 and decision.calibration.model_id == "m1"


def test_without_a_usable_calibration_there_is_no_decision_and_the_reason_names_the_fix(calibration_file, tmp_path):
    cases = {
        "other model": (calibration_file, extractor("m2"), "coverid calibrate"),
        "no stage 3": (calibration_file, extractor(stage3=None), "no stage 3"),
        "missing file": (tmp_path / "none.json", extractor(), "coverid calibrate"),
        "unset": (None, extractor(), "COVERID_CALIBRATION_PATH"),
    }
    for name, (path, loaded, fix) in cases.items():
        decision, why = load_decision(path, 0.01, loaded)
        assert decision is None and fix in why, name
    # a path the operator set explicitly must work: the service refuses to start rather than answer without it
    with pytest.raises(CalibrationError, match="COVERID_CALIBRATION_PATH: fitted for model m1, not m2"):
        load_decision(calibration_file, 0.01, extractor("m2"), required=True)


def test_aligned_matches_get_a_decision_and_the_rest_none(calibration_file):
    decision = MatchDecision(Calibration.load(calibration_file), 0.01)
    threshold = decision.calibration.threshold(10.0, 80, 0.01)
    decided = match_decisions(decision, [threshold + 0.05, threshold - 0.05, 0.99], 2, 10.0, 80)
    assert [d[0] for d in decided] == [True, False, False]
    assert decided[0][1] > 0.99 > decided[1][1] and decided[2][1] is None  # the third was never aligned
    assert match_decisions(None, [0.5, 0.4], 2, 10.0, 80) == [(None, None), (None, None)]
