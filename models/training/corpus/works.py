"""Which works exist and where their MIDI comes from."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Work:
    work_id: str  # unique across corpora, e.g. "pop909-001"
    split: str  # "train" or "valid"
    kind: str  # "pop909", "procedural" or "asap"
    sources: tuple[str, ...] = field(default_factory=tuple)  # MIDI paths (or seeds for procedural)


def pop909_works(root: Path) -> list[Work]:
    """One work per song; its sources are the main MIDI and the arrangement versions."""
    works = []
    for song in sorted(p for p in (root / "POP909").iterdir() if p.is_dir()):
        sources = [song / f"{song.name}.mid", *sorted((song / "versions").glob("*.mid"))]
        works.append(Work(f"pop909-{song.name}", "train", "pop909", tuple(str(s) for s in sources if s.exists())))
    return works


def procedural_works(count: int, seed: int) -> list[Work]:
    return [Work(f"proc-{seed}-{i:05d}", "train", "procedural", (str(seed * 1_000_003 + i),)) for i in range(count)]


def asap_works(root: Path) -> list[Work]:
    """One work per piece folder; its sources are the human performances (MAESTRO MIDI)."""
    by_piece: dict[str, list[str]] = {}
    with open(root / "metadata.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            by_piece.setdefault(row["folder"], []).append(str(root / row["midi_performance"]))
    return [
        Work("asap-" + folder.replace("/", "-"), "valid", "asap", tuple(sorted(paths)))
        for folder, paths in sorted(by_piece.items())
    ]


def asap_piece_ids(root: Path) -> dict[str, str]:
    """Work id of each ASAP folder -> id of its piece (composer and title).

    Rendering goes by folder, but some pieces span folders (`Piano_Sonatas/17-1` and
    `17-1_no_repeat` are one sonata movement played with and without repeats): scoring
    must count those performances as versions of one work, giving ASAP's 222 pieces.
    """
    pieces = {}
    with open(root / "metadata.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            pieces["asap-" + row["folder"].replace("/", "-")] = f"asap-{row['composer']}-{row['title']}"
    return pieces
