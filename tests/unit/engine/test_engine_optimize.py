"""Grid and random search, parallel evaluation, progress, cancellation and walk-forward."""

from __future__ import annotations

import threading

import pytest

from backtest_engine import optimize, run_backtest, walk_forward
from backtest_engine.data import synthetic_ohlcv
from backtest_engine.errors import InvalidParameter
from backtest_engine.optimize import parameter_grid, random_parameters

DATA = synthetic_ohlcv(600, seed=12)
SPACE = {"fast": [3, 5, 10, 20], "slow": [10, 20, 40]}


def test_grid_drops_combinations_that_break_a_cross_field_rule_when_expanded():
    grid = parameter_grid("sma_crossover", SPACE)
    pairs = {(p["fast"], p["slow"]) for p in grid}
    assert pairs == {(f, s) for f in SPACE["fast"] for s in SPACE["slow"] if f < s}


def test_grid_rejects_a_value_at_once_when_it_is_out_of_range_on_its_own():
    with pytest.raises(InvalidParameter) as caught:
        parameter_grid("sma_crossover", {"fast": [0, 5], "slow": [20]})
    assert caught.value.name == "fast"


def test_random_search_is_a_seeded_subset_of_the_grid_when_sampling():
    grid = parameter_grid("sma_crossover", SPACE)
    sample = random_parameters("sma_crossover", SPACE, 4, seed=3)
    assert len(sample) == 4 and all(p in grid for p in sample)
    assert sample == random_parameters("sma_crossover", SPACE, 4, seed=3)


def test_results_are_ranked_by_the_chosen_metric_and_match_single_runs_when_optimizing():
    result = optimize(DATA, "sma_crossover", SPACE, metric="total_return", workers=1, commission=0.001)
    values = result.results["total_return"].tolist()
    assert values == sorted(values, reverse=True)
    best = run_backtest(DATA, "sma_crossover", result.best_params, commission=0.001)
    assert best.metrics["total_return"] == pytest.approx(result.best_value)
    worst_first = optimize(DATA, "sma_crossover", SPACE, metric="max_drawdown", maximize=False, workers=1)
    assert worst_first.results["max_drawdown"].is_monotonic_increasing


def test_process_pool_gives_the_same_ranking_as_one_process_when_workers_are_used():
    one = optimize(DATA, "sma_crossover", SPACE, workers=1)
    many = optimize(DATA, "sma_crossover", SPACE, workers=2, chunk_size=2)
    assert one.results["params"].tolist() == many.results["params"].tolist()
    assert one.results["sharpe_ratio"].tolist() == pytest.approx(many.results["sharpe_ratio"].tolist())


def test_progress_is_reported_up_to_the_total_when_a_sweep_runs():
    calls: list[tuple[int, int]] = []
    optimize(DATA, "sma_crossover", SPACE, workers=2, chunk_size=3, progress=lambda d, t: calls.append((d, t)))
    done = [d for d, _ in calls]
    assert calls[0] == (0, 9) and calls[-1] == (9, 9)
    assert done == sorted(done)


def test_cancel_event_stops_the_sweep_and_returns_partial_results_when_set():
    cancel = threading.Event()

    def stop_after_first_chunk(done: int, total: int) -> None:
        if done > 0:
            cancel.set()

    result = optimize(
        DATA, "sma_crossover", SPACE, workers=1, chunk_size=2, progress=stop_after_first_chunk, cancel=cancel
    )
    assert result.cancelled and 0 < result.evaluated < result.total


def test_unknown_ranking_metric_is_rejected_when_optimizing():
    with pytest.raises(InvalidParameter) as caught:
        optimize(DATA, "sma_crossover", SPACE, metric="sharpness", workers=1)
    assert caught.value.name == "metric"


def test_walk_forward_reports_in_and_out_of_sample_values_per_fold_when_run():
    result = walk_forward(DATA, "sma_crossover", SPACE, folds=3, metric="total_return", workers=1)
    assert len(result.folds) == 3
    for fold in result.folds:
        assert fold.train_end < fold.test_start
        direct = run_backtest(DATA.loc[fold.test_start : fold.test_end], "sma_crossover", fold.params)
        assert fold.out_of_sample == pytest.approx(direct.metrics["total_return"])
    assert isinstance(result.to_dict()["efficiency"], float)


def test_cancel_event_stops_a_process_pool_sweep_without_hanging_when_set():
    cancel = threading.Event()

    def stop_at_first_result(done: int, total: int) -> None:
        if done > 0:
            cancel.set()

    big_space = {"fast": [2, 3, 4, 5, 6, 7, 8, 9], "slow": [10, 12, 14, 16, 18, 20, 25, 30]}
    result = optimize(
        DATA,
        "sma_crossover",
        big_space,
        workers=2,
        chunk_size=1,
        progress=stop_at_first_result,
        cancel=cancel,
    )
    assert result.cancelled and 0 < result.evaluated < result.total
    ranked = result.results["sharpe_ratio"].tolist()
    assert ranked == sorted(ranked, reverse=True)


def test_sets_with_an_undefined_metric_rank_last_and_never_best_when_some_never_trade():
    frame = synthetic_ohlcv(300, seed=5)
    # slow windows longer than the data never trade: their Sharpe ratio is undefined, not 0
    result = optimize(frame, "sma_crossover", {"fast": [3, 5], "slow": [20, 400]}, metric="sharpe_ratio", workers=1)
    values = result.results["sharpe_ratio"].tolist()
    defined = [v for v in values if v == v]
    assert len(defined) == 2 and all(v != v for v in values[2:]), values
    assert result.best_params["slow"] == 20
    assert all(row["metrics"]["sharpe_ratio"] is None for row in result.to_dict()["results"][2:])
    worst_first = optimize(frame, "sma_crossover", {"fast": [3, 5], "slow": [20, 400]}, maximize=False, workers=1)
    assert worst_first.results["sharpe_ratio"].iloc[-1] != worst_first.results["sharpe_ratio"].iloc[-1]  # NaN last
