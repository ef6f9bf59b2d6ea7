"""The match decision: a Gumbel law of the best non-matching score, per query length and catalogue size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index.alignment import AlignmentSettings
from index.calibration import (Calibration, CalibrationError, LengthFit, MatchDecision, calibration_mismatch,
                               fit_gumbel)
from index.fusion import FusionSettings

STAGE3 = (FusionSettings(), AlignmentSettings())
SETTINGS = {**vars(STAGE3[0]), **vars(STAGE3[1])}


def calibration(lengths=(LengthFit(10.0, 0.4, 0.02, 400), LengthFit(40.0, 0.3, 0.01, 400)), tracks=80):
    return Calibration("m1", SETTINGS, tracks, tuple(lengths), "test")


def test_the_fit_recovers_a_gumbel_law_and_its_threshold_holds_the_rate():
    rng = np.random.default_rng(0)
    sample = rng.gumbel(0.35, 0.03, 20000)
    mu, beta = fit_gumbel(sample)
    assert mu == pytest.approx(0.35, abs=0.002) and beta == pytest.approx(0.03, rel=0.05)
    fitted = calibration([LengthFit(30.0, mu, beta, sample.size)])
    fresh = rng.gumbel(0.35, 0.03, 200000)
    for rate in (0.01, 0.05):
        assert np.mean(fresh >= fitted.threshold(30.0, 80, rate)) == pytest.approx(rate, rel=0.15)


@pytest.mark.parametrize("tail", ["exponential", "normal"])
def test_a_larger_catalogue_keeps_the_false_match_rate_of_a_best_over_more_tracks(tail):
    """Per-track non-matching scores drawn independently: fit on bests over 80 tracks, then measure the rate of
    bests over 800 tracks (the law shifted by beta ln 10) and over 8. The shift is exact for an exponential tail
    (within sampling noise) and errs to fewer false matches for a lighter one (normal)."""
    rng = np.random.default_rng(1)

    def bests(queries: int, tracks: int) -> np.ndarray:
        draw = rng.exponential(0.05, (queries, tracks)) if tail == "exponential" else rng.normal(0.2, 0.05, (queries, tracks))
        return draw.max(axis=1)

    fitted_on = bests(20000, 80)
    fitted = calibration([LengthFit(30.0, *fit_gumbel(fitted_on), fitted_on.size)], tracks=80)
    for tracks in (8, 800):
        rate = np.mean(bests(4000, tracks) >= fitted.threshold(30.0, tracks, 0.05))
        low = 0.05 / 1.5 if tail == "exponential" or tracks < 80 else 0.05 / 5  # normal: 1.1 % measured
        assert low <= rate <= 0.05 * 1.5, (tracks, rate)
    assert fitted.threshold(30.0, 800, 0.05) > fitted.threshold(30.0, 80, 0.05) > fitted.threshold(30.0, 8, 0.05)


def test_a_few_related_pieces_in_the_fitting_set_do_not_widen_the_law():
    """3 % of the bests are real matches (pieces sharing a theme) near 0.95: the quartile fit barely moves."""
    rng = np.random.default_rng(2)
    clean = rng.gumbel(0.35, 0.03, 2000)
    mixed = np.concatenate([clean, rng.uniform(0.9, 0.99, 60)])
    (mu, beta), (mu_mixed, beta_mixed) = fit_gumbel(clean), fit_gumbel(mixed)
    assert mu_mixed == pytest.approx(mu, abs=0.005) and beta_mixed == pytest.approx(beta, rel=0.1)


def test_lengths_between_fits_interpolate_in_log_seconds_and_outside_hold_the_nearest():
    fitted = calibration()
    assert fitted.law(10.0, 80) == pytest.approx((0.4, 0.02))
    assert fitted.law(20.0, 80) == pytest.approx((0.35, 0.015))  # halfway between 10 and 40 s in log-seconds
    assert fitted.law(3.0, 80) == fitted.law(10.0, 80) and fitted.law(600.0, 80) == fitted.law(40.0, 80)


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
    (tmp_path / "old.json").write_text(json.dumps({**raw, "format_version": 0}))
    (tmp_path / "junk.json").write_text("{")
    for name in ("old.json", "junk.json"):
        with pytest.raises(CalibrationError, match="coverid calibrate"):
            Calibration.load(tmp_path / name)
    with pytest.raises(CalibrationError, match="increasing"):
        calibration([LengthFit(40.0, 0.3, 0.01, 9), LengthFit(10.0, 0.4, 0.02, 9)])


def test_a_calibration_applies_only_to_its_model_and_stage3_settings_except_n():
    fitted = calibration()
    assert calibration_mismatch(fitted, "m1", STAGE3) == ""
    assert calibration_mismatch(fitted, "m1", (FusionSettings(top_n=7), STAGE3[1])) == ""  # N picks who is aligned
    assert "model m1, not m2" in calibration_mismatch(fitted, "m2", STAGE3)
    assert "long_weight" in calibration_mismatch(fitted, "m1", (FusionSettings(long_weight=0.9), STAGE3[1]))
