"""Typed service settings, read once from the environment at start.

The environment variable names are a contract: the operator's pod builder sets ENGINE_VERSION,
ENGINE_WORKERS, ENGINE_CACHE_SIZE, ENGINE_LOG_LEVEL, DATABASE_URL and the ENGINE_FAULT_* knobs, and
deployments add ENGINE_API_KEYS and ENGINE_TRACK. A bad value stops the process with a message naming
the variable instead of failing later on a request.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backtest_engine import __version__
from backtest_engine.limits import DEFAULT_MAX_UPLOAD_BYTES
from backtest_engine.service.auth import configured_digest

DEFAULT_DATABASE_URL = "sqlite:///./backtest-results.db"


class ServiceSettings(BaseSettings):
    """Everything `backtest-engine serve` can be told; defaults are safe for a laptop."""

    model_config = SettingsConfigDict(env_prefix="ENGINE_", extra="ignore", frozen=True)

    api_keys: str = Field(
        default="",
        description="comma-separated API keys (plain, or sha256:<hex>); empty disables authentication",
    )
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias="DATABASE_URL",
        description="SQLAlchemy URL of the results store: sqlite:///PATH or postgresql://...",
    )
    version: str = Field(default=__version__, description="`version` label of every metric series")
    track: str = Field(default="", description="`track` label of every metric series (stable/canary)")
    workers: int = Field(default=1, ge=1, le=64, description="processes per optimization job")
    cache_size: int = Field(default=256, ge=0, description="backtest results kept in memory (0 = none)")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    fault_error_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="share of requests failed with 500")
    fault_latency_seconds: float = Field(default=0.0, ge=0.0, le=60.0, description="latency added per request")
    rate_limit: int = Field(default=600, ge=1, description="requests per minute per API key")
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, ge=1024, description="largest dataset upload")
    max_jobs: int = Field(default=2, ge=1, le=64, description="optimization jobs running at once")

    @field_validator("api_keys")
    @classmethod
    def _hashed_keys_well_formed(cls, value: str) -> str:
        for entry in (key.strip() for key in value.split(",")):
            if entry.startswith("sha256:"):
                configured_digest(entry)
        return value

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key.strip() for key in self.api_keys.split(",") if key.strip())

    @property
    def faults_enabled(self) -> bool:
        return self.fault_error_rate > 0 or self.fault_latency_seconds > 0


class SettingsError(Exception):
    """A setting from the environment is invalid; the message names the variable."""


def load_settings() -> ServiceSettings:
    """Read the environment once; turn pydantic's error into one line per bad variable."""
    try:
        return ServiceSettings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            variable = "DATABASE_URL" if field == "DATABASE_URL" else f"ENGINE_{field.upper()}"
            problems.append(f"{variable}: {error['msg']}")
        raise SettingsError("; ".join(problems)) from None
