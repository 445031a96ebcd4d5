"""Indicators agree with pandas' rolling and exponential windows (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backtest_engine.indicators import ema, rolling_max, rolling_min, rolling_std, rsi, sma

PRICES = 100 * np.exp(np.random.default_rng(7).normal(0, 0.01, 600).cumsum())
SERIES = pd.Series(PRICES)


@pytest.mark.parametrize("period", [1, 2, 5, 20, 200])
def test_rolling_indicators_match_pandas_when_the_window_is_full(period):
    np.testing.assert_allclose(sma(PRICES, period), SERIES.rolling(period).mean(), rtol=1e-10)
    np.testing.assert_allclose(rolling_max(PRICES, period), SERIES.rolling(period).max())
    np.testing.assert_allclose(rolling_min(PRICES, period), SERIES.rolling(period).min())
    if period > 1:  # exact reference: numpy's two-pass standard deviation of every window
        windows = np.lib.stride_tricks.sliding_window_view(PRICES, period)
        expected = np.concatenate((np.full(period - 1, np.nan), windows.std(axis=1)))
        # pandas updates the variance online; pandas 3 differs from the two-pass value by ~1e-9 relative
        # in a window after a large move, far below any price tick.
        np.testing.assert_allclose(rolling_std(PRICES, period), expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("period", [3, 12, 50])
def test_ema_matches_pandas_ewm_after_its_warm_up_when_seeded_with_the_first_value(period):
    expected = SERIES.ewm(span=period, adjust=False).mean().to_numpy()
    ours = ema(PRICES, period)
    assert np.isnan(ours[: period - 1]).all()
    np.testing.assert_allclose(ours[period - 1 :], expected[period - 1 :], rtol=1e-12)


def test_rsi_matches_wilder_smoothing_in_pandas_when_computed_on_the_same_prices():
    period = 14
    change = SERIES.diff()
    gain = change.clip(lower=0).iloc[1:].ewm(alpha=1 / period, adjust=False).mean()
    loss = (-change.clip(upper=0)).iloc[1:].ewm(alpha=1 / period, adjust=False).mean()
    expected = (100 - 100 / (1 + gain / loss)).to_numpy()
    ours = rsi(PRICES, period)
    assert np.isnan(ours[:period]).all()
    np.testing.assert_allclose(ours[period:], expected[period - 1 :], rtol=1e-10)


def test_sma_skips_a_leading_warm_up_when_its_input_starts_with_nan():
    values = np.concatenate(([np.nan] * 5, PRICES[:50]))
    out = sma(values, 10)
    assert np.isnan(out[:14]).all()
    np.testing.assert_allclose(out[14:], pd.Series(PRICES[:50]).rolling(10).mean().to_numpy()[9:], rtol=1e-12)
