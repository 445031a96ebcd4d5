"""OHLCV validation, loading and the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backtest_engine.data import (
    infer_periods_per_year,
    load_ohlcv,
    save_ohlcv,
    synthetic_ohlcv,
    validate_ohlcv,
)
from backtest_engine.errors import InvalidData


def _good_frame() -> pd.DataFrame:
    return synthetic_ohlcv(20, seed=3).reset_index()


@pytest.mark.parametrize(
    ("column", "row", "value", "message"),
    [
        ("close", 7, np.nan, "close is missing"),
        ("high", 4, 1.0, "high is below"),
        ("low", 9, 10_000.0, "low is above"),
        ("volume", 12, -5.0, "volume is negative"),
        ("open", 3, -1.0, "prices must be positive"),
    ],
)
def test_validation_names_the_bad_row_when_a_value_breaks_a_rule(column, row, value, message):
    frame = _good_frame()
    frame.loc[row, column] = value
    with pytest.raises(InvalidData, match=message) as caught:
        validate_ohlcv(frame)
    assert caught.value.row == row
    assert f"row {row}" in str(caught.value)


def test_validation_names_the_row_when_timestamps_repeat_or_go_backwards():
    frame = _good_frame()
    frame.loc[5, "time"] = frame.loc[4, "time"]
    with pytest.raises(InvalidData, match="duplicate timestamp") as caught:
        validate_ohlcv(frame)
    assert caught.value.row == 5
    frame = _good_frame()
    frame.loc[8, "time"] = frame.loc[2, "time"] - pd.Timedelta(days=1)
    with pytest.raises(InvalidData, match="out-of-order") as caught:
        validate_ohlcv(frame)
    assert caught.value.row == 8


def test_validation_rejects_a_frame_when_a_column_is_missing():
    with pytest.raises(InvalidData, match="missing column"):
        validate_ohlcv(_good_frame().drop(columns=["volume"]))


def test_validation_accepts_column_names_in_any_case_when_they_match():
    frame = _good_frame().rename(columns=str.upper)
    out = validate_ohlcv(frame)
    assert list(out.columns) == ["open", "high", "low", "close", "volume"]
    assert out.index.name == "time"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_loader_round_trips_a_frame_when_written_as_csv_or_parquet(tmp_path: Path, suffix: str):
    original = synthetic_ohlcv(50, seed=4)
    path = tmp_path / f"bars{suffix}"
    save_ohlcv(original, path)
    loaded = load_ohlcv(path)
    assert loaded.index.equals(original.index)
    np.testing.assert_allclose(loaded.to_numpy(), original.to_numpy(), rtol=1e-6)


def test_loader_reports_the_row_when_a_csv_holds_text_in_a_price(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text("Time,Open,High,Low,Close,Volume\n2024-01-01,1,2,0.5,1.5,10\n2024-01-02,1,2,0.5,oops,10\n")
    with pytest.raises(InvalidData, match="close") as caught:
        load_ohlcv(path)
    assert caught.value.row == 1


def test_loader_rejects_the_file_when_its_type_is_unknown(tmp_path: Path):
    path = tmp_path / "bars.xlsx"
    path.write_text("x")
    with pytest.raises(InvalidData, match="unsupported"):
        load_ohlcv(path)


def test_synthetic_generator_is_deterministic_when_seeded():
    first, second = synthetic_ohlcv(300, seed=9), synthetic_ohlcv(300, seed=9)
    pd.testing.assert_frame_equal(first, second)
    assert not synthetic_ohlcv(300, seed=10).equals(first)


def test_synthetic_generator_produces_valid_bars_with_clustered_volatility_when_long():
    bars = validate_ohlcv(synthetic_ohlcv(20_000, seed=2))
    log_returns = np.diff(np.log(bars["close"].to_numpy()))
    squared = log_returns**2
    # Regime switching makes squared returns autocorrelated (volatility clustering); plain GBM would not.
    autocorrelation = np.corrcoef(squared[1:], squared[:-1])[0, 1]
    assert autocorrelation > 0.05


def test_periods_per_year_counts_observed_bars_when_inferred():
    business_days = pd.date_range("2020-01-01", "2023-12-31", freq="B")
    calendar_days = pd.date_range("2020-01-01", "2023-12-31", freq="D")
    assert 255 < infer_periods_per_year(pd.DatetimeIndex(business_days)) < 265
    assert 364 < infer_periods_per_year(pd.DatetimeIndex(calendar_days)) < 366
