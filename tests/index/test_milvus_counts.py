"""MilvusIndex's track and vector counts: a process sees its own writes at once, other processes' within about
COUNT_TTL_S, and a stale count is refreshed in the background instead of inside the caller's request."""

from __future__ import annotations

import time

import numpy as np

import index.milvus_index as milvus_index
from index.milvus_index import MilvusIndex


def eventually(check, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_counts_follow_own_writes_at_once_and_others_after_a_background_refresh(tmp_path, monkeypatch):
    monkeypatch.setattr(milvus_index, "COUNT_TTL_S", 0.2)
    index = MilvusIndex(str(tmp_path / "engine.db"), "counts", 8, "m1", lambda ids: {})  # milvus-lite in process
    rng = np.random.default_rng(0)
    index.add("a", rng.standard_normal((3, 8)))
    assert (len(index), index.vector_count) == (1, 3)
    index.add("b", rng.standard_normal((2, 8)))
    assert (len(index), index.vector_count) == (2, 5)
    index.remove("a")
    assert (len(index), index.vector_count) == (1, 2)

    # another process's write, straight into the engine: this one sees it once its count has been refreshed
    index._client.insert("counts", [{"pk": "x#0", "track_id": "x", "chunk": 0, "vector": [1.0] * 8}])
    assert len(index) == 1  # the cached count, answered without asking the engine
    time.sleep(0.3)
    started = time.monotonic()
    assert len(index) == 1  # stale: the caller still gets the last count, the refresh runs behind it
    assert time.monotonic() - started < 0.1
    assert eventually(lambda: len(index) == 2)
    index.close()
