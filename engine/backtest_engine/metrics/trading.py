"""Trade-level metrics: counts, hit rates, payoffs, holding times, exposure, SQN, Kelly and streaks.

A trade's `pnl` is in currency after both fees; its `return` is pnl over entry notional. Wins are trades
with pnl > 0, losses pnl < 0 (a trade with exactly zero pnl is neither). With no trades every metric of
this group is 0 (its degenerate value).
"""

from __future__ import annotations

import numpy as np

from backtest_engine.execution import EXIT_STOP_LOSS, EXIT_TAKE_PROFIT
from backtest_engine.metrics.context import MetricContext
from backtest_engine.metrics.registry import metric
from backtest_engine.metrics.risk import longest_run


@metric(
    "num_trades",
    "trading",
    "Number of closed trades (a position open at the end is closed on the last close).",
    unit="count",
)
def num_trades(c: MetricContext) -> float:
    return float(c.num_trades)


@metric("num_winning_trades", "trading", "Trades with positive pnl.", unit="count")
def num_winning_trades(c: MetricContext) -> float:
    return float(c.wins.size)


@metric("num_losing_trades", "trading", "Trades with negative pnl.", unit="count")
def num_losing_trades(c: MetricContext) -> float:
    return float(c.losses.size)


@metric("num_long_trades", "trading", "Trades that bought first.", unit="count")
def num_long_trades(c: MetricContext) -> float:
    return float(np.sum(c.trade_direction > 0))


@metric("num_short_trades", "trading", "Trades that sold short first.", unit="count")
def num_short_trades(c: MetricContext) -> float:
    return float(np.sum(c.trade_direction < 0))


@metric("win_rate", "trading", "Winning trades divided by all trades.", unit="fraction")
def win_rate(c: MetricContext) -> float:
    return c.wins.size / c.num_trades if c.num_trades else float("nan")


@metric("long_win_rate", "trading", "Win rate of long trades.", unit="fraction")
def long_win_rate(c: MetricContext) -> float:
    longs = c.trade_pnl[c.trade_direction > 0]
    return float(np.mean(longs > 0)) if longs.size else float("nan")


@metric("short_win_rate", "trading", "Win rate of short trades.", unit="fraction")
def short_win_rate(c: MetricContext) -> float:
    shorts = c.trade_pnl[c.trade_direction < 0]
    return float(np.mean(shorts > 0)) if shorts.size else float("nan")


@metric("gross_profit", "trading", "Sum of the pnl of winning trades.", unit="currency")
def gross_profit(c: MetricContext) -> float:
    return float(np.sum(c.wins))


@metric("gross_loss", "trading", "Sum of the pnl of losing trades (non-positive).", unit="currency")
def gross_loss(c: MetricContext) -> float:
    return float(np.sum(c.losses))


@metric(
    "profit_factor",
    "trading",
    "Gross profit divided by absolute gross loss (0 when no trade lost, as the ratio is unbounded).",
)
def profit_factor(c: MetricContext) -> float:
    loss = -gross_loss(c)
    return gross_profit(c) / loss if loss > 0 else float("nan")


@metric("expectancy", "trading", "Mean pnl per trade, in currency.", unit="currency")
def expectancy(c: MetricContext) -> float:
    return float(np.mean(c.trade_pnl)) if c.num_trades else float("nan")


@metric("average_trade_return", "trading", "Mean return per trade (pnl over entry notional).", unit="fraction")
def average_trade_return(c: MetricContext) -> float:
    return float(np.mean(c.trade_return)) if c.num_trades else float("nan")


@metric("average_winning_trade", "trading", "Mean return of winning trades.", unit="fraction")
def average_winning_trade(c: MetricContext) -> float:
    r = c.trade_return[c.trade_pnl > 0]
    return float(np.mean(r)) if r.size else float("nan")


@metric("average_losing_trade", "trading", "Mean return of losing trades (non-positive).", unit="fraction")
def average_losing_trade(c: MetricContext) -> float:
    r = c.trade_return[c.trade_pnl < 0]
    return float(np.mean(r)) if r.size else float("nan")


@metric("best_trade_return", "trading", "Highest trade return.", unit="fraction")
def best_trade_return(c: MetricContext) -> float:
    return float(np.max(c.trade_return)) if c.num_trades else float("nan")


@metric("worst_trade_return", "trading", "Lowest trade return.", unit="fraction")
def worst_trade_return(c: MetricContext) -> float:
    return float(np.min(c.trade_return)) if c.num_trades else float("nan")


@metric("largest_win", "trading", "Highest trade pnl, in currency.", unit="currency")
def largest_win(c: MetricContext) -> float:
    return float(np.max(c.trade_pnl)) if c.num_trades else float("nan")


@metric("largest_loss", "trading", "Lowest trade pnl, in currency.", unit="currency")
def largest_loss(c: MetricContext) -> float:
    return float(np.min(c.trade_pnl)) if c.num_trades else float("nan")


@metric(
    "payoff_ratio",
    "trading",
    "Mean pnl of winning trades divided by the absolute mean pnl of losing trades.",
)
def payoff_ratio(c: MetricContext) -> float:
    if not (c.wins.size and c.losses.size):
        return float("nan")
    return float(np.mean(c.wins) / -np.mean(c.losses))


@metric("average_bars_held", "trading", "Mean number of bars from entry to exit.", unit="bars")
def average_bars_held(c: MetricContext) -> float:
    return float(np.mean(c.trade_bars_held)) if c.num_trades else float("nan")


@metric("max_bars_held", "trading", "Longest trade, in bars from entry to exit.", unit="bars")
def max_bars_held(c: MetricContext) -> float:
    return float(np.max(c.trade_bars_held)) if c.num_trades else float("nan")


@metric("exposure", "trading", "Fraction of bars whose close finds a position open.", unit="fraction")
def exposure(c: MetricContext) -> float:
    return float(np.mean(c.units != 0))


@metric(
    "sqn",
    "trading",
    "System quality number (Van Tharp): sqrt(trades) * mean pnl / standard deviation (ddof=1) of pnl.",
)
def sqn(c: MetricContext) -> float:
    if c.num_trades < 2:
        return float("nan")
    std = float(np.std(c.trade_pnl, ddof=1))
    return float(np.sqrt(c.num_trades) * np.mean(c.trade_pnl) / std) if std > 0 else float("nan")


@metric(
    "kelly_criterion",
    "trading",
    "Kelly fraction: win rate - (1 - win rate) / payoff ratio.",
    unit="fraction",
)
def kelly_criterion(c: MetricContext) -> float:
    rate = win_rate(c)
    return rate - (1 - rate) / payoff_ratio(c)


@metric("max_consecutive_wins", "trading", "Longest streak of consecutive winning trades.", unit="count")
def max_consecutive_wins(c: MetricContext) -> float:
    return float(longest_run(c.trade_pnl > 0))


@metric("max_consecutive_losses", "trading", "Longest streak of consecutive losing trades.", unit="count")
def max_consecutive_losses(c: MetricContext) -> float:
    return float(longest_run(c.trade_pnl < 0))


@metric("total_fees", "trading", "Commission paid over all trades, in currency.", unit="currency")
def total_fees(c: MetricContext) -> float:
    return float(np.sum(c.trade_fees))


@metric(
    "turnover",
    "trading",
    "Annual traded notional (entries and exits) divided by mean equity.",
)
def turnover(c: MetricContext) -> float:
    traded = 2.0 * float(np.sum(c.trade_notional))
    return traded / float(np.mean(c.equity)) / c.years


@metric("stop_loss_exits", "trading", "Trades closed by the stop loss.", unit="count")
def stop_loss_exits(c: MetricContext) -> float:
    return float(np.sum(c.trade_exit_reason == EXIT_STOP_LOSS))


@metric("take_profit_exits", "trading", "Trades closed by the take profit.", unit="count")
def take_profit_exits(c: MetricContext) -> float:
    return float(np.sum(c.trade_exit_reason == EXIT_TAKE_PROFIT))
