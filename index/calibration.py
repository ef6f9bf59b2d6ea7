"""A calibrated match decision: how likely a clip of a work that is NOT in the catalogue scores this high.

For a query of a work absent from the catalogue, the best score it gets is the maximum over the catalogue's
tracks. Its distribution F is measured per query length (`coverid calibrate`, on real recordings that cover
nothing in the fitting catalogue): the empirical distribution up to its 90th percentile, and above it an
exponential tail fitted to the top 10 % (peaks over a threshold), which carries it past the largest best seen.
F is interpolated in log-seconds between the fitted lengths and held at the ends.

In a catalogue m times larger the best is the maximum over m times more tracks: F^m, so one fit serves every
catalogue size (this assumes non-matching tracks score independently; it was fitted on catalogues of about 50
tracks and measured on about 80, see models/weights/MODEL_CARD.md).

`confidence` is F^m(s): 1 minus the chance that an absent work's best reaches s. `is_match` is
confidence >= 1 - false_match_rate, so the share of absent-work queries with any is_match is false_match_rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

FORMAT_VERSION = 2  # 1: a Gumbel law per length
TAIL_SHARE = 0.1  # the top 10 % of the bests carry the exponential tail
BODY_PROBABILITIES = np.round(np.arange(0, 91) / 100, 2)  # 0.00 ... 0.90: where the body's quantiles are kept


class CalibrationError(ValueError):
    """A calibration file that cannot be used as given; the message names the file and the fix."""


@dataclass(frozen=True)
class LengthFit:
    seconds: float  # query length
    body: tuple[float, ...]  # the bests' quantiles at BODY_PROBABILITIES; the last is where the tail starts
    tail_scale: float  # mean excess of the bests over body[-1]: the exponential tail's scale
    queries: int  # bests it was fitted on

    def cdf(self, score: float) -> float:
        """P(best < score) in the fitting catalogue."""
        start = self.body[-1]
        if score >= start:
            return 1.0 - TAIL_SHARE * math.exp(-(score - start) / self.tail_scale)
        return float(np.interp(score, self.body, BODY_PROBABILITIES))

    def quantile(self, p: float) -> float:
        """The score the best stays under with probability p."""
        if p >= 1.0 - TAIL_SHARE:
            return self.body[-1] - self.tail_scale * math.log((1.0 - p) / TAIL_SHARE)
        return float(np.interp(p, BODY_PROBABILITIES, self.body))


def fit_length(seconds: float, bests: Sequence[float]) -> LengthFit:
    """The body quantiles and the exponential tail of one length's bests."""
    values = np.sort(np.asarray(bests, dtype=np.float64))
    if values.size < 20:
        raise ValueError(f"need at least 20 bests to fit a tail, got {values.size}")
    body = np.quantile(values, BODY_PROBABILITIES)
    excess = values[values > body[-1]] - body[-1]
    scale = max(float(excess.mean()) if excess.size else 0.0, 1e-4)
    return LengthFit(float(seconds), tuple(round(float(q), 6) for q in body), round(scale, 6), int(values.size))


@dataclass(frozen=True)
class Calibration:
    model_id: str
    stage3: dict  # the fusion and alignment settings the scores came from; other settings give other scores
    catalogue_tracks: int  # tracks a fitting query was ranked against (on average)
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
        if self.catalogue_tracks < 1 or any(fit.tail_scale <= 0 for fit in self.lengths):
            raise CalibrationError("catalogue_tracks and every tail scale must be positive")

    def _between(self, seconds: float) -> tuple[LengthFit, LengthFit, float]:
        """The fitted lengths around `seconds` and the weight of the upper one (log-seconds)."""
        fits = self.lengths
        at = math.log(max(seconds, 1e-3))
        logs = [math.log(fit.seconds) for fit in fits]
        if at <= logs[0]:
            return fits[0], fits[0], 0.0
        if at >= logs[-1]:
            return fits[-1], fits[-1], 0.0
        upper = next(i for i, log in enumerate(logs) if log >= at)
        return fits[upper - 1], fits[upper], (at - logs[upper - 1]) / (logs[upper] - logs[upper - 1])

    def confidence(self, score: float, seconds: float, catalogue_tracks: int) -> float:
        """P(an absent work's best < score) for a query this long in a catalogue this large."""
        lower, upper, weight = self._between(seconds)
        cdf = (1.0 - weight) * lower.cdf(score) + weight * upper.cdf(score)
        return max(0.0, min(1.0, cdf)) ** (max(catalogue_tracks, 1) / self.catalogue_tracks)

    def threshold(self, seconds: float, catalogue_tracks: int, false_match_rate: float) -> float:
        """The score an absent work's best reaches with probability `false_match_rate`."""
        if not 0.0 < false_match_rate < 1.0:
            raise ValueError(f"false_match_rate={false_match_rate} must be in (0, 1)")
        p = (1.0 - false_match_rate) ** (self.catalogue_tracks / max(catalogue_tracks, 1))
        lower, upper, weight = self._between(seconds)
        return (1.0 - weight) * lower.quantile(p) + weight * upper.quantile(p)

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
            raw["lengths"] = tuple(LengthFit(fit["seconds"], tuple(fit["body"]), fit["tail_scale"], fit["queries"])
                                   for fit in raw["lengths"])
            return cls(**raw)
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as err:
            raise CalibrationError(f"{path}: not a calibration file ({err}); refit it with `coverid calibrate`") from None


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
