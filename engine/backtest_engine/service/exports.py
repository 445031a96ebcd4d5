"""Exports of a stored backtest: TradingView Pine Script, the trade list as CSV, a self-contained HTML report.

Pine: each built-in strategy is ported to Pine v5 with its parameters as `input`s and the execution
settings in the `strategy()` header, so a quant can eyeball the same logic on TradingView; the port is an
approximation (TradingView's fill and indicator conventions differ slightly), the engine stays the
reference. HTML: one file with inline SVG charts (equity, drawdown) and no external script, so it can be
mailed or archived and still open.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Sequence
from typing import Any

from backtest_engine.backtest import TRADE_COLUMNS

_SIGNALS: dict[str, str] = {
    "sma_crossover": "fastMa = ta.sma(close, fast)\nslowMa = ta.sma(close, slow)\n"
    "longCond = ta.crossover(fastMa, slowMa)\nshortCond = ta.crossunder(fastMa, slowMa)\nexitCond = false",
    "ema_crossover": "fastMa = ta.ema(close, fast)\nslowMa = ta.ema(close, slow)\n"
    "longCond = ta.crossover(fastMa, slowMa)\nshortCond = ta.crossunder(fastMa, slowMa)\nexitCond = false",
    "macd": "[macdLine, signalLine, _] = ta.macd(close, fast, slow, signal)\n"
    "longCond = ta.crossover(macdLine, signalLine)\nshortCond = ta.crossunder(macdLine, signalLine)\nexitCond = false",
    "sma_trend": "trendMa = ta.sma(close, period)\nlongCond = close > trendMa\nshortCond = close < trendMa\n"
    "exitCond = false",
    "buy_and_hold": "longCond = strategy.position_size == 0\nshortCond = false\nexitCond = false",
    "rsi_reversion": "rsiValue = ta.rsi(close, period)\nlongCond = rsiValue < lower\nshortCond = rsiValue > upper\n"
    "exitCond = ta.cross(rsiValue, exit_level)",
    "bollinger_reversion": "[middle, upperBand, lowerBand] = ta.bb(close, period, num_std)\n"
    "longCond = close < lowerBand\nshortCond = close > upperBand\nexitCond = ta.cross(close, middle)",
    "zscore_reversion": "dev = ta.stdev(close, period)\nz = dev > 0 ? (close - ta.sma(close, period)) / dev : 0.0\n"
    "longCond = z < -entry_z\nshortCond = z > entry_z\nexitCond = math.abs(z) < exit_z",
    "stochastic_reversion": "k = ta.stoch(close, high, low, k_period)\nd = ta.sma(k, d_period)\n"
    "longCond = d < lower\nshortCond = d > upper\nexitCond = ta.cross(d, 50)",
    "donchian_breakout": "upperCh = ta.highest(high, period)[1]\nlowerCh = ta.lowest(low, period)[1]\n"
    "longCond = close > upperCh\nshortCond = close < lowerCh\nexitCond = false",
    "atr_breakout": "centre = ta.sma(close, period)\nwidth = multiplier * ta.atr(period)\n"
    "longCond = close > centre + width\nshortCond = close < centre - width\nexitCond = ta.cross(close, centre)",
    "momentum": "change = close / close[lookback] - 1\nlongCond = change > threshold\nshortCond = change < -threshold\n"
    "exitCond = math.abs(change) <= threshold",
}


def _pine_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return json.dumps(str(value))


def _pine_input(name: str, value: Any) -> str:
    kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "float"
    if not isinstance(value, bool | int | float):
        kind = "string"
    return f"{name} = input.{kind}({_pine_value(value)}, {json.dumps(name)})"


def pine_script(row: dict[str, Any]) -> str:
    """Pine Script v5 source of the backtest's strategy with its parameters and execution settings."""
    strategy = str(row["strategy"])
    params: dict[str, Any] = dict(row["params"])
    config: dict[str, Any] = dict(row["config"])
    title = f"{strategy} ({row['symbol']}, backtest {row['id']})"
    header = [
        "//@version=5",
        f"// Exported by backtest-engine {row['engine_version']} from backtest {row['id']}.",
        f"// Data: {row['dataset_key']} {row['timeframe']} {row['start_time']} .. {row['end_time']}.",
        "// An approximate port: the engine's results are the reference.",
        (
            f"strategy({json.dumps(title)}, overlay=true, initial_capital={float(config.get('cash', 10000.0))!r}, "
            "commission_type=strategy.commission.percent, "
            f"commission_value={100 * float(config.get('commission', 0.0))!r}, "
            f"slippage={round(float(config.get('slippage_bps', 0.0)))}, default_qty_type=strategy.percent_of_equity, "
            f"default_qty_value={100 * float(config.get('fraction', 1.0))!r})"
        ),
        "",
    ]
    inputs = [_pine_input(name, value) for name, value in params.items()]
    if "allow_short" not in params:
        inputs.append('allow_short = input.bool(false, "allow_short")')
    body = _SIGNALS.get(strategy)
    if body is None:
        body = (
            f"// No Pine port of {strategy} yet: the signals below never fire.\n"
            "longCond = false\nshortCond = false\nexitCond = false"
        )
    execution = [
        "if longCond",
        '    strategy.entry("Long", strategy.long)',
        "if shortCond",
        "    if allow_short",
        '        strategy.entry("Short", strategy.short)',
        "    else",
        '        strategy.close("Long")',
        "if exitCond and not longCond and not shortCond",
        "    strategy.close_all()",
    ]
    stop, take = config.get("stop_loss"), config.get("take_profit")
    if stop or take:
        stop_expr = f"strategy.position_avg_price * (1 - {float(stop)!r})" if stop else "na"
        take_expr = f"strategy.position_avg_price * (1 + {float(take)!r})" if take else "na"
        execution += [
            "if strategy.position_size > 0",
            f'    strategy.exit("Long exit", "Long", stop={stop_expr}, limit={take_expr})',
        ]
    return "\n".join([*header, *inputs, "", body, "", *execution, ""])


def trades_csv(row: dict[str, Any]) -> str:
    """The trade list with the engine's documented columns, one trade per line."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(TRADE_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for trade in row["trades"]:
        writer.writerow({k: trade.get(k) for k in TRADE_COLUMNS})
    return out.getvalue()


def _downsample(values: Sequence[float], limit: int = 1_000) -> list[float]:
    if len(values) <= limit:
        return list(values)
    step = len(values) / limit
    return [values[int(i * step)] for i in range(limit)] + [values[-1]]


def _svg_line(values: Sequence[float], *, color: str, width: int = 900, height: int = 220, fill: bool = False) -> str:
    points = _downsample(values)
    if not points:
        return "<p>no data</p>"
    low, high = min(points), max(points)
    span = (high - low) or 1.0
    step = width / max(1, len(points) - 1)
    coords = " ".join(
        f"{i * step:.1f},{height - (v - low) / span * (height - 10) - 5:.1f}" for i, v in enumerate(points)
    )
    area = f'<polygon points="0,{height} {coords} {width},{height}" fill="{color}" opacity="0.2"/>' if fill else ""
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="none" role="img">'
        f'{area}<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>'
        f'<text x="4" y="14" font-size="12">{high:,.4g}</text>'
        f'<text x="4" y="{height - 4}" font-size="12">{low:,.4g}</text>'
        "</svg>"
    )


def drawdown_series(equity: Sequence[float]) -> list[float]:
    peak = float("-inf")
    out = []
    for value in equity:
        peak = max(peak, value)
        out.append(value / peak - 1.0 if peak > 0 else 0.0)
    return out


def html_report(row: dict[str, Any]) -> str:
    """One self-contained HTML page: summary, metrics, equity and drawdown charts, trade list."""
    esc = html.escape
    equity = [float(point["equity"]) for point in row["equity"]]
    metrics_rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{'undefined' if value is None else f'{value:,.6g}'}</td></tr>"
        for name, value in sorted(row["metrics"].items())
    )
    trades = row["trades"][:500]
    trade_rows = "".join(
        "<tr>" + "".join(f"<td>{esc(str(trade.get(c, '')))}</td>" for c in TRADE_COLUMNS) + "</tr>" for trade in trades
    )
    more = (
        f"<p>{len(row['trades']) - len(trades)} more trades in the CSV export.</p>" if len(row["trades"]) > 500 else ""
    )
    params = esc(json.dumps(row["params"], sort_keys=True))
    title = esc(f"Backtest {row['id']}: {row['strategy']} on {row['symbol']}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}h2{{margin-top:1.5em}}</style></head>
<body><h1>{title}</h1>
<p>Parameters: <code>{params}</code><br>Data: {esc(str(row["dataset_key"]))}, {esc(str(row["timeframe"]))},
{esc(str(row["start_time"]))} to {esc(str(row["end_time"]))} ({row["bars"]} bars)<br>
Engine version {esc(str(row["engine_version"]))}</p>
<h2>Equity</h2>{_svg_line(equity, color="#1f77b4")}
<h2>Drawdown</h2>{_svg_line(drawdown_series(equity), color="#d62728", fill=True)}
<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>{metrics_rows}</table>
<h2>Trades</h2><table><tr>{"".join(f"<th>{c}</th>" for c in TRADE_COLUMNS)}</tr>{trade_rows}</table>{more}
</body></html>
"""
