"""Datasets a backtest can run on: uploaded CSV/Parquet files, or seeded synthetic series.

Uploads are validated by the library (`validate_ohlcv`), normalized (UTC, naive timestamps) and stored
gzip-compressed as CSV; the id is the SHA-256 of that normalized content, so uploading the same data
twice yields the same dataset and the same cache keys. Synthetic datasets (symbol, bars, seed) need no
upload at all, which is what load tests and the demo use.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd

from backtest_engine.data import synthetic_ohlcv, validate_ohlcv
from backtest_engine.errors import InvalidData

PARQUET_MAGIC = b"PAR1"
_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def timeframe_of(index: pd.DatetimeIndex) -> str:
    """The typical bar spacing as a short label ("1d", "4h", "5m"); weekends do not change "1d"."""
    if len(index) < 2:
        return "unknown"
    per_second = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[index.unit]
    steps = np.diff(index.asi8) / per_second
    seconds = float(np.median(steps))
    for suffix, unit in _UNITS:
        if seconds >= unit and seconds % unit == 0:
            return f"{int(seconds // unit)}{suffix}"
    return f"{seconds:g}s"


def _to_utc_naive(frame: pd.DataFrame) -> pd.DataFrame:
    index = pd.DatetimeIndex(frame.index)
    if index.tz is not None:
        frame = frame.copy()
        frame.index = index.tz_convert("UTC").tz_localize(None)
        frame.index.name = "time"
    return frame


def parse_upload(content: bytes, filename: str) -> pd.DataFrame:
    """Parse and validate uploaded bytes (Parquet by magic number or suffix, else CSV)."""
    if not content:
        raise InvalidData("the file is empty")
    is_parquet = content[:4] == PARQUET_MAGIC or filename.lower().endswith((".parquet", ".pq"))
    try:
        raw = pd.read_parquet(io.BytesIO(content)) if is_parquet else pd.read_csv(io.BytesIO(content))
    except Exception as exc:  # any parser failure is the client's bad file, not our bug
        kind = "Parquet" if is_parquet else "CSV"
        raise InvalidData(f"not a readable {kind} file ({type(exc).__name__})") from None
    try:
        frame = validate_ohlcv(raw)
    except InvalidData:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidData(f"unusable values ({type(exc).__name__})") from None
    return _to_utc_naive(frame)


def encode(frame: pd.DataFrame) -> bytes:
    """Normalized CSV, gzip-compressed with a fixed mtime so equal data gives equal bytes."""
    text = frame.reset_index().to_csv(index=False, float_format="%.10g", date_format="%Y-%m-%dT%H:%M:%S.%f")
    return gzip.compress(text.encode(), mtime=0)


def decode(content: bytes) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(gzip.decompress(content)), parse_dates=["time"], index_col="time")
    return validate_ohlcv(frame)


def dataset_row(frame: pd.DataFrame, name: str, symbol: str) -> dict[str, Any]:
    """Everything the store keeps about a dataset (id = SHA-256 of the normalized content)."""
    content = encode(frame)
    index = pd.DatetimeIndex(frame.index)
    return {
        "id": hashlib.sha256(gzip.decompress(content)).hexdigest()[:32],
        "name": name,
        "symbol": symbol,
        "timeframe": timeframe_of(index),
        "bars": len(frame),
        "start_time": index[0].to_pydatetime(),
        "end_time": index[-1].to_pydatetime(),
        "size_bytes": len(content),
        "content": content,
    }


def synthetic_frame(bars: int, seed: int) -> pd.DataFrame:
    return synthetic_ohlcv(bars, seed=seed)


class FrameCache:
    """A small LRU of decoded frames, so repeated backtests on one dataset skip gunzip and CSV parsing."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._frames: OrderedDict[str, pd.DataFrame] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> pd.DataFrame | None:
        with self._lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
            return frame

    def put(self, key: str, frame: pd.DataFrame) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._frames[key] = frame
            self._frames.move_to_end(key)
            while len(self._frames) > self.size:
                self._frames.popitem(last=False)
