"""Trades and final equity agree with backtesting.py 0.6 (an independent, event-driven engine).

Two strategies expressible in both: the SMA crossover (long/short and long-only) and the Donchian breakout.

Setup that makes both engines model the same thing: market orders at the next bar's open, commission as a
fraction of notional on entry and exit, whole units (backtesting.py's sizing: all available equity, rounded
down), and exclusive orders so that an opposite signal closes the trade and reverses. backtesting.py keeps
the last trade open and marks it to market; this engine closes it on the last close and pays the exit fee,
so final equities differ by exactly that fee.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from backtest_engine import run_backtest
from backtest_engine.data import synthetic_ohlcv
from backtest_engine.metrics import MetricContext, compute_metrics

backtesting = pytest.importorskip("backtesting")
from backtesting import Backtest, Strategy  # noqa: E402
from backtesting.lib import crossover  # noqa: E402

# backtesting.py's default order size is 1 - eps ("all equity"), not 1.0.
BACKTESTING_PY_FRACTION = 1 - sys.float_info.epsilon


def _sma(values: np.ndarray, period: int) -> np.ndarray:
    return pd.Series(values).rolling(period).mean().to_numpy()


def _crossover_strategy(fast: int, slow: int, allow_short: bool) -> type[Strategy]:
    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(_sma, self.data.Close, fast)
            self.slow = self.I(_sma, self.data.Close, slow)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy()
            elif crossover(self.slow, self.fast):
                if allow_short:
                    self.sell()
                else:
                    self.position.close()

    return SmaCross


def _run_backtesting_py(frame: pd.DataFrame, fast: int, slow: int, allow_short: bool, commission: float):
    data = frame.rename(columns=str.capitalize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = Backtest(
            data,
            _crossover_strategy(fast, slow, allow_short),
            cash=10_000,
            commission=commission,
            exclusive_orders=True,
        )
        return bt.run()


@pytest.mark.parametrize(
    ("seed", "fast", "slow", "allow_short", "commission"),
    [(1, 10, 50, True, 0.001), (2, 5, 20, True, 0.0), (3, 20, 60, False, 0.002), (4, 8, 30, False, 0.001)],
)
def test_sma_crossover_trades_and_final_equity_match_backtesting_py_when_run_on_the_same_data(
    seed, fast, slow, allow_short, commission
):
    frame = synthetic_ohlcv(1_200, seed=seed)
    stats = _run_backtesting_py(frame, fast, slow, allow_short, commission)
    theirs = stats._trades
    ours = run_backtest(
        frame,
        "sma_crossover",
        {"fast": fast, "slow": slow, "allow_short": allow_short},
        commission=commission,
        fraction=BACKTESTING_PY_FRACTION,
        lot_size=1,
    )
    trades = ours.trades
    closed = trades[trades["exit_reason"] != "end_of_data"]
    assert len(theirs) >= 10, "the scenario must exercise many trades"
    assert len(closed) == len(theirs)
    np.testing.assert_array_equal(closed["size"].to_numpy(), theirs["Size"].to_numpy())
    np.testing.assert_allclose(closed["entry_price"], theirs["EntryPrice"], rtol=1e-12)
    np.testing.assert_allclose(closed["exit_price"], theirs["ExitPrice"], rtol=1e-12)
    np.testing.assert_allclose(closed["pnl"], theirs["PnL"], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(closed["return"], theirs["ReturnPct"], rtol=1e-9, atol=1e-12)
    assert list(closed["entry_time"]) == list(theirs["EntryTime"])
    assert list(closed["exit_time"]) == list(theirs["ExitTime"])

    open_at_end = trades[trades["exit_reason"] == "end_of_data"]
    exit_fee = float((open_at_end["size"].abs() * open_at_end["exit_price"]).sum() * commission)
    assert ours.metrics["final_equity"] == pytest.approx(stats["Equity Final [$]"] - exit_fee, abs=0.005)
    np.testing.assert_allclose(ours.equity.to_numpy()[:-1], stats._equity_curve["Equity"].to_numpy()[:-1], rtol=1e-10)


def test_trade_metrics_match_backtesting_py_statistics_when_computed_on_the_same_trades():
    frame = synthetic_ohlcv(1_500, seed=8)
    stats = _run_backtesting_py(frame, 10, 40, True, 0.001)
    ours = run_backtest(
        frame,
        "sma_crossover",
        {"fast": 10, "slow": 40},
        commission=0.001,
        fraction=BACKTESTING_PY_FRACTION,
        lot_size=1,
    )
    # backtesting.py's statistics cover closed trades only: evaluate our trade metrics on that subset.
    closed = ours.trades[ours.trades["exit_reason"] != "end_of_data"]
    context = _trade_context(closed)
    metrics = compute_metrics(
        context,
        ["num_trades", "win_rate", "sqn", "kelly_criterion", "best_trade_return", "worst_trade_return"],
    )
    assert metrics["num_trades"] == stats["# Trades"]
    assert metrics["win_rate"] * 100 == pytest.approx(stats["Win Rate [%]"])
    assert metrics["sqn"] == pytest.approx(stats["SQN"])
    assert metrics["kelly_criterion"] == pytest.approx(stats["Kelly Criterion"])
    assert metrics["best_trade_return"] * 100 == pytest.approx(stats["Best Trade [%]"])
    assert metrics["worst_trade_return"] * 100 == pytest.approx(stats["Worst Trade [%]"])


def _trade_context(trades: pd.DataFrame) -> MetricContext:
    flat = np.full(10, 10_000.0)
    return MetricContext(
        equity=flat,
        initial_cash=10_000.0,
        periods_per_year=252.0,
        units=np.zeros(10),
        close=flat,
        trade_pnl=trades["pnl"].to_numpy(),
        trade_return=trades["return"].to_numpy(),
        trade_bars_held=trades["bars_held"].to_numpy(),
        trade_direction=np.sign(trades["size"].to_numpy()).astype(int),
        trade_fees=trades["fees"].to_numpy(),
        trade_exit_reason=np.zeros(len(trades), dtype=int),
        trade_notional=(trades["size"].abs() * trades["entry_price"]).to_numpy(),
        benchmark_returns=np.zeros(10),
    )


def _donchian_strategy(period: int) -> type[Strategy]:
    def previous_extreme(values: np.ndarray, highest: bool) -> np.ndarray:
        rolling = pd.Series(values).rolling(period)
        return (rolling.max() if highest else rolling.min()).shift(1).to_numpy()

    class Donchian(Strategy):
        def init(self) -> None:
            self.upper = self.I(previous_extreme, self.data.High, True)
            self.lower = self.I(previous_extreme, self.data.Low, False)

        def next(self) -> None:
            close = self.data.Close[-1]
            if close > self.upper[-1] and not self.position.is_long:
                self.buy()
            elif close < self.lower[-1] and not self.position.is_short:
                self.sell()

    return Donchian


@pytest.mark.parametrize(("seed", "period"), [(5, 20), (6, 55)])
def test_donchian_breakout_trades_match_backtesting_py_when_run_on_the_same_data(seed, period):
    frame = synthetic_ohlcv(1_500, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(
            frame.rename(columns=str.capitalize),
            _donchian_strategy(period),
            cash=10_000,
            commission=0.001,
            exclusive_orders=True,
        ).run()
    theirs = stats._trades
    ours = run_backtest(
        frame,
        "donchian_breakout",
        {"period": period},
        commission=0.001,
        fraction=BACKTESTING_PY_FRACTION,
        lot_size=1,
    ).trades
    closed = ours[ours["exit_reason"] != "end_of_data"]
    assert len(theirs) >= 5
    assert len(closed) == len(theirs)
    assert list(closed["entry_time"]) == list(theirs["EntryTime"])
    np.testing.assert_array_equal(closed["size"].to_numpy(), theirs["Size"].to_numpy())
    np.testing.assert_allclose(closed["pnl"], theirs["PnL"], rtol=1e-9, atol=1e-6)
