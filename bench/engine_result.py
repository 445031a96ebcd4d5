"""A real engine answer for benchmarks: what `GET /api/v1/backtests/{id}` returns (BacktestDetail: every
metric, the trade list, the per-bar equity curve), serialized as the engine serializes it."""

from __future__ import annotations

import json
from typing import Any

from backtest_engine.backtest import run_backtest
from backtest_engine.service import datasets


def engine_result(bars: int, version: str = "bench", stamp: str = "2026-01-01T00:00:00") -> dict[str, Any]:
    """`sma_crossover` (10/40) on `bars` synthetic daily bars (seed 7), shaped as the API answers it."""
    run = run_backtest(datasets.synthetic_frame(bars, 7), "sma_crossover", {"fast": 10, "slow": 40})
    payload = run.to_dict(include_equity=True)
    return {
        "id": f"{version}-0000-4000-8000-000000000001",
        "strategy": payload["strategy"],
        "params": payload["params"],
        "dataset": {"key": f"synthetic:SYN:{bars}:7", "id": None, "symbol": "SYN", "timeframe": "1d", "bars": bars},
        "engine_version": version,
        "duration_seconds": 0.05,
        "created_at": stamp,
        "metrics": payload["metrics"],
        "cached": False,
        "config": payload["config"],
        "trades": payload["trades"],
        "equity": payload["equity"],
    }


def engine_json(value: dict[str, Any]) -> bytes:
    """Bytes as the engine's answers carry them (Starlette's JSONResponse.render)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
