"""A calibrated match decision: how likely a clip of a work that is NOT in the catalogue scores this high.

For a query of a work absent from the catalogue, the best score it gets is the maximum over the catalogue's
tracks, so it follows an extreme-value (Gumbel) law: P(best < s) = exp(-exp(-(s - mu) / beta)). The law is
fitted per query length (`coverid calibrate`, on real recordings that cover nothing in the fitting catalogue);
mu and beta are interpolated in log-seconds between the fitted lengths and held at the ends.

A catalogue m times larger takes the maximum over m times more tracks: the same law with mu + beta * ln(m),
so one fit serves every catalogue size (this assumes the non-matching tracks score independently; it was
fitted and measured on catalogues of about 80 tracks, see models/weights/MODEL_CARD.md).

`confidence` is P(best < s): 1 minus the chance that an absent work scores at least s. `is_match` is
confidence >= 1 - false_match_rate, so the share of absent-work queries with any is_match is false_match_rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

FORMAT_VERSION = 1


class CalibrationError(ValueError):
    """A calibration file that cannot be used as given; the message names the file and the fix."""


@dataclass(frozen=True)
class LengthFit:
    seconds: float  # query length
    mu: float  # Gumbel location of the best non-matching score, in a catalogue of `catalogue_tracks`
    beta: float  # Gumbel scale
    queries: int  # queries it was fitted on


@dataclass(frozen=True)
class Calibration:
    model_id: str
    stage3: dict  # the fusion and alignment settings the scores came from; other settings give other scores
    catalogue_tracks: int  # tracks a fitting query was ranked against
    lengths: tuple[LengthFit, ...]
    fitted_on: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lengths:
            raise CalibrationError("a calibration needs at least one fitted length")
        seconds = [fit.seconds for fit in self.lengths]
        if seconds != sorted(seconds) or len(set(seconds)) != len(seconds):
            raise CalibrationError(f"fitted lengths must be increasing, got {seconds}")
        if self.catalogue_tracks < 1 or any(fit.beta <= 0 for fit in self.lengths):
            raise CalibrationError("catalogue_tracks and every beta must be positive")

    def law(self, seconds: float, catalogue_tracks: int) -> tuple[float, float]:
        """(mu, beta) of the best non-matching score for a query this long in a catalogue this large."""
        logs = np.log([fit.seconds for fit in self.lengths])
        at = math.log(max(seconds, 1e-3))
        mu = float(np.interp(at, logs, [fit.mu for fit in self.lengths]))
        beta = float(np.interp(at, logs, [fit.beta for fit in self.lengths]))
        return mu + beta * math.log(max(catalogue_tracks, 1) / self.catalogue_tracks), beta

    def confidence(self, score: float, seconds: float, catalogue_tracks: int) -> float:
        """P(an absent work's best score < score): near 1 only for scores an absent work rarely reaches."""
        mu, beta = self.law(seconds, catalogue_tracks)
        return math.exp(-math.exp(-(score - mu) / beta))

    def threshold(self, seconds: float, catalogue_tracks: int, false_match_rate: float) -> float:
        """The score an absent work's best reaches with probability `false_match_rate`."""
        if not 0.0 < false_match_rate < 1.0:
            raise ValueError(f"false_match_rate={false_match_rate} must be in (0, 1)")
        mu, beta = self.law(seconds, catalogue_tracks)
        return mu - beta * math.log(-math.log(1.0 - false_match_rate))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            if raw.get("format_version") != FORMAT_VERSION:
                raise CalibrationError(f"{path}: format_version {raw.get('format_version')} is not {FORMAT_VERSION}; "
                                       "refit it with `coverid calibrate`")
            raw["lengths"] = tuple(LengthFit(**fit) for fit in raw["lengths"])
            return cls(**raw)
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as err:
            raise CalibrationError(f"{path}: not a calibration file ({err}); refit it with `coverid calibrate`") from None


def fit_gumbel(best_scores: Sequence[float]) -> tuple[float, float]:
    """(mu, beta) of a Gumbel law through the quartiles of the bests: q(p) = mu - beta ln(-ln p).

    Quartiles, not moments: a fitting set of real recordings holds a few pieces that share material (a game's
    themes come back in several of its tracks), whose bests are matches, not chance; they would widen a
    moment fit (the standard deviation) to whatever they score, and the quartiles do not see them."""
    values = np.asarray(best_scores, dtype=np.float64)
    if values.size < 4:
        raise ValueError(f"need at least 4 scores to fit, got {values.size}")
    q25, q50, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    beta = max(float(q75 - q25) / (_reduced(0.75) - _reduced(0.25)), 1e-6)
    return float(q50) - beta * _reduced(0.5), beta


def _reduced(p: float) -> float:
    """The Gumbel quantile of p in units of beta from mu: -ln(-ln p)."""
    return -math.log(-math.log(p))


def calibration_mismatch(calibration: Calibration, model_id: str, stage3) -> str:
    """Why `calibration` does not describe the scores of this model with these (FusionSettings, AlignmentSettings);
    empty when it does. N (top_n) is left out: it decides which candidates are aligned, not how one scores."""
    if calibration.model_id != model_id:
        return f"fitted for model {calibration.model_id}, not {model_id}; refit it with `coverid calibrate`"
    settings = {**asdict(stage3[0]), **asdict(stage3[1])}
    changed = sorted(k for k in set(settings) | set(calibration.stage3)
                     if k != "top_n" and settings.get(k) != calibration.stage3.get(k))
    if changed:
        return f"fitted with other stage-3 settings ({', '.join(changed)}); refit it with `coverid calibrate`"
    return ""


@dataclass(frozen=True)
class MatchDecision:
    """The service's decision: a calibration and the false-match rate it is held to."""

    calibration: Calibration
    false_match_rate: float

    def decide(self, score: float, seconds: float, catalogue_tracks: int) -> tuple[bool, float]:
        """(is_match, confidence) of an aligned candidate's fused score, for a query this long in a catalogue this
        large."""
        confidence = self.calibration.confidence(score, seconds, catalogue_tracks)
        return confidence >= 1.0 - self.false_match_rate, confidence
