"""The `backtest-engine` command line: the JSON contract, tables, progress and exit code 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from backtest_engine.cli import main
from backtest_engine.data import save_ohlcv, synthetic_ohlcv

CONTRACT_METRICS = {
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
TRADE_KEYS = {"entry_time", "exit_time", "entry_price", "exit_price", "size", "pnl", "return"}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "bars.csv"
    save_ohlcv(synthetic_ohlcv(700, seed=5), path)
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_run_prints_the_contract_json_when_asked_for_json(data_file):
    code, out, _ = cli(
        "run",
        "--strategy",
        "sma_crossover",
        "--param",
        "fast=10",
        "--param",
        "slow=50",
        "--data",
        str(data_file),
        "--commission",
        "0.001",
        "--cash",
        "10000",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert set(result["metrics"]) >= CONTRACT_METRICS
    assert result["trades"] and set(result["trades"][0]) >= TRADE_KEYS
    assert result["params"] == {"fast": 10, "slow": 50, "allow_short": True}
    assert sum(t["pnl"] for t in result["trades"]) == pytest.approx(result["metrics"]["final_equity"] - 10_000)


def test_run_prints_a_metric_table_when_json_is_not_requested(data_file):
    code, out, _ = cli("run", "--strategy", "macd", "--data", str(data_file))
    assert code == 0
    assert any(line.startswith("sharpe_ratio ") for line in out.splitlines())


def test_strategies_lists_names_parameters_and_defaults_when_asked_for_json():
    code, out, _ = cli("strategies", "--json")
    listed = {s["name"]: s for s in json.loads(out)}
    assert code == 0 and len(listed) >= 12
    assert listed["sma_crossover"]["defaults"] == {"fast": 10, "slow": 50, "allow_short": True}
    assert "fast" in listed["sma_crossover"]["parameters"]["properties"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--strategy", "nope"], "nope"),
        (["--strategy", "sma_crossover", "--param", "fast=abc"], "fast"),
        (["--strategy", "sma_crossover", "--param", "fast=80"], "fast"),
        (["--strategy", "sma_crossover", "--param", "bogus=1"], "bogus"),
        (["--strategy", "sma_crossover", "--commission", "0.5"], "commission"),
    ],
)
def test_bad_input_exits_2_naming_it_when_running(data_file, args, named):
    code, out, err = cli("run", *args, "--data", str(data_file))
    assert code == 2 and out == ""
    assert named in err


def test_malformed_data_exits_2_naming_the_row_when_running(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text("time,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,1\n2024-01-02,1,1.2,0.5,1.5,1\n")
    code, _, err = cli("run", "--strategy", "sma_crossover", "--data", str(path))
    assert code == 2 and "row 1" in err


def test_optimize_shows_a_progress_bar_and_ranks_results_when_run(data_file):
    code, out, err = cli(
        "optimize",
        "--strategy",
        "sma_crossover",
        "--data",
        str(data_file),
        "--grid",
        "fast=5,10",
        "--grid",
        "slow=20:40:10",
        "--workers",
        "1",
        "--metric",
        "total_return",
    )
    assert code == 0
    assert "6/6" in err and "[" in err
    assert out.splitlines()[0].startswith("6/6 parameter sets")


def test_optimize_prints_json_with_the_best_parameters_when_asked(data_file):
    code, out, _ = cli(
        "optimize",
        "--strategy",
        "ema_crossover",
        "--data",
        str(data_file),
        "--grid",
        "fast=3,5",
        "--grid",
        "slow=20,30",
        "--workers",
        "1",
        "--json",
    )
    result = json.loads(out)
    assert code == 0 and result["evaluated"] == 4 and result["best_params"] == result["results"][0]["params"]


def test_optimize_walk_forward_prints_folds_with_out_of_sample_values_when_requested(data_file):
    code, out, _ = cli(
        "optimize",
        "--strategy",
        "sma_crossover",
        "--data",
        str(data_file),
        "--grid",
        "fast=5,10",
        "--grid",
        "slow=20,40",
        "--workers",
        "1",
        "--walk-forward",
        "2",
        "--metric",
        "total_return",
    )
    result = json.loads(out)
    assert code == 0 and len(result["folds"]) == 2
    assert all({"params", "in_sample", "out_of_sample"} <= set(fold) for fold in result["folds"])


def test_synthetic_writes_a_loadable_file_when_asked(tmp_path: Path):
    path = tmp_path / "bars.parquet"
    code, _, _ = cli("synthetic", "--bars", "300", "--seed", "3", "--out", str(path))
    assert code == 0
    code, out, _ = cli("run", "--strategy", "buy_and_hold", "--data", str(path), "--json")
    assert code == 0 and json.loads(out)["metrics"]["num_trades"] == 1


@pytest.mark.parametrize("grid", ["fast", "fast=9:3:1", "fast=a:b:c"])
def test_malformed_grid_exits_2_naming_it_when_optimizing(data_file, grid):
    code, out, err = cli("optimize", "--strategy", "sma_crossover", "--data", str(data_file), "--grid", grid)
    assert code == 2 and out == "" and "fast" in err
