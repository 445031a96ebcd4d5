"""Strategy-specific metrics of market-structure strategies (pivots and breaks of structure).

Reported only for strategies that return `StructureEvents` (e.g. pivot_bos). A BOS "succeeds" when, H bars
after the signal bar (H = the strategy's success_horizon), the close is beyond the signal bar's close in
the break's direction; signals fewer than H bars before the end are not judged.
"""

from __future__ import annotations

import numpy as np

from backtest_engine.metrics.context import MetricContext
from backtest_engine.metrics.registry import metric


def _bos_moves(c: MetricContext) -> np.ndarray:
    """Signed close-to-close move H bars after every judged BOS, positive in the break's direction."""
    s = c.structure
    if s is None:
        return np.zeros(0)
    horizon, n = s.success_horizon, c.close.size
    moves = []
    for bars, sign in ((s.bullish_bos, 1.0), (s.bearish_bos, -1.0)):
        judged = bars[bars + horizon < n]
        moves.append(sign * (c.close[judged + horizon] / c.close[judged] - 1.0))
    return np.concatenate(moves)


@metric("pivots_detected", "structure", "Swing highs plus swing lows confirmed during the run.", unit="count")
def pivots_detected(c: MetricContext) -> float:
    s = c.structure
    return float(s.swing_highs.size + s.swing_lows.size) if s else 0.0


@metric("swing_highs", "structure", "Confirmed swing highs.", unit="count")
def swing_highs(c: MetricContext) -> float:
    return float(c.structure.swing_highs.size) if c.structure else 0.0


@metric("swing_lows", "structure", "Confirmed swing lows.", unit="count")
def swing_lows(c: MetricContext) -> float:
    return float(c.structure.swing_lows.size) if c.structure else 0.0


@metric("bos_signals", "structure", "Break-of-structure signals, bullish plus bearish.", unit="count")
def bos_signals(c: MetricContext) -> float:
    s = c.structure
    return float(s.bullish_bos.size + s.bearish_bos.size) if s else 0.0


@metric(
    "bullish_bos",
    "structure",
    "Closes above the last confirmed swing high (first break of each level).",
    unit="count",
)
def bullish_bos(c: MetricContext) -> float:
    return float(c.structure.bullish_bos.size) if c.structure else 0.0


@metric(
    "bearish_bos",
    "structure",
    "Closes below the last confirmed swing low (first break of each level).",
    unit="count",
)
def bearish_bos(c: MetricContext) -> float:
    return float(c.structure.bearish_bos.size) if c.structure else 0.0


@metric(
    "bos_success_rate",
    "structure",
    "Fraction of judged BOS signals whose close H bars later is beyond the signal close, in the break's way.",
    unit="fraction",
)
def bos_success_rate(c: MetricContext) -> float:
    moves = _bos_moves(c)
    return float(np.mean(moves > 0)) if moves.size else float("nan")


@metric(
    "average_bos_move",
    "structure",
    "Mean return from a BOS signal's close to the close H bars later, signed in the break's direction.",
    unit="fraction",
)
def average_bos_move(c: MetricContext) -> float:
    moves = _bos_moves(c)
    return float(np.mean(moves)) if moves.size else float("nan")


@metric(
    "average_pivot_spacing",
    "structure",
    "Mean number of bars between consecutive pivots (highs and lows merged).",
    unit="bars",
)
def average_pivot_spacing(c: MetricContext) -> float:
    s = c.structure
    if s is None:
        return float("nan")
    pivots = np.sort(np.concatenate((s.swing_highs, s.swing_lows)))
    return float(np.mean(np.diff(pivots))) if pivots.size > 1 else float("nan")
