"""Shared fixtures of the engine tests: small deterministic OHLCV frames built by the library itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backtest_engine.data import synthetic_ohlcv


@pytest.fixture(scope="session")
def daily_bars() -> pd.DataFrame:
    """1,500 business days of regime-switching GBM: enough trades for every strategy, fast to backtest."""
    return synthetic_ohlcv(1_500, seed=11)


def frame_from_prices(opens: list[float], highs: list[float], lows: list[float], closes: list[float]) -> pd.DataFrame:
    """A small hand-written OHLCV frame on consecutive days (for hand-checked execution scenarios)."""
    index = pd.date_range("2024-01-01", periods=len(closes), freq="D", name="time")
    return pd.DataFrame(
        {"open": opens, "high": highs, "low": lows, "close": closes, "volume": np.ones(len(closes))},
        index=index,
    )
