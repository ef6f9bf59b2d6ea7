import time

import numpy as np

from app.catalog import Catalog
from app.store import SQLiteStore, TrackRecord

DIM = 16
MODEL = "model-a"


def record(track_id: str, rng: np.random.Generator) -> TrackRecord:
    vectors = rng.standard_normal((4, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return TrackRecord(track_id, None, None, {}, 50.0, MODEL, time.time(), vectors, (10.0 * np.arange(4)).astype(np.float32))


def reopen(data_dir, m: int) -> tuple[Catalog, str]:
    return Catalog.open(SQLiteStore(data_dir), MODEL, DIM, data_dir / "index.snapshot", m=m)


def test_the_snapshot_is_used_when_it_fits_and_a_changed_m_rebuilds_from_the_store(tmp_path):
    rng = np.random.default_rng(0)
    catalog, how = reopen(tmp_path, m=16)
    assert how == "rebuilt"  # nothing to load yet
    catalog.ingest_many([record(f"t{i}", rng) for i in range(5)])
    query = catalog.index.vectors("t3")[1:3]
    catalog.save_snapshot(tmp_path / "index.snapshot")
    catalog.store.close()

    catalog, how = reopen(tmp_path, m=16)
    assert how == "snapshot"
    assert catalog.index.search(query, top_k=1)[0].track_id == "t3"
    catalog.save_snapshot(tmp_path / "index.snapshot")
    catalog.store.close()

    catalog, how = reopen(tmp_path, m=32)  # M is fixed in a built graph: the new setting needs a rebuild
    assert how == "rebuilt"
    assert sorted(catalog.index.track_ids()) == [f"t{i}" for i in range(5)]
    assert catalog.index.search(query, top_k=1)[0].track_id == "t3"
    catalog.save_snapshot(tmp_path / "index.snapshot")
    catalog.store.close()
    assert reopen(tmp_path, m=32)[1] == "snapshot"
