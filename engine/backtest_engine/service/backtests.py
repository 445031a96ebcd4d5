"""Running backtests for HTTP clients: resolve the data, compute the cache key, run or reuse.

The cache key is (strategy, params_hash, dataset_key, timeframe, start, end, engine_version), where the
parameter hash covers the tenant, the validated strategy parameters *and* the execution settings, so two
requests differing only in commission never share a result, while `{"fast": "10"}` and `{"fast": 10}` do,
and one tenant's request never returns another tenant's row. The store is the results cache every
replica shares; this process only remembers which row id a key maps to.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from typing import Any

import pandas as pd

from backtest_engine.backtest import run_backtest
from backtest_engine.errors import EngineError
from backtest_engine.service import datasets
from backtest_engine.service.metrics import EngineMetrics
from backtest_engine.service.problems import FieldError, NotFound, engine_error_field
from backtest_engine.service.schemas import BacktestRequest, DataSelection
from backtest_engine.service.store import Store
from backtest_engine.strategies import get_strategy, validate_params

SUMMARY_METRICS = ("total_return", "cagr", "sharpe_ratio", "max_drawdown", "num_trades", "win_rate")


class DataSlice:
    """A validated frame with what identifies it in the cache key."""

    def __init__(self, frame: pd.DataFrame, key: str, dataset_id: str | None, symbol: str) -> None:
        index = pd.DatetimeIndex(frame.index)
        self.frame = frame
        self.key = key
        self.dataset_id = dataset_id
        self.symbol = symbol
        self.timeframe = datasets.timeframe_of(index)
        self.start = index[0].to_pydatetime()
        self.end = index[-1].to_pydatetime()
        self.bars = len(frame)


class KeyIndex:
    """LRU of cache key -> result id (ENGINE_CACHE_SIZE entries): a hit skips the composite-index lookup."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[tuple[Any, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> str | None:
        with self._lock:
            found = self._ids.get(key)
            if found is not None:
                self._ids.move_to_end(key)
            return found

    def put(self, key: tuple[Any, ...], backtest_id: str) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._ids[key] = backtest_id
            self._ids.move_to_end(key)
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)


class Backtests:
    """The service's use of the library and the store for datasets and backtests."""

    def __init__(self, store: Store, metrics: EngineMetrics, engine_version: str, cache_size: int) -> None:
        self.store = store
        self.metrics = metrics
        self.engine_version = engine_version
        self.frames = datasets.FrameCache(16)
        self.keys = KeyIndex(cache_size)

    def load(self, selection: DataSelection, tenant: str | None) -> DataSlice:
        """The frame a request selects, sliced to its time range; 404 for another tenant's or an unknown
        dataset, 422 for an empty range."""
        if selection.dataset_id is not None:
            meta = self.store.get_dataset(selection.dataset_id, tenant)
            if meta is None:
                raise NotFound("dataset", selection.dataset_id)
            cache_key = f"dataset:{selection.dataset_id}"
            frame = self.frames.get(cache_key)
            if frame is None:
                content = self.store.dataset_content(selection.dataset_id, tenant)
                if content is None:
                    raise NotFound("dataset", selection.dataset_id)
                frame = datasets.decode(content)
                self.frames.put(cache_key, frame)
            key, dataset_id, symbol = cache_key, selection.dataset_id, str(meta["symbol"])
        else:
            spec = selection.synthetic
            assert spec is not None  # the schema guarantees one source
            key = f"synthetic:{spec.symbol}:{spec.bars}:{spec.seed}"
            frame = self.frames.get(key)
            if frame is None:
                frame = datasets.synthetic_frame(spec.bars, spec.seed)
                self.frames.put(key, frame)
            dataset_id, symbol = None, spec.symbol
        if selection.start is not None or selection.end is not None:
            frame = frame.loc[selection.start : selection.end]
            if len(frame) < 2:
                field = "start" if selection.start is not None else "end"
                raise FieldError(field, f"the selected time range holds {len(frame)} bars; need at least 2")
        return DataSlice(frame, key, dataset_id, symbol)

    def cache_key(
        self, request: BacktestRequest, data: DataSlice, tenant: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(cache key columns, validated params); raises 422 for an unknown strategy or bad parameters."""
        try:
            get_strategy(request.strategy)
            params = validate_params(request.strategy, request.params).model_dump()
        except EngineError as error:
            raise engine_error_field(error) from None
        canonical = json.dumps(
            {"tenant": tenant, "params": params, "execution": request.execution.model_dump()},
            sort_keys=True,
            default=str,
        )
        key = {
            "strategy": request.strategy,
            "params_hash": hashlib.sha256(canonical.encode()).hexdigest(),
            "dataset_key": data.key,
            "timeframe": data.timeframe,
            "start_time": data.start,
            "end_time": data.end,
            "engine_version": self.engine_version,
        }
        return key, params

    def run(self, request: BacktestRequest, tenant: str, scope: str | None) -> tuple[dict[str, Any], bool]:
        """The tenant's result for a request and whether it came from the cache (no backtest run).

        `scope` is whose datasets the request may use: the tenant's, or every tenant's for an admin (None).
        """
        data = self.load(request, scope)
        key, params = self.cache_key(request, data, tenant)
        found = self._cached(key, tenant)
        self.metrics.cache(found is not None)
        if found is not None:
            self.metrics.backtest(request.strategy, "cached")
            return found, True
        started = time.perf_counter()
        try:
            result = run_backtest(
                data.frame, request.strategy, params, validate=False, **request.execution.model_dump()
            )
        except EngineError as error:
            self.metrics.backtest(request.strategy, "error")
            raise engine_error_field(error) from None
        except Exception:
            self.metrics.backtest(request.strategy, "error")
            raise
        payload = result.to_dict(include_equity=True)
        row = {
            "dataset_id": data.dataset_id,
            "symbol": data.symbol,
            "bars": data.bars,
            "params": payload["params"],
            "config": payload["config"],
            "trades": payload["trades"],
            "equity": payload["equity"],
            "metrics": payload["metrics"],
            "duration_seconds": time.perf_counter() - started,
        }
        stored, created = self.store.add_backtest(key, row, tenant)
        self.keys.put(_key_tuple(key), str(stored["id"]))
        self.metrics.backtest(request.strategy, "ok")
        return stored, not created

    def _cached(self, key: dict[str, Any], tenant: str) -> dict[str, Any] | None:
        remembered = self.keys.get(_key_tuple(key))
        if remembered is not None:
            row = self.store.get_backtest(remembered, tenant)
            if row is not None:
                return row
        row = self.store.find_backtest(key, tenant)
        if row is not None:
            self.keys.put(_key_tuple(key), str(row["id"]))
        return row


def _key_tuple(key: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(key.items()))


def summary(row: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stored row (or list row) as the API's BacktestSummary shape."""
    return {
        "id": row["id"],
        "strategy": row["strategy"],
        "params": row["params"],
        "dataset": {
            "key": row["dataset_key"],
            "id": row["dataset_id"],
            "symbol": row["symbol"],
            "timeframe": row["timeframe"],
            "start": row["start_time"],
            "end": row["end_time"],
            "bars": row["bars"],
        },
        "engine_version": row["engine_version"],
        "duration_seconds": row["duration_seconds"],
        "created_at": row["created_at"],
        "metrics": metrics if metrics is not None else row["metrics"],
    }


def detail(row: dict[str, Any], cached: bool) -> dict[str, Any]:
    return {
        **summary(row),
        "cached": cached,
        "config": row["config"],
        "trades": row["trades"],
        "equity": row["equity"],
    }
