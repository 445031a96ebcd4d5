"""Mean-reversion strategies: RSI, Bollinger bands, z-score and stochastic oscillator.

All four share one shape: enter against an extreme, leave when the indicator is back at its middle.
`reversion_target` turns those three conditions into a position without a loop.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from backtest_engine.indicators import Bars, FloatArray, hold_from_events, rolling_max, rolling_min, sma
from backtest_engine.strategies.registry import CrossFieldError, Signals, StrategyParams, register

BoolArray = npt.NDArray[np.bool_]


def reversion_target(
    oversold: BoolArray, overbought: BoolArray, back_to_middle: BoolArray, allow_short: bool
) -> FloatArray:
    """Long on `oversold`, short on `overbought` (when allowed), flat on `back_to_middle`."""
    events = np.full(oversold.size, np.nan)
    events[back_to_middle] = 0.0
    if allow_short:
        events[overbought] = -1.0
    else:
        events[overbought] = 0.0
    events[oversold] = 1.0
    return hold_from_events(events)


def crossed(values: FloatArray, level: FloatArray | float) -> BoolArray:
    """True at t when `values` moved from one side of `level` at t-1 to the other side (or onto it) at t."""
    side = np.sign(values - level)
    out = np.zeros(values.size, dtype=bool)
    out[1:] = (side[1:] != side[:-1]) & np.isfinite(side[1:]) & np.isfinite(side[:-1])
    return out


class RsiParams(StrategyParams):
    period: int = Field(14, ge=2, le=1_000, description="RSI window (Wilder smoothing)")
    lower: float = Field(30.0, gt=0, lt=100, description="oversold level: go long below it")
    upper: float = Field(70.0, gt=0, lt=100, description="overbought level: go short above it")
    exit_level: float = Field(50.0, gt=0, lt=100, description="close the position when RSI crosses it")
    allow_short: bool = Field(True, description="short above `upper` instead of staying flat")

    @model_validator(mode="after")
    def _ordered_levels(self) -> Self:
        if not self.lower < self.exit_level < self.upper:
            raise CrossFieldError("exit_level", "need lower < exit_level < upper")
        return self


@register(
    "rsi_reversion",
    RsiParams,
    family="mean_reversion",
    summary="Long when RSI falls below `lower`, short above `upper`, flat when it crosses `exit_level`.",
)
def rsi_reversion(bars: Bars, p: RsiParams) -> Signals:
    value = bars.rsi(p.period)
    return Signals(reversion_target(value < p.lower, value > p.upper, crossed(value, p.exit_level), p.allow_short))


class BollingerParams(StrategyParams):
    period: int = Field(20, ge=2, le=10_000, description="window of the middle band (SMA)")
    num_std: float = Field(2.0, gt=0, le=10, description="band width in standard deviations")
    allow_short: bool = Field(True, description="short above the upper band")


@register(
    "bollinger_reversion",
    BollingerParams,
    family="mean_reversion",
    summary="Long below the lower Bollinger band, short above the upper one, flat at the middle band.",
)
def bollinger_reversion(bars: Bars, p: BollingerParams) -> Signals:
    middle, width = bars.sma(p.period), p.num_std * bars.std(p.period)
    close = bars.close
    return Signals(
        reversion_target(close < middle - width, close > middle + width, crossed(close, middle), p.allow_short)
    )


class ZScoreParams(StrategyParams):
    period: int = Field(20, ge=2, le=10_000, description="window of the mean and standard deviation")
    entry_z: float = Field(2.0, gt=0, le=10, description="enter when |z| exceeds this")
    exit_z: float = Field(0.5, ge=0, le=10, description="exit when |z| falls below this")
    allow_short: bool = Field(True, description="short when z is above +entry_z")

    @model_validator(mode="after")
    def _exit_inside_entry(self) -> Self:
        if self.exit_z >= self.entry_z:
            raise CrossFieldError("exit_z", "exit_z must be smaller than entry_z")
        return self


@register(
    "zscore_reversion",
    ZScoreParams,
    family="mean_reversion",
    summary="Long when the close's z-score drops below -entry_z, short above +entry_z, flat inside exit_z.",
)
def zscore_reversion(bars: Bars, p: ZScoreParams) -> Signals:
    std = bars.std(p.period)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, (bars.close - bars.sma(p.period)) / std, 0.0)
    return Signals(reversion_target(z < -p.entry_z, z > p.entry_z, np.abs(z) < p.exit_z, p.allow_short))


class StochasticParams(StrategyParams):
    k_period: int = Field(14, ge=2, le=1_000, description="lookback of %K")
    d_period: int = Field(3, ge=1, le=100, description="SMA window of %D (the smoothed %K)")
    lower: float = Field(20.0, gt=0, lt=50, description="oversold level")
    upper: float = Field(80.0, gt=50, lt=100, description="overbought level")
    allow_short: bool = Field(True, description="short above `upper`")


@register(
    "stochastic_reversion",
    StochasticParams,
    family="mean_reversion",
    summary="Long when stochastic %D is below `lower`, short above `upper`, flat when it crosses 50.",
)
def stochastic_reversion(bars: Bars, p: StochasticParams) -> Signals:
    highest, lowest = rolling_max(bars.high, p.k_period), rolling_min(bars.low, p.k_period)
    span = highest - lowest
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(span > 0, 100.0 * (bars.close - lowest) / span, 50.0)
    k[np.isnan(span)] = np.nan
    d = sma(k, p.d_period) if p.d_period > 1 else k
    return Signals(reversion_target(d < p.lower, d > p.upper, crossed(d, 50.0), p.allow_short))
