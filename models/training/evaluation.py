"""The ByteCover3 evaluation protocol (section 3.1): queries of many lengths, two-stage retrieval, mAP and MR1.

Every recording is in the database as a full track. From each recording the
query set is the full track plus one clip of each of `QUERY_SECONDS`, cut at a
seeded random position on the CQT frame grid. Each query is embedded and
searched two ways: the two-stage search the service uses (HNSW top-K per query
chunk, then MaxMean over the reached tracks; a track stage one did not reach
scores 0, as the paper does) and, optionally, exhaustive MaxMean against every
track. The recording a query was cut from is removed from its ranking (no
leakage); the relevant items are the other recordings of the same work.

Tie rules: `rank_of_first_relevant` is pessimistic (a non-relevant item with
the same score as the best relevant one ranks before it); `average_precision`
is scikit-learn's, which treats a block of tied scores as one threshold (its
recall gain is credited at the precision of the whole block: between the
pessimistic and the optimistic order). Ties matter mainly for the tracks stage
one did not reach, which all score 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score
from torch import Tensor

from index.alignment import AlignmentSettings
from index.calibration import Calibration, MatchDecision
from index.defaults import K_NEIGHBOURS
from index.fusion import FusionSettings, rerank
from models.config import ExtractorConfig
from models.frontend import shift_bins

QUERY_SECONDS = (6, 10, 15, 20, 25, 30, 40, 50, 60)
FULL = "full"
LENGTH_KEYS = (FULL, *(str(s) for s in QUERY_SECONDS))
METHODS = ("two_stage", "exhaustive")
RECALL_AT = 10  # two-stage top 10 against the exhaustive top 10

Embed = Callable[[Tensor], Tensor]  # (bins, frames) raw CQT -> (N, D) local embeddings
Sequence3 = Callable[[Tensor], Tensor]  # (bins, frames) -> (12, T) pitch-class sequence for stage 3


@dataclass(frozen=True)
class Stage3:
    """Alignment of the stage-2 top N, fused with MaxMean (index/alignment.py, index/fusion.py), as the service runs it."""

    sequence: Sequence3
    fusion: FusionSettings = FusionSettings()
    alignment: AlignmentSettings = AlignmentSettings()
    calibration: Optional[Calibration] = None  # measures the is_match decision's false-match rate and recall
    false_match_rate: float = 0.01  # the rate it is set to (COVERID_FALSE_MATCH_RATE)


@dataclass(frozen=True, eq=False)
class Recording:
    recording_id: str
    work_id: str
    spectrogram: Tensor  # (bins, frames) raw CQT magnitude, float32 or float16


@dataclass(frozen=True, eq=False)
class Query:
    recording_id: str  # the recording it was cut from
    work_id: str
    length: str  # "full" or the clip length in seconds ("6", "10", ...): the results key
    start_frame: int
    spectrogram: Tensor = field(repr=False)  # (bins, frames): a view into the source recording


class Match(Protocol):
    track_id: str
    score: float


class SearchIndex(Protocol):
    """What `evaluate` needs from `index.local_index.LocalIndex`."""

    def add(self, track_id: str, vectors: np.ndarray, starts_s: Optional[np.ndarray] = None) -> None: ...

    def search(self, query: np.ndarray, top_k: int, k_neighbours: Optional[int] = None) -> list: ...

    def search_exhaustive(self, query: np.ndarray, top_k: int) -> list: ...


IndexFactory = Callable[[int, int], SearchIndex]  # (dim, k_neighbours) -> empty index


# -- queries -------------------------------------------------------------------


def clip_frames(seconds: float, frame_seconds: float) -> int:
    return int(round(seconds / frame_seconds))


def _recording_rng(seed: int, recording_id: str, draw: int = 0) -> np.random.Generator:
    # seeded per recording (crc32 is stable across processes, unlike hash()),
    # so adding or reordering recordings does not move any other clip; draw 0 is the paper's one clip
    # per length, and extra draws come from streams of their own, so they never move draw 0's clips
    key = [seed, zlib.crc32(recording_id.encode())]
    return np.random.default_rng(key if draw == 0 else [*key, draw])


def build_queries(
    recordings: Sequence[Recording],
    seed: int,
    frame_seconds: Optional[float] = None,
    lengths: Sequence[float] = QUERY_SECONDS,
    clips_per_length: int = 1,
) -> list[Query]:
    """Per recording: the full track, then `clips_per_length` clips of each length at seeded random frames.

    The paper cuts one clip per length; more clips shrink the sampling noise of a small set (80 real
    recordings). A clip longer than its recording is skipped (see `skipped_clips`).
    """
    if clips_per_length < 1:
        raise ValueError(f"clips_per_length must be at least 1, got {clips_per_length}")
    frame_seconds = ExtractorConfig().frame_seconds if frame_seconds is None else frame_seconds
    queries: list[Query] = []
    for rec in recordings:
        total = rec.spectrogram.shape[-1]
        queries.append(Query(rec.recording_id, rec.work_id, FULL, 0, rec.spectrogram))
        for draw in range(clips_per_length):
            rng = _recording_rng(seed, rec.recording_id, draw)
            for seconds in lengths:
                n = clip_frames(seconds, frame_seconds)
                if n > total:
                    continue
                start = int(rng.integers(0, total - n + 1))
                clip = rec.spectrogram[:, start : start + n]
                queries.append(Query(rec.recording_id, rec.work_id, f"{seconds:g}", start, clip))
    return queries


def skipped_clips(
    recordings: Sequence[Recording],
    frame_seconds: Optional[float] = None,
    lengths: Sequence[float] = QUERY_SECONDS,
) -> dict[str, int]:
    """Per clip length, how many recordings are too short to cut it from."""
    frame_seconds = ExtractorConfig().frame_seconds if frame_seconds is None else frame_seconds
    return {
        f"{s:g}": sum(rec.spectrogram.shape[-1] < clip_frames(s, frame_seconds) for rec in recordings) for s in lengths
    }


# -- metrics -------------------------------------------------------------------


def _as_arrays(scores, relevant) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.ndim != 1 or scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be 1-D and the same length")
    if not relevant.any():
        raise ValueError("no relevant item in the ranking: AP and rank are undefined; leave such queries out")
    return scores, relevant


def average_precision(scores, relevant) -> float:
    """AP of one ranking: scores (higher = better) and a same-length boolean relevance mask."""
    scores, relevant = _as_arrays(scores, relevant)
    return float(average_precision_score(relevant, scores))


def rank_of_first_relevant(scores, relevant) -> int:
    """1-based rank of the best-scoring relevant item; ties with non-relevant items count against it."""
    scores, relevant = _as_arrays(scores, relevant)
    best = scores[relevant].max()
    return 1 + int((scores[~relevant] >= best).sum())


# -- retrieval -------------------------------------------------------------------


def _local_index(dim: int, k_neighbours: int) -> SearchIndex:
    """The first stage with the service's default M and ef (index/defaults.py) and the evaluation's K."""
    # imported here so this module (and its tests with a fake index) load without hnswlib
    from index.local_index import LocalIndex

    return LocalIndex(dim, k_neighbours=k_neighbours)


def catalogue_of(embed: Embed, recordings: Sequence[Recording], k_neighbours: int,
                 index_factory: Optional[IndexFactory] = None) -> tuple[dict[str, np.ndarray], SearchIndex]:
    """Every recording embedded whole and added to a fresh index: ({recording id: (N, D) vectors}, the index)."""
    full = {rec.recording_id: _embed(embed, rec.spectrogram) for rec in recordings}
    dims = {v.shape[1] for v in full.values()}
    if len(dims) != 1:
        raise ValueError(f"embed returned different dimensions {sorted(dims)} for different recordings")
    index = (index_factory or _local_index)(dims.pop(), k_neighbours)
    for rec_id, vectors in full.items():
        index.add(rec_id, vectors)
    return full, index


def scores_for(matches: Sequence[Match], positions: dict[str, int]) -> np.ndarray:
    """Score of every database track, at its position; a track the search did not return scores 0 (the paper's rule)."""
    scores = np.zeros(len(positions), dtype=np.float64)
    for match in matches:
        scores[positions[match.track_id]] = match.score
    return scores


def _embed(embed: Embed, spectrogram: Tensor) -> np.ndarray:
    with torch.no_grad():
        out = embed(spectrogram)
    if out.dim() != 2 or out.shape[0] < 1:
        raise ValueError(f"embed must return (N, D) with N >= 1, got shape {tuple(out.shape)}")
    return np.ascontiguousarray(out.detach().float().cpu().numpy())


def _summary(aps: list[float], ranks: list[int]) -> dict:
    if not aps:
        return {"mAP": None, "MR1": None, "top1": None, "queries": 0}
    return {"mAP": float(np.mean(aps)), "MR1": float(np.mean(ranks)), "top1": float(np.mean(np.array(ranks) == 1)),
            "queries": len(aps)}


def _stage3_scores(matches: Sequence[Match], source: str, query_sequence: Tensor, sequences: dict[str, np.ndarray],
                   query_seconds: float, stage3: Stage3) -> tuple[list[str], np.ndarray]:
    """Stage 2's ranking (the source left out) through the service's stage 3 (index.fusion.rerank): (ids, scores),
    every aligned candidate above every other (3 + fused score, fused in [-1, 1])."""
    ranked = [m for m in matches if m.track_id != source]
    top_n = stage3.fusion.top_n
    reranked = rerank(ranked, query_sequence, [sequences[m.track_id] for m in ranked[:top_n]], query_seconds,
                      1.0, stage3.fusion, stage3.alignment)
    scores = np.array([m.score for m in reranked], dtype=np.float64)
    scores[:top_n] += 3.0
    return [m.track_id for m in reranked], scores


def _match_decisions(ids: Sequence[str], scores: np.ndarray, relevant: set[str], seconds: float, tracks: int,
                     stage3: Stage3) -> tuple[bool, bool]:
    """The service's is_match on one query's stage-3 ranking (`_stage3_scores`, its source left out of `tracks`):
    (false match: with the query's own work removed from the catalogue, its best remaining candidate passes;
    found: in the whole catalogue, a recording of its work passes). Only aligned candidates can pass."""
    top = stage3.fusion.top_n
    fused = [(track in relevant, score - 3.0) for track, score in zip(ids[:top], scores[:top])]
    absent = [score for is_relevant, score in fused if not is_relevant]
    present = [score for is_relevant, score in fused if is_relevant]
    decision = MatchDecision(stage3.calibration, stage3.false_match_rate)  # the service's rule, as it applies it
    false_match = bool(absent) and decision.decide(absent[0], seconds, tracks - len(relevant))[0]
    found = bool(present) and decision.decide(present[0], seconds, tracks)[0]
    return false_match, found


def evaluate(
    embed: Embed,
    recordings: Sequence[Recording],
    seed: int,
    k_neighbours: int = K_NEIGHBOURS,  # the service's (index/defaults.py)
    exhaustive: bool = True,
    index_factory: Optional[IndexFactory] = None,
    frame_seconds: Optional[float] = None,
    lengths: Sequence[float] = QUERY_SECONDS,
    query_shift: int = 0,
    clips_per_length: int = 1,
    stage3: Optional[Stage3] = None,
) -> dict:
    """Run the protocol with `embed` ((bins, frames) -> (N, D); a global model returns N = 1).

    `query_shift` transposes every query (not the database) by that many CQT bins (semitones),
    which tests key invariance: ASAP's performances are all in the key of the score.

    Returns {"two_stage": {length: {"mAP", "MR1", "queries"}}, "exhaustive": {...}, "protocol": {...}}; with
    `exhaustive`, two_stage's entries also hold "recall_at_10": the mean share of the exhaustive top 10 (the
    source left out) that the two-stage top 10 holds.

    Length keys are "full", "6", "10", ... (all present; a length without queries has mAP/MR1 None).
    Queries whose work has no other recording in the database have no relevant item and are left out
    (counted in protocol["without_relevant"]).

    With `stage3`, "three_stage" holds the same figures after stage 3 (the stage-2 top N aligned and re-scored),
    and "relevant_in_top_n": the share of queries with a relevant recording in the stage-2 top N (what stage 3
    can reach at most).
    """
    ids = [rec.recording_id for rec in recordings]
    if len(set(ids)) != len(ids):
        raise ValueError("recording ids must be unique")
    if len(recordings) < 2:
        raise ValueError(f"need at least 2 recordings to evaluate, got {len(recordings)}")

    full, index = catalogue_of(embed, recordings, k_neighbours, index_factory)

    # numpy over the database, so a query costs O(database) in C, not in Python (SHS100K-TEST: 10k tracks)
    positions = {rec_id: i for i, rec_id in enumerate(ids)}
    works = np.array([rec.work_id for rec in recordings])
    methods = list(METHODS if exhaustive else METHODS[:1])
    frame_seconds = ExtractorConfig().frame_seconds if frame_seconds is None else frame_seconds
    if stage3 is not None:
        methods.append("three_stage")
        sequences = {rec.recording_id: stage3.sequence(rec.spectrogram).numpy() for rec in recordings}
    reachable: dict[str, list[float]] = defaultdict(list)
    decisions: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    aps = {m: defaultdict(list) for m in methods}
    ranks = {m: defaultdict(list) for m in methods}
    overlap: dict[str, list[float]] = defaultdict(list)
    without_relevant = 0
    for query in build_queries(recordings, seed, frame_seconds, lengths, clips_per_length):
        keep = np.arange(len(ids)) != positions[query.recording_id]  # the source is never in the ranking
        relevant = (works == query.work_id)[keep]
        if not relevant.any():
            without_relevant += 1
            continue
        if query.length == FULL and not query_shift:
            vectors = full[query.recording_id]
        else:
            vectors = _embed(embed, shift_bins(query.spectrogram, query_shift))
        found = {"two_stage": index.search(vectors, top_k=len(ids), k_neighbours=k_neighbours)}
        if exhaustive:
            found["exhaustive"] = index.search_exhaustive(vectors, top_k=len(ids))
        all_scores = {method: scores_for(matches, positions) for method, matches in found.items()}
        if stage3 is not None:
            query_sequence = torch.from_numpy(sequences[query.recording_id]) if query.length == FULL and not query_shift \
                else stage3.sequence(shift_bins(query.spectrogram, query_shift))
            seconds = query.spectrogram.shape[-1] * frame_seconds
            aligned_ids, aligned = _stage3_scores(found["two_stage"], query.recording_id, query_sequence, sequences,
                                                  seconds, stage3)
            all_scores["three_stage"] = np.zeros(len(ids))
            all_scores["three_stage"][[positions[i] for i in aligned_ids]] = aligned
            in_top = aligned_ids[: stage3.fusion.top_n]
            if stage3.calibration is not None:
                same_work = {ids[i] for i in np.flatnonzero(works == query.work_id)} - {query.recording_id}
                decisions[query.length].append(
                    _match_decisions(aligned_ids, aligned, same_work, seconds, len(ids) - 1, stage3))
            reachable[query.length].append(float(any(works[positions[i]] == query.work_id for i in in_top)))
        for method in methods:
            scores = all_scores[method][keep]
            aps[method][query.length].append(average_precision(scores, relevant))
            ranks[method][query.length].append(rank_of_first_relevant(scores, relevant))
        top = {method: [m.track_id for m in matches if m.track_id != query.recording_id][:RECALL_AT]
               for method, matches in found.items()}
        if exhaustive:  # how much of the all-pairs top 10 the first stage lets through (the service's recall target)
            overlap[query.length].append(len(set(top["two_stage"]) & set(top["exhaustive"])) / max(1, len(top["exhaustive"])))

    keys = [key for key in LENGTH_KEYS if key == FULL or float(key) in lengths]
    results: dict = {m: {key: _summary(aps[m][key], ranks[m][key]) for key in keys} for m in methods}
    if exhaustive:
        for key in keys:
            results["two_stage"][key][f"recall_at_{RECALL_AT}"] = float(np.mean(overlap[key])) if overlap[key] else None
    if stage3 is not None:
        for key in keys:
            results["three_stage"][key]["relevant_in_top_n"] = float(np.mean(reachable[key])) if reachable[key] else None
            if decisions[key]:
                false_matches, found = np.array(decisions[key]).T
                results["three_stage"][key]["false_match_rate"] = float(false_matches.mean())
                results["three_stage"][key]["recall_at_threshold"] = float(found.mean())
    results["protocol"] = {
        "seed": seed,
        "k_neighbours": k_neighbours,
        "recordings": len(recordings),
        "works": len(set(works.tolist())),
        "skipped_clips": skipped_clips(recordings, frame_seconds),
        "without_relevant": without_relevant,
        "query_shift": query_shift,
        "clips_per_length": clips_per_length,
        "stage3": None if stage3 is None else {**dataclasses.asdict(stage3.fusion), **dataclasses.asdict(stage3.alignment)},
        "false_match_rate": None if stage3 is None or stage3.calibration is None else stage3.false_match_rate,
    }
    return results


# -- the recordings users evaluate on -------------------------------------------------------


def rendered_recordings(cache: Path, limit_works: Optional[int], data: Path) -> list[Recording]:
    """The rendered validation versions of a corpus cache, each labelled with its piece (see asap_piece_ids)."""
    from models.training.corpus.works import asap_piece_ids
    from models.training.dataset import FeatureCorpus

    metadata = data / "asap" / "metadata.csv"
    pieces = asap_piece_ids(data / "asap") if metadata.exists() else {}
    corpus = FeatureCorpus.from_cache(cache, "valid", limit_works=limit_works)
    return [
        Recording(f"{work}/v{i:02d}", pieces.get(work, work), torch.from_numpy(spec))
        for work, versions in zip(corpus.work_ids, corpus.versions)
        for i, spec in enumerate(versions)
    ]


def listed_recordings(table: Path, cache: Path, config: ExtractorConfig, spectrogram, progress=None) -> list[Recording]:
    """Recordings of a `work_id,performance_id,path` list as whole-track features of `spectrogram` (an artifact's
    own front end), cached under `cache`/features by the front end's settings."""
    from models.training.recording_list import cached_features, feature_key, read_recording_list

    listed = read_recording_list(table)
    spectrograms = cached_features(listed, spectrogram, config.sample_rate, cache / "features", feature_key(config),
                                   progress)
    return [Recording(rec.performance_id, rec.work_id, torch.from_numpy(spec)) for rec, spec in zip(listed, spectrograms)]


# -- report -------------------------------------------------------------------


def _fmt(value: Optional[float], digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table_row(key: str, results: dict[str, dict]) -> str:
    """One query length; a model evaluated without it (evaluate(lengths=...)) shows dashes."""
    counts = sorted({r["two_stage"][key]["queries"] for r in results.values() if key in r["two_stage"]})
    cells = [key if key == FULL else f"{key} s", "/".join(str(c) for c in counts)]
    for r in results.values():
        two = r["two_stage"].get(key, {})
        exh = r.get("exhaustive", {}).get(key, {})
        three = r.get("three_stage", {}).get(key, {})
        cells += [_fmt(two.get("mAP"), 3), _fmt(two.get("MR1"), 2), _fmt(exh.get("mAP"), 3),
                  _fmt(two.get(f"recall_at_{RECALL_AT}"), 3)]
        if "three_stage" in r:
            cells += [_fmt(three.get("mAP"), 3), _fmt(three.get("MR1"), 2), _fmt(three.get("top1"), 3),
                      _fmt(three.get("relevant_in_top_n"), 3)]
        if r.get("protocol", {}).get("false_match_rate") is not None:
            cells += [_fmt(three.get("false_match_rate"), 3), _fmt(three.get("recall_at_threshold"), 3)]
    return "| " + " | ".join(cells) + " |"


def _markdown(results: dict[str, dict]) -> str:
    header = ["query length", "queries"]
    for name, r in results.items():
        header += [f"{name} mAP", f"{name} MR1", f"{name} mAP (exhaustive)", f"{name} recall@{RECALL_AT}"]
        if "three_stage" in r:
            header += [f"{name} mAP (3 stages)", f"{name} MR1 (3 stages)", f"{name} top-1 (3 stages)",
                       f"{name} relevant in top N"]
        if r.get("protocol", {}).get("false_match_rate") is not None:
            header += [f"{name} false matches", f"{name} recall (is_match)"]
    lines = [
        "# Evaluation: mAP and MR1 by query length",
        "",
        "Two-stage search unless marked; the query's own recording is left out of its ranking. "
        f"recall@{RECALL_AT}: the share of the exhaustive top {RECALL_AT} that the two-stage top {RECALL_AT} holds. "
        "3 stages: the two-stage top N aligned and re-scored (stage 3, as the service runs it); relevant in top N: "
        "the share of queries with a recording of their work in the two-stage top N (what stage 3 can reach). "
        "False matches: the share of queries whose best candidate passes is_match once their work is removed from the "
        "catalogue; recall (is_match): the share with a recording of their work passing it in the whole catalogue.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    order = [*LENGTH_KEYS[1:], FULL]  # full track last, as in the paper's Fig. 2
    lines += [_table_row(key, results) for key in order]
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, dict], path: Path) -> None:
    order = [*LENGTH_KEYS[1:], FULL]
    x = list(range(len(order)))  # evenly spaced categories: "full" has no length to place it by
    fig = Figure(figsize=(7, 4.5))  # no pyplot: no global backend state, renders with Agg
    ax = fig.add_subplot()
    for name, r in results.items():
        method = "three_stage" if "three_stage" in r else "two_stage"
        maps = [r[method].get(key, {}).get("mAP") for key in order]
        ax.plot(x, [math.nan if m is None else m for m in maps], marker="o", label=name)
    ax.set_xticks(x, order)
    ax.set_xlabel("query length (s)")
    ax.set_ylabel("mAP (three stages where the model has stage 3, else two)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(results: dict[str, dict], out_dir: str | Path) -> dict[str, Path]:
    """Write evaluation.json, evaluation.md and map_vs_length.png for {model name: evaluate() output}."""
    if not results:
        raise ValueError("write_report needs at least one model's results")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "evaluation.json", "markdown": out / "evaluation.md", "plot": out / "map_vs_length.png"}
    paths["json"].write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    paths["markdown"].write_text(_markdown(results))
    _plot(results, paths["plot"])
    return paths
