"""Trend-following strategies: moving-average crossovers, MACD, price versus trend, buy and hold."""

from __future__ import annotations

from typing import Self

import numpy as np
from pydantic import Field, model_validator

from backtest_engine.indicators import Bars, FloatArray, ema, hold_sparse_events
from backtest_engine.strategies.registry import CrossFieldError, Signals, StrategyParams, register


def crossover_target(fast: FloatArray, slow: FloatArray, allow_short: bool) -> FloatArray:
    """Long from the bar `fast` crosses above `slow`; short (or flat) from the bar it crosses below.

    Event-based: flat until the first cross, like a trader who waits for a signal rather than entering
    mid-trend on the first bar.
    """
    spread = fast - slow
    above, below = spread > 0, spread < 0  # NaN (warm-up) is neither
    ups = np.flatnonzero(below[:-1] & above[1:]) + 1
    downs = np.flatnonzero(above[:-1] & below[1:]) + 1
    bars = np.concatenate((ups, downs))
    values = np.concatenate((np.ones(ups.size), np.full(downs.size, -1.0 if allow_short else 0.0)))
    order = np.argsort(bars, kind="stable")
    return hold_sparse_events(bars[order], values[order], fast.size)


class FastSlowParams(StrategyParams):
    """Two windows of which the fast one must be the shorter."""

    fast: int
    slow: int

    @model_validator(mode="after")
    def _fast_below_slow(self) -> Self:
        if self.fast >= self.slow:
            raise CrossFieldError("fast", f"fast ({self.fast}) must be smaller than slow ({self.slow})")
        return self


class CrossoverParams(FastSlowParams):
    fast: int = Field(10, ge=1, le=10_000, description="fast moving-average window (bars)")
    slow: int = Field(50, ge=2, le=10_000, description="slow moving-average window (bars)")
    allow_short: bool = Field(True, description="go short on a downward cross instead of flat")


@register(
    "sma_crossover",
    CrossoverParams,
    family="trend",
    summary="Long when the fast SMA crosses above the slow SMA, short (or flat) when it crosses below.",
)
def sma_crossover(bars: Bars, p: CrossoverParams) -> Signals:
    return Signals(crossover_target(bars.sma(p.fast), bars.sma(p.slow), p.allow_short))


@register(
    "ema_crossover",
    CrossoverParams,
    family="trend",
    summary="Long when the fast EMA crosses above the slow EMA, short (or flat) when it crosses below.",
)
def ema_crossover(bars: Bars, p: CrossoverParams) -> Signals:
    return Signals(crossover_target(bars.ema(p.fast), bars.ema(p.slow), p.allow_short))


class MacdParams(FastSlowParams):
    fast: int = Field(12, ge=1, le=1_000, description="fast EMA window")
    slow: int = Field(26, ge=2, le=1_000, description="slow EMA window")
    signal: int = Field(9, ge=1, le=1_000, description="EMA window of the signal line")
    allow_short: bool = Field(True, description="go short when MACD crosses below its signal line")


@register(
    "macd",
    MacdParams,
    family="trend",
    summary="Long when the MACD line crosses above its signal line, short (or flat) when it crosses below.",
)
def macd(bars: Bars, p: MacdParams) -> Signals:
    line = bars.ema(p.fast) - bars.ema(p.slow)
    signal_line = ema(line, p.signal)
    return Signals(crossover_target(line, signal_line, p.allow_short))


class TrendParams(StrategyParams):
    period: int = Field(200, ge=2, le=10_000, description="SMA window of the trend filter")
    allow_short: bool = Field(False, description="short below the average instead of flat")


@register(
    "sma_trend",
    TrendParams,
    family="trend",
    summary="Long while the close is above its SMA, short (or flat) while it is below.",
)
def sma_trend(bars: Bars, p: TrendParams) -> Signals:
    average = bars.sma(p.period)
    target = np.where(bars.close > average, 1.0, np.where(bars.close < average, -1.0, 0.0))
    if not p.allow_short:
        target = np.maximum(target, 0.0)
    return Signals(target)


class NoParams(StrategyParams):
    pass


@register("buy_and_hold", NoParams, family="benchmark", summary="Long from the first bar to the last.")
def buy_and_hold(bars: Bars, p: NoParams) -> Signals:
    return Signals(np.ones(bars.size))
