"""Datasets a backtest can run on: uploaded CSV/Parquet files, or seeded synthetic series.

Uploads are bounded before they are loaded: a CSV's rows are counted as lines, a Parquet file's rows,
columns and uncompressed size are read from its footer, so a small file that would expand to millions of
rows is refused (413) without ever being parsed (`check_upload`). Only the OHLCV columns of a Parquet file
are read. Uploads are then validated by the library (`validate_ohlcv`), normalized (UTC, naive timestamps)
and stored gzip-compressed as CSV; the id is the SHA-256 of the tenant and that normalized content, so
the same tenant uploading the same data twice gets the same dataset, and another tenant its own.
Synthetic datasets (symbol, bars, seed) need no upload at all, which is what load tests and the demo use.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from backtest_engine.data import OHLCV_COLUMNS, TIME_COLUMN_ALIASES, synthetic_ohlcv, validate_ohlcv
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


WANTED_COLUMNS = frozenset((*OHLCV_COLUMNS, *TIME_COLUMN_ALIASES))
MAX_PARQUET_COLUMNS = 64


@dataclass(frozen=True)
class UploadLimits:
    max_rows: int
    """Rows (bars) a dataset may have."""
    max_uncompressed_bytes: int
    """Size of the data once decompressed (a Parquet file's pages; a CSV is its own size)."""


class UploadTooLarge(Exception):
    """The upload exceeds a limit; raised before the data is loaded (HTTP 413)."""


def is_parquet(content: bytes, filename: str) -> bool:
    return content[:4] == PARQUET_MAGIC or filename.lower().endswith((".parquet", ".pq"))


def check_upload(content: bytes, filename: str, limits: UploadLimits) -> None:
    """Refuse an upload over the row or uncompressed-size limit, reading only its footer or its line count."""
    if is_parquet(content, filename):
        try:
            metadata = pq.ParquetFile(pa.BufferReader(content)).metadata
        except Exception:  # an unreadable footer: parse_upload names the problem
            return
        rows, columns = metadata.num_rows, metadata.num_columns
        size = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
        if columns > MAX_PARQUET_COLUMNS:
            raise UploadTooLarge(f"the Parquet file has {columns} columns; at most {MAX_PARQUET_COLUMNS} are read")
    else:
        rows, size = content.count(b"\n"), len(content)
    if rows > limits.max_rows + 1:  # + 1: a CSV's header line
        raise UploadTooLarge(f"the file holds {rows} rows; the limit is {limits.max_rows} (ENGINE_MAX_UPLOAD_ROWS)")
    if size > limits.max_uncompressed_bytes:
        raise UploadTooLarge(
            f"the data is {size} bytes uncompressed; the limit is {limits.max_uncompressed_bytes} "
            "(ENGINE_MAX_UPLOAD_UNCOMPRESSED_BYTES)"
        )


def _read_parquet(content: bytes) -> pd.DataFrame:
    """Only the OHLCV columns (in any letter case) of a Parquet file, so extra columns cost nothing."""
    source = pq.ParquetFile(pa.BufferReader(content))
    wanted = [name for name in source.schema_arrow.names if name.strip().lower() in WANTED_COLUMNS]
    frame: pd.DataFrame = source.read(columns=wanted, use_pandas_metadata=True).to_pandas()
    return frame


def parse_upload(content: bytes, filename: str) -> pd.DataFrame:
    """Parse and validate uploaded bytes (Parquet by magic number or suffix, else CSV); call `check_upload` first."""
    if not content:
        raise InvalidData("the file is empty")
    parquet = is_parquet(content, filename)
    try:
        raw = _read_parquet(content) if parquet else pd.read_csv(io.BytesIO(content))
    except Exception as exc:  # any parser failure is the client's bad file, not our bug
        kind = "Parquet" if parquet else "CSV"
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


def dataset_row(frame: pd.DataFrame, name: str, symbol: str, tenant: str) -> dict[str, Any]:
    """Everything the store keeps about a dataset (id = SHA-256 of the tenant and the normalized content)."""
    content = encode(frame)
    index = pd.DatetimeIndex(frame.index)
    identity = hashlib.sha256(tenant.encode() + b"\0" + gzip.decompress(content))
    return {
        "id": identity.hexdigest()[:32],
        "tenant": tenant,
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
