"""Parameter sweep of the SMA crossover: this engine's `optimize` versus vectorbt, same data, same grid.

Both sides evaluate every (fast, slow) pair of the grid with fast < slow on the same synthetic minute
bars, long and short, market orders at the next bar's open (vectorbt: signals shifted one bar, filled at
the open), commission 0.1% per side, all equity in fractional units, and compute for every pair the Sharpe
ratio, total return, maximum drawdown and trade count, then rank by Sharpe. vectorbt's numba functions
are compiled on a small warm-up run first, so compilation is not timed; the engine gets the same warm-up.
Each side runs in its own fresh process; peak memory is that process's peak RSS (the engine's pool
workers included) minus its RSS just before the timed run.

    python bench/sweep_vs_vectorbt.py [--bars 100000] [--repeats 3]
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

import pandas as pd

FAST = list(range(5, 51, 5))
SLOW = list(range(20, 201, 10))
COMMISSION = 0.001


def bench_data(bars: int) -> pd.DataFrame:
    from backtest_engine.data import synthetic_ohlcv

    return synthetic_ohlcv(bars, seed=1, freq="min", periods_per_year=252 * 390)


def pairs() -> list[tuple[int, int]]:
    return [(f, s) for f in FAST for s in SLOW if f < s]


def rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0


def sweep_engine(frame: pd.DataFrame, workers: int) -> pd.DataFrame:
    from backtest_engine import optimize

    result = optimize(
        frame,
        "sma_crossover",
        {"fast": FAST, "slow": SLOW},
        metric="sharpe_ratio",
        commission=COMMISSION,
        workers=workers,
        periods_per_year=252 * 390,
    )
    table = result.results
    return pd.DataFrame(
        {
            "fast": [p["fast"] for p in table["params"]],
            "slow": [p["slow"] for p in table["params"]],
            "total_return": table["total_return"].to_numpy(),
            "num_trades": table["num_trades"].to_numpy(),
        }
    )


def sweep_vectorbt(frame: pd.DataFrame, _workers: int) -> pd.DataFrame:
    import vectorbt as vbt

    grid = pairs()
    close, open_ = frame["close"], frame["open"]
    fast_ma = vbt.MA.run(close, [f for f, _ in grid], short_name="fast")
    slow_ma = vbt.MA.run(close, [s for _, s in grid], short_name="slow")
    up, down = fast_ma.ma_crossed_above(slow_ma), fast_ma.ma_crossed_below(slow_ma)
    up.columns = down.columns = pd.RangeIndex(len(grid))
    entries = up.vbt.fshift(1, fill_value=False).astype(bool)  # decided on the close, filled at next open
    exits = down.vbt.fshift(1, fill_value=False).astype(bool)
    portfolio = vbt.Portfolio.from_signals(
        close, entries, exits, direction="both", price=open_, fees=COMMISSION, init_cash=10_000.0, freq="1min"
    )
    table = pd.DataFrame(
        {
            "fast": [f for f, _ in grid],
            "slow": [s for _, s in grid],
            "sharpe_ratio": portfolio.sharpe_ratio().to_numpy(),
            "total_return": portfolio.total_return().to_numpy(),
            "max_drawdown": portfolio.max_drawdown().to_numpy(),
            "num_trades": portfolio.trades.count().to_numpy(),
        }
    )
    return table.sort_values("sharpe_ratio", ascending=False).reset_index(drop=True)


def worker(side: str, bars: int, repeats: int, workers: int) -> None:
    warnings.simplefilter("ignore")
    frame = bench_data(bars)
    run = sweep_engine if side == "engine" else sweep_vectorbt
    run(frame.iloc[:3_000], workers)  # warm-up: numba compilation, lazy imports, pool start-up code paths
    baseline = rss_mb()
    seconds, table = [], pd.DataFrame()
    for _ in range(repeats):
        started = time.perf_counter()
        table = run(frame, workers)
        seconds.append(time.perf_counter() - started)
    peak = max(rss_mb(), rss_mb(resource.RUSAGE_CHILDREN))
    returns = {f"{f}/{s}": float(r) for f, s, r in table[["fast", "slow", "total_return"]].itertuples(index=False)}
    print(
        json.dumps(
            {
                "side": side,
                "workers": workers,
                "seconds": seconds,
                "peak_rss_mb": peak,
                "run_rss_mb": peak - baseline,
                "combinations": len(table),
                "returns": returns,
            }
        )
    )


def spawn(side: str, bars: int, repeats: int, workers: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            side,
            "--bars",
            str(bars),
            "--repeats",
            str(repeats),
            "--workers",
            str(workers),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["engine", "vectorbt"], help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.bars, args.repeats, args.workers)
        return
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    vectorbt = spawn("vectorbt", args.bars, args.repeats, 1)
    engines = [spawn("engine", args.bars, args.repeats, w) for w in sorted({1, cores})]
    vbt_s = statistics.median(vectorbt["seconds"])
    print(
        f"SMA crossover sweep: {len(pairs())} (fast, slow) pairs x {args.bars:,} minute bars "
        f"= {len(pairs()) * args.bars / 1e6:.1f}M bar-evaluations, commission {COMMISSION:.1%}"
    )
    print(f"{'':<26}{'median s':>10}{'runs':>6}{'run RSS MB':>12}{'peak RSS MB':>13}{'speed-up':>10}")
    print(
        f"{'vectorbt (1 process)':<26}{vbt_s:>10.3f}{len(vectorbt['seconds']):>6}"
        f"{vectorbt['run_rss_mb']:>12.0f}"
        f"{vectorbt['peak_rss_mb']:>13.0f}{1.0:>9.1f}x"
    )
    for engine in engines:
        seconds = statistics.median(engine["seconds"])
        label = f"backtest_engine ({engine['workers']} proc)"
        print(
            f"{label:<26}{seconds:>10.3f}{len(engine['seconds']):>6}{engine['run_rss_mb']:>12.0f}"
            f"{engine['peak_rss_mb']:>13.0f}{vbt_s / seconds:>9.1f}x"
        )
    print(f"1-minute load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {cores} cores")
    common = sorted(set(vectorbt["returns"]) & set(engines[0]["returns"]))
    gaps = [abs(vectorbt["returns"][k] - engines[0]["returns"][k]) for k in common]
    print(
        f"total return, engine vs vectorbt, over {len(common)} pairs: median |difference| "
        f"{statistics.median(gaps):.2e}, max {max(gaps):.2e} (vectorbt leaves the last position open "
        "and does not pay its exit fee; the engine closes it on the last bar)"
    )


if __name__ == "__main__":
    main()
