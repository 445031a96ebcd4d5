"""Breakout and momentum strategies: Donchian channel, ATR (Keltner-style) channel, rate of change."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from backtest_engine.indicators import Bars, hold_from_events, shift
from backtest_engine.strategies.registry import Signals, StrategyParams, register


class DonchianParams(StrategyParams):
    period: int = Field(20, ge=2, le=10_000, description="channel lookback (bars before the current one)")
    allow_short: bool = Field(True, description="short on a break of the channel low")


@register(
    "donchian_breakout",
    DonchianParams,
    family="breakout",
    summary="Long when the close breaks the previous `period`-bar high, short (or flat) below the low.",
)
def donchian_breakout(bars: Bars, p: DonchianParams) -> Signals:
    upper, lower = shift(bars.highest(p.period)), shift(bars.lowest(p.period))
    events = np.full(bars.size, np.nan)
    events[bars.close < lower] = -1.0 if p.allow_short else 0.0
    events[bars.close > upper] = 1.0
    return Signals(hold_from_events(events))


class AtrBreakoutParams(StrategyParams):
    period: int = Field(20, ge=2, le=10_000, description="window of the SMA centre line and the ATR")
    multiplier: float = Field(2.0, gt=0, le=20, description="channel half-width in ATRs")
    allow_short: bool = Field(True, description="short below the lower channel")


@register(
    "atr_breakout",
    AtrBreakoutParams,
    family="breakout",
    summary="Long above SMA + k*ATR, short (or flat) below SMA - k*ATR, flat when the close crosses the SMA.",
)
def atr_breakout(bars: Bars, p: AtrBreakoutParams) -> Signals:
    centre, width = bars.sma(p.period), p.multiplier * bars.atr(p.period)
    close = bars.close
    side = np.sign(close - centre)
    events = np.full(bars.size, np.nan)
    events[1:][(side[1:] != side[:-1]) & np.isfinite(side[1:]) & np.isfinite(side[:-1])] = 0.0
    events[close < centre - width] = -1.0 if p.allow_short else 0.0
    events[close > centre + width] = 1.0
    return Signals(hold_from_events(events))


class MomentumParams(StrategyParams):
    lookback: int = Field(20, ge=1, le=10_000, description="rate-of-change lookback (bars)")
    threshold: float = Field(0.0, ge=0, le=1, description="minimum absolute return to take a position")
    allow_short: bool = Field(True, description="short when the return is below -threshold")


@register(
    "momentum",
    MomentumParams,
    family="momentum",
    summary="Long while the `lookback`-bar return exceeds +threshold, short below -threshold, else flat.",
)
def momentum(bars: Bars, p: MomentumParams) -> Signals:
    past = shift(bars.close, p.lookback)
    with np.errstate(invalid="ignore"):
        change = bars.close / past - 1.0
    target = np.where(change > p.threshold, 1.0, np.where(change < -p.threshold, -1.0, 0.0))
    if not p.allow_short:
        target = np.maximum(target, 0.0)
    return Signals(target)
