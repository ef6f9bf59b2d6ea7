"""The one settings object of the service and the CLI, read from COVERID_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = REPO_ROOT / "models" / "weights" / "extractor.pt"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COVERID_", extra="forbid")

    model_path: Path = Field(SHIPPED_MODEL, description="TorchScript extractor artifact")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: CUDA when present")
    max_track_seconds: float = Field(1200.0, gt=0, description="longest audio accepted, in seconds")


@lru_cache
def get_settings() -> Settings:
    return Settings()
