"""The match decision: the distribution of the best non-matching score, per query length and catalogue size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index.alignment import AlignmentSettings
from index.calibration import Calibration, CalibrationError, MatchDecision, calibration_mismatch, fit_length
from index.fusion import FusionSettings

STAGE3 = (FusionSettings(), AlignmentSettings())
SETTINGS = {**vars(STAGE3[0]), **vars(STAGE3[1])}


def calibration(lengths=None, tracks=80):
    rng = np.random.default_rng(9)
    lengths = lengths or (fit_length(10.0, rng.gumbel(0.4, 0.02, 400)), fit_length(40.0, rng.gumbel(0.3, 0.01, 400)))
    return Calibration("m1", SETTINGS, tracks, tuple(lengths), "test")


@pytest.mark.parametrize("law", ["gumbel", "normal_max"])
def test_the_threshold_holds_the_rate_on_fresh_draws_of_the_fitted_law(law):
    rng = np.random.default_rng(0)

    def draw(n):
        return rng.gumbel(0.35, 0.03, n) if law == "gumbel" else rng.normal(0.2, 0.05, (n, 80)).max(axis=1)

    fitted = calibration([fit_length(30.0, draw(4000))])
    fresh = draw(100000)
    for rate in (0.01, 0.05):
        assert np.mean(fresh >= fitted.threshold(30.0, 80, rate)) == pytest.approx(rate, rel=0.35), rate


@pytest.mark.parametrize("tail", ["exponential", "normal"])
def test_a_larger_catalogue_keeps_the_false_match_rate_of_a_best_over_more_tracks(tail):
    """Per-track non-matching scores drawn independently: fit on bests over 80 tracks, then measure the rate of
    bests over 800 tracks (F^10, the tail carrying it past the bests seen) and over 8 (F^0.1)."""
    rng = np.random.default_rng(1)

    def bests(queries: int, tracks: int) -> np.ndarray:
        draw = rng.exponential(0.05, (queries, tracks)) if tail == "exponential" else rng.normal(0.2, 0.05, (queries, tracks))
        return draw.max(axis=1)

    fitted = calibration([fit_length(30.0, bests(4000, 80))], tracks=80)
    for tracks in (8, 800):
        rate = np.mean(bests(4000, tracks) >= fitted.threshold(30.0, tracks, 0.05))
        low = 0.05 / 1.5 if tail == "exponential" else 0.05 / 3  # a lighter tail: fewer false matches, never more
        assert low <= rate <= 0.05 * 1.5, (tracks, rate)
    assert fitted.threshold(30.0, 800, 0.05) > fitted.threshold(30.0, 80, 0.05) > fitted.threshold(30.0, 8, 0.05)


def test_lengths_between_fits_interpolate_in_log_seconds_and_outside_hold_the_nearest():
    fitted = calibration()
    at_10, at_40 = fitted.threshold(10.0, 80, 0.01), fitted.threshold(40.0, 80, 0.01)
    assert fitted.threshold(20.0, 80, 0.01) == pytest.approx((at_10 + at_40) / 2)  # halfway in log-seconds
    assert fitted.threshold(3.0, 80, 0.01) == at_10 and fitted.threshold(600.0, 80, 0.01) == at_40


def test_confidence_is_monotone_and_is_match_agrees_with_the_threshold():
    decision = MatchDecision(calibration(), 0.01)
    threshold = decision.calibration.threshold(10.0, 80, 0.01)
    below, at, above = (decision.decide(threshold + d, 10.0, 80) for d in (-1e-4, 0.0, 1e-4))
    assert below[0] is False and above[0] is True and below[1] < at[1] < above[1]
    assert at[1] == pytest.approx(0.99)
    assert decision.decide(0.0, 10.0, 80)[1] < 1e-6 and decision.decide(1.0, 10.0, 80)[1] > 0.999999


def test_a_saved_calibration_loads_back_and_a_foreign_file_is_refused_with_the_fix(tmp_path):
    fitted = calibration()
    fitted.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == fitted
    raw = json.loads((tmp_path / "c.json").read_text())
    (tmp_path / "old.json").write_text(json.dumps({**raw, "format_version": 1}))  # a Gumbel fit of an older coverid
    (tmp_path / "junk.json").write_text("{")
    for name in ("old.json", "junk.json"):
        with pytest.raises(CalibrationError, match="coverid calibrate"):
            Calibration.load(tmp_path / name)
    with pytest.raises(CalibrationError, match="increasing"):
        calibration(list(reversed(fitted.lengths)))


def test_a_calibration_applies_only_to_its_model_and_stage3_settings_except_n():
    fitted = calibration()
    assert calibration_mismatch(fitted, "m1", STAGE3) == ""
    assert calibration_mismatch(fitted, "m1", (FusionSettings(top_n=7), STAGE3[1])) == ""  # N picks who is aligned
    assert "model m1, not m2" in calibration_mismatch(fitted, "m2", STAGE3)
    assert "long_weight" in calibration_mismatch(fitted, "m1", (FusionSettings(long_weight=0.9), STAGE3[1]))
