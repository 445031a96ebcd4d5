"""Request and response bodies of the HTTP API (pydantic v2); they generate the OpenAPI document.

Bounds live here so that bad input is a 422 naming the field before any work starts: dates outside
1900-2200 (pandas cannot represent them), non-finite numbers, oversized synthetic series or grids.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MIN_DATE = datetime(1900, 1, 1)
MAX_DATE = datetime(2200, 1, 1)
MAX_GRID_VALUES = 200
MAX_COMBINATIONS = 20_000


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if not MIN_DATE <= value <= MAX_DATE:
        raise ValueError("must be between 1900-01-01 and 2200-01-01")
    return value


Timestamp = Annotated[datetime | None, AfterValidator(_naive_utc)]
Symbol = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._:/-]+$")]
DatasetId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticData(Strict):
    """A seeded synthetic OHLCV series (the same spec always gives the same bars)."""

    symbol: Symbol = "SYNTH"
    bars: int = Field(1_000, ge=2, le=50_000, description="business days from 2015-01-02 (50,000 reach 2206)")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class DataSelection(Strict):
    """Which data to run on: exactly one of `dataset_id` and `synthetic`, optionally sliced by time."""

    dataset_id: DatasetId | None = Field(None, description="id of an uploaded dataset")
    synthetic: SyntheticData | None = Field(None, description="a synthetic dataset instead of an upload")
    start: Timestamp = Field(None, description="first bar time (inclusive)")
    end: Timestamp = Field(None, description="last bar time (inclusive)")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.dataset_id is None) == (self.synthetic is None):
            raise ValueError("give exactly one of dataset_id and synthetic")
        if self.start and self.end and self.start > self.end:
            raise ValueError("start must not be after end")
        return self


class Execution(Strict):
    """Fill and sizing rules (docs/engine.md); part of the cache key."""

    cash: float = Field(10_000.0, gt=0, le=1e12)
    commission: float = Field(0.0, ge=0, lt=0.1)
    slippage_bps: float = Field(0.0, ge=0, lt=1000)
    fraction: float = Field(1.0, gt=0, le=1)
    lot_size: float = Field(0.0, ge=0, le=1e9)
    stop_loss: float | None = Field(None, gt=0, lt=1)
    take_profit: float | None = Field(None, gt=0, le=100)
    periods_per_year: float | None = Field(None, gt=0, le=1e7)
    risk_free_rate: float = Field(0.0, gt=-1, lt=1)


class BacktestRequest(DataSelection):
    strategy: str = Field(min_length=1, max_length=64, examples=["sma_crossover"])
    params: dict[str, Any] = Field(default_factory=dict, description="strategy parameters (see /strategies)")
    execution: Execution = Field(default_factory=Execution)


class OptimizationRequest(DataSelection):
    strategy: str = Field(min_length=1, max_length=64, examples=["sma_crossover"])
    space: dict[str, Annotated[list[Any], Field(min_length=1, max_length=MAX_GRID_VALUES)]] = Field(
        description="parameter name -> candidate values", examples=[{"fast": [5, 10, 20], "slow": [50, 100]}]
    )
    method: Literal["grid", "random"] = "grid"
    samples: int = Field(100, ge=1, le=MAX_COMBINATIONS)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    metric: str = Field("sharpe_ratio", min_length=1, max_length=64)
    maximize: bool = True
    execution: Execution = Field(default_factory=Execution)

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if len(self.space) > 10:
            raise ValueError("at most 10 parameters in space")
        combinations = math.prod(len(values) for values in self.space.values())
        if combinations > MAX_COMBINATIONS:
            raise ValueError(f"the grid has {combinations} combinations; the limit is {MAX_COMBINATIONS}")
        return self


class Problem(BaseModel):
    """RFC 7807 problem details; `errors` lists each invalid field on 422."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    track: str
    auth: Literal["enabled", "disabled"]
    faults: dict[str, Any]


class Ready(BaseModel):
    status: Literal["ready"]
    database: str


class StrategyInfo(BaseModel):
    name: str
    family: str
    summary: str
    defaults: dict[str, Any]
    parameters: dict[str, Any]


class DatasetInfo(BaseModel):
    id: str
    name: str
    symbol: str
    timeframe: str
    bars: int
    start: datetime
    end: datetime
    size_bytes: int
    created_at: datetime


class Page(BaseModel):
    total: int
    limit: int
    offset: int


class DatasetPage(Page):
    items: list[DatasetInfo]


class DatasetRef(BaseModel):
    key: str
    id: str | None
    symbol: str
    timeframe: str
    start: datetime
    end: datetime
    bars: int


class BacktestSummary(BaseModel):
    id: str
    strategy: str
    params: dict[str, Any]
    dataset: DatasetRef
    engine_version: str
    duration_seconds: float
    created_at: datetime
    metrics: dict[str, float | None]


class BacktestPage(Page):
    items: list[BacktestSummary]


class BacktestDetail(BacktestSummary):
    cached: bool = False
    config: dict[str, Any]
    trades: list[dict[str, Any]]
    equity: list[dict[str, Any]]


class OptimizationProgress(BaseModel):
    done: int
    total: int
    fraction: float


class OptimizationStatus(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    strategy: str
    metric: str
    maximize: bool
    progress: OptimizationProgress
    best: list[dict[str, Any]]
    error: str | None = None
    created_at: datetime
    updated_at: datetime
