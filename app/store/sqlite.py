"""The catalogue in one SQLite file: `<data_dir>/catalog.sqlite3`.

Durability: WAL journal with synchronous=FULL, so a put() that returned has
been fsynced and survives a crash or power loss; one transaction per put, so a
crash leaves the whole track or none of it.

Threads: each thread gets its own connection (threading.local), so reads run
in parallel with each other and, under WAL, with a write. Writes are also
serialised by a lock in this process: SQLite allows one writer at a time
anyway, and waiting on a Python lock is cheaper and fairer than SQLite's
sleep-and-retry busy handler (which still covers another process).

Counters: triggers on the tracks table keep the track count, the vector count
and the per-model track counts in small tables, in the same transaction as the
row they count, so count(), vector_count() and model_ids() read a row or two
instead of scanning the catalogue.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from app.store.base import (
    CHANGE_LOG_LENGTH,
    CatalogStore,
    Change,
    StoreError,
    StoreFull,
    StoreUnavailable,
    TrackExists,
    TrackRecord,
    check_page,
    from_blob,
    metadata_json,
    readable_record,
    sequence_from_blob,
    sequence_to_blob,
    to_blob,
    validate_record,
)

FILENAME = "catalog.sqlite3"
SCHEMA_VERSION = 3  # 2: the change log; 3: stage 3's pitch-class sequence
BUSY_TIMEOUT_S = 30.0  # default wait for another writer's lock
IDS_PER_QUERY = 500  # track ids per IN (...) read: far below SQLite's limit of bound parameters

SCHEMA = """
CREATE TABLE tracks (
    track_id   TEXT NOT NULL UNIQUE,
    title      TEXT,
    artist     TEXT,
    metadata   TEXT NOT NULL,
    duration_s REAL NOT NULL,
    model_id   TEXT NOT NULL,
    created_at REAL NOT NULL,
    dim        INTEGER NOT NULL,
    n_segments INTEGER NOT NULL,
    starts     BLOB NOT NULL,  -- (n_segments,) little-endian float32
    -- the large blobs last, so rows read without them stop short of their overflow pages
    -- no comma in the next comment: SQLite's DROP COLUMN sequence (as the upgrade test does) would cut there
    vectors    BLOB NOT NULL,  -- n_segments rows of dim little-endian float32
    sequence   BLOB            -- (12, T) uint8 pitch classes, 12 * T bytes; NULL for models without stage 3
);
CREATE INDEX tracks_by_time ON tracks (created_at, track_id);

CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES ('tracks', 0), ('vectors', 0);
CREATE TABLE models (model_id TEXT PRIMARY KEY, tracks INTEGER NOT NULL) WITHOUT ROWID;

CREATE TRIGGER tracks_insert AFTER INSERT ON tracks BEGIN
    INSERT INTO changes (track_id, op) VALUES (NEW.track_id, 'put');
    UPDATE counters SET value = value + 1 WHERE name = 'tracks';
    UPDATE counters SET value = value + NEW.n_segments WHERE name = 'vectors';
    INSERT INTO models (model_id, tracks) VALUES (NEW.model_id, 1)
        ON CONFLICT (model_id) DO UPDATE SET tracks = tracks + 1;
END;
CREATE TRIGGER tracks_delete AFTER DELETE ON tracks BEGIN
    INSERT INTO changes (track_id, op) VALUES (OLD.track_id, 'delete');
    UPDATE counters SET value = value - 1 WHERE name = 'tracks';
    UPDATE counters SET value = value - OLD.n_segments WHERE name = 'vectors';
    UPDATE models SET tracks = tracks - 1 WHERE model_id = OLD.model_id;
    DELETE FROM models WHERE model_id = OLD.model_id AND tracks <= 0;
END;
-- rows are never updated in place (replace is delete + insert), so the counters cannot drift
CREATE TRIGGER tracks_no_update BEFORE UPDATE ON tracks BEGIN
    SELECT RAISE(ABORT, 'tracks rows are replaced, not updated');
END;
"""

# schema 2: the change log other processes follow; AUTOINCREMENT never reuses a generation, even after a trim
CHANGE_LOG = f"""
CREATE TABLE changes (generation INTEGER PRIMARY KEY AUTOINCREMENT, track_id TEXT NOT NULL, op TEXT NOT NULL);
CREATE TRIGGER changes_trim AFTER INSERT ON changes BEGIN
    DELETE FROM changes WHERE generation <= NEW.generation - {CHANGE_LOG_LENGTH};
END;
"""
SCHEMA = CHANGE_LOG + SCHEMA
# a version-1 file gains the log and triggers that write to it
UPGRADE_1_TO_2 = CHANGE_LOG + "DROP TRIGGER tracks_insert;\nDROP TRIGGER tracks_delete;\n" + SCHEMA[SCHEMA.index(
    "CREATE TRIGGER tracks_insert"):SCHEMA.index("-- rows are never updated")]
# a version-2 file gains the sequence column, added last as in SCHEMA; its tracks have none (NULL)
UPGRADE_2_TO_3 = "ALTER TABLE tracks ADD COLUMN sequence BLOB;"
UPGRADES = {1: UPGRADE_1_TO_2, 2: UPGRADE_2_TO_3}  # version -> the script that takes a file to the next one

META_COLUMNS = "track_id, title, artist, metadata, duration_s, model_id, created_at, dim, n_segments, starts"
BLOB_COLUMNS = "vectors, sequence"  # read only with vectors, in this order after META_COLUMNS
INSERT = f"INSERT INTO tracks ({META_COLUMNS}, {BLOB_COLUMNS}) VALUES ({', '.join('?' * 12)})"


class SQLiteStore(CatalogStore):
    def __init__(self, data_dir: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(data_dir) / FILENAME
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._registry_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreUnavailable(
                f"cannot create the data directory {data_dir}: {err}; check the path and its permissions"
            ) from err
        with self._translate():
            self._init_schema()

    # -- connections and errors

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write opens BEGIN IMMEDIATE itself.
        # check_same_thread=False only so close() can close every thread's connection.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous = FULL")
        conn.text_factory = _text
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the store at {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._registry_lock:
                if self._closed:
                    raise StoreError(f"the store at {self.path} is closed")
                conn = self._connect()
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as err:
            text = str(err)
            if "full" in text:  # SQLITE_FULL: the disk, or the file's page limit
                raise StoreFull(f"the catalogue's disk is full ({self.path}: {text}); nothing was written; "
                                "free space there and retry") from err
            if "unable to open" in text or "locked" in text or "readonly" in text:
                raise StoreUnavailable(
                    f"cannot use the catalogue at {self.path}: {text}; check the file's permissions, "
                    "free disk space and that no other process holds it locked"
                ) from err
            raise StoreError(f"catalogue at {self.path}: {text}") from err
        except sqlite3.DatabaseError as err:
            raise StoreError(f"catalogue at {self.path}: {err}; is it a coverid SQLite catalogue?") from err

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: taken the write lock up front, so it cannot fail half-way on a busy upgrade."""
        with self._translate(), self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                self._abandon(conn)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                self._abandon(conn)
                raise

    def _abandon(self, conn: sqlite3.Connection) -> None:
        """Undo a failed write. SQLite may already have rolled back (a full disk does): when the rollback
        itself fails, this thread's connection is replaced, so the next request starts clean."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            with self._registry_lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            self._local.conn = None
            conn.close()

    def _init_schema(self) -> None:
        conn = self._conn()
        # WAL is a property of the file, set once; readers then never block the writer nor it them.
        conn.execute("PRAGMA journal_mode = WAL")
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"catalogue {self.path} has schema version {version}, but this coverid reads up to "
                    f"version {SCHEMA_VERSION}: upgrade coverid, or use another data directory"
                )
            if version < SCHEMA_VERSION:
                # an older file climbs one version at a time, all in this transaction
                scripts = [SCHEMA] if version == 0 else [UPGRADES[v] for v in range(version, SCHEMA_VERSION)]
                for statement in _statements("\n".join(scripts)):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- writes

    def put(self, record: TrackRecord, replace: bool = False) -> None:
        validate_record(record)
        row = _to_row(record)
        with self._write() as conn:
            if replace:
                conn.execute("DELETE FROM tracks WHERE track_id = ?", (record.track_id,))
            try:
                conn.execute(INSERT, row)
            except sqlite3.IntegrityError as err:
                if "UNIQUE" not in str(err):
                    raise
                raise TrackExists(
                    f"track {record.track_id!r} is already stored; pass replace=True to overwrite it"
                ) from None

    def put_many(self, records: list[TrackRecord]) -> None:
        """The whole batch in one transaction: all of it is stored, or none of it."""
        for record in records:
            validate_record(record)
        rows = [_to_row(record) for record in records]
        with self._write() as conn:
            try:
                conn.executemany(INSERT, rows)
            except sqlite3.IntegrityError as err:
                if "UNIQUE" not in str(err):
                    raise
                raise TrackExists(f"a track of the batch is already stored or given twice ({err})") from None

    def delete(self, track_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM tracks WHERE track_id = ?", (track_id,)).rowcount > 0

    # -- reads

    def get(self, track_id: str, with_vectors: bool = False) -> Optional[TrackRecord]:
        columns = f"{META_COLUMNS}, {BLOB_COLUMNS}" if with_vectors else META_COLUMNS
        with self._translate():
            row = self._conn().execute(f"SELECT {columns} FROM tracks WHERE track_id = ?", (track_id,)).fetchone()
        return None if row is None else _from_row(row)

    def get_many(self, track_ids: list[str], with_vectors: bool = False) -> list[TrackRecord]:
        columns = f"{META_COLUMNS}, {BLOB_COLUMNS}" if with_vectors else META_COLUMNS
        found: dict[str, TrackRecord] = {}
        with self._translate():
            for first in range(0, len(track_ids), IDS_PER_QUERY):
                ids = track_ids[first : first + IDS_PER_QUERY]
                rows = self._conn().execute(f"SELECT {columns} FROM tracks WHERE track_id IN ({', '.join('?' * len(ids))})",
                                            ids).fetchall()
                found.update((record.track_id, record) for record in map(_from_row, rows) if record is not None)
        return [found[track_id] for track_id in track_ids if track_id in found]

    def list(self, offset: int, limit: int) -> list[TrackRecord]:
        check_page(offset, limit)
        query = f"SELECT {META_COLUMNS} FROM tracks ORDER BY created_at, track_id LIMIT ? OFFSET ?"
        with self._translate():
            rows = self._conn().execute(query, (limit, offset)).fetchall()
        return [record for record in map(_from_row, rows) if record is not None]

    def count(self) -> int:
        return self._counter("tracks")

    def vector_count(self) -> int:
        return self._counter("vectors")

    def _counter(self, name: str) -> int:
        with self._translate():
            return self._conn().execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    def model_ids(self) -> set[str]:
        with self._translate():
            return {row[0] for row in self._conn().execute("SELECT model_id FROM models")}

    def iter_records(self, batch_size: int = 512) -> Iterator[TrackRecord]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Keyset pages on the unique track_id index: each batch is its own short read, so no
        # long-lived read transaction holds back WAL checkpoints while the caller works.
        query = f"SELECT {META_COLUMNS}, {BLOB_COLUMNS} FROM tracks WHERE track_id > ? ORDER BY track_id LIMIT ?"
        after = ""
        while True:
            with self._translate():
                rows = self._conn().execute(query, (after, batch_size)).fetchall()
            yield from (record for record in map(_from_row, rows) if record is not None)
            if len(rows) < batch_size:
                return
            after = rows[-1][0]

    def generation(self) -> int:
        with self._translate():
            row = self._conn().execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return 0 if row is None else int(row[0])

    def changes_since(self, generation: int, limit: int = 1000) -> Optional[list[Change]]:
        latest = self.generation()  # first: every change up to it is still in the log unless trimmed
        with self._translate():
            rows = self._conn().execute("SELECT generation, track_id, op FROM changes WHERE generation > ? "
                                        "ORDER BY generation LIMIT ?", (generation, limit)).fetchall()
        if generation > latest or (generation < latest and (not rows or rows[0][0] > generation + 1)):
            return None  # emptied behind the caller, or trimmed past it
        return [Change(int(g), track_id, op) for g, track_id, op in rows]

    @property
    def location(self) -> str:
        return str(self.path)

    def ping(self) -> bool:
        try:
            with self._translate():
                self._conn().execute("SELECT 1").fetchone()
            return True
        except StoreError:
            return False

    def close(self) -> None:
        with self._registry_lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _statements(script: str) -> Iterator[str]:
    """Split the schema into statements (execute() runs one; executescript() would commit our transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""


def _to_row(record: TrackRecord) -> tuple:
    n, dim = record.vectors.shape
    return (
        record.track_id, record.title, record.artist, metadata_json(record.metadata),
        float(record.duration_s), record.model_id, float(record.created_at), dim, n,
        to_blob(record.starts_s), to_blob(record.vectors), sequence_to_blob(record.sequence),
    )


def _text(raw: bytes) -> str:
    # text another tool stored that is not UTF-8 reads with U+FFFD, instead of failing the whole query
    return raw.decode("utf-8", "replace")


def _from_row(row: tuple) -> Optional[TrackRecord]:
    """The row's track; None (logged) when it cannot be read."""
    return readable_record(row[0], lambda: _decode_row(row))


def _decode_row(row: tuple) -> TrackRecord:
    track_id, title, artist, metadata, duration_s, model_id, created_at, dim, n, starts = row[:10]
    return TrackRecord(
        track_id=track_id, title=title, artist=artist, metadata=json.loads(metadata),
        duration_s=duration_s, model_id=model_id, created_at=created_at,
        vectors=from_blob(row[10], n, dim) if len(row) > 10 else None,
        starts_s=from_blob(starts, n),
        sequence=sequence_from_blob(row[11]) if len(row) > 11 else None,
    )
