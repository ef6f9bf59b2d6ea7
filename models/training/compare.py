"""`coverid evaluate`'s run: several methods through one protocol on the same recordings, each recording's
features computed (and cached) once per front end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from models.config import ExtractorConfig
from models.training.evaluation import Embed, IndexFactory, Stage3, evaluate, listed_recordings, rendered_recordings
from models.training.recording_list import RecordingListError, feature_key


@dataclass(frozen=True)
class Method:
    name: str
    config: ExtractorConfig  # its front end's settings: recordings are shared between methods with the same ones
    embed: Embed
    spectrogram: Optional[Callable] = None  # an artifact's own front end; None: the shared FrontEnd of `config`
    stage3: Optional[Stage3] = None  # an artifact's stage 3, as the service runs it


def compare(
    methods: Sequence[Method],
    csv: Optional[Path],
    cache: Path,
    data: Path,
    limit_works: Optional[int],
    seed: int,
    k_neighbours: int,
    exhaustive: bool,
    lengths: Sequence[float],
    query_shift: int,
    clips_per_length: int,
    index_factory: IndexFactory,
    progress: Callable[[str], Callable] = lambda label: None,
    report: Callable[[str], None] = lambda line: None,
) -> dict:
    """{method name: evaluate() output}, on the recordings of a `work_id,performance_id,path` list (`csv`) or on the
    rendered validation split of the corpus cache."""
    from models.frontend import FrontEnd

    results = {}
    recordings_by_front_end: dict = {}
    for method in methods:
        key = feature_key(method.config)
        if key not in recordings_by_front_end:
            if csv:
                spectrogram = method.spectrogram or FrontEnd(method.config).eval().spectrogram
                recordings_by_front_end[key] = listed_recordings(csv, cache, method.config, spectrogram,
                                                                 progress(f"{method.config.features} features"))
            elif method.config.features == "cqt":
                recordings_by_front_end[key] = rendered_recordings(cache, limit_works, data)
            else:
                raise RecordingListError(f"{method.name}: the rendered validation cache holds CQTs; evaluate "
                                         f"{method.config.features} features on a --csv list of recordings")
        recordings = recordings_by_front_end[key]
        name = f"{method.name}, queries {query_shift:+d} semitones" if query_shift else method.name
        report(f"evaluating {name} on {len(recordings)} recordings" + (" with stage 3" if method.stage3 else ""))
        results[name] = evaluate(method.embed, recordings, seed, k_neighbours=k_neighbours, exhaustive=exhaustive,
                                 lengths=lengths, query_shift=query_shift, index_factory=index_factory,
                                 clips_per_length=clips_per_length, stage3=method.stage3)
        results[name]["protocol"]["recordings_from"] = str(csv) if csv else f"{cache} (valid split)"
        results[name]["protocol"]["features"] = method.config.features
    return results
