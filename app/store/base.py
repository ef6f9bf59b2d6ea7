"""What the catalogue store promises, whichever backend keeps it.

A track is stored whole or not at all: its metadata, its local embeddings
(one L2-normalised vector per 20 s chunk), the chunk start times and, for
models with stage 3, its pitch-class sequence change together. The search
index is not durable; it is rebuilt from the store at start-up through
`iter_records`, so the store is the one source of truth.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import replace as with_fields
from typing import Any, Optional

import numpy as np

log = logging.getLogger("coverid.store")

# Vectors are stored as raw little-endian float32 so a file or a Redis dump
# reads the same on any machine.
STORED_DTYPE = np.dtype("<f4")
NORM_TOLERANCE = 1e-3
# Stage 3's pitch-class sequence: (12, T) uint8, stored as its raw 12 * T bytes (T is their length / 12).
PITCH_CLASSES = 12
MAX_SEQUENCE_FRAMES = 1_000_000  # days of audio at a few frames per second; bounds one track's 12 MB
# Catalogue metadata is a flat record in practice; the limit sits far below the depth at which
# pydantic refuses to serialise a response (about 250), so a stored track can always be read back.
MAX_METADATA_DEPTH = 32
METADATA_TOO_DEEP = f"metadata nests more than {MAX_METADATA_DEPTH} objects or lists deep; flatten it"
# Python reads and writes integers of at most this many digits (sys.get_int_max_str_digits); past it its own
# message tells a programmer to reconfigure Python, which a user of the service cannot do.
METADATA_LONG_INTEGER = (f"metadata holds an integer longer than {sys.get_int_max_str_digits()} digits, too long to "
                         "store as a number; send it as a string (in quotes) instead")
# What json.loads makes of an unpaired escape such as "\ud800": a Python string holds it, but UTF-8 cannot,
# so neither a store nor an HTTP answer can carry it.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Both backends take page bounds as signed 64-bit integers (SQLite's OFFSET, Redis's ZRANGE); far past any catalogue.
MAX_PAGE_END = 2**62


class StoreError(Exception):
    """Any failure of the catalogue store."""


class TrackExists(StoreError):
    """put() of a track id that is already stored, without replace=True."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached or opened; the message names it and what to check."""


class StoreFull(StoreUnavailable):
    """The store's disk (or memory limit) is full: the write was not made, nothing stored was lost."""


@dataclass(frozen=True, eq=False)  # eq=False: dataclass equality on arrays is ambiguous
class TrackRecord:
    track_id: str
    title: Optional[str]
    artist: Optional[str]
    metadata: dict[str, Any]  # JSON-serialisable
    duration_s: float
    model_id: str
    created_at: float  # unix seconds
    vectors: Optional[np.ndarray] = None  # (N, D) float32, L2-normalised; None when read without vectors
    starts_s: Optional[np.ndarray] = None  # (N,) float32 chunk start times
    # (12, T) uint8 pitch classes for stage 3; None for models without it, and when read without vectors
    sequence: Optional[np.ndarray] = None

    @property
    def n_segments(self) -> int:
        """Chunks of the track; known without the vectors, since reads always carry the starts."""
        if self.vectors is not None:
            return int(self.vectors.shape[0])
        return 0 if self.starts_s is None else int(self.starts_s.shape[0])

    @property
    def dim(self) -> Optional[int]:
        return None if self.vectors is None else int(self.vectors.shape[1])


def validate_record(record: TrackRecord) -> None:
    """Raise ValueError naming the problem; stores call this before writing anything."""
    _validate_fields(record)
    _validate_vectors(record.vectors, record.starts_s)
    _validate_sequence(record.sequence)


def _validate_fields(record: TrackRecord) -> None:
    """Everything but the vectors: what an answer about the track needs."""
    if not isinstance(record.track_id, str) or not record.track_id:
        raise ValueError(f"track_id must be a non-empty string, got {record.track_id!r}")
    if not isinstance(record.model_id, str) or not record.model_id:
        raise ValueError(f"model_id must be a non-empty string, got {record.model_id!r}")
    for name in ("title", "artist"):
        value = getattr(record, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string or None, got {type(value).__name__}")
    for name in ("track_id", "model_id", "title", "artist"):
        _check_text(name, getattr(record, name))
    _check_finite("duration_s", record.duration_s, minimum=0.0)
    _check_finite("created_at", record.created_at)
    metadata_json(record.metadata)


def _check_text(name: str, text: Optional[str]) -> None:
    found = LONE_SURROGATE.search(text or "")
    if found:
        raise ValueError(f"{name} holds the lone surrogate \\u{ord(found.group()):04x}, which is not text and "
                         "cannot be stored as UTF-8: send the character itself, or one past U+FFFF as its escape "
                         "pair (e.g. \\ud83c\\udfb5)")


def _check_finite(name: str, value: Any, minimum: Optional[float] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _validate_vectors(vectors: Optional[np.ndarray], starts: Optional[np.ndarray]) -> None:
    if vectors is None or starts is None:
        raise ValueError("a stored track needs its vectors and starts_s: embed the audio before put()")
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(f"vectors must be a 2-D float32 array (N, D), got {_describe(vectors)}")
    if vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise ValueError(f"vectors must have at least one chunk and one dimension, got shape {vectors.shape}")
    if not isinstance(starts, np.ndarray) or starts.ndim != 1 or starts.dtype != np.float32:
        raise ValueError(f"starts_s must be a 1-D float32 array (N,), got {_describe(starts)}")
    if starts.shape[0] != vectors.shape[0]:
        raise ValueError(f"starts_s has {starts.shape[0]} entries for {vectors.shape[0]} vectors; they must match")
    if not np.isfinite(vectors).all() or not np.isfinite(starts).all():
        raise ValueError("vectors and starts_s must be finite (found NaN or inf)")
    norms = np.linalg.norm(vectors, axis=1)
    if not np.allclose(norms, 1.0, atol=NORM_TOLERANCE):
        worst = float(norms[np.argmax(np.abs(norms - 1.0))])
        raise ValueError(f"vectors must be L2-normalised (a row has norm {worst:.4f}); normalise each row first")


def _validate_sequence(sequence: Optional[np.ndarray]) -> None:
    if sequence is None:
        return
    if not isinstance(sequence, np.ndarray) or sequence.ndim != 2 or sequence.dtype != np.uint8 \
            or sequence.shape[0] != PITCH_CLASSES:
        raise ValueError(f"sequence must be a 2-D uint8 array ({PITCH_CLASSES}, T) of pitch classes, got "
                         f"{_describe(sequence)}: quantise the pitch-class frames to uint8 and put the classes first")
    if not 1 <= sequence.shape[1] <= MAX_SEQUENCE_FRAMES:
        raise ValueError(f"sequence must have 1 to {MAX_SEQUENCE_FRAMES} frames, got {sequence.shape[1]}: "
                         "store None for a track without one, or lower the frame rate")


def _describe(array: Any) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.ndim}-D {array.dtype} of shape {array.shape}"
    return type(array).__name__


def metadata_json(metadata: Any) -> str:
    """The metadata as compact JSON text; ValueError when it is not a JSON-serialisable dict of UTF-8 text."""
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    if _nesting_depth(metadata) > MAX_METADATA_DEPTH:
        raise ValueError(METADATA_TOO_DEEP)
    try:
        # not ASCII-escaped: a lone surrogate in a key or a value would come out as a harmless-looking escape
        text = json.dumps(metadata, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        if _holds_long_integer(metadata):
            raise ValueError(METADATA_LONG_INTEGER) from None
        raise ValueError(f"metadata must be standard JSON (strings, finite numbers, booleans, null, lists, "
                         f"objects): {err}") from None
    _check_text("metadata", text)
    return text


def _holds_long_integer(value: Any) -> bool:
    """Whether an integer past Python's digit limit sits somewhere in value (already no deeper than the limit)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, int):
            try:
                str(item)
            except ValueError:
                return True
    return False


def _nesting_depth(value: Any) -> int:
    """How deep dicts and lists nest, counted without recursion; stops once past the limit (so cycles end)."""
    deepest, pending = 0, [(value, 1)]
    while pending and deepest <= MAX_METADATA_DEPTH:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def readable_record(track_id: str, decode: Callable[[], TrackRecord]) -> Optional[TrackRecord]:
    """The stored track `decode()` reads, fit to answer with; None, logged, when it cannot be read at all.

    Stores read every track through this, so one bad track (written past this version's checks, by an older
    coverid or another tool, or damaged) never makes a listing, an index rebuild or the service fail.
    """
    try:
        record = decode()
        try:
            _validate_fields(record)
        except ValueError:  # lone surrogates, stored before they were refused: the rest of the track is sound
            record = with_fields(record, title=_repaired(record.title), artist=_repaired(record.artist),
                                 metadata=_repaired(record.metadata))
            _validate_fields(record)
            log.warning("track %r holds text that is not Unicode (lone surrogates); it is read with U+FFFD in their "
                        "place: ingest it again with replace=true to store it so", track_id)
        return record
    except Exception as err:  # noqa: BLE001 - whatever is wrong with this track, the others stay readable
        log.error("track %r in the store cannot be read (%s: %s); reads leave it out: delete it "
                  "(DELETE /catalog/{track_id}) and ingest it again", track_id, type(err).__name__, err)
        return None


def _repaired(value: Any) -> Any:
    """`value` with each lone surrogate in its strings, dict keys included, replaced by U+FFFD."""
    if isinstance(value, str):
        return LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_repaired(item) for item in value]
    if isinstance(value, dict):
        return {_repaired(key): _repaired(item) for key, item in value.items()}
    return value


def to_blob(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=STORED_DTYPE).tobytes()


def from_blob(blob: bytes, n: int, dim: Optional[int] = None) -> np.ndarray:
    """A writable native float32 array: (n,) or (n, dim). Checks the size so a torn value cannot slip through."""
    shape = (n,) if dim is None else (n, dim)
    expected = int(np.prod(shape)) * STORED_DTYPE.itemsize
    if len(blob) != expected:
        raise StoreError(f"stored array has {len(blob)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(blob, dtype=STORED_DTYPE).astype(np.float32).reshape(shape)


def sequence_to_blob(sequence: Optional[np.ndarray]) -> Optional[bytes]:
    """The sequence's 12 * T bytes, row by row (tobytes() is C order whatever the array's layout); None stays None."""
    return None if sequence is None else sequence.tobytes()


def sequence_from_blob(blob: Optional[bytes]) -> Optional[np.ndarray]:
    """A writable C-contiguous (12, T) uint8 array; None for a track stored without one."""
    if blob is None:
        return None
    if not blob or len(blob) % PITCH_CLASSES:
        raise StoreError(f"stored sequence has {len(blob)} bytes, not a positive multiple of {PITCH_CLASSES}")
    return np.frombuffer(blob, dtype=np.uint8).reshape(PITCH_CLASSES, -1).copy()


def check_page(offset: int, limit: int) -> None:
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must be >= 0, got offset={offset} limit={limit}")
    if offset + limit > MAX_PAGE_END:
        raise ValueError(f"offset + limit must be at most {MAX_PAGE_END}, got offset={offset} limit={limit}")


CHANGE_LOG_LENGTH = 100_000  # changes kept for processes catching up; one further behind rebuilds its index


@dataclass(frozen=True)
class Change:
    """One entry of the store's change log: `track_id` was stored ("put") or deleted at `generation`."""

    generation: int
    track_id: str
    op: str


class CatalogStore(abc.ABC):
    """The durable catalogue. Every method is safe to call from several threads at once.

    Every write also appends to a change log, numbered by a generation that only grows: processes
    sharing the store follow it to keep their in-memory indexes in step (app/catalog.py, `sync`).
    """

    @abc.abstractmethod
    def put(self, record: TrackRecord, replace: bool = False) -> None:
        """Store the whole track atomically; TrackExists when present and not replace; ValueError when invalid."""

    def put_many(self, records: list[TrackRecord]) -> None:
        """Store new tracks. Each is stored whole or not at all; a backend may store the batch as one write
        (SQLite does: one transaction, one fsync, for bulk loads). TrackExists if any is present."""
        for record in records:
            self.put(record)

    @abc.abstractmethod
    def get(self, track_id: str, with_vectors: bool = False) -> Optional[TrackRecord]:
        """The track, or None (also for one that cannot be read, see `readable_record`). Without vectors,
        `vectors` and `sequence` are None (starts_s is still read: it is small)."""

    def get_many(self, track_ids: list[str], with_vectors: bool = False) -> list[TrackRecord]:
        """The tracks of these ids that are stored (and readable), in the order asked; a backend may read them in one
        round trip (both do: the Milvus backend reads a query's candidates this way)."""
        records = (self.get(track_id, with_vectors) for track_id in track_ids)
        return [record for record in records if record is not None]

    @abc.abstractmethod
    def delete(self, track_id: str) -> bool:
        """True when the track was there and is now gone."""

    @abc.abstractmethod
    def list(self, offset: int, limit: int) -> list[TrackRecord]:
        """A page of tracks without vectors, ordered by (created_at, track_id)."""

    @abc.abstractmethod
    def count(self) -> int:
        """Tracks stored."""

    @abc.abstractmethod
    def vector_count(self) -> int:
        """Vectors of all stored tracks; a maintained counter, not a scan."""

    @abc.abstractmethod
    def iter_records(self, batch_size: int = 512) -> Iterator[TrackRecord]:
        """Every track once, with vectors and sequence, reading batch_size tracks at a time; order unspecified."""

    @abc.abstractmethod
    def model_ids(self) -> set[str]:
        """The distinct model ids of the stored embeddings."""

    @abc.abstractmethod
    def generation(self) -> int:
        """The generation of the last change (0 for a store never written)."""

    @abc.abstractmethod
    def changes_since(self, generation: int, limit: int = 1000) -> Optional[list[Change]]:
        """Up to `limit` changes after `generation`, oldest first; None when the log no longer reaches back
        that far (trimmed, or the store was emptied behind the caller's back): the caller must rebuild."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the store is, for messages (a Redis URL without its password, a file path)."""

    @abc.abstractmethod
    def ping(self) -> bool:
        """True when the backend answers; never raises."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; further calls raise StoreError."""

    def __enter__(self) -> CatalogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
