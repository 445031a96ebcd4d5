"""Risk metrics: tail risk (VaR, CVaR), downside deviation, drawdown pain and distribution shape.

VaR and CVaR are per-bar, historical, reported as returns (negative numbers are losses) with empyrical's
conventions: VaR is the q-th percentile of returns; CVaR the mean of the int((n - 1) * q) + 1 lowest.
"""

from __future__ import annotations

import numpy as np

from backtest_engine.metrics.context import MetricContext
from backtest_engine.metrics.core import cagr_from_growth
from backtest_engine.metrics.registry import metric

Z_05 = -1.6448536269514722  # standard normal 5% quantile (scipy.stats.norm.ppf(0.05)); a constant saves time


def historical_cvar(c: MetricContext, q: float) -> float:
    return float(np.mean(c.lowest_returns(100.0 * q)))


def cagr_minus_rf(c: MetricContext) -> float:
    return cagr_from_growth(c.total_growth, c.years) - c.risk_free_rate


@metric(
    "value_at_risk_95",
    "risk",
    "Historical 95% one-bar VaR: the 5th percentile of per-bar returns.",
    unit="fraction",
)
def value_at_risk_95(c: MetricContext) -> float:
    return c.percentile(5)


@metric(
    "value_at_risk_99",
    "risk",
    "Historical 99% one-bar VaR: the 1st percentile of per-bar returns.",
    unit="fraction",
)
def value_at_risk_99(c: MetricContext) -> float:
    return c.percentile(1)


@metric("cvar_95", "risk", "Expected shortfall at 95%: mean of the worst 5% of per-bar returns.", unit="fraction")
def cvar_95(c: MetricContext) -> float:
    return historical_cvar(c, 0.05)


@metric("cvar_99", "risk", "Expected shortfall at 99%: mean of the worst 1% of per-bar returns.", unit="fraction")
def cvar_99(c: MetricContext) -> float:
    return historical_cvar(c, 0.01)


@metric(
    "parametric_var_95",
    "risk",
    "Gaussian 95% one-bar VaR: mean + z(0.05) * standard deviation (ddof=1) of per-bar returns.",
    unit="fraction",
)
def parametric_var_95(c: MetricContext) -> float:
    mean, std, _, _ = c.moments
    return float(mean + Z_05 * std)


@metric(
    "modified_var_95",
    "risk",
    "Cornish-Fisher 95% one-bar VaR: Gaussian quantile corrected for sample skewness and excess kurtosis.",
    unit="fraction",
)
def modified_var_95(c: MetricContext) -> float:
    z = Z_05
    mean, std, s, k = c.moments
    z_cf = z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36
    return float(mean + z_cf * std)


@metric(
    "downside_deviation",
    "risk",
    "Annualized root mean square of negative excess per-bar returns (zero for positive ones), times sqrt(P).",
    unit="fraction",
)
def downside_deviation(c: MetricContext) -> float:
    return float(np.sqrt(np.mean(np.minimum(c.excess_returns, 0.0) ** 2)) * np.sqrt(c.periods_per_year))


@metric(
    "upside_deviation",
    "risk",
    "Annualized root mean square of positive excess per-bar returns (zero for negative ones), times sqrt(P).",
    unit="fraction",
)
def upside_deviation(c: MetricContext) -> float:
    return float(np.sqrt(np.mean(np.maximum(c.excess_returns, 0.0) ** 2)) * np.sqrt(c.periods_per_year))


@metric("ulcer_index", "risk", "Root mean square of the per-bar drawdown (as a fraction).", unit="fraction")
def ulcer_index(c: MetricContext) -> float:
    return float(np.sqrt(np.mean(c.drawdown**2)))


@metric("ulcer_performance_index", "risk", "Martin ratio: (CAGR - risk-free rate) divided by the ulcer index.")
def ulcer_performance_index(c: MetricContext) -> float:
    ui = ulcer_index(c)
    return cagr_minus_rf(c) / ui if ui > 0 else float("nan")


@metric("pain_index", "risk", "Mean absolute per-bar drawdown.", unit="fraction")
def pain_index(c: MetricContext) -> float:
    return float(-np.mean(c.drawdown))


@metric("pain_ratio", "risk", "(CAGR - risk-free rate) divided by the pain index.")
def pain_ratio(c: MetricContext) -> float:
    pain = pain_index(c)
    return cagr_minus_rf(c) / pain if pain > 0 else float("nan")


@metric(
    "tail_ratio",
    "risk",
    "Absolute 95th percentile of per-bar returns divided by the absolute 5th percentile.",
)
def tail_ratio(c: MetricContext) -> float:
    low = abs(c.percentile(5))
    return abs(c.percentile(95)) / low if low > 0 else float("nan")


@metric("skewness", "risk", "Sample skewness (biased, Fisher-Pearson) of per-bar returns.")
def skewness(c: MetricContext) -> float:
    return c.moments[2]


@metric("kurtosis", "risk", "Excess kurtosis (Fisher, biased) of per-bar returns; 0 for a normal distribution.")
def kurtosis(c: MetricContext) -> float:
    return c.moments[3]


@metric("gain_to_pain_ratio", "risk", "Sum of per-bar returns divided by the absolute sum of negative ones.")
def gain_to_pain_ratio(c: MetricContext) -> float:
    gains, losses = c.gains_and_losses
    return (gains + losses) / -losses if losses < 0 else float("nan")


@metric(
    "common_sense_ratio",
    "risk",
    "Tail ratio times the per-bar profit factor (sum of gains over absolute sum of losses).",
)
def common_sense_ratio(c: MetricContext) -> float:
    gains, losses = c.gains_and_losses
    return tail_ratio(c) * gains / -losses if losses < 0 else float("nan")


@metric(
    "burke_ratio",
    "risk",
    "(CAGR - risk-free rate) divided by the square root of the sum of squared drawdown-episode depths.",
)
def burke_ratio(c: MetricContext) -> float:
    depths, _ = c.drawdown_episodes
    denominator = float(np.sqrt(np.sum(depths**2)))
    if denominator <= 0:
        return float("nan")
    return cagr_minus_rf(c) / denominator


@metric(
    "max_consecutive_losing_periods",
    "risk",
    "Longest run of consecutive bars with a negative return.",
    unit="bars",
)
def max_consecutive_losing_periods(c: MetricContext) -> float:
    return float(longest_run(c.returns < 0))


def longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True values."""
    if not flags.any():
        return 0
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return int(np.max(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)))
