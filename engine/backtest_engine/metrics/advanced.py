"""Advanced metrics: benchmark-relative statistics, Omega, stability, rolling statistics, PSR.

The benchmark is buying and holding the traded instrument unless the caller passes other returns. Alpha
and beta follow empyrical: beta = cov / var (population), alpha = (1 + mean(r - beta * b))^P - 1.
Rolling statistics use windows of round(P / 4) bars (a quarter, at least 2) ending every
max(1, window // 20) bars and on the last bar.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from backtest_engine.metrics.context import MetricContext, dot, pearson
from backtest_engine.metrics.core import cagr_from_growth
from backtest_engine.metrics.registry import metric


def _alpha_beta(c: MetricContext) -> tuple[float, float]:
    return c.alpha_beta


def _rolling_sharpe(c: MetricContext) -> np.ndarray:
    return c.rolling_sharpe


@metric(
    "benchmark_return",
    "advanced",
    "Total return of the benchmark (default: buy and hold) over the run.",
    unit="fraction",
)
def benchmark_return(c: MetricContext) -> float:
    return float(np.exp(np.sum(c.benchmark_log_returns)) - 1.0)


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
    own_variance = c.moments[1] ** 2 * (c.returns.size - 1) / c.returns.size  # population variance
    denominator = float(np.sqrt(own_variance * c.benchmark_variance))
    return c.covariance_with_benchmark / denominator if denominator > 0 else float("nan")


@metric(
    "tracking_error",
    "advanced",
    "Standard deviation (ddof=1) of active returns (r - b), times sqrt(P).",
    unit="fraction",
)
def tracking_error(c: MetricContext) -> float:
    return c.active_mean_std[1] * float(np.sqrt(c.periods_per_year))


@metric("information_ratio", "advanced", "Mean active return over its standard deviation (ddof=1), times sqrt(P).")
def information_ratio(c: MetricContext) -> float:
    mean, std = c.active_mean_std
    return mean / std * float(np.sqrt(c.periods_per_year)) if std > 0 else float("nan")


@metric("treynor_ratio", "advanced", "(CAGR - risk-free rate) divided by beta.")
def treynor_ratio(c: MetricContext) -> float:
    return (cagr_from_growth(c.total_growth, c.years) - c.risk_free_rate) / _alpha_beta(c)[1]


@metric(
    "up_capture",
    "advanced",
    "CAGR of the run on bars where the benchmark rose divided by the benchmark's CAGR on those bars.",
)
def up_capture(c: MetricContext) -> float:
    return _capture(c, c.benchmark_returns > 0)


def _capture(c: MetricContext, bars: np.ndarray) -> float:
    """CAGR of the run over CAGR of the benchmark, both compounded over the selected bars only."""
    years = float(np.count_nonzero(bars)) / c.periods_per_year
    # growth over the selected bars = exp(sum of their log returns): a masked inner product, which is
    # several times faster on a million bars than boolean indexing or np.where
    selected = bars.astype(np.float64)
    mine = cagr_from_growth(float(np.exp(dot(c.log_returns, selected))), years)
    theirs = cagr_from_growth(float(np.exp(dot(c.benchmark_log_returns, selected))), years)
    return mine / theirs


@metric(
    "down_capture",
    "advanced",
    "CAGR of the run on bars where the benchmark fell divided by the benchmark's CAGR on those bars.",
)
def down_capture(c: MetricContext) -> float:
    return _capture(c, c.benchmark_returns < 0)


@metric(
    "omega_ratio",
    "advanced",
    "Sum of per-bar excess returns above 0 divided by the absolute sum of those below 0 (threshold 0).",
)
def omega_ratio(c: MetricContext) -> float:
    r = c.excess_returns
    gains = float(np.sum(np.maximum(r, 0.0)))
    losses = gains - float(np.sum(r))
    return gains / losses if losses > 0 else float("nan")


@metric(
    "stability",
    "advanced",
    "R-squared of a linear fit of cumulative log returns against time (1 = perfectly steady growth).",
)
def stability(c: MetricContext) -> float:
    y = np.cumsum(c.log_returns)
    n = y.size
    mean_y = float(np.mean(y))
    y -= mean_y  # centring y is enough: the time axis is centred analytically below
    sty = dot(np.arange(n, dtype=np.float64), y)  # = sum((t - mean t) * (y - mean y)) since sum(y) = 0
    syy = dot(y, y)
    stt = n * (n * n - 1) / 12.0  # sum of squared centred time indices 0..n-1
    return sty * sty / (stt * syy) if syy > 0 else float("nan")


@metric("autocorrelation", "advanced", "Lag-1 autocorrelation of per-bar returns.")
def autocorrelation(c: MetricContext) -> float:
    r = c.returns
    return pearson(r[1:], r[:-1]) if r.size > 2 else float("nan")


@metric(
    "probabilistic_sharpe_ratio",
    "advanced",
    "P(true Sharpe > 0) given sample length, skewness and kurtosis (Bailey and López de Prado).",
    unit="fraction",
)
def probabilistic_sharpe_ratio(c: MetricContext) -> float:
    mean, std, _, _ = c.moments
    if std <= 0 or c.returns.size < 3:
        return float("nan")
    sr = (mean - c.risk_free_per_period) / std
    _, _, skew, excess_kurtosis = c.moments
    kurt = excess_kurtosis + 3.0
    denominator = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2
    return float(stats.norm.cdf(sr * np.sqrt(c.returns.size - 1) / np.sqrt(denominator)))


@metric(
    "rolling_sharpe_mean",
    "advanced",
    "Mean of the quarterly rolling Sharpe ratio (window round(P / 4) bars, see conventions).",
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


@metric("rolling_volatility_max", "advanced", "Highest quarterly rolling annualized volatility.", unit="fraction")
def rolling_volatility_max(c: MetricContext) -> float:
    _, std = c.rolling_mean_std
    return float(std.max() * np.sqrt(c.periods_per_year)) if std.size else float("nan")
