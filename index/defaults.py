"""The search settings' defaults, in one place.

app/settings.py's Settings (COVERID_K_NEIGHBOURS, COVERID_EF_SEARCH, COVERID_HNSW_M) starts from these,
and so does LocalIndex for callers outside the service (tests, evaluation, benchmarks), so an index built
without arguments searches as the service does. Also where a model's calibration file sits by default. Only
pathlib is imported: the settings load this without numpy, torch or hnswlib.

Measured at 100k tracks (BENCHMARKS.md): the paper's K = 50 loses recall even with exact neighbours, and
M 16 loses it in the graph; K 200, ef 400, M 32 reach recall@10 0.994 at 99x all-pairs speed.
"""

from __future__ import annotations

from pathlib import Path

K_NEIGHBOURS = 200  # HNSW neighbours per query chunk (stage one)
EF_SEARCH = 400  # HNSW query beam; raised to K when lower
HNSW_M = 32  # HNSW links per node; fixed when a graph is built
EF_CONSTRUCTION = 200  # HNSW beam while building


def calibration_beside(model_path: str | Path) -> Path:
    """Where a model's match calibration lives unless told otherwise: calibration.json in the artifact's folder
    (the service, `coverid evaluate` and `coverid calibrate` all look there)."""
    return Path(model_path).with_name("calibration.json")
