"""The metric registry: coverage, documentation, and undefined values (None, never 0) for degenerate runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_engine import run_backtest
from backtest_engine.backtest import bars_from_frame, metric_context
from backtest_engine.data import synthetic_ohlcv
from backtest_engine.execution import ExecutionConfig, simulate
from backtest_engine.metrics import GROUPS, MetricContext, all_metrics, compute_metrics, get_metric
from backtest_engine.metrics.reference import render_markdown

DOCS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
CONTRACT_KEYS = {
    "total_return",
    "cagr",
    "sharpe_ratio",
    "sortino_ratio",
    "max_drawdown",
    "num_trades",
    "win_rate",
    "profit_factor",
    "final_equity",
}


def test_registry_holds_at_least_65_documented_metrics_in_every_group_when_loaded():
    metrics = all_metrics()
    assert len(metrics) >= 65
    assert {m.group for m in metrics} == set(GROUPS)
    assert {m.name for m in metrics} >= CONTRACT_KEYS
    for m in metrics:
        assert m.name == m.name.lower() and " " not in m.name
        assert m.definition.endswith(".") and "\n" not in m.definition
        assert m.undefined_when is None or m.undefined_when.strip()


def test_metrics_doc_is_regenerated_when_the_registry_changes():
    assert DOCS.read_text() == render_markdown(), "run: python -m backtest_engine.metrics.reference > docs/metrics.md"


def _finite(metrics: dict[str, float | None]) -> None:
    """Every value is a finite float or None, and None only where the registry documents when."""
    bad = {k: v for k, v in metrics.items() if v is not None and not math.isfinite(v)}
    assert not bad
    undocumented = [k for k, v in metrics.items() if v is None and get_metric(k).undefined_when is None]
    assert not undocumented, f"undefined without a documented condition: {undocumented}"


def test_ratios_are_none_never_zero_when_there_are_no_trades():
    frame = synthetic_ohlcv(300, seed=1)
    bars = bars_from_frame(frame)
    config = ExecutionConfig()
    sim = simulate(bars.open, bars.high, bars.low, bars.close, np.zeros(300), config=config)
    metrics = compute_metrics(metric_context(sim, bars, config, 252.0))
    _finite(metrics)
    assert metrics["num_trades"] == 0 and metrics["final_equity"] == config.cash
    for name in ("sharpe_ratio", "sortino_ratio", "win_rate", "profit_factor", "sqn", "calmar_ratio"):
        assert metrics[name] is None, name
    assert metrics["max_drawdown"] == 0.0 and metrics["total_return"] == 0.0  # defined, and really 0


def test_profit_factor_is_none_when_no_trade_lost():
    context = MetricContext(
        equity=np.array([100.0, 101.0, 102.0]), initial_cash=100.0, periods_per_year=252.0, units=np.ones(3),
        close=np.array([1.0, 1.01, 1.02]), trade_pnl=np.array([2.0]), trade_return=np.array([0.02]),
        trade_bars_held=np.array([2]), trade_direction=np.array([1]), trade_fees=np.zeros(1),
        trade_exit_reason=np.zeros(1, dtype=int), trade_notional=np.array([100.0]),
        benchmark_returns=np.array([0.0, 0.01, 0.0099]),
    )  # fmt: skip
    metrics = compute_metrics(context, ["profit_factor", "win_rate", "payoff_ratio"])
    assert metrics == {"profit_factor": None, "win_rate": 1.0, "payoff_ratio": None}


def test_metrics_stay_finite_when_equity_is_flat_and_prices_never_move():
    frame = synthetic_ohlcv(200, seed=2)
    frame[["open", "high", "low", "close"]] = 100.0
    metrics = run_backtest(frame, "buy_and_hold", {}).metrics
    _finite(metrics)
    assert metrics["max_drawdown"] == 0.0 and metrics["annualized_volatility"] == 0.0
    assert metrics["num_trades"] == 1 and metrics["win_rate"] == 0.0
    assert metrics["sharpe_ratio"] is None and metrics["stability"] is None


@settings(max_examples=25, deadline=None)
@given(
    bars=st.integers(min_value=2, max_value=120),
    seed=st.integers(0, 1_000),
    strategy=st.sampled_from(["sma_crossover", "rsi_reversion", "pivot_bos", "momentum", "buy_and_hold"]),
)
def test_every_metric_is_finite_when_data_is_short_or_trades_are_few(bars, seed, strategy):
    params = {"fast": 2, "slow": 5} if strategy == "sma_crossover" else {}
    _finite(run_backtest(synthetic_ohlcv(bars, seed=seed), strategy, params, commission=0.001).metrics)


def test_trade_metrics_follow_their_definitions_when_trades_are_known():
    frame = synthetic_ohlcv(800, seed=6)
    result = run_backtest(frame, "sma_crossover", {"fast": 5, "slow": 20}, commission=0.001)
    pnl = result.trades["pnl"].to_numpy()
    m = result.metrics
    assert m["num_trades"] == len(pnl)
    assert m["win_rate"] == pytest.approx(np.mean(pnl > 0))
    assert m["profit_factor"] == pytest.approx(pnl[pnl > 0].sum() / -pnl[pnl < 0].sum())
    assert m["expectancy"] == pytest.approx(pnl.mean())
    assert m["total_fees"] == pytest.approx(result.trades["fees"].sum())
    assert m["final_equity"] == pytest.approx(10_000 + pnl.sum())
    streak, longest = 0, 0
    for value in pnl:
        streak = streak + 1 if value < 0 else 0
        longest = max(longest, streak)
    assert m["max_consecutive_losses"] == longest
    assert m["exposure"] == pytest.approx(np.mean(result.extras["units"] != 0))


def test_rolling_statistics_match_pandas_rolling_windows_when_sampled_at_the_same_bars():
    rng = np.random.default_rng(4)
    returns = rng.normal(0.0004, 0.01, 2_000)
    equity = 10_000 * np.cumprod(1 + returns)
    flat = np.zeros(0)
    context = MetricContext(
        equity=equity,
        initial_cash=10_000.0,
        periods_per_year=252.0,
        units=np.ones(2_000),
        close=equity,
        trade_pnl=flat,
        trade_return=flat,
        trade_bars_held=flat.astype(int),
        trade_direction=flat.astype(int),
        trade_fees=flat,
        trade_exit_reason=flat.astype(int),
        trade_notional=flat,
        benchmark_returns=returns,
    )
    window = 63  # round(252 / 4)
    rolling = pd.Series(returns).rolling(window)
    sharpe = (rolling.mean() / rolling.std() * np.sqrt(252)).to_numpy()
    ends = [*range(window - 1, 2_000, window // 20), 1_999]  # window ends every 3 bars, plus the last
    sampled = sharpe[sorted(set(ends))]
    metrics = compute_metrics(context, ["rolling_sharpe_mean", "rolling_sharpe_min", "rolling_volatility_max"])
    assert metrics["rolling_sharpe_mean"] == pytest.approx(sampled.mean(), rel=1e-9)
    assert metrics["rolling_sharpe_min"] == pytest.approx(sampled.min(), rel=1e-9)
    volatility = (rolling.std() * np.sqrt(252)).to_numpy()[sorted(set(ends))]
    assert metrics["rolling_volatility_max"] == pytest.approx(volatility.max(), rel=1e-9)


@pytest.mark.parametrize("strategy", ["pivot_bos", "bollinger_reversion", "buy_and_hold"])
def test_result_serializes_to_strict_json_when_converted_with_to_dict(daily_bars, strategy):
    result = run_backtest(daily_bars, strategy, {}, commission=0.001, stop_loss=0.05)
    payload = json.loads(json.dumps(result.to_dict(include_equity=True), allow_nan=False))
    assert len(payload["equity"]) == len(daily_bars)
    assert payload["metrics"]["final_equity"] == pytest.approx(payload["equity"][-1]["equity"])
    assert len(payload["trades"]) == payload["metrics"]["num_trades"]


def test_benchmark_metrics_use_the_given_prices_when_a_benchmark_is_passed(daily_bars):
    default = run_backtest(daily_bars, "sma_crossover", {}).metrics
    same = run_backtest(daily_bars, "sma_crossover", {}, benchmark=daily_bars["close"]).metrics
    assert same["beta"] == pytest.approx(default["beta"]) and same["alpha"] == pytest.approx(default["alpha"])
    doubled = daily_bars["close"] ** 2  # returns of a squared price differ, so relative metrics must change
    other = run_backtest(daily_bars, "sma_crossover", {}, benchmark=doubled).metrics
    first, last = daily_bars["close"].iloc[0], daily_bars["close"].iloc[-1]
    assert other["benchmark_return"] == pytest.approx((last / first) ** 2 - 1)
    assert other["beta"] != pytest.approx(default["beta"])
