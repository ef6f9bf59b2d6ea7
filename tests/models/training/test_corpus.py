"""The corpus builder: arrangement edits on MIDI, real fluidsynth renders, a resumable cache."""

import json

import numpy as np
import pretty_midi
import pytest

from models.config import ExtractorConfig
from models.training.corpus import procedural
from models.training.corpus.arrange import MIN_NOTE_SECONDS, arrange, plan_version, truncate
from models.training.corpus.build import build, check_cache_settings, plan_jobs
from models.training.corpus.works import Work, asap_works, procedural_works



def test_procedural_works_are_reproducible_and_distinct():
    a, b, c = procedural.generate(1), procedural.generate(1), procedural.generate(2)
    notes = lambda m: [(n.pitch, round(n.start, 4)) for i in m.instruments for n in i.notes]  # noqa: E731
    assert notes(a) == notes(b)
    assert notes(a) != notes(c)
    assert {i.name for i in a.instruments} == {"MELODY", "PIANO", "BASS", "DRUMS"}
    assert 30 < a.get_end_time() < 120


def test_arrangement_applies_key_tempo_and_length_cap():
    source = procedural.generate(3)
    plan = plan_version(np.random.default_rng(0), original=True)
    plan.update(transpose=3, tempo=1.25)
    out = arrange(source, plan, np.random.default_rng(0), max_seconds=20.0)
    melody_in = [n for n in source.instruments[0].notes if n.start < 20.0]
    melody_out = out.instruments[0].notes
    assert [n.pitch + 3 for n in melody_in] == [n.pitch for n in melody_out]  # the same 20 s of score
    assert melody_out[5].start == pytest.approx(melody_in[5].start / 1.25, abs=1e-6)
    assert max(n.end for i in out.instruments for n in i.notes) <= 20.0 / 1.25 + 1e-6
    assert min(n.end - n.start for i in out.instruments for n in i.notes) >= MIN_NOTE_SECONDS / 2


def test_dropped_parts_are_gone_and_a_bass_can_be_added():
    source = procedural.generate(4)
    plan = plan_version(np.random.default_rng(0), original=True)
    plan.update(drop=["bass", "drums"], add_bass=False)
    out = arrange(source, plan, np.random.default_rng(0), max_seconds=60.0)
    assert {i.name for i in out.instruments} == {"melody", "accompaniment"}
    plan.update(add_bass=True)
    out = arrange(source, plan, np.random.default_rng(0), max_seconds=60.0)
    assert "bass" in {i.name for i in out.instruments}


def test_truncate_keeps_the_pedal_of_a_performance():
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes = [pretty_midi.Note(80, 60, 1.0, 1.0001), pretty_midi.Note(80, 64, 30.0, 31.0)]
    piano.control_changes = [pretty_midi.ControlChange(64, 127, 0.5), pretty_midi.ControlChange(64, 0, 40.0)]
    midi.instruments.append(piano)
    out = truncate(midi, 20.0)
    assert [n.pitch for n in out.instruments[0].notes] == [60]
    assert out.instruments[0].notes[0].end - 1.0 >= MIN_NOTE_SECONDS  # sub-tick notes would hang fluidsynth
    assert [c.time for c in out.instruments[0].control_changes] == [0.5]


def test_asap_works_are_pieces_with_their_performances(shared_data):
    works = asap_works(shared_data / "asap")
    assert len(works) == 235 and sum(len(w.sources) for w in works) == 1067
    assert all(w.split == "valid" for w in works)


def test_build_renders_caches_and_resumes(tmp_path):
    works = procedural_works(2, seed=5)
    jobs = plan_jobs(works, versions_per_work=2, seed=0, max_seconds=12.0)
    calls = []
    done, errors = build(jobs, tmp_path, ExtractorConfig(), workers=2, progress=lambda *a: calls.append(a))
    assert (done, errors) == (4, [])
    spec = np.load(jobs[1].path(tmp_path))
    assert spec.dtype == np.float16 and spec.shape[0] == 84
    assert 12.0 <= spec.shape[1] * ExtractorConfig().frame_seconds <= 20.0  # the cap plus release and reverb tails
    meta = json.loads(jobs[1].path(tmp_path).with_suffix(".json").read_text())
    assert meta["work_id"] == works[0].work_id and "transpose" in meta["plan"]
    # versions of one work differ; a second build renders nothing new
    assert not np.array_equal(np.load(jobs[0].path(tmp_path))[:, :200], spec[:, :200])
    calls.clear()
    before = jobs[0].path(tmp_path).stat().st_mtime_ns
    assert build(jobs, tmp_path, ExtractorConfig(), workers=1, progress=lambda *a: calls.append(a)) == (4, [])
    assert calls == [] and jobs[0].path(tmp_path).stat().st_mtime_ns == before


def test_a_failing_job_is_reported_not_raised(tmp_path):
    broken = Work("pop909-999", "train", "pop909", (str(tmp_path / "missing.mid"),))
    done, errors = build(plan_jobs([broken], 1, 0, 10.0), tmp_path, ExtractorConfig(), workers=1)
    assert done == 0 and len(errors) == 1 and "pop909-999" in errors[0]


def test_a_cache_built_with_another_front_end_is_refused(tmp_path):
    check_cache_settings(tmp_path, ExtractorConfig())
    with pytest.raises(ValueError, match="cqt_hop"):
        check_cache_settings(tmp_path, ExtractorConfig(cqt_hop=256))


def test_a_cache_of_an_older_corpus_format_is_refused(tmp_path):
    (tmp_path / "frontend.json").write_text(json.dumps({"sample_rate": 22050}))
    with pytest.raises(ValueError, match="corpus_format"):
        check_cache_settings(tmp_path, ExtractorConfig())


def test_examples_are_an_original_and_a_cover_of_each_song(tmp_path):
    import soundfile as sf

    from models.training.corpus.examples import EXAMPLE_SEEDS, write_examples

    paths = write_examples(tmp_path, seconds=12.0, clip=(2.0, 6.0))
    assert len(paths) == 2 * len(EXAMPLE_SEEDS) + 1
    originals = [p for p in paths if p.parent.name == "originals"]
    covers = [p for p in paths if p.parent.name == "covers"]
    assert len(originals) == len(covers) == len(EXAMPLE_SEEDS)
    assert [p.name for p in originals] == [p.name for p in covers]  # same name, same song
    assert sf.info(paths[-1]).duration == pytest.approx(6.0, abs=0.05)
    a, b = sf.read(originals[0])[0], sf.read(covers[0])[0]
    assert a.shape != b.shape or not np.allclose(a, b)  # the cover is another rendering
    assert sum(p.stat().st_size for p in paths) < 5 * 2**20


def test_asap_folders_of_one_piece_score_as_one_work(shared_data):
    from models.training.corpus.works import asap_piece_ids, asap_works

    pieces = asap_piece_ids(shared_data / "asap")
    assert {work.work_id for work in asap_works(shared_data / "asap")} == set(pieces)
    assert len(set(pieces.values())) == 222  # ASAP's pieces; its 235 folders include repeat variants
    assert pieces["asap-Beethoven-Piano_Sonatas-17-1"] == pieces["asap-Beethoven-Piano_Sonatas-17-1_no_repeat"]
    assert pieces["asap-Beethoven-Piano_Sonatas-17-1"] != pieces["asap-Beethoven-Piano_Sonatas-18-2"]


def test_long_vorbis_encodes_do_not_crash_the_process():
    """libsndfile 1.2.2 segfaulted encoding about 2 M frames of Vorbis in one call (a 96 s version)."""
    import io

    import soundfile as sf

    from models.training.corpus.render import write_audio

    audio = (0.3 * np.random.default_rng(0).standard_normal(2_200_000)).astype(np.float32)
    buffer = io.BytesIO()
    write_audio(buffer, audio, 22050, "OGG", "VORBIS")
    buffer.seek(0)
    assert sf.info(buffer).frames == len(audio)


def test_fluidsynth_killed_by_a_signal_is_run_again_and_an_error_exit_is_not(tmp_path, monkeypatch):
    """fluidsynth now and then aborts (SIGABRT) on a file it renders fine the next time (seen in a fresh-clone run):
    the real fluidsynth renders here; only the first of its runs is replaced by such an abort."""
    import subprocess

    from models.training.corpus import render

    real_run, calls = subprocess.run, []

    def abort_first(command, **kwargs):
        calls.append(command)
        if len(calls) == 1:
            raise subprocess.CalledProcessError(-6, command)
        return real_run(command, **kwargs)

    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes.append(pretty_midi.Note(velocity=90, pitch=60, start=0.0, end=0.5))
    midi.instruments.append(piano)
    soundfont = next(iter(render.available_soundfonts().values()))
    monkeypatch.setattr(render.subprocess, "run", abort_first)
    audio = render.synthesise(midi, soundfont, 22050, reverb=False, work_dir=str(tmp_path))
    assert len(calls) == 2 and np.abs(audio).max() > 0.01

    def error_exit(command, **kwargs):
        calls.append(command)
        raise subprocess.CalledProcessError(1, command, stderr=b"fluidsynth: error: bad file")

    calls.clear()
    monkeypatch.setattr(render.subprocess, "run", error_exit)
    with pytest.raises(render.RenderError, match="bad file"):
        render.synthesise(midi, soundfont, 22050, reverb=False, work_dir=str(tmp_path))
    assert len(calls) == 1
