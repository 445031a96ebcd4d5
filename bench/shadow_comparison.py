"""Shadow comparisons per second of full engine results on one core, against plain deep equality of the
same JSON measured in the same run. Not a test: it prints numbers (`make bench-shadow`).

Input: real engine answers (BacktestDetail: every metric, the trade list, the per-bar equity curve) of
`sma_crossover` on synthetic daily data of several lengths, as stable and canary would send them: same
result, different id, timestamps, version and timing, serialized by two processes. Each comparison starts
from the two response bodies (bytes), as in the router, and includes parsing them.
- `rules (match)`: ComparisonRules.compare on a correct canary, both bodies serialized as the engine does
  (Starlette's JSONResponse: compact json.dumps), the usual case: fields with equal bytes are not parsed;
- `rules (mismatch)`: the same with the canary's return metrics biased by 2 % (ENGINE_FAULT_RESULT_BIAS);
- `rules (match, other serializer)`: the worst case, a canary that spaces, orders and spells numbers
  differently, so that every field is parsed and compared value by value;
- baseline `json ==`: stdlib json.loads of both bodies and `==` of the two objects (with the ignored
  fields removed, so that it can say "equal"), i.e. what a naive exact comparison costs;
- `msgspec ==`: the same with msgspec's decoder, the parser the rules use.
Throughput is per CPU second of this process (time.process_time), pinned to one core, so that other load
on a shared machine changes wall time but hardly the result; wall-clock rates are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from backtest_engine.router.comparison import IGNORED_FIELDS, ComparisonOutcome, ComparisonRules, ShadowKind
from backtest_engine.service.faults import biased

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_result import engine_json, engine_result

RULES = ComparisonRules()


def rate(work: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(operations per CPU second, per wall second) of `work` run repeatedly for about `seconds`."""
    work()  # warm up
    count = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        for _ in range(10):
            work()
        count += 10
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return count / cpu, count / wall


def without_ignored(body: bytes, loads: Callable[[bytes], Any]) -> Any:
    value = loads(body)
    for name in IGNORED_FIELDS:
        value.pop(name, None)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, nargs="+", default=[1000, 2520, 5000])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core (default: the first allowed)")
    parser.add_argument("--json", help="write the results here too")
    opts = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    core = opts.cpu if opts.cpu is not None else allowed[0]
    os.sched_setaffinity(0, {core})
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "pinned_core": core},
        "loadavg_at_start": os.getloadavg(),
        "sizes": {},
    }
    for bars in opts.bars:
        stable_result = engine_result(bars, "stable-v1", "2026-01-01T00:00:00")
        canary_result = engine_result(bars, "canary-v2", "2026-01-01T00:00:07")
        stable = engine_json(stable_result)
        canary = engine_json(canary_result)
        wrong = engine_json(biased(canary_result, 0.02))
        other = json.dumps(dict(reversed(canary_result.items())), indent=1).encode()  # another serializer
        for body, outcome in ((canary, "match"), (wrong, "mismatch"), (other, "match")):
            verdict = RULES.compare(ShadowKind.BACKTEST_RESULT, 201, stable, 200, body)
            assert verdict.outcome is ComparisonOutcome(outcome), verdict
        assert without_ignored(stable, json.loads) == without_ignored(canary, json.loads)
        cases: dict[str, Callable[[], object]] = {
            "rules (match)": lambda s=stable, c=canary: RULES.compare(ShadowKind.BACKTEST_RESULT, 201, s, 201, c),
            "rules (mismatch)": lambda s=stable, w=wrong: RULES.compare(ShadowKind.BACKTEST_RESULT, 201, s, 200, w),
            "rules (match, other serializer)": lambda s=stable, o=other: RULES.compare(
                ShadowKind.BACKTEST_RESULT, 201, s, 200, o
            ),
            "baseline json ==": lambda s=stable, c=canary: (
                without_ignored(s, json.loads) == without_ignored(c, json.loads)
            ),
            "msgspec ==": lambda s=stable, c=canary: (
                without_ignored(s, msgspec.json.decode) == without_ignored(c, msgspec.json.decode)
            ),
        }
        row: dict[str, Any] = {
            "body_bytes": len(stable),
            "trades": len(stable_result["trades"]),
            "metrics": len(stable_result["metrics"]),
            "equity_points": len(stable_result["equity"]),
        }
        for name, work in cases.items():
            per_cpu, per_wall = rate(work, opts.seconds)
            row[name] = {"per_cpu_second": round(per_cpu), "per_wall_second": round(per_wall)}
        base = row["baseline json =="]["per_cpu_second"]
        row["ratio rules (match) / baseline"] = round(row["rules (match)"]["per_cpu_second"] / base, 2)
        for name in ("rules (mismatch)", "rules (match, other serializer)", "msgspec =="):
            row[f"ratio {name} / baseline"] = round(row[name]["per_cpu_second"] / base, 2)
        out["sizes"][f"{bars} bars"] = row
    out["loadavg_at_end"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    print(text)
    if opts.json:
        with open(opts.json, "w") as sink:
            sink.write(text + "\n")


if __name__ == "__main__":
    main()
