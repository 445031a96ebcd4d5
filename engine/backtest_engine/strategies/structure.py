"""Market structure: swing-high/low pivots and break-of-structure (BOS) signals.

A swing high at bar i is a high strictly above the `left` highs before it and at least as high as the
`right` highs after it; it is only *known* at bar i + right, when those right bars have closed, and the
strategy uses it from that bar on (never earlier: that would be look-ahead). A bullish BOS is the first
close above the most recently confirmed swing high; a bearish BOS the first close below the most recently
confirmed swing low. Each confirmed level can be broken once.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from backtest_engine.indicators import (
    Bars,
    FloatArray,
    IntArray,
    hold_from_events,
    rolling_max,
)
from backtest_engine.strategies.registry import Signals, StrategyParams, StructureEvents, register


def swing_points(values: FloatArray, left: int, right: int, *, highs: bool) -> IntArray:
    """Bar positions of swing highs (or lows, with `highs=False`) of `values`, in order."""
    x = values if highs else -values
    n = x.size
    if n < left + right + 1:
        return np.zeros(0, dtype=np.int64)
    left_best = np.full(n, np.nan)
    left_best[left:] = rolling_max(x, left)[left - 1 : n - 1]
    right_best = np.full(n, np.nan)
    right_best[: n - right] = rolling_max(x, right)[right:]
    with np.errstate(invalid="ignore"):
        pivot = (x > left_best) & (x >= right_best)
    return np.flatnonzero(pivot).astype(np.int64)


def first_break(close: FloatArray, pivots: IntArray, levels: FloatArray, right: int, *, up: bool) -> IntArray:
    """Bars of the first close beyond each confirmed level (above for `up`, else below)."""
    n = close.size
    confirm = pivots + right
    level = np.full(n, np.nan)
    level[confirm] = levels
    active = hold_from_events(level)
    active[: confirm[0] if confirm.size else n] = np.nan
    segment = np.cumsum(np.isin(np.arange(n), confirm))
    with np.errstate(invalid="ignore"):
        beyond = close > active if up else close < active
    hits = np.flatnonzero(beyond)
    if hits.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(segment[hits], return_index=True)
    return hits[first].astype(np.int64)


class PivotBosParams(StrategyParams):
    left: int = Field(5, ge=1, le=500, description="bars left of a pivot that must be lower (higher for lows)")
    right: int = Field(5, ge=1, le=500, description="bars right of a pivot; the pivot is confirmed after them")
    allow_short: bool = Field(True, description="short on a bearish BOS instead of going flat")
    success_horizon: int = Field(
        10, ge=1, le=10_000, description="bars after a BOS at which its success is judged (metrics only)"
    )


@register(
    "pivot_bos",
    PivotBosParams,
    family="structure",
    summary="Long on a close above the last confirmed swing high (bullish BOS), short or flat on a bearish.",
)
def pivot_bos(bars: Bars, p: PivotBosParams) -> Signals:
    swing_highs = swing_points(bars.high, p.left, p.right, highs=True)
    swing_lows = swing_points(bars.low, p.left, p.right, highs=False)
    swing_highs = swing_highs[swing_highs + p.right < bars.size]
    swing_lows = swing_lows[swing_lows + p.right < bars.size]
    bullish = first_break(bars.close, swing_highs, bars.high[swing_highs], p.right, up=True)
    bearish = first_break(bars.close, swing_lows, bars.low[swing_lows], p.right, up=False)
    events = np.full(bars.size, np.nan)
    events[bearish] = -1.0 if p.allow_short else 0.0
    events[bullish] = 1.0
    structure = StructureEvents(swing_highs, swing_lows, bullish, bearish, p.success_horizon)
    return Signals(hold_from_events(events), structure)
