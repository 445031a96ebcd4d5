"""Typed service settings, read once from the environment at start.

The environment variable names are a contract: the operator's pod builder sets ENGINE_VERSION,
ENGINE_WORKERS, ENGINE_CACHE_SIZE, ENGINE_LOG_LEVEL, DATABASE_URL, ENGINE_API_KEYS, ENGINE_ADMIN_KEYS,
ENGINE_PROXY_TOKEN, ENGINE_SHUTDOWN_SECONDS and the ENGINE_FAULT_* knobs, and deployments add
ENGINE_TRACK. A bad value stops the process with a message naming the variable instead of failing later
on a request. Authentication is on by default: with no key configured every API request is refused
unless ENGINE_AUTH=disabled (development only) says otherwise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backtest_engine import __version__
from backtest_engine.limits import DEFAULT_MAX_UPLOAD_BYTES
from backtest_engine.service.auth import parse_entry

DEFAULT_DATABASE_URL = "sqlite:///./backtest-results.db"


class ServiceSettings(BaseSettings):
    """Everything `backtest-engine serve` can be told; defaults are safe for a laptop."""

    model_config = SettingsConfigDict(env_prefix="ENGINE_", extra="ignore", frozen=True)

    api_keys: str = Field(
        default="",
        description="comma-separated API keys ([tenant:]key, key plain or sha256:<hex>); a key without a "
        "tenant is its own tenant",
    )
    admin_keys: str = Field(default="", description="keys of the service's operators (same format): every tenant")
    auth: Literal["enabled", "disabled"] = Field(
        default="enabled",
        description="`disabled` accepts every request as tenant `anonymous`: development only",
    )
    proxy_token: str = Field(
        default="", description="token the router sends; only then is X-Forwarded-For trusted (see clients.py)"
    )
    auth_failure_limit: int = Field(
        default=10, ge=1, description="failed authentications per minute per client address before 429"
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
    fault_result_bias: float = Field(
        default=0.0, ge=-0.5, le=0.5, description="return-based metrics reported times (1 + this); 0 is off"
    )
    fault_seed: int | None = Field(
        default=None, description="seed of the fault RNG, so a rehearsal fails the same requests every run"
    )
    rate_limit: int = Field(default=600, ge=1, description="requests per minute per API key, all replicas")
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, ge=1024, description="largest dataset upload")
    max_upload_rows: int = Field(default=1_000_000, ge=2, description="most rows (bars) in one uploaded dataset")
    max_upload_uncompressed_bytes: int = Field(
        default=128 * 1024 * 1024, ge=1024, description="largest uploaded dataset once decompressed"
    )
    max_jobs: int = Field(default=2, ge=1, le=64, description="optimization jobs running at once per process")
    max_queued_jobs: int = Field(default=32, ge=1, description="optimizations queued or running, whole service")
    max_jobs_per_tenant: int = Field(default=4, ge=1, description="optimizations queued or running per tenant")
    sweep_chunk_size: int = Field(
        default=20, ge=1, le=10_000, description="parameter sets per task of a sweep shared by the replicas"
    )
    cors_origins: str = Field(default="", description="comma-separated origins allowed by CORS; * for any")
    gzip_minimum_bytes: int = Field(default=1024, ge=0, description="answers at least this large are gzipped")
    shutdown_seconds: float = Field(
        default=25.0, ge=0.0, le=3600.0, description="on SIGTERM, time to finish requests and running jobs"
    )

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _keys_well_formed(cls, value: str) -> str:
        for entry in (key.strip() for key in value.split(",")):
            if entry:
                parse_entry(entry)
        return value

    @property
    def keys(self) -> tuple[str, ...]:
        return _entries(self.api_keys)

    @property
    def admins(self) -> tuple[str, ...]:
        return _entries(self.admin_keys)

    @property
    def origins(self) -> tuple[str, ...]:
        return _entries(self.cors_origins)

    @property
    def faults_enabled(self) -> bool:
        return self.fault_error_rate > 0 or self.fault_latency_seconds > 0 or self.fault_result_bias != 0


def _entries(text: str) -> tuple[str, ...]:
    return tuple(entry.strip() for entry in text.split(",") if entry.strip())


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
