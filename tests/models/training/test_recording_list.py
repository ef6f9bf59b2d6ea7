"""Recording lists (work_id,performance_id,path) and the feature cache behind `evaluate --csv` and `train --csv`."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from models.config import ExtractorConfig
from models.training.recording_list import RecordingListError, cached_features, feature_key, read_recording_list
from tests.conftest import SAMPLE_RATE, tune


def write_list(folder, rows, header="work_id,performance_id,path"):
    table = folder / "list.csv"
    table.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    return table


@pytest.fixture
def audio_folder(tmp_path):
    (tmp_path / "songs").mkdir()
    for name, seed in [("a0", 1), ("a1", 1), ("b0", 2)]:
        sf.write(tmp_path / "songs" / f"{name}.flac", tune(8, seed=seed), SAMPLE_RATE)
    return tmp_path


def test_the_list_resolves_paths_beside_it_in_order(audio_folder):
    table = write_list(audio_folder, [("A", "a0", "songs/a0.flac"), ("A", "a1", "songs/a1.flac"),
                                      ("B", "b0", "songs/b0.flac")])
    listed = read_recording_list(table)
    assert [(r.work_id, r.performance_id) for r in listed] == [("A", "a0"), ("A", "a1"), ("B", "b0")]
    assert listed[2].path == (audio_folder / "songs" / "b0.flac").resolve()


@pytest.mark.parametrize("rows, header, message", [
    ([("A", "a0", "songs/a0.flac")], "work,performance_id,path", "missing work_id"),
    ([("A", "a0", "songs/a0.flac"), ("B", "a0", "songs/b0.flac")], None, "listed twice"),
    ([("A", "", "songs/a0.flac")], None, ":2: work_id, performance_id and path must all be set"),
    ([("A", "../x", "songs/a0.flac")], None, "must not look like a path"),
    ([], None, "lists no recordings"),
])
def test_a_bad_list_is_refused_naming_the_line(audio_folder, rows, header, message):
    table = write_list(audio_folder, rows, header or "work_id,performance_id,path")
    with pytest.raises(RecordingListError, match=message):
        read_recording_list(table)


def test_features_are_computed_once_then_read_from_the_cache(audio_folder):
    table = write_list(audio_folder, [("A", "a0", "songs/a0.flac"), ("B", "b0", "songs/b0.flac")])
    listed = read_recording_list(table)
    calls = []

    def features(waveform):
        calls.append(waveform.shape[0])
        return torch.stack([waveform[:100], waveform[100:200]])  # (2, 100)

    cache = audio_folder / "cache"
    first = cached_features(listed, features, SAMPLE_RATE, cache, "toy")
    again = cached_features(listed, features, SAMPLE_RATE, cache, "toy")
    assert calls == [8 * SAMPLE_RATE, 8 * SAMPLE_RATE]  # decoded at the requested rate, once per recording
    assert [f.shape for f in first] == [(2, 100), (2, 100)] and first[0].dtype == np.float16
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not list(cache.glob("**/*.partial.npy"))
    # another feature key, or the same id pointing at other audio, is computed afresh
    cached_features(listed, features, SAMPLE_RATE, cache, "other")
    assert len(calls) == 4
    # once cached, the audio may go (keep features, not audio); audio never cached must exist
    (audio_folder / "songs" / "a0.flac").unlink()
    assert len(cached_features(read_recording_list(table), features, SAMPLE_RATE, cache, "toy")) == 2
    with pytest.raises(RecordingListError, match="a0.flac \\(a0\\) does not exist"):
        cached_features(read_recording_list(table), features, SAMPLE_RATE, cache, "third")


def test_the_cqt_key_follows_the_front_end_settings_only():
    base = ExtractorConfig()
    assert feature_key(base) == feature_key(base.replace(width=16, time_pool=100))
    assert feature_key(base) != feature_key(base.replace(cqt_hop=256))
