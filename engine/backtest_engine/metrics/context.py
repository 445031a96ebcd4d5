"""Everything a metric may need about one run, with shared intermediates computed once and cached."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from backtest_engine.strategies.registry import StructureEvents

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass
class MetricContext:
    """Inputs of the metrics. Per-bar arrays are aligned with the data; trade arrays with the trades.

    `returns[t]` is the equity change over bar t (0 for the first bar, which can never hold a position).
    `benchmark_returns` default to buying and holding the traded instrument (close-to-close).
    `risk_free_rate` is annual; its per-bar value is risk_free_rate / periods_per_year.
    """

    equity: FloatArray
    initial_cash: float
    periods_per_year: float
    units: FloatArray
    close: FloatArray
    trade_pnl: FloatArray
    trade_return: FloatArray
    trade_bars_held: IntArray
    trade_direction: IntArray
    trade_fees: FloatArray
    trade_exit_reason: IntArray
    trade_notional: FloatArray
    benchmark_returns: FloatArray
    risk_free_rate: float = 0.0
    structure: StructureEvents | None = None

    @cached_property
    def returns(self) -> FloatArray:
        previous = np.concatenate(([self.initial_cash], self.equity[:-1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(previous > 0, self.equity / previous - 1.0, 0.0)
        return np.asarray(r, dtype=np.float64)

    @cached_property
    def risk_free_per_period(self) -> float:
        return self.risk_free_rate / self.periods_per_year

    @cached_property
    def excess_returns(self) -> FloatArray:
        return self.returns - self.risk_free_per_period

    @cached_property
    def drawdown(self) -> FloatArray:
        """Per-bar drawdown as a non-positive fraction of the running equity peak."""
        peak = np.maximum.accumulate(self.equity)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(peak > 0, self.equity / peak - 1.0, 0.0)

    @cached_property
    def drawdown_episodes(self) -> tuple[FloatArray, IntArray]:
        """Depth (most negative drawdown) and length in bars of every drawdown episode, in order.

        An episode starts on the first bar below the previous peak and ends on the bar equity regains it
        (or at the end of the data, still open).
        """
        under = self.drawdown < 0
        if not under.any():
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        edges = np.diff(np.concatenate(([0], under.astype(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        depths = np.minimum.reduceat(self.drawdown, starts)
        return depths, (ends - starts).astype(np.int64)

    @cached_property
    def years(self) -> float:
        return self.returns.size / self.periods_per_year

    @cached_property
    def wins(self) -> FloatArray:
        return self.trade_pnl[self.trade_pnl > 0]

    @cached_property
    def losses(self) -> FloatArray:
        return self.trade_pnl[self.trade_pnl < 0]

    @property
    def num_trades(self) -> int:
        return int(self.trade_pnl.size)
