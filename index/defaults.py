"""The search settings' defaults, in one place.

app/settings.py's Settings (COVERID_K_NEIGHBOURS, COVERID_EF_SEARCH, COVERID_HNSW_M) starts from these,
and so does LocalIndex for callers outside the service (tests, evaluation, benchmarks), so an index built
without arguments searches as the service does. Also where a model's calibration file sits by default. Only
pathlib is imported: the settings load this without numpy, torch or hnswlib.

Measured at 100k tracks in the shipped model's shape (BENCHMARKS.md, 2026-12-03): the paper's K = 50 loses
recall even with exact neighbours; the 2DFTM vectors crowd into few directions, where a graph built with M 32 /
ef_construction 200 searched with K 200 / ef 400 reaches recall@10 0.909 against all-pairs MaxMean. M 48 /
ef_construction 400 searched with K 400 / ef 800 reaches 0.992, with /identify at 87 ms p50 (stage 3 on).
"""

from __future__ import annotations

from pathlib import Path

K_NEIGHBOURS = 400  # HNSW neighbours per query chunk (stage one)
EF_SEARCH = 800  # HNSW query beam; raised to K when lower
HNSW_M = 48  # HNSW links per node; fixed when a graph is built
EF_CONSTRUCTION = 400  # HNSW beam while building


def calibration_beside(model_path: str | Path) -> Path:
    """Where a model's match calibration lives unless told otherwise: calibration.json in the artifact's folder
    (the service, `coverid evaluate` and `coverid calibrate` all look there)."""
    return Path(model_path).with_name("calibration.json")
