"""Render docs/metrics.md from the metric registry, so the documentation cannot drift from the code.

Run `python -m backtest_engine.metrics.reference > docs/metrics.md`; a test fails when the file is stale.
"""

from __future__ import annotations

import sys

from backtest_engine.metrics.registry import GROUPS, all_metrics

HEADER = """# Metrics reference

Generated from the metric registry by `python -m backtest_engine.metrics.reference > docs/metrics.md`
(`make engine-docs`); a unit test fails when this file is stale. {count} metrics in {groups} groups.

## Conventions

- **Returns** are per-bar changes of the equity curve (equity marked to market on every bar's close);
  the first bar's return is measured against the initial cash (it is 0 in a backtest, because no
  position can be held on the first bar).
- **Annualization**: P = periods per year. Unless the caller passes `periods_per_year`, P is the number of
  bars actually observed per calendar year: (bars - 1) / (span of the data in 365.25-day years). This
  gives about 252-261 for equity daily bars, 365 for crypto daily bars, and the true bar count for
  intraday data. Means are annualized by multiplying by P, standard deviations by sqrt(P); "years" is
  bars / P.
- **Risk-free rate**: annual, default 0; subtracted from every bar's return as rf / P (empyrical's
  convention when it is given per bar).
- **Standard deviations** use ddof = 1 (sample), like empyrical; skewness and kurtosis are the biased
  (population) estimators, like scipy's defaults.
- **Drawdowns** are non-positive fractions of the running peak, and the initial cash counts as a peak.
- **Benchmark**: buying and holding the traded instrument (close-to-close returns) unless another price
  series is passed to `run_backtest(benchmark=...)`.
- **Trades**: `pnl` is in currency after both commissions and slippage; `return` is pnl divided by the
  entry notional. Wins have pnl > 0, losses pnl < 0. A position still open on the last bar is closed on
  its close, so every run's trade list is complete.
- **Undefined values**: when a metric has no value for a run (no trades, flat equity, a zero denominator)
  it is reported as `null` (Python `None`), never as 0 and never as NaN or infinity, so results are strict
  JSON and a run that never traded cannot outrank one with a real, negative value. The "undefined when"
  column says when. Rankings (optimization best-of, `sort=` on `GET /api/v1/backtests`) put undefined
  values last in either direction, and best-of lists leave them out; metric filters never match them.
- **Rolling** statistics use windows of round(P / 4) bars (a quarter, at least 2) ending every
  max(1, window // 20) bars and on the last bar; consecutive windows overlap by 95% or more.
- **Structure** metrics are reported only for strategies that detect market structure (`pivot_bos`).
"""

UNITS = {
    "fraction": "fraction (0.05 = 5%)",
    "ratio": "ratio",
    "bars": "bars",
    "count": "count",
    "currency": "currency",
}


def render_markdown() -> str:
    metrics = all_metrics()
    lines = [HEADER.format(count=len(metrics), groups=len(GROUPS))]
    for group in GROUPS:
        in_group = [m for m in metrics if m.group == group]
        lines.append(f"## {group.capitalize()} ({len(in_group)})\n")
        lines.append("| metric | definition | unit | undefined when |")
        lines.append("|---|---|---|---|")
        for m in in_group:
            definition = m.definition.replace("|", "\\|")
            undefined = (m.undefined_when or "never").replace("|", "\\|")
            lines.append(f"| `{m.name}` | {definition} | {UNITS.get(m.unit, m.unit)} | {undefined} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
