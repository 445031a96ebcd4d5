"""Advanced metrics: benchmark-relative statistics, Omega, stability, rolling statistics, PSR.

The benchmark is buying and holding the traded instrument unless the caller passes other returns. Alpha
and beta follow empyrical: beta = cov / var (population), alpha = (1 + mean(r - beta * b))^P - 1.
Rolling statistics use a window of round(P / 4) bars (a quarter), at least 2.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from backtest_engine.metrics.context import MetricContext
from backtest_engine.metrics.core import cagr_of
from backtest_engine.metrics.registry import metric


def _alpha_beta(c: MetricContext) -> tuple[float, float]:
    r = c.excess_returns
    b = c.benchmark_returns - c.risk_free_per_period
    variance = float(np.mean((b - b.mean()) ** 2))
    if variance <= 0:
        return float("nan"), float("nan")
    beta = float(np.mean((r - r.mean()) * (b - b.mean()))) / variance
    alpha = float((np.mean(r - beta * b) + 1.0) ** c.periods_per_year - 1.0)
    return alpha, beta


def _rolling_mean_std(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    centred = values - values.mean()
    s1 = np.cumsum(np.concatenate(([0.0], centred)))
    s2 = np.cumsum(np.concatenate(([0.0], centred**2)))
    total1, total2 = s1[window:] - s1[:-window], s2[window:] - s2[:-window]
    mean = total1 / window
    var = np.maximum(total2 - total1 * mean, 0.0) / (window - 1)
    return mean + values.mean(), np.sqrt(var)


def _rolling_window(c: MetricContext) -> int:
    return max(2, round(c.periods_per_year / 4))


def _rolling_sharpe(c: MetricContext) -> np.ndarray:
    window = _rolling_window(c)
    if c.returns.size < window:
        return np.zeros(0)
    mean, std = _rolling_mean_std(c.excess_returns, window)
    valid = std > 1e-12 * max(1.0, float(np.abs(mean).max()))
    return np.asarray(mean[valid] / std[valid] * np.sqrt(c.periods_per_year))


@metric(
    "benchmark_return",
    "advanced",
    "Total return of the benchmark (default: buy and hold) over the run.",
    unit="fraction",
)
def benchmark_return(c: MetricContext) -> float:
    return float(np.prod(1.0 + c.benchmark_returns) - 1.0)


@metric("excess_return", "advanced", "Total return minus the benchmark's total return.", unit="fraction")
def excess_return(c: MetricContext) -> float:
    return float(c.equity[-1] / c.initial_cash - 1.0) - benchmark_return(c)


@metric(
    "alpha",
    "advanced",
    "Annualized CAPM alpha against the benchmark: (1 + mean(r - beta * b))^P - 1.",
    unit="fraction",
)
def alpha(c: MetricContext) -> float:
    return _alpha_beta(c)[0]


@metric(
    "beta",
    "advanced",
    "Covariance of per-bar returns with the benchmark's divided by the benchmark's variance.",
)
def beta(c: MetricContext) -> float:
    return _alpha_beta(c)[1]


@metric("correlation", "advanced", "Pearson correlation of per-bar returns with the benchmark's.")
def correlation(c: MetricContext) -> float:
    if np.ptp(c.returns) == 0 or np.ptp(c.benchmark_returns) == 0:
        return float("nan")
    return float(np.corrcoef(c.returns, c.benchmark_returns)[0, 1])


@metric(
    "tracking_error",
    "advanced",
    "Standard deviation (ddof=1) of active returns (r - b), times sqrt(P).",
    unit="fraction",
)
def tracking_error(c: MetricContext) -> float:
    return float(np.std(c.returns - c.benchmark_returns, ddof=1) * np.sqrt(c.periods_per_year))


@metric(
    "information_ratio", "advanced", "Mean active return over its standard deviation (ddof=1), times sqrt(P)."
)
def information_ratio(c: MetricContext) -> float:
    active = c.returns - c.benchmark_returns
    std = float(np.std(active, ddof=1))
    return float(np.mean(active) / std * np.sqrt(c.periods_per_year)) if std > 0 else float("nan")


@metric("treynor_ratio", "advanced", "(CAGR - risk-free rate) divided by beta.")
def treynor_ratio(c: MetricContext) -> float:
    return (cagr_of(c.returns, c.periods_per_year) - c.risk_free_rate) / _alpha_beta(c)[1]


@metric(
    "up_capture",
    "advanced",
    "CAGR of the run on bars where the benchmark rose divided by the benchmark's CAGR on those bars.",
)
def up_capture(c: MetricContext) -> float:
    up = c.benchmark_returns > 0
    return cagr_of(c.returns[up], c.periods_per_year) / cagr_of(c.benchmark_returns[up], c.periods_per_year)


@metric(
    "down_capture",
    "advanced",
    "CAGR of the run on bars where the benchmark fell divided by the benchmark's CAGR on those bars.",
)
def down_capture(c: MetricContext) -> float:
    down = c.benchmark_returns < 0
    return cagr_of(c.returns[down], c.periods_per_year) / cagr_of(
        c.benchmark_returns[down], c.periods_per_year
    )


@metric(
    "omega_ratio",
    "advanced",
    "Sum of per-bar excess returns above 0 divided by the absolute sum of those below 0 (threshold 0).",
)
def omega_ratio(c: MetricContext) -> float:
    r = c.excess_returns
    losses = -float(np.sum(r[r < 0]))
    return float(np.sum(r[r > 0])) / losses if losses > 0 else float("nan")


@metric(
    "stability",
    "advanced",
    "R-squared of a linear fit of cumulative log returns against time (1 = perfectly steady growth).",
)
def stability(c: MetricContext) -> float:
    cumulative = np.cumsum(np.log1p(c.returns))
    if np.ptp(cumulative) == 0:
        return float("nan")
    return float(stats.linregress(np.arange(cumulative.size), cumulative).rvalue ** 2)


@metric("autocorrelation", "advanced", "Lag-1 autocorrelation of per-bar returns.")
def autocorrelation(c: MetricContext) -> float:
    r = c.returns
    if r.size < 3 or np.ptp(r[1:]) == 0 or np.ptp(r[:-1]) == 0:
        return float("nan")
    return float(np.corrcoef(r[1:], r[:-1])[0, 1])


@metric(
    "probabilistic_sharpe_ratio",
    "advanced",
    "P(true Sharpe > 0) given sample length, skewness and kurtosis (Bailey and López de Prado).",
    unit="fraction",
)
def probabilistic_sharpe_ratio(c: MetricContext) -> float:
    r = c.excess_returns
    std = float(np.std(r, ddof=1)) if r.size > 2 else 0.0
    if std <= 0:
        return float("nan")
    sr = float(np.mean(r)) / std
    skew, kurt = float(stats.skew(r)), float(stats.kurtosis(r, fisher=False))
    denominator = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2
    return float(stats.norm.cdf(sr * np.sqrt(r.size - 1) / np.sqrt(denominator)))


@metric(
    "rolling_sharpe_mean", "advanced", "Mean of the quarterly rolling Sharpe ratio (window round(P / 4))."
)
def rolling_sharpe_mean(c: MetricContext) -> float:
    values = _rolling_sharpe(c)
    return float(values.mean()) if values.size else float("nan")


@metric("rolling_sharpe_min", "advanced", "Lowest quarterly rolling Sharpe ratio.")
def rolling_sharpe_min(c: MetricContext) -> float:
    values = _rolling_sharpe(c)
    return float(values.min()) if values.size else float("nan")


@metric(
    "rolling_sharpe_std",
    "advanced",
    "Standard deviation of the quarterly rolling Sharpe ratio (its instability).",
)
def rolling_sharpe_std(c: MetricContext) -> float:
    values = _rolling_sharpe(c)
    return float(values.std()) if values.size > 1 else float("nan")


@metric(
    "rolling_volatility_max", "advanced", "Highest quarterly rolling annualized volatility.", unit="fraction"
)
def rolling_volatility_max(c: MetricContext) -> float:
    window = _rolling_window(c)
    if c.returns.size < window:
        return float("nan")
    _, std = _rolling_mean_std(c.returns, window)
    return float(std.max() * np.sqrt(c.periods_per_year))
