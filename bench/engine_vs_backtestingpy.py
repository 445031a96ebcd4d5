"""Single backtest of an SMA crossover: this engine versus backtesting.py 0.6, same data, same rules.

Both sides run in their own fresh process (so peak memory is theirs alone) on the same deterministic
synthetic minute bars: SMA 10/50 crossover, long and short, market orders at the next open, commission
0.02% per side, all equity in whole units, cash 1e9. With 0.1% and 10,000 cash the ~27,000 trades of a
million minute bars bleed the account until it cannot afford one unit (after ~2,500 trades) and both
engines then stop trading, a cheaper and less informative benchmark.

The engine's run is the full `run_backtest` call: validation, signals, execution, the trade list, the
equity curve and all 100 metrics. backtesting.py's run is `Backtest.run()`, which also computes its
statistics. Peak memory is the worker's peak RSS minus its RSS just before the timed runs (data and
imports already loaded). The two trade lists are cross-checked.

    python bench/engine_vs_backtestingpy.py [--bars 1000000] [--engine-repeats 5] [--reference-repeats 1]
"""

# Each worker process imports only the library it measures, so imports live inside functions.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

FAST, SLOW, COMMISSION, CASH = 10, 50, 0.0002, 1e9


def bench_data(bars: int) -> pd.DataFrame:
    from backtest_engine.data import synthetic_ohlcv

    # Minute bars with per-bar volatility scaled for minutes (252 * 390 bars a year).
    return synthetic_ohlcv(bars, seed=1, freq="min", periods_per_year=252 * 390)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_engine(frame: pd.DataFrame) -> dict[str, Any]:
    from backtest_engine import run_backtest

    result = run_backtest(
        frame,
        "sma_crossover",
        {"fast": FAST, "slow": SLOW},
        cash=CASH,
        commission=COMMISSION,
        fraction=1 - sys.float_info.epsilon,
        lot_size=1,
    )
    closed = result.trades[result.trades["exit_reason"] != "end_of_data"]
    return {
        "closed_trades": len(closed),
        "first_pnl": float(closed["pnl"].iloc[0]),
        "last_pnl": float(closed["pnl"].iloc[-1]),
    }


def run_backtesting_py(frame: pd.DataFrame) -> dict[str, Any]:
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    def sma(values: np.ndarray, period: int) -> np.ndarray:
        return pd.Series(values).rolling(period).mean().to_numpy()

    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(sma, self.data.Close, FAST)
            self.slow = self.I(sma, self.data.Close, SLOW)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy()
            elif crossover(self.slow, self.fast):
                self.sell()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(
            frame.rename(columns=str.capitalize),
            SmaCross,
            cash=CASH,
            commission=COMMISSION,
            exclusive_orders=True,
        ).run()
    trades = stats._trades
    return {
        "closed_trades": len(trades),
        "first_pnl": float(trades["PnL"].iloc[0]),
        "last_pnl": float(trades["PnL"].iloc[-1]),
    }


def worker(side: str, bars: int, repeats: int) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    frame = bench_data(bars)
    run = run_engine if side == "engine" else run_backtesting_py
    run(frame.iloc[:2_000])  # load lazily imported modules outside the timing
    baseline = rss_mb()
    seconds, cpu_seconds = [], []
    summary: dict[str, Any] = {}
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = run(frame)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    print(
        json.dumps(
            {
                "side": side,
                "bars": bars,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "peak_rss_mb": rss_mb(),
                "run_rss_mb": rss_mb() - baseline,
                **summary,
            }
        )
    )


def spawn(side: str, bars: int, repeats: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", side, "--bars", str(bars), "--repeats", str(repeats)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--engine-repeats", type=int, default=5)
    parser.add_argument("--reference-repeats", type=int, default=1)
    parser.add_argument("--worker", choices=["engine", "backtesting"], help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.bars, args.repeats)
        return
    load_before = os.getloadavg()[0]
    engine = spawn("engine", args.bars, args.engine_repeats)
    reference = spawn("backtesting", args.bars, args.reference_repeats)
    same = (
        engine["closed_trades"] == reference["closed_trades"]
        and abs(engine["first_pnl"] - reference["first_pnl"]) < 1e-6
        and abs(engine["last_pnl"] - reference["last_pnl"]) < 1e-6
    )
    engine_s, reference_s = statistics.median(engine["seconds"]), statistics.median(reference["seconds"])
    print(
        f"single SMA({FAST}/{SLOW}) crossover backtest, {args.bars:,} minute bars, "
        f"commission {COMMISSION:.2%}, cash {CASH:,.0f}"
    )
    print(f"{'':<16}{'median s':>10}{'runs':>6}{'run RSS MB':>12}{'peak RSS MB':>13}{'closed trades':>15}")
    for name, r, s in (("backtest_engine", engine, engine_s), ("backtesting.py", reference, reference_s)):
        print(
            f"{name:<16}{s:>10.3f}{len(r['seconds']):>6}{r['run_rss_mb']:>12.0f}{r['peak_rss_mb']:>13.0f}"
            f"{r['closed_trades']:>15,}"
        )
    engine_cpu, reference_cpu = (
        statistics.median(engine["cpu_seconds"]),
        statistics.median(reference["cpu_seconds"]),
    )
    print(f"speed ratio (backtesting.py / engine), wall clock: {reference_s / engine_s:.1f}x")
    print(
        f"speed ratio (backtesting.py / engine), CPU time: {reference_cpu / engine_cpu:.1f}x "
        f"(engine {engine_cpu:.3f} s, backtesting.py {reference_cpu:.3f} s; both single-threaded, so CPU "
        "time is the fairer measure on a shared machine)"
    )
    load_after, cores = os.getloadavg()[0], os.cpu_count()
    print(f"1-minute load average before / after: {load_before:.1f} / {load_after:.1f} on {cores} cores")
    print(f"identical closed trades (count, first and last pnl): {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
