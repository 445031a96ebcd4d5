"""The vectorized execution core: target positions in, trades and a per-bar equity curve out.

The semantics are documented once, in docs/engine.md; this module implements them without a per-bar loop.
The key observation is that a position only changes where the strategy's target changes, so the run is a
list of *segments* (maximal runs of a constant non-zero target). Each segment is one trade, unless a stop
loss or take profit ends it early; stop levels depend only on the segment's entry price, so the first bar
that hits a stop is found for all segments at once with a vectorized search. Equity compounds from trade to
trade: with fractional units every trade multiplies equity by a factor that does not depend on equity, so a
cumulative product suffices; with whole lots (``lot_size > 0``) a short loop over trades (not bars) sizes
them. Per-bar cash and units are piecewise constant between trade events and are forward-filled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from backtest_engine.errors import InvalidParameter

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

EXIT_SIGNAL, EXIT_STOP_LOSS, EXIT_TAKE_PROFIT, EXIT_END_OF_DATA = 0, 1, 2, 3
EXIT_REASONS = ("signal", "stop_loss", "take_profit", "end_of_data")


@dataclass(frozen=True)
class ExecutionConfig:
    """How orders are filled and sized. See docs/engine.md for the exact rules."""

    cash: float = 10_000.0
    commission: float = 0.0
    slippage_bps: float = 0.0
    fraction: float = 1.0
    lot_size: float = 0.0
    stop_loss: float | None = None
    take_profit: float | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.cash) and self.cash > 0):
            raise InvalidParameter(f"must be a positive amount, got {self.cash}", name="cash")
        if not 0 <= self.commission < 0.1:
            raise InvalidParameter(f"must be in [0, 0.1), got {self.commission}", name="commission")
        if not 0 <= self.slippage_bps < 1000:
            raise InvalidParameter(f"must be in [0, 1000), got {self.slippage_bps}", name="slippage_bps")
        if not 0 < self.fraction <= 1:
            raise InvalidParameter(f"must be in (0, 1], got {self.fraction}", name="fraction")
        if not (np.isfinite(self.lot_size) and self.lot_size >= 0):
            raise InvalidParameter(f"must be >= 0 (0 = fractional units), got {self.lot_size}", name="lot_size")
        if self.stop_loss is not None and not 0 < self.stop_loss < 1:
            raise InvalidParameter(f"must be in (0, 1), got {self.stop_loss}", name="stop_loss")
        if self.take_profit is not None and not 0 < self.take_profit <= 100:
            raise InvalidParameter(f"must be in (0, 100], got {self.take_profit}", name="take_profit")


@dataclass(frozen=True)
class Simulation:
    """Raw arrays of one run. Trade arrays are aligned; per-bar arrays have one value per bar."""

    equity: FloatArray
    cash: FloatArray
    units: FloatArray
    entry_bar: IntArray
    exit_bar: IntArray
    direction: IntArray
    size: FloatArray
    entry_price: FloatArray
    exit_price: FloatArray
    pnl: FloatArray
    fees: FloatArray
    exit_reason: IntArray

    @property
    def num_trades(self) -> int:
        return int(self.entry_bar.size)


def clean_target(target: npt.ArrayLike) -> FloatArray:
    """Sign of each target (+1, 0, -1); NaN (no opinion yet, e.g. indicator warm-up) means flat."""
    signs = np.sign(np.asarray(target, dtype=np.float64))
    signs[np.isnan(signs)] = 0.0
    return signs


def _segments(target: FloatArray) -> tuple[IntArray, IntArray, IntArray]:
    """Start bar, end bar (exclusive) and direction of every run of a constant non-zero held position."""
    n = target.size
    held = np.empty(n, dtype=np.int64)
    held[0] = 0
    held[1:] = np.sign(target[:-1]).astype(np.int64)
    change = np.flatnonzero(held[1:] != held[:-1]) + 1
    starts = change[held[change] != 0]
    following = np.searchsorted(change, starts, side="right")
    padded = np.append(change, n)
    ends = padded[following]
    return starts.astype(np.int64), ends.astype(np.int64), held[starts]


def _stop_exits(
    *,
    starts: IntArray,
    ends: IntArray,
    direction: IntArray,
    entry_price: FloatArray,
    open_: FloatArray,
    high: FloatArray,
    low: FloatArray,
    config: ExecutionConfig,
) -> tuple[IntArray, FloatArray, IntArray]:
    """For each segment: first bar where a stop hits (-1 if none), its raw fill price and which stop."""
    count = starts.size
    hit_bar = np.full(count, -1, dtype=np.int64)
    hit_price = np.full(count, np.nan)
    reason = np.full(count, EXIT_SIGNAL, dtype=np.int64)
    lengths = ends - starts
    total = int(lengths.sum())
    if count == 0 or total == 0:
        return hit_bar, hit_price, reason
    segment_of = np.repeat(np.arange(count), lengths)
    offsets = np.cumsum(lengths) - lengths
    bars = np.arange(total) - offsets[segment_of] + starts[segment_of]
    is_long = direction[segment_of] > 0
    seg_high, seg_low = high[bars], low[bars]
    hit_stop = np.zeros(total, dtype=bool)
    hit_take = np.zeros(total, dtype=bool)
    stop_level = take_level = np.zeros(0)
    if config.stop_loss is not None:
        stop_level = entry_price * (1 - direction * config.stop_loss)
        level = stop_level[segment_of]
        hit_stop = np.where(is_long, seg_low <= level, seg_high >= level)
    if config.take_profit is not None:
        take_level = entry_price * (1 + direction * config.take_profit)
        level = take_level[segment_of]
        hit_take = np.where(is_long, seg_high >= level, seg_low <= level)
    hits = np.flatnonzero(hit_stop | hit_take)
    if hits.size == 0:
        return hit_bar, hit_price, reason
    hit_segments, first = np.unique(segment_of[hits], return_index=True)
    first_hits = hits[first]
    bar = bars[first_hits]
    # When both could trigger inside one bar we cannot know which came first: assume the worse, the stop.
    stopped = hit_stop[first_hits]
    longs = direction[hit_segments] > 0
    gap_open = open_[bar]
    if config.stop_loss is not None:
        level = stop_level[hit_segments]
        stop_fill = np.where(longs, np.minimum(gap_open, level), np.maximum(gap_open, level))
    else:
        stop_fill = np.full(bar.size, np.nan)
    if config.take_profit is not None:
        level = take_level[hit_segments]
        take_fill = np.where(longs, np.maximum(gap_open, level), np.minimum(gap_open, level))
    else:
        take_fill = np.full(bar.size, np.nan)
    hit_bar[hit_segments] = bar
    hit_price[hit_segments] = np.where(stopped, stop_fill, take_fill)
    reason[hit_segments] = np.where(stopped, EXIT_STOP_LOSS, EXIT_TAKE_PROFIT)
    return hit_bar, hit_price, reason


def _size_trades(
    entry_price: FloatArray, exit_price: FloatArray, direction: IntArray, config: ExecutionConfig
) -> tuple[FloatArray, FloatArray]:
    """Units of every trade and the equity available before it (compounding from trade to trade)."""
    c, f = config.commission, config.fraction
    cost_per_unit = entry_price + entry_price * c
    if config.lot_size == 0:
        per_unit_change = direction * (exit_price - entry_price) - c * (entry_price + exit_price)
        growth = np.maximum(1.0 + f * per_unit_change / cost_per_unit, 0.0)
        equity_before = config.cash * np.concatenate(([1.0], np.cumprod(growth)[:-1]))
        return f * equity_before / cost_per_unit, equity_before
    # Whole lots make each trade's size depend on the equity the previous trades left: a loop over trades
    # (not bars), on plain floats. The per-unit result of every trade does not depend on its size.
    lot = float(config.lot_size)
    change_per_unit = direction * (exit_price - entry_price) - c * (entry_price + exit_price)
    units: list[float] = []
    keep = units.append
    equity = config.cash
    for cost, change in zip(cost_per_unit.tolist(), change_per_unit.tolist(), strict=True):
        if equity <= 0.0:  # ruined: nothing left to trade with
            u = 0.0
        elif lot == 1.0:  # floor division, as whole-unit brokers (and backtesting.py) size "all equity"
            u = (equity * f) // cost
        else:
            u = math.floor((equity * f) / cost / lot) * lot
        keep(u)
        equity += u * change
    sized = np.asarray(units, dtype=np.float64)
    # The same additions in the same order as the loop, so the equities are bit-identical to it.
    available = np.cumsum(np.concatenate(([config.cash], sized * change_per_unit)))[:-1]
    return sized, available


def _per_bar_state(
    *,
    n: int,
    initial_cash: float,
    starts: IntArray,
    exit_bar: IntArray,
    cash_in_trade: FloatArray,
    signed_units: FloatArray,
    equity_after: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Cash and units held at every bar's close, expanded from the trade events in one pass.

    Events: a trade's entry (cash after paying, units) on its entry bar, if it is still open at that
    bar's close, and its exit (cash after selling, no units) on its exit bar. On a bar with several
    events the latest wins: a reversal's entry follows the previous trade's exit at the same open.
    """
    if starts.size == 0:
        return np.full(n, initial_cash), np.zeros(n)
    held = exit_bar > starts
    trade = np.arange(starts.size)
    bars = np.concatenate((starts[held], exit_bar))
    order_key = np.concatenate((2 * trade[held], 2 * trade + 1))  # entry of trade k, then its exit
    cash_values = np.concatenate((cash_in_trade[held], equity_after))
    unit_values = np.concatenate((signed_units[held], np.zeros(exit_bar.size)))
    order = np.lexsort((order_key, bars))
    bars, cash_values, unit_values = bars[order], cash_values[order], unit_values[order]
    last_of_bar = np.append(bars[1:] != bars[:-1], True)
    bars, cash_values, unit_values = bars[last_of_bar], cash_values[last_of_bar], unit_values[last_of_bar]
    first = int(bars[0])
    lengths = np.diff(np.append(bars, n))
    cash = np.empty(n)
    cash[:first] = initial_cash
    cash[first:] = np.repeat(cash_values, lengths)
    units = np.zeros(n)
    units[first:] = np.repeat(unit_values, lengths)
    return cash, units


def simulate(
    open_: FloatArray,
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    target: FloatArray,
    *,
    config: ExecutionConfig,
) -> Simulation:
    """Run target positions (sign of `target[t]`, decided on bar t's close) through the execution rules."""
    n = close.size
    slip = config.slippage_bps / 10_000.0
    starts, ends, direction = _segments(clean_target(target))
    entry_price = open_[starts] * (1 + direction * slip)
    exit_bar = np.where(ends < n, ends, n - 1)
    raw_exit = np.where(ends < n, open_[np.minimum(ends, n - 1)], close[n - 1])
    reason = np.where(ends < n, EXIT_SIGNAL, EXIT_END_OF_DATA)
    if config.stop_loss is not None or config.take_profit is not None:
        hit_bar, hit_price, hit_reason = _stop_exits(
            starts=starts,
            ends=ends,
            direction=direction,
            entry_price=entry_price,
            open_=open_,
            high=high,
            low=low,
            config=config,
        )
        stopped = hit_bar >= 0
        exit_bar = np.where(stopped, hit_bar, exit_bar)
        raw_exit = np.where(stopped, hit_price, raw_exit)
        reason = np.where(stopped, hit_reason, reason)
    exit_price = raw_exit * (1 - direction * slip)
    units, equity_before = _size_trades(entry_price, exit_price, direction, config)
    keep = units > 0
    if not keep.all():
        starts, exit_bar, direction, reason = starts[keep], exit_bar[keep], direction[keep], reason[keep]
        units, equity_before = units[keep], equity_before[keep]
        entry_price, exit_price = entry_price[keep], exit_price[keep]
    c = config.commission
    fees = units * (entry_price + exit_price) * c
    pnl = direction * units * (exit_price - entry_price) - fees
    equity_after = equity_before + pnl
    cash_in_trade = equity_before - direction * units * entry_price - units * entry_price * c
    signed_units = direction * units

    cash, units_per_bar = _per_bar_state(
        n=n,
        initial_cash=config.cash,
        starts=starts,
        exit_bar=exit_bar,
        cash_in_trade=cash_in_trade,
        signed_units=signed_units,
        equity_after=equity_after,
    )
    equity = units_per_bar * close
    equity += cash
    return Simulation(
        equity=equity,
        cash=cash,
        units=units_per_bar,
        entry_bar=starts,
        exit_bar=exit_bar.astype(np.int64),
        direction=direction,
        size=signed_units,
        entry_price=entry_price,
        exit_price=exit_price,
        pnl=pnl,
        fees=fees,
        exit_reason=reason.astype(np.int64),
    )
