"""`backtest-engine`: list strategies and metrics, run a backtest, optimize, generate synthetic data.

Bad input (unknown strategy or parameter, out-of-range value, malformed data) exits with status 2 and a
one-line message naming the culprit on stderr; results go to stdout (a table, or JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from backtest_engine.backtest import run_backtest
from backtest_engine.data import load_ohlcv, save_ohlcv, synthetic_ohlcv
from backtest_engine.errors import EngineError, InvalidParameter
from backtest_engine.metrics import all_metrics
from backtest_engine.optimize import optimize, walk_forward
from backtest_engine.router.cli import add_router_parser, run_router
from backtest_engine.service.cli import add_serve_parser, run_serve
from backtest_engine.strategies import list_strategies

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise InvalidParameter(f"expected NAME=VALUE, got {text!r}", name=text)
    return name.strip(), value.strip()


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """`["fast=10", "slow=50"]` -> `{"fast": "10", "slow": "50"}` (the schema coerces the strings)."""
    return dict(_key_value(pair) for pair in pairs)


def parse_space(pairs: Sequence[str]) -> dict[str, list[str]]:
    """`["fast=5,10,20", "slow=50:200:50"]` -> candidate lists; `a:b:s` is an inclusive integer range."""
    space: dict[str, list[str]] = {}
    for pair in pairs:
        name, value = _key_value(pair)
        if value.count(":") == 2:
            try:
                start, stop, step = (int(part) for part in value.split(":"))
            except ValueError:
                raise InvalidParameter(f"range {value!r} must be start:stop:step integers", name=name) from None
            if step <= 0 or stop < start:
                raise InvalidParameter(f"range {value!r} is empty", name=name)
            space[name] = [str(v) for v in range(start, stop + 1, step)]
        else:
            space[name] = [v.strip() for v in value.split(",") if v.strip()]
    return space


def _add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", required=True, help="strategy name (see `backtest-engine strategies`)")
    parser.add_argument("--data", required=True, help="CSV or Parquet file: time, open, high, low, close, volume")
    parser.add_argument("--cash", type=float, default=10_000.0, help="initial cash (default 10000)")
    parser.add_argument("--commission", type=float, default=0.0, help="fraction of traded notional per fill")
    parser.add_argument("--slippage-bps", type=float, default=0.0, help="adverse fill price move, basis points")
    parser.add_argument("--fraction", type=float, default=1.0, help="position size as a fraction of equity")
    parser.add_argument("--lot-size", type=float, default=0.0, help="round units down to lots (0 = fractional)")
    parser.add_argument("--stop-loss", type=float, default=None, help="stop loss as a fraction of entry price")
    parser.add_argument("--take-profit", type=float, default=None, help="take profit as a fraction of entry")
    parser.add_argument("--periods-per-year", type=float, default=None, help="override the inferred annualization")
    parser.add_argument("--risk-free-rate", type=float, default=0.0, help="annual risk-free rate (default 0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _execution_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cash": args.cash,
        "commission": args.commission,
        "slippage_bps": args.slippage_bps,
        "fraction": args.fraction,
        "lot_size": args.lot_size,
        "stop_loss": args.stop_loss,
        "take_profit": args.take_profit,
        "periods_per_year": args.periods_per_year,
        "risk_free_rate": args.risk_free_rate,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backtest-engine", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    strategies = commands.add_parser("strategies", help="list the strategy registry")
    strategies.add_argument("--json", action="store_true")

    metrics = commands.add_parser("metrics", help="list every metric with its definition")
    metrics.add_argument("--json", action="store_true")

    run = commands.add_parser("run", help="backtest one strategy on one data file")
    _add_execution_arguments(run)
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="strategy parameter")
    run.add_argument("--equity", action="store_true", help="include the per-bar equity curve in --json")

    opt = commands.add_parser("optimize", help="grid or random search, optionally walk-forward")
    _add_execution_arguments(opt)
    opt.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2|A:B:STEP", help="candidates")
    opt.add_argument("--random", type=int, default=None, metavar="N", help="sample N sets instead of the grid")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--metric", default="sharpe_ratio", help="ranking metric (default sharpe_ratio)")
    opt.add_argument("--minimize", action="store_true", help="lower metric values rank first")
    opt.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    opt.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    opt.add_argument("--walk-forward", type=int, default=None, metavar="FOLDS", help="walk-forward evaluation")

    synth = commands.add_parser("synthetic", help="write a deterministic synthetic OHLCV file")
    synth.add_argument("--bars", type=int, default=2_000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--freq", default="B", help="pandas frequency of the bars (default B, business days)")
    synth.add_argument("--out", required=True, help="output .csv or .parquet")

    add_router_parser(commands)
    add_serve_parser(commands)
    return parser


def _print_table(rows: Sequence[tuple[str, str]], out: TextIO) -> None:
    width = max((len(name) for name, _ in rows), default=0)
    for name, value in rows:
        out.write(f"{name:<{width}}  {value}\n")


def _format(value: float | None) -> str:
    """A metric for people: `undefined` where it has no value (docs/metrics.md)."""
    if value is None or math.isnan(value):
        return "undefined"
    return f"{value:,.6g}" if abs(value) < 1e15 else f"{value:.6e}"


class ProgressBar:
    """A one-line text progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO, width: int = 40) -> None:
        self.stream, self.width, self.started, self._last = stream, width, time.monotonic(), 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = int(self.width * done / total) if total else self.width
        rate = done / max(now - self.started, 1e-9)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} ({rate:,.0f}/s)")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _command_run(args: argparse.Namespace, out: TextIO) -> None:
    data = load_ohlcv(args.data)
    result = run_backtest(data, args.strategy, parse_params(args.param), **_execution_kwargs(args))
    if args.json:
        json.dump(result.to_dict(include_equity=args.equity), out, indent=2, default=str)
        out.write("\n")
        return
    out.write(f"{args.strategy} {json.dumps(result.params)} on {len(data)} bars\n")
    _print_table([(name, _format(value)) for name, value in result.metrics.items()], out)


def _command_optimize(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    data = load_ohlcv(args.data)
    space = parse_space(args.grid)
    if not space:
        raise InvalidParameter("give at least one --grid NAME=VALUES", name="grid")
    options: dict[str, Any] = {
        "method": "random" if args.random else "grid",
        "samples": args.random or 0,
        "seed": args.seed,
        "workers": args.workers,
        **_execution_kwargs(args),
    }
    if args.walk_forward:
        wf = walk_forward(
            data,
            args.strategy,
            space,
            folds=args.walk_forward,
            metric=args.metric,
            maximize=not args.minimize,
            **options,
        )
        json.dump(wf.to_dict(), out, indent=2, default=str)
        out.write("\n")
        return
    progress = None if args.json else ProgressBar(err)
    result = optimize(
        data,
        args.strategy,
        space,
        metric=args.metric,
        maximize=not args.minimize,
        progress=progress,
        **options,
    )
    if args.json:
        json.dump(result.to_dict(top=args.top), out, indent=2, default=str)
        out.write("\n")
        return
    out.write(f"{result.evaluated}/{result.total} parameter sets, ranked by {args.metric}\n")
    for rank, row in enumerate(result.results.head(args.top).to_dict(orient="records"), start=1):
        metrics = "  ".join(f"{k}={_format(v)}" for k, v in row.items() if k != "params")
        out.write(f"{rank:>3}. {json.dumps(row['params'])}  {metrics}\n")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    if args.command == "router":
        return run_router(args)
    if args.command == "serve":
        return run_serve(args)
    try:
        if args.command == "strategies":
            described = list_strategies()
            if args.json:
                json.dump(described, out, indent=2)
                out.write("\n")
            else:
                for spec in described:
                    defaults = " ".join(f"{k}={v}" for k, v in spec["defaults"].items())
                    out.write(f"{spec['name']:<22} {spec['family']:<15} {defaults}\n    {spec['summary']}\n")
        elif args.command == "metrics":
            described_metrics = [
                {
                    "name": m.name,
                    "group": m.group,
                    "unit": m.unit,
                    "definition": m.definition,
                    "undefined_when": m.undefined_when,
                }
                for m in all_metrics()
            ]
            if args.json:
                json.dump(described_metrics, out, indent=2)
                out.write("\n")
            else:
                _print_table([(f"{m['group']}/{m['name']}", str(m["definition"])) for m in described_metrics], out)
        elif args.command == "run":
            _command_run(args, out)
        elif args.command == "optimize":
            _command_optimize(args, out, err)
        elif args.command == "synthetic":
            save_ohlcv(synthetic_ohlcv(args.bars, seed=args.seed, freq=args.freq), args.out)
    except EngineError as exc:
        err.write(f"backtest-engine: error: {exc}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.write("\nbacktest-engine: interrupted\n")
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
