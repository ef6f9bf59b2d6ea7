"""The catalogue in Redis.

Keys, all under one prefix:
  {prefix}:track:{id}  hash: meta (JSON), model, n, dim, starts and vectors (little-endian float32 bytes), write_id,
                       and sequence (12 * T uint8 bytes) for models with stage 3
  {prefix}:tracks      sorted set of track ids scored by created_at (pagination, count)
  {prefix}:models      hash model_id -> number of tracks embedded with it (model_ids)
  {prefix}:vectors     integer: vectors of all tracks (vector_count)
  {prefix}:schema      integer: layout version
  {prefix}:generation  integer: the last change's number
  {prefix}:changes     stream of changes (id <generation>-0, fields op and track), capped near CHANGE_LOG_LENGTH

Atomicity: put and delete are Lua scripts, which Redis runs with nothing
interleaved and writes to the AOF as one MULTI/EXEC block; on restart Redis
drops a block the crash cut short, so the hash, the sorted set and the counters
change together or not at all. Each script checks everything that could fail
before its first write, because Redis does not roll back a script that errors
half-way. Durability of an acknowledged put depends on the server running with
`appendonly yes` and `appendfsync always` (everysec can lose the last second).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.store.base import (
    CHANGE_LOG_LENGTH,
    CatalogStore,
    Change,
    StoreError,
    StoreUnavailable,
    TrackExists,
    TrackRecord,
    check_page,
    from_blob,
    readable_record,
    sequence_from_blob,
    sequence_to_blob,
    to_blob,
    validate_record,
)

# Still 1 with the sequence field: a record without it reads as None, and an older coverid, which reads
# the fields it names, ignores it; a bump would only make older replicas refuse a prefix they read well.
SCHEMA_VERSION = 1
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 30.0  # default; it bounds each socket read, so a reply of tens of MB streams through
META_FIELDS = (b"meta", b"model", b"n", b"dim", b"starts")
BLOB_FIELDS = (b"vectors", b"sequence")  # read only with vectors, in this order after META_FIELDS

# KEYS: track hash, tracks zset, models hash, vector counter, generation, change stream
# ARGV: track_id, replace (0/1), created_at, model_id, n, dim, meta, starts, vectors, write_id, log length,
#       sequence ('' for none: a stored one is never empty)
# the next generation, decided before a script's first write (Redis does not roll back a script that
# fails half-way): past both the counter and the stream's last entry, so a lost counter cannot make XADD fail
NEXT_GENERATION = """
local function next_generation(counter, stream)
  local generation = (tonumber(redis.call('GET', counter)) or 0) + 1
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if last then
    local last_generation = tonumber(string.match(last[1], '^(%d+)'))
    if last_generation >= generation then generation = last_generation + 1 end
  end
  return generation
end
"""

PUT_SCRIPT = NEXT_GENERATION + """
local expected = {'hash', 'zset', 'hash', 'string', 'string', 'stream'}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= expected[i] then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. kind .. ', not a coverid ' .. expected[i])
  end
end
local old = redis.call('HMGET', KEYS[1], 'n', 'model', 'write_id')
-- the same write seen twice (a retry after a lost reply) already succeeded
if old[1] and old[3] == ARGV[10] then return 1 end
if old[1] and ARGV[2] ~= '1' then return 0 end
local generation = next_generation(KEYS[5], KEYS[6])
if old[1] then
  redis.call('DECRBY', KEYS[4], old[1])
  if redis.call('HINCRBY', KEYS[3], old[2], -1) <= 0 then redis.call('HDEL', KEYS[3], old[2]) end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'meta', ARGV[7], 'model', ARGV[4], 'n', ARGV[5], 'dim', ARGV[6],
           'starts', ARGV[8], 'vectors', ARGV[9], 'write_id', ARGV[10])
if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'sequence', ARGV[12]) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('INCRBY', KEYS[4], ARGV[5])
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('SET', KEYS[5], generation)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[11], generation .. '-0', 'op', 'put', 'track', ARGV[1])
return 1
"""

# KEYS as for put; ARGV: track_id, log length
DELETE_SCRIPT = NEXT_GENERATION + """
local old = redis.call('HMGET', KEYS[1], 'n', 'model')
if not old[1] then return 0 end
if redis.call('TYPE', KEYS[4])['ok'] == 'none' then return redis.error_reply('vector counter missing') end
local generation = next_generation(KEYS[5], KEYS[6])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DECRBY', KEYS[4], old[1])
if redis.call('HINCRBY', KEYS[3], old[2], -1) <= 0 then redis.call('HDEL', KEYS[3], old[2]) end
redis.call('SET', KEYS[5], generation)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[2], generation .. '-0', 'op', 'delete', 'track', ARGV[1])
return 1
"""


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, fit for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rpartition("@")[2]
        netloc = f"{user}:***@{host}"
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class RedisStore(CatalogStore):
    def __init__(self, url: str, prefix: str = "coverid", timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        self.url = redact_url(url)
        self.prefix = prefix
        self._tracks = f"{prefix}:tracks"
        self._models = f"{prefix}:models"
        self._vectors = f"{prefix}:vectors"
        self._generation = f"{prefix}:generation"
        self._changes = f"{prefix}:changes"
        self._closed = False
        try:
            # One quick retry rides out a dropped idle connection; put() stays exactly-once through its write_id.
            # A timeout is not retried: a frozen server would cost twice the timeout.
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=min(CONNECT_TIMEOUT_S, timeout_s),
                socket_timeout=timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1, supported_errors=(redis.ConnectionError,)),
                health_check_interval=30,
            )
        except ValueError as err:
            raise StoreUnavailable(f"{self.url} is not a valid Redis URL ({err}); expected redis://host:port/db") from err
        self._put = self._client.register_script(PUT_SCRIPT)
        self._delete = self._client.register_script(DELETE_SCRIPT)
        with self._translate():
            self._check_schema()

    def _track_key(self, track_id: str) -> str:
        return f"{self.prefix}:track:{track_id}"

    def _keys(self, track_id: str) -> list[str]:
        return [self._track_key(track_id), self._tracks, self._models, self._vectors, self._generation, self._changes]

    @contextmanager
    def _translate(self) -> Iterator[None]:
        if self._closed:
            raise StoreError(f"the store at {self.url} is closed")
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as err:
            raise StoreUnavailable(
                f"cannot reach Redis at {self.url}: {err}; check that redis-server is running there, "
                "and the host, port and password in the URL"
            ) from err
        except redis.RedisError as err:
            raise StoreError(f"Redis at {self.url}: {err}") from err

    def _check_schema(self) -> None:
        key = f"{self.prefix}:schema"
        self._client.set(key, SCHEMA_VERSION, nx=True)
        version = int(self._client.get(key))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"Redis at {self.url} holds prefix {self.prefix!r} in layout version {version}, but this "
                f"coverid reads up to version {SCHEMA_VERSION}: upgrade coverid, or use another prefix"
            )

    # -- writes

    def put(self, record: TrackRecord, replace: bool = False) -> None:
        validate_record(record)
        n, dim = record.vectors.shape
        meta = json.dumps({
            "title": record.title, "artist": record.artist, "metadata": record.metadata,
            "duration_s": float(record.duration_s), "created_at": float(record.created_at),
        }, separators=(",", ":"), allow_nan=False)
        args = [
            record.track_id, "1" if replace else "0", repr(float(record.created_at)), record.model_id, n, dim,
            meta, to_blob(record.starts_s), to_blob(record.vectors), uuid.uuid4().hex, CHANGE_LOG_LENGTH,
            sequence_to_blob(record.sequence) or b"",
        ]
        with self._translate():
            stored = self._put(keys=self._keys(record.track_id), args=args)
        if not stored:
            raise TrackExists(f"track {record.track_id!r} is already stored; pass replace=True to overwrite it")

    def delete(self, track_id: str) -> bool:
        with self._translate():
            return bool(self._delete(keys=self._keys(track_id), args=[track_id, CHANGE_LOG_LENGTH]))

    # -- reads

    def get(self, track_id: str, with_vectors: bool = False) -> Optional[TrackRecord]:
        fields = META_FIELDS + BLOB_FIELDS if with_vectors else META_FIELDS
        with self._translate():
            values = self._client.hmget(self._track_key(track_id), fields)
        return _from_fields(track_id, values)

    def get_many(self, track_ids: list[str], with_vectors: bool = False) -> list[TrackRecord]:
        with self._translate():
            return self._fetch(track_ids, with_vectors)

    def list(self, offset: int, limit: int) -> list[TrackRecord]:
        check_page(offset, limit)
        if limit == 0:
            return []  # ZRANGE 0 -1 would mean "everything"
        with self._translate():
            ids = [_text(raw) for raw in self._client.zrange(self._tracks, offset, offset + limit - 1)]
            return self._fetch(ids, with_vectors=False)

    def _fetch(self, ids: list[str], with_vectors: bool) -> list[TrackRecord]:
        """The tracks in one round trip; one deleted since its id was read, or unreadable (logged), is left out."""
        fields = META_FIELDS + BLOB_FIELDS if with_vectors else META_FIELDS
        pipe = self._client.pipeline(transaction=False)
        for track_id in ids:
            pipe.hmget(self._track_key(track_id), fields)
        records = (_from_fields(track_id, values) for track_id, values in zip(ids, pipe.execute()))
        return [record for record in records if record is not None]

    def count(self) -> int:
        with self._translate():
            return int(self._client.zcard(self._tracks))

    def vector_count(self) -> int:
        with self._translate():
            return int(self._client.get(self._vectors) or 0)

    def model_ids(self) -> set[str]:
        with self._translate():
            return {raw.decode() for raw in self._client.hkeys(self._models)}

    def iter_records(self, batch_size: int = 512) -> Iterator[TrackRecord]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # ZSCAN returns every id present for the whole scan at least once, whatever is written
        # meanwhile; `seen` (ids only, not vectors) drops the repeats it is allowed to return.
        seen: set[str] = set()
        cursor = 0
        while True:
            with self._translate():
                cursor, pairs = self._client.zscan(self._tracks, cursor, count=batch_size)
            ids = [track_id for track_id in (_text(raw) for raw, _ in pairs) if track_id not in seen]
            seen.update(ids)
            for start in range(0, len(ids), batch_size):
                with self._translate():
                    batch = self._fetch(ids[start:start + batch_size], with_vectors=True)
                yield from batch
            if cursor == 0:
                return

    def generation(self) -> int:
        with self._translate():
            return int(self._client.get(self._generation) or 0)

    def changes_since(self, generation: int, limit: int = 1000) -> Optional[list[Change]]:
        latest = self.generation()  # first: every change up to it is still in the stream unless trimmed
        with self._translate():
            entries = self._client.xrange(self._changes, min=f"{generation + 1}-0", max="+", count=limit)
        changes = [Change(int(entry_id.split(b"-")[0]), fields[b"track"].decode(), fields[b"op"].decode())
                   for entry_id, fields in entries]
        if generation > latest or (generation < latest and (not changes or changes[0].generation > generation + 1)):
            return None  # emptied behind the caller, or trimmed past it
        return changes

    @property
    def location(self) -> str:
        return self.url

    def ping(self) -> bool:
        try:
            with self._translate():
                return bool(self._client.ping())
        except StoreError:
            return False

    def close(self) -> None:
        self._closed = True
        self._client.close()


def _text(raw: bytes) -> str:
    # bytes another client stored that are not UTF-8 read with U+FFFD, instead of failing the whole read
    return raw.decode("utf-8", "replace")


def _from_fields(track_id: str, values: list[Optional[bytes]]) -> Optional[TrackRecord]:
    """The track of these hash fields; None when absent, or (logged) when it cannot be read."""
    if values[0] is None:
        return None
    return readable_record(track_id, lambda: _decode_fields(track_id, values))


def _decode_fields(track_id: str, values: list[Optional[bytes]]) -> TrackRecord:
    meta_raw, model, n_raw, dim_raw, starts = values[:5]
    meta = json.loads(_text(meta_raw))
    n, dim = int(n_raw), int(dim_raw)
    return TrackRecord(
        track_id=track_id, title=meta["title"], artist=meta["artist"], metadata=meta["metadata"],
        duration_s=meta["duration_s"], model_id=_text(model), created_at=meta["created_at"],
        vectors=from_blob(values[5], n, dim) if len(values) > 5 else None,
        starts_s=from_blob(starts, n),
        sequence=sequence_from_blob(values[6]) if len(values) > 6 else None,
    )
