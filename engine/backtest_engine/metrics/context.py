"""Everything a metric may need about one run, with shared intermediates computed once and cached."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from backtest_engine.strategies.registry import StructureEvents

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def dot(a: FloatArray, b: FloatArray) -> float:
    """Inner product without BLAS: on a busy machine BLAS thread hand-offs cost milliseconds per call."""
    return float(np.einsum("i,i->", a, b))


def pearson(a: FloatArray, b: FloatArray) -> float:
    """Pearson correlation (NaN when either side is constant)."""
    a_centred, b_centred = a - a.mean(), b - b.mean()
    denominator = np.sqrt(dot(a_centred, a_centred) * dot(b_centred, b_centred))
    return dot(a_centred, b_centred) / denominator if denominator > 0 else float("nan")


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
        equity = self.equity
        r = np.empty(equity.size)
        r[0] = equity[0] / self.initial_cash - 1.0
        np.divide(equity[1:], equity[:-1], out=r[1:])
        r[1:] -= 1.0
        if not np.isfinite(r).all():  # only after ruin (equity reached 0): no return is defined there
            r[~np.isfinite(r)] = 0.0
        return r

    @cached_property
    def risk_free_per_period(self) -> float:
        return self.risk_free_rate / self.periods_per_year

    @cached_property
    def excess_returns(self) -> FloatArray:
        if self.risk_free_per_period == 0.0:
            return self.returns  # the common case: no copy
        return self.returns - self.risk_free_per_period

    @cached_property
    def peak(self) -> FloatArray:
        """Running maximum of equity, starting from the initial cash."""
        peak = np.maximum.accumulate(self.equity)
        np.maximum(peak, self.initial_cash, out=peak)
        return peak

    @cached_property
    def drawdown(self) -> FloatArray:
        """Per-bar drawdown as a non-positive fraction of the running equity peak (initial cash included)."""
        drawdown = np.divide(self.equity, self.peak)
        drawdown -= 1.0
        if not np.isfinite(drawdown).all():
            drawdown[~np.isfinite(drawdown)] = 0.0
        return drawdown

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
    def sorted_returns(self) -> FloatArray:
        return np.sort(self.returns)

    def percentile(self, q: float) -> float:
        """q-th percentile (0-100) of per-bar returns, linear interpolation (numpy's default method)."""
        values = self.sorted_returns
        position = q / 100.0 * (values.size - 1)
        low = int(np.floor(position))
        high = min(low + 1, values.size - 1)
        return float(values[low] + (values[high] - values[low]) * (position - low))

    def lowest_returns(self, q: float) -> FloatArray:
        """The int((n - 1) * q / 100) + 1 lowest per-bar returns (empyrical's CVaR sample)."""
        return self.sorted_returns[: int((self.returns.size - 1) * q / 100.0) + 1]

    @cached_property
    def moments(self) -> tuple[float, float, float, float]:
        """Mean, standard deviation (ddof=1), skewness and excess kurtosis (both biased) of returns."""
        r = self.returns
        mean = float(np.mean(r))
        d = r - mean
        d2 = d * d
        m2 = dot(d, d) / r.size
        m3 = dot(d2, d) / r.size
        m4 = dot(d2, d2) / r.size
        std = float(np.sqrt(m2 * r.size / (r.size - 1))) if r.size > 1 else 0.0
        scale = max(abs(mean), 1e-300)
        if m2 <= (1e-14 * scale) ** 2:
            return mean, std, 0.0, 0.0
        return mean, std, m3 / m2**1.5, m4 / m2**2 - 3.0

    @cached_property
    def gains_and_losses(self) -> tuple[float, float]:
        """Sum of positive per-bar returns and sum of negative ones."""
        r = self.returns
        positive = float(np.sum(np.maximum(r, 0.0)))
        return positive, float(np.sum(r)) - positive

    @cached_property
    def total_growth(self) -> float:
        """Final equity over initial cash: the compounded product of all per-bar returns."""
        return float(self.equity[-1] / self.initial_cash)

    @cached_property
    def rolling_mean_std(self) -> tuple[FloatArray, FloatArray]:
        """Mean and standard deviation (ddof=1) of returns over rolling windows of round(P / 4) bars.

        Windows end every max(1, window // 20) bars (and on the last bar): consecutive windows overlap by
        95% or more, so the sampled statistics describe the rolling series while costing only the two
        cumulative sums, not a dozen passes over every bar.
        """
        window = max(2, round(self.periods_per_year / 4))
        values = self.returns
        if values.size < window:
            return np.zeros(0), np.zeros(0)
        centre = float(values.mean())
        centred = values - centre
        s1 = np.cumsum(centred)
        np.multiply(centred, centred, out=centred)
        s2 = np.cumsum(centred)
        last = np.arange(window - 1, values.size, max(1, window // 20))  # last bar of each window
        if last[-1] != values.size - 1:
            last = np.append(last, values.size - 1)
        before = last - window  # bar just before each window; -1 for the first window of the data
        total1 = s1[last] - np.where(before >= 0, s1[before], 0.0)
        total2 = s2[last] - np.where(before >= 0, s2[before], 0.0)
        mean = total1 / window
        variance = np.maximum(total2 - total1 * mean, 0.0) / (window - 1)
        return mean + centre, np.sqrt(variance)

    @cached_property
    def rolling_sharpe(self) -> FloatArray:
        """Annualized Sharpe ratio of every rolling window (windows with zero volatility are skipped)."""
        mean, std = self.rolling_mean_std
        if mean.size == 0:
            return mean
        valid = std > 1e-12 * max(1.0, float(np.abs(mean).max()))
        excess = mean[valid] - self.risk_free_per_period
        return np.asarray(excess / std[valid] * np.sqrt(self.periods_per_year), dtype=np.float64)

    @cached_property
    def log_returns(self) -> FloatArray:
        return np.log1p(self.returns)

    @cached_property
    def benchmark_log_returns(self) -> FloatArray:
        return np.log1p(self.benchmark_returns)

    @cached_property
    def active_mean_std(self) -> tuple[float, float]:
        """Mean and standard deviation (ddof=1) of active returns (run minus benchmark)."""
        active = self.returns - self.benchmark_returns
        mean = float(np.mean(active))
        active -= mean
        std = float(np.sqrt(dot(active, active) / (active.size - 1))) if active.size > 1 else 0.0
        return mean, std

    @cached_property
    def alpha_beta(self) -> tuple[float, float]:
        """CAPM alpha (annualized, empyrical's convention) and beta of excess returns on the benchmark's."""
        # Subtracting the risk-free rate shifts both series by a constant: beta is unchanged.
        variance, covariance = self.benchmark_variance, self.covariance_with_benchmark
        if variance <= 0:
            return float("nan"), float("nan")
        beta = covariance / variance
        rf = self.risk_free_per_period
        excess_mean = self.moments[0] - rf - beta * (float(self.benchmark_centred_mean[1]) - rf)
        if excess_mean <= -1.0:  # a mean loss of 100% per bar or worse: no real annualized value
            return float("nan"), beta
        alpha = float((excess_mean + 1.0) ** self.periods_per_year - 1.0)
        return alpha, beta

    @cached_property
    def benchmark_centred_mean(self) -> tuple[FloatArray, float]:
        """Benchmark returns minus their mean, and that mean."""
        mean = float(np.mean(self.benchmark_returns))
        return self.benchmark_returns - mean, mean

    @cached_property
    def benchmark_variance(self) -> float:
        """Population variance of the benchmark returns."""
        centred, _ = self.benchmark_centred_mean
        return dot(centred, centred) / centred.size

    @cached_property
    def covariance_with_benchmark(self) -> float:
        """Population covariance of returns with benchmark returns (one centred side suffices)."""
        centred, _ = self.benchmark_centred_mean
        return dot(self.returns, centred) / centred.size

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
