"""The library hook the jobs rely on: `optimize(on_results=...)` sees every evaluated set, in and out of process."""

from __future__ import annotations

import pytest

from backtest_engine import optimize, synthetic_ohlcv


@pytest.mark.parametrize("workers", [1, 2])
def test_on_results_receives_every_evaluated_set_when_optimizing(workers: int):
    seen: list[tuple[dict, dict]] = []
    result = optimize(
        synthetic_ohlcv(400, seed=5),
        "sma_crossover",
        {"fast": [3, 5, 8, 13], "slow": [20, 30, 40]},
        workers=workers,
        on_results=lambda params, values: seen.extend(zip(params, values, strict=True)),
    )
    assert len(seen) == result.evaluated == 12
    best = max(seen, key=lambda item: item[1]["sharpe_ratio"])
    assert best[0] == result.best_params
