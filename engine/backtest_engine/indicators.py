"""Causal technical indicators on numpy arrays, and a per-run cache of them.

Every indicator value at bar t uses bars <= t only, and the first bars where the window is incomplete are
NaN (comparisons with NaN are False, so strategies stay flat while warming up). Moving sums use cumulative
sums and exponential filters use `scipy.signal.lfilter`, so every indicator is O(n) whatever the window.
`Bars` memoizes indicators by their arguments: a parameter sweep computes each SMA window once per
process, which is how sweeps stay fast without compiling anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.ndimage import maximum_filter1d, minimum_filter1d
from scipy.signal import lfilter

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def sma(values: FloatArray, period: int) -> FloatArray:
    """Simple moving average over the last `period` values."""
    out = np.full(values.size, np.nan)
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0:
        return out
    first = int(finite[0])  # indicators of indicators start with a NaN warm-up; skip it
    x = values[first:]
    if period > x.size:
        return out
    base = x[0]
    csum = np.cumsum(x - base)  # centring keeps the cumulative sum small and precise
    tail = np.empty(x.size - period + 1)
    tail[0] = csum[period - 1] / period
    tail[1:] = (csum[period:] - csum[:-period]) / period
    out[first + period - 1 :] = tail + base
    return out


def rolling_std(values: FloatArray, period: int) -> FloatArray:
    """Population standard deviation over the last `period` values (Bollinger's convention).

    pandas' rolling kernel updates the variance online, which stays accurate where the cumulative-sum
    shortcut (E[x^2] - E[x]^2) loses digits: small windows on large price levels.
    """
    out = pd.Series(values).rolling(period).std(ddof=0).to_numpy(dtype=np.float64)
    return np.asarray(np.maximum(out, 0.0), dtype=np.float64)


def ewm(values: FloatArray, alpha: float, warmup: int) -> FloatArray:
    """Exponential moving average seeded with the first value; the first `warmup - 1` outputs are NaN."""
    out = np.full(values.size, np.nan)
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0:
        return out
    first = int(finite[0])
    x = values[first:]
    filtered, _ = lfilter([alpha], [1.0, alpha - 1.0], x, zi=np.array([(1.0 - alpha) * x[0]]))
    out[first:] = filtered
    out[: min(first + warmup - 1, values.size)] = np.nan
    return out


def ema(values: FloatArray, period: int) -> FloatArray:
    """EMA with alpha = 2 / (period + 1), NaN for the first period - 1 bars."""
    return ewm(values, 2.0 / (period + 1.0), period)


def wilder(values: FloatArray, period: int) -> FloatArray:
    """Wilder's smoothing (alpha = 1 / period), as used by RSI and ATR."""
    return ewm(values, 1.0 / period, period)


def rolling_max(values: FloatArray, period: int) -> FloatArray:
    """Highest value of the last `period` values (trailing window)."""
    out = maximum_filter1d(values, size=period, origin=(period - 1) // 2, mode="nearest")
    out = np.asarray(out, dtype=np.float64)
    out[: period - 1] = np.nan
    return out


def rolling_min(values: FloatArray, period: int) -> FloatArray:
    """Lowest value of the last `period` values (trailing window)."""
    out = minimum_filter1d(values, size=period, origin=(period - 1) // 2, mode="nearest")
    out = np.asarray(out, dtype=np.float64)
    out[: period - 1] = np.nan
    return out


def shift(values: FloatArray, periods: int = 1) -> FloatArray:
    """Values moved `periods` bars later, NaN-filled at the start."""
    out = np.full(values.size, np.nan)
    if periods < values.size:
        out[periods:] = values[: values.size - periods]
    return out


def rsi(close: FloatArray, period: int) -> FloatArray:
    """Wilder's relative strength index in [0, 100]."""
    change = np.diff(close, prepend=np.nan)
    gain = wilder(np.where(change > 0, change, 0.0)[1:], period)
    loss = wilder(np.where(change < 0, -change, 0.0)[1:], period)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(loss == 0, 100.0, 100.0 - 100.0 / (1.0 + gain / loss))
    value = np.where(np.isnan(gain), np.nan, value)
    return np.concatenate(([np.nan], value))


def true_range(high: FloatArray, low: FloatArray, close: FloatArray) -> FloatArray:
    """Bar range extended to the previous close; the first bar uses its own range."""
    prev = shift(close)
    prev[0] = close[0]
    return np.maximum(high, prev) - np.minimum(low, prev)


def hold_from_events(events: FloatArray) -> FloatArray:
    """Forward-fill a sparse event array (NaN = no event) into a position target; flat before the first."""
    if np.isnan(events[0]):
        events = events.copy()
        events[0] = 0.0
    index = np.where(np.isnan(events), 0, np.arange(events.size))
    np.maximum.accumulate(index, out=index)
    return events[index]


def hold_sparse_events(bars: IntArray, values: FloatArray, size: int) -> FloatArray:
    """Like `hold_from_events`, for events given as sorted bar positions and values: one pass to expand."""
    out = np.zeros(size)
    if bars.size:
        lengths = np.diff(np.append(bars, size))
        out[bars[0] :] = np.repeat(values, lengths)
    return out


@dataclass
class Bars:
    """OHLCV arrays of one data set plus a memo of indicators computed on them."""

    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    _memo: dict[tuple[Any, ...], FloatArray] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return int(self.close.size)

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], FloatArray]) -> FloatArray:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def sma(self, period: int) -> FloatArray:
        return self._cached(("sma", period), lambda: self._sma_from_cumsum(period))

    def _sma_from_cumsum(self, period: int) -> FloatArray:
        """SMA of the close from one shared cumulative sum: a sweep over many windows pays for it once."""
        close = self.close
        out = np.full(close.size, np.nan)
        if period > close.size:
            return out
        base = float(close[0])
        csum = self._cached(("close_cumsum",), lambda: np.cumsum(close - base))
        out[period - 1] = csum[period - 1] / period
        np.subtract(csum[period:], csum[:-period], out=out[period:])
        out[period:] /= period
        out += base
        return out

    def ema(self, period: int) -> FloatArray:
        return self._cached(("ema", period), lambda: ema(self.close, period))

    def std(self, period: int) -> FloatArray:
        return self._cached(("std", period), lambda: rolling_std(self.close, period))

    def rsi(self, period: int) -> FloatArray:
        return self._cached(("rsi", period), lambda: rsi(self.close, period))

    def atr(self, period: int) -> FloatArray:
        return self._cached(("atr", period), lambda: wilder(true_range(self.high, self.low, self.close), period))

    def highest(self, period: int) -> FloatArray:
        return self._cached(("highest", period), lambda: rolling_max(self.high, period))

    def lowest(self, period: int) -> FloatArray:
        return self._cached(("lowest", period), lambda: rolling_min(self.low, period))
