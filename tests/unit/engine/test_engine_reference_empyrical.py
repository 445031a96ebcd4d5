"""Metrics agree with empyrical-reloaded (and scipy for moments) on the same per-bar returns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from backtest_engine import run_backtest
from backtest_engine.data import synthetic_ohlcv
from backtest_engine.metrics import MetricContext, compute_metrics

empyrical = pytest.importorskip("empyrical")

P = 252.0


def _context(returns: np.ndarray, benchmark: np.ndarray, risk_free_rate: float = 0.0) -> MetricContext:
    """A metric context whose per-bar returns are exactly `returns` (equity compounds them from 10,000)."""
    equity = 10_000.0 * np.cumprod(1.0 + returns)
    empty = np.zeros(0)
    return MetricContext(
        equity=equity,
        initial_cash=10_000.0,
        periods_per_year=P,
        units=np.ones(returns.size),
        close=equity,
        trade_pnl=empty,
        trade_return=empty,
        trade_bars_held=empty.astype(int),
        trade_direction=empty.astype(int),
        trade_fees=empty,
        trade_exit_reason=empty.astype(int),
        trade_notional=empty,
        benchmark_returns=benchmark,
        risk_free_rate=risk_free_rate,
    )


def _random_returns(seed: int, size: int = 1_500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    benchmark = rng.standard_t(4, size) * 0.01 + 0.0003
    returns = 0.6 * benchmark + rng.standard_t(3, size) * 0.008 + 0.0002
    return returns, benchmark


def _strategy_returns() -> tuple[np.ndarray, np.ndarray]:
    """Returns of a real run (flat stretches, fees, reversals), so degenerate-ish data is covered too."""
    frame = synthetic_ohlcv(1_200, seed=21)
    result = run_backtest(frame, "rsi_reversion", {}, commission=0.001, periods_per_year=P)
    equity = result.equity.to_numpy()
    returns = np.concatenate(([equity[0] / 10_000.0 - 1.0], equity[1:] / equity[:-1] - 1.0))
    close = frame["close"].to_numpy()
    return returns, np.concatenate(([0.0], close[1:] / close[:-1] - 1.0))


CASES = {
    "random_seed_1": _random_returns(1),
    "random_seed_2": _random_returns(2),
    "rsi_run": _strategy_returns(),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    returns, benchmark = CASES[request.param]
    return returns, benchmark, compute_metrics(_context(returns, benchmark))


def test_return_and_risk_metrics_match_empyrical_when_given_the_same_returns(case):
    r, _, m = case
    expected = {
        "cagr": empyrical.annual_return(r, annualization=P),
        "annualized_volatility": empyrical.annual_volatility(r, annualization=P),
        "sharpe_ratio": empyrical.sharpe_ratio(r, annualization=P),
        "sortino_ratio": empyrical.sortino_ratio(r, annualization=P),
        "max_drawdown": empyrical.max_drawdown(r),
        "calmar_ratio": empyrical.calmar_ratio(r, annualization=P),
        "downside_deviation": empyrical.downside_risk(r, annualization=P),
        "value_at_risk_95": empyrical.value_at_risk(r, cutoff=0.05),
        "value_at_risk_99": empyrical.value_at_risk(r, cutoff=0.01),
        "cvar_95": empyrical.conditional_value_at_risk(r, cutoff=0.05),
        "cvar_99": empyrical.conditional_value_at_risk(r, cutoff=0.01),
        "tail_ratio": empyrical.tail_ratio(r),
        "omega_ratio": empyrical.omega_ratio(r, annualization=P),
        "stability": empyrical.stability_of_timeseries(r),
        "total_return": empyrical.cum_returns_final(r),
    }
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_benchmark_relative_metrics_match_empyrical_when_given_the_same_returns(case):
    r, b, m = case
    alpha, beta = empyrical.alpha_beta(r, b, annualization=P)
    assert m["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert m["beta"] == pytest.approx(beta, rel=1e-9)
    assert m["up_capture"] == pytest.approx(empyrical.up_capture(r, b), rel=1e-9)
    assert m["down_capture"] == pytest.approx(empyrical.down_capture(r, b), rel=1e-9)
    assert m["information_ratio"] == pytest.approx(empyrical.excess_sharpe(r, b) * np.sqrt(P), rel=1e-9)


def test_distribution_moments_match_scipy_when_given_the_same_returns(case):
    r, _, m = case
    assert m["skewness"] == pytest.approx(stats.skew(r), rel=1e-9)
    assert m["kurtosis"] == pytest.approx(stats.kurtosis(r), rel=1e-9)
    assert m["correlation"] == pytest.approx(np.corrcoef(r, case[1])[0, 1], rel=1e-9)


def test_risk_free_rate_is_subtracted_per_bar_like_empyrical_when_it_is_set():
    r, b = _random_returns(3)
    annual = 0.04
    m = compute_metrics(_context(r, b, risk_free_rate=annual))
    per_bar = annual / P
    assert m["sharpe_ratio"] == pytest.approx(empyrical.sharpe_ratio(r, risk_free=per_bar, annualization=P), rel=1e-9)
    alpha, beta = empyrical.alpha_beta(r, b, risk_free=per_bar, annualization=P)
    assert m["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert m["beta"] == pytest.approx(beta, rel=1e-9)
