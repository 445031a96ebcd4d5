"""Core performance metrics: returns, volatility, risk-adjusted ratios and drawdowns.

Conventions (docs/metrics.md): returns are per-bar equity changes; "annualized" multiplies means by
periods_per_year (P) and standard deviations by sqrt(P); standard deviations use ddof=1 (as empyrical);
the risk-free rate is annual and subtracted per bar as rf / P. Drawdowns are non-positive fractions.
"""

from __future__ import annotations

import numpy as np

from backtest_engine.metrics.context import MetricContext
from backtest_engine.metrics.registry import metric


def annualized_volatility_of(returns: np.ndarray, periods_per_year: float) -> float:
    if returns.size < 2:
        return 0.0
    return float(np.std(returns, ddof=1) * np.sqrt(periods_per_year))


def cagr_of(returns: np.ndarray, periods_per_year: float) -> float:
    """Geometric annual growth of compounding `returns` over len(returns) / P years."""
    growth = float(np.prod(1.0 + returns))
    years = returns.size / periods_per_year
    if growth <= 0:
        return -1.0
    return float(growth ** (1.0 / years) - 1.0)


def cagr_from_growth(growth: float, years: float) -> float:
    if growth <= 0:
        return -1.0
    return float(growth ** (1.0 / years) - 1.0)


def sharpe_of(excess: np.ndarray, periods_per_year: float) -> float:
    std = np.std(excess, ddof=1) if excess.size > 1 else 0.0
    return float(np.mean(excess) / std * np.sqrt(periods_per_year)) if std > 0 else float("nan")


@metric("total_return", "core", "Final equity divided by initial cash, minus 1.", unit="fraction")
def total_return(c: MetricContext) -> float:
    return float(c.equity[-1] / c.initial_cash - 1.0)


@metric(
    "cagr",
    "core",
    "Compound annual growth rate: (final / initial equity)^(1 / years) - 1, years = bars / P.",
    unit="fraction",
)
def cagr(c: MetricContext) -> float:
    return cagr_from_growth(c.total_growth, c.years)


@metric("annualized_return", "core", "Arithmetic mean per-bar return times P.", unit="fraction")
def annualized_return(c: MetricContext) -> float:
    return c.moments[0] * c.periods_per_year


@metric(
    "annualized_volatility",
    "core",
    "Standard deviation (ddof=1) of per-bar returns times sqrt(P).",
    unit="fraction",
)
def annualized_volatility(c: MetricContext) -> float:
    return c.moments[1] * float(np.sqrt(c.periods_per_year))


@metric("sharpe_ratio", "core", "Mean over standard deviation (ddof=1) of per-bar excess returns, times sqrt(P).")
def sharpe_ratio(c: MetricContext) -> float:
    mean, std, _, _ = c.moments
    if std <= 0:
        return float("nan")
    return (mean - c.risk_free_per_period) / std * float(np.sqrt(c.periods_per_year))


@metric(
    "sortino_ratio",
    "core",
    "Annualized mean excess return over downside deviation (RMS of negative excess returns, times sqrt(P)).",
)
def sortino_ratio(c: MetricContext) -> float:
    downside = np.sqrt(np.mean(np.minimum(c.excess_returns, 0.0) ** 2)) * np.sqrt(c.periods_per_year)
    return float(np.mean(c.excess_returns) * c.periods_per_year / downside) if downside > 0 else float("nan")


@metric(
    "max_drawdown",
    "core",
    "Largest peak-to-trough equity decline (initial cash counts as a peak), as a non-positive fraction.",
    unit="fraction",
)
def max_drawdown(c: MetricContext) -> float:
    return float(np.min(c.drawdown))


@metric("calmar_ratio", "core", "CAGR divided by the absolute maximum drawdown.")
def calmar_ratio(c: MetricContext) -> float:
    depth = -float(np.min(c.drawdown))
    return cagr(c) / depth if depth > 0 else float("nan")


@metric(
    "max_drawdown_duration",
    "core",
    "Longest stretch, in bars, spent below a previous equity peak (open episodes count to the last bar).",
    unit="bars",
)
def max_drawdown_duration(c: MetricContext) -> float:
    _, lengths = c.drawdown_episodes
    return float(lengths.max()) if lengths.size else 0.0


@metric(
    "average_drawdown",
    "core",
    "Mean depth of all drawdown episodes (non-positive fraction).",
    unit="fraction",
)
def average_drawdown(c: MetricContext) -> float:
    depths, _ = c.drawdown_episodes
    return float(depths.mean()) if depths.size else 0.0


@metric("average_drawdown_duration", "core", "Mean length in bars of all drawdown episodes.", unit="bars")
def average_drawdown_duration(c: MetricContext) -> float:
    _, lengths = c.drawdown_episodes
    return float(lengths.mean()) if lengths.size else 0.0


@metric(
    "num_drawdowns",
    "core",
    "Number of drawdown episodes (falls below a peak until it is regained).",
    unit="count",
)
def num_drawdowns(c: MetricContext) -> float:
    return float(c.drawdown_episodes[1].size)


@metric("current_drawdown", "core", "Drawdown on the last bar (non-positive fraction).", unit="fraction")
def current_drawdown(c: MetricContext) -> float:
    return float(c.drawdown[-1])


@metric("time_in_drawdown", "core", "Fraction of bars on which equity is below its running peak.", unit="fraction")
def time_in_drawdown(c: MetricContext) -> float:
    return float(np.mean(c.drawdown < 0))


@metric("final_equity", "core", "Equity after the last bar, all positions closed.", unit="currency")
def final_equity(c: MetricContext) -> float:
    return float(c.equity[-1])


@metric("peak_equity", "core", "Highest equity reached on any bar's close.", unit="currency")
def peak_equity(c: MetricContext) -> float:
    return float(max(np.max(c.equity), c.initial_cash))


@metric("net_profit", "core", "Final equity minus initial cash (after all fees).", unit="currency")
def net_profit(c: MetricContext) -> float:
    return float(c.equity[-1] - c.initial_cash)


@metric(
    "recovery_factor",
    "core",
    "Net profit divided by the largest drawdown in currency (peak minus trough equity).",
)
def recovery_factor(c: MetricContext) -> float:
    worst = float(np.max(c.peak - c.equity))
    return net_profit(c) / worst if worst > 0 else float("nan")


@metric("best_period_return", "core", "Highest single-bar return.", unit="fraction")
def best_period_return(c: MetricContext) -> float:
    return float(np.max(c.returns))


@metric("worst_period_return", "core", "Lowest single-bar return.", unit="fraction")
def worst_period_return(c: MetricContext) -> float:
    return float(np.min(c.returns))


@metric("positive_periods", "core", "Fraction of bars with a positive return.", unit="fraction")
def positive_periods(c: MetricContext) -> float:
    return float(np.mean(c.returns > 0))


@metric("num_periods", "core", "Number of bars in the run.", unit="count")
def num_periods(c: MetricContext) -> float:
    return float(c.returns.size)


@metric(
    "periods_per_year",
    "core",
    "Annualization factor P used by every annualized metric of this run.",
    unit="count",
)
def periods_per_year(c: MetricContext) -> float:
    return float(c.periods_per_year)
