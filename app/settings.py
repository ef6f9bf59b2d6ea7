"""The one settings object of the service and the CLI, read from COVERID_* environment variables.

Validated at start-up: a bad value stops the service with a message naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from index.defaults import EF_CONSTRUCTION, EF_SEARCH, HNSW_M, K_NEIGHBOURS, calibration_beside

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = REPO_ROOT / "models" / "weights" / "extractor.pt"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COVERID_", extra="forbid")

    # model
    model_path: Path = Field(SHIPPED_MODEL, description="TorchScript extractor artifact")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: CUDA when present")
    # catalogue
    data_dir: Path = Field(Path("data"), description="embedded store (SQLite) and index snapshot")
    redis_url: Optional[str] = Field(None, description="use Redis as the store instead of SQLite")
    sync_interval_s: float = Field(2.0, gt=0, le=3600, description="how often the index replays what other "
                                   "processes sharing the store changed: a replica sees their writes within this")
    store_timeout_s: float = Field(5.0, gt=0, le=300, description="longest wait for one store call (one socket read "
                                   "for Redis, one lock for SQLite): a frozen store costs a request at most this")
    retry_after_s: int = Field(5, ge=1, le=3600, description="Retry-After of a 503; how long /identify then "
                               "answers from memory without asking the store")
    # retrieval (ByteCover3 section 2.3); the defaults and their measurement: index/defaults.py
    k_neighbours: int = Field(K_NEIGHBOURS, ge=1, le=1000, description="HNSW neighbours per query chunk")
    ef_search: int = Field(EF_SEARCH, ge=1, description="HNSW beam width; raised to k_neighbours when lower")
    hnsw_m: int = Field(HNSW_M, ge=4, le=128, description="HNSW links per node; fixed when the index is built")
    hnsw_ef_construction: int = Field(EF_CONSTRUCTION, ge=8, le=4000, description="HNSW beam while building the "
                                      "graph; a graph keeps the value it was built with until rebuilt")
    # the first stage in Milvus instead of this process (index/milvus_index.py): past one node
    milvus_uri: Optional[str] = Field(None, min_length=1, description="unset: the in-process index; a Milvus server "
                                      "or cluster (http://host:19530), or a local path for milvus-lite in this process")
    milvus_collection: str = Field("coverid_chunks", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
                                   description="the Milvus collection of local embeddings (one per catalogue)")
    milvus_token: Optional[SecretStr] = Field(None, description="Milvus credentials (user:password or an API key)")
    milvus_shards: int = Field(1, ge=1, le=64, description="shards of the collection, when the service creates it")
    milvus_replicas: int = Field(1, ge=1, le=64, description="in-memory replicas Milvus serves the collection from")
    max_top_k: int = Field(200, ge=1)
    # stage 3: stage-2 candidates aligned per query; unset: the artifact's (models/weights/MODEL_CARD.md), 0: off
    stage3_top_n: Optional[int] = Field(None, ge=0, le=10000, description="candidates aligned per query (stage 3)")
    # the match decision (index/calibration.py): is_match and confidence on every match
    calibration_path: Optional[Path] = Field(None, description="the decision's fit for the model (`coverid "
                                             "calibrate`); unset: calibration.json beside the model, if it fits it")
    false_match_rate: float = Field(0.01, gt=0, lt=1, description="share of clips of works absent from the "
                                    "catalogue that get an is_match (per query length and catalogue size)")
    # back-pressure: beyond these a request gets 503 + Retry-After at once instead of queueing without bound
    queue_size: int = Field(16, ge=1, le=10000, description="model requests in flight, from the end of their body to their answer")
    upload_slots: Optional[int] = Field(None, ge=1, le=100000,
                                        description="model requests whose body is still arriving; unset: 4 x queue_size")
    queue_wait_s: float = Field(2.0, gt=0, le=300, description="longest wait for the model's turn")
    # slow clients: deadlines to receive a request (uvicorn itself has none; see app/http_protocol.py)
    header_timeout_s: float = Field(10.0, gt=0, le=600, description="request headers, from the first byte")
    body_timeout_s: float = Field(120.0, gt=0, le=3600, description="request body, from the end of the headers")
    # limits
    max_upload_bytes: int = Field(50 * 2**20, ge=1024, description="largest request body")
    min_clip_seconds: float = Field(3.0, gt=0)
    # a whole uploaded track is a fair query: by default as long as a catalogue track may be (decoding
    # streams, so its memory is the resampled audio, about 5 MB a minute)
    max_clip_seconds: Optional[float] = Field(None, gt=0, description="longest /identify query; unset: max_track_seconds")
    max_track_seconds: float = Field(1200.0, gt=0, description="longest audio accepted, in seconds")
    # security
    api_keys: list[SecretStr] = Field(default_factory=list, description="JSON list; empty: no key needed")
    identify_requires_key: bool = False
    # the command line's HTTP client (coverid ingest / identify)
    url: str = Field("http://127.0.0.1:8000", description="the service the client commands talk to")
    api_key: Optional[SecretStr] = Field(None, description="the key the client commands send")
    demo_page: bool = Field(True, description="serve the page to try the service at / (it calls the public API)")
    log_level: str = Field("info", pattern=r"^(debug|info|warning|error)$")

    @field_validator("api_keys")
    @classmethod
    def _no_empty_key(cls, keys: list[SecretStr]) -> list[SecretStr]:
        # a request without an Authorization header offers the empty key, so it would pass for a valid one
        if any(not key.get_secret_value().strip() for key in keys):
            raise ValueError("a key is empty or only whitespace; remove it, every key must be a long random string")
        return keys

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.identify_requires_key and not self.api_keys:  # with no key configured, every request passes
            raise ValueError("COVERID_IDENTIFY_REQUIRES_KEY is true but COVERID_API_KEYS lists no key; set the keys")
        if self.max_clip_seconds is None:
            self.max_clip_seconds = self.max_track_seconds
        if self.min_clip_seconds > self.max_clip_seconds:
            raise ValueError(f"min_clip_seconds {self.min_clip_seconds} > max_clip_seconds {self.max_clip_seconds}")
        return self

    @property
    def decision_calibration(self) -> Path:
        """The calibration the service loads: the one set, else the file beside the model (where `make model` and
        `coverid calibrate --out` put it)."""
        return self.calibration_path or calibration_beside(self.model_path)

    @property
    def milvus_location(self) -> Optional[str]:
        """The engine's URI with a relative local path (milvus-lite) under the data dir, as the snapshot is."""
        uri = self.milvus_uri
        if uri is None or "://" in uri or Path(uri).is_absolute():
            return uri
        return str(self.data_dir / uri)

    @property
    def snapshot_path(self) -> Path:
        return self.data_dir / "index.snapshot"


class SettingsInvalid(ValueError):
    """A COVERID_* variable is malformed. The message names the variables, never their values (keys are secret)."""


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as err:
        problems = "; ".join(f"{_variable(e['loc'])}: {e['msg']}" for e in err.errors(include_input=False, include_url=False))
        raise SettingsInvalid(f"invalid settings: {problems}") from None
    except SettingsError as err:  # the value of a list or dict variable is not JSON
        raise SettingsInvalid(f"invalid settings: {err}; list and object values are JSON, e.g. COVERID_API_KEYS='[\"key\"]'") from None


def _variable(location: tuple) -> str:
    return f"COVERID_{str(location[0]).upper()}" if location else "settings"
