"""Exports rendered from stored rows: Pine Script for every strategy, CSV trades, HTML report."""

from __future__ import annotations

import pytest

from backtest_engine.service.exports import drawdown_series, html_report, pine_script, trades_csv
from backtest_engine.strategies import get_strategy, strategy_names


def stored_row(strategy: str, **config):
    return {
        "id": "abc",
        "strategy": strategy,
        "symbol": "SYN",
        "params": get_strategy(strategy).defaults(),
        "config": {"cash": 5000.0, "commission": 0.002, "slippage_bps": 3.0, "fraction": 0.5, **config},
        "engine_version": "1.2.3",
        "dataset_key": "synthetic:SYN:100:0",
        "timeframe": "1d",
        "start_time": "2015-01-02",
        "end_time": "2015-06-01",
        "bars": 100,
        "metrics": {"sharpe_ratio": 1.25, "total_return": 0.1},
        "trades": [{"entry_time": "2015-01-05", "exit_time": "2015-01-09", "direction": "long", "pnl": 12.5}],
        "equity": [{"time": "2015-01-02", "equity": v} for v in (100.0, 110.0, 99.0, 120.0)],
    }


@pytest.mark.parametrize("strategy", strategy_names())
def test_pine_declares_every_parameter_as_an_input_when_exported(strategy: str):
    script = pine_script(stored_row(strategy))
    assert script.startswith("//@version=5\n")
    for name in get_strategy(strategy).defaults():
        assert f"{name} = input." in script
    assert "initial_capital=5000.0" in script and "commission_value=0.2" in script
    assert "default_qty_value=50.0" in script and "slippage=3" in script
    assert "longCond" in script and "strategy.entry" in script


def test_pine_ports_every_strategy_but_pivot_bos_when_exported():
    unported = [s for s in strategy_names() if "No Pine port" in pine_script(stored_row(s))]
    assert unported == ["pivot_bos"]


def test_pine_adds_stop_and_target_exits_when_configured():
    script = pine_script(stored_row("sma_crossover", stop_loss=0.05, take_profit=0.2))
    assert "strategy.position_avg_price * (1 - 0.05)" in script
    assert "strategy.position_avg_price * (1 + 0.2)" in script


def test_csv_has_the_engine_trade_columns_when_exported():
    lines = trades_csv(stored_row("macd")).splitlines()
    assert lines[0].startswith("entry_time,exit_time,direction,size,entry_price")
    assert lines[1].startswith("2015-01-05,2015-01-09,long,")


def test_drawdown_is_measured_from_the_running_peak_when_equity_recovers():
    assert drawdown_series([100.0, 110.0, 99.0, 120.0]) == pytest.approx([0.0, 0.0, -0.1, 0.0])


def test_html_report_escapes_values_when_they_hold_markup():
    row = stored_row("macd")
    row["params"] = {"note": "<script>alert(1)</script>"}
    page = html_report(row)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page
    assert page.count("<svg") == 2
