"""Parameter optimization: grid and random search across CPU cores, and walk-forward evaluation.

Speed comes from two levels. Within a process, parameter sets are evaluated in chunks that share one
`Bars` indicator memo, so a sweep over 20 fast and 20 slow windows computes 40 moving averages, not 800,
and only the ranking metric plus a few summary metrics are computed per set. Across processes, chunks go
to a `ProcessPoolExecutor` (fork on Linux, so the data is inherited rather than pickled per task).
Progress is reported as `(done, total)` after every chunk; setting the cancel event stops submitting work,
cancels queued chunks and returns what was evaluated so far with `cancelled=True`.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from backtest_engine.backtest import bars_from_frame, metric_context, resolve_periods_per_year
from backtest_engine.data import validate_ohlcv
from backtest_engine.errors import EngineError, InvalidCombination, InvalidParameter
from backtest_engine.execution import ExecutionConfig, simulate
from backtest_engine.indicators import Bars
from backtest_engine.metrics import MetricValues, compute_metrics, metric_names
from backtest_engine.strategies import generate_signals, get_strategy, validate_params

SUMMARY_METRICS = ("total_return", "cagr", "sharpe_ratio", "max_drawdown", "num_trades", "win_rate")
ProgressCallback = Callable[[int, int], None]
ResultsCallback = Callable[[list[dict[str, Any]], list[MetricValues]], None]
MAX_CHUNK = 16  # parameter sets per task sent to a worker


@dataclass
class OptimizationResult:
    """Every evaluated parameter set with its metrics, ranked best first by `metric`."""

    strategy: str
    metric: str
    maximize: bool
    results: pd.DataFrame
    total: int
    cancelled: bool = False

    @property
    def evaluated(self) -> int:
        return len(self.results)

    @property
    def ranked(self) -> pd.DataFrame:
        """The results whose ranking metric is defined (best first): what best-of may choose from."""
        return self.results[self.results[self.metric].notna()] if not self.results.empty else self.results

    @property
    def best_params(self) -> dict[str, Any]:
        """Parameters of the best set with a defined metric; {} when no set has one."""
        ranked = self.ranked
        return dict(ranked.iloc[0]["params"]) if not ranked.empty else {}

    @property
    def best_value(self) -> float:
        ranked = self.ranked
        return float(ranked.iloc[0][self.metric]) if not ranked.empty else float("nan")

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        rows = self.results if top is None else self.results.head(top)
        return {
            "strategy": self.strategy,
            "metric": self.metric,
            "maximize": self.maximize,
            "evaluated": self.evaluated,
            "total": self.total,
            "cancelled": self.cancelled,
            "best_params": self.best_params,
            "results": [
                {
                    "params": row["params"],
                    "metrics": {k: _defined(row[k]) for k in rows.columns if k != "params"},
                }
                for row in rows.to_dict(orient="records")
            ],
        }


def _defined(value: Any) -> float | None:
    """A metric value for JSON: None where undefined (NaN in the results frame)."""
    return None if value is None or pd.isna(value) else float(value)


def _combinations_valid(strategy: str, combos: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate parameter sets; drop combinations rejected by cross-field rules (e.g. fast >= slow).

    A value that is invalid on its own (unknown name, out of range) is an error at once; a combination
    error is only raised when no combination survives.
    """
    valid: list[dict[str, Any]] = []
    seen: set[tuple[tuple[str, Any], ...]] = set()
    last_error: InvalidCombination | None = None
    for combo in combos:
        try:
            params = validate_params(strategy, combo).model_dump()
        except InvalidCombination as exc:
            last_error = exc
            continue
        key = tuple(sorted(params.items()))
        if key not in seen:
            seen.add(key)
            valid.append(params)
    if not valid and last_error is not None:
        raise last_error
    return valid


def parameter_grid(strategy: str, space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Validated cartesian product of `space` (name -> candidate values); invalid combinations dropped."""
    get_strategy(strategy)
    names = list(space)
    for name in names:
        if not space[name]:
            raise InvalidParameter("needs at least one candidate value", name=name)
    products = (dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names)))
    return _combinations_valid(strategy, products)


def random_parameters(
    strategy: str, space: Mapping[str, Sequence[Any]], samples: int, *, seed: int = 0
) -> list[dict[str, Any]]:
    """`samples` distinct parameter sets drawn uniformly from the grid of `space`, seeded by `seed`."""
    grid = parameter_grid(strategy, space)
    if samples >= len(grid):
        return grid
    picks = np.random.default_rng(seed).choice(len(grid), size=samples, replace=False)
    return [grid[i] for i in sorted(picks.tolist())]


@dataclass
class _Job:
    """What a worker needs: the data as arrays, the execution settings and the metrics to compute."""

    bars: Bars
    strategy: str
    config: ExecutionConfig
    periods_per_year: float
    risk_free_rate: float
    metrics: tuple[str, ...]
    benchmark_returns: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        close = self.bars.close  # buy and hold, computed once for every parameter set
        self.benchmark_returns = np.concatenate(([0.0], close[1:] / close[:-1] - 1.0))


_WORKER_JOB: _Job | None = None


def _install_job(job: _Job) -> None:
    global _WORKER_JOB  # noqa: PLW0603 - per-process state of a worker, set once by the pool initializer
    _WORKER_JOB = job


def _evaluate(job: _Job, params: dict[str, Any]) -> MetricValues:
    model = validate_params(job.strategy, params)
    signals = generate_signals(job.bars, job.strategy, model)
    b = job.bars
    sim = simulate(b.open, b.high, b.low, b.close, signals.target, config=job.config)
    context = metric_context(
        sim,
        b,
        job.config,
        job.periods_per_year,
        risk_free_rate=job.risk_free_rate,
        structure=signals.structure,
        benchmark_returns=job.benchmark_returns,
    )
    return compute_metrics(context, job.metrics)


def _evaluate_chunk(chunk: list[dict[str, Any]]) -> list[MetricValues]:
    if _WORKER_JOB is None:
        raise RuntimeError("worker used before its job was installed")
    return [_evaluate(_WORKER_JOB, params) for params in chunk]


def _rank(
    strategy: str, metric: str, maximize: bool, params: list[dict[str, Any]], values: list[MetricValues]
) -> pd.DataFrame:
    frame = pd.DataFrame(values, dtype="float64")  # None (undefined) becomes NaN
    frame.insert(0, "params", params)
    if frame.empty:
        return pd.DataFrame(columns=["params", metric])
    # undefined values last in either direction: a set that never traded never outranks a real loss
    return frame.sort_values(metric, ascending=not maximize, kind="stable", na_position="last").reset_index(drop=True)


class SetEvaluator:
    """Evaluates parameter sets on one dataset in this process, keeping the indicator memo between calls.

    One chunk of a sweep that is spread over several machines (the service's distributed sweeps) is
    computed exactly as `optimize` computes it; a process that takes several chunks of the same sweep
    reuses the moving averages it already computed.
    """

    def __init__(
        self,
        data: pd.DataFrame,
        strategy: str,
        *,
        metric: str = "sharpe_ratio",
        cash: float = 10_000.0,
        commission: float = 0.0,
        slippage_bps: float = 0.0,
        fraction: float = 1.0,
        lot_size: float = 0.0,
        stop_loss: float | None = None,
        take_profit: float | None = None,
        periods_per_year: float | None = None,
        risk_free_rate: float = 0.0,
    ) -> None:
        config = ExecutionConfig(cash, commission, slippage_bps, fraction, lot_size, stop_loss, take_profit)
        ppy = resolve_periods_per_year(pd.DatetimeIndex(data.index), periods_per_year)
        wanted = tuple(dict.fromkeys((metric, *SUMMARY_METRICS)))
        self._job = _Job(bars_from_frame(data), strategy, config, ppy, risk_free_rate, wanted)

    def __call__(self, sets: Sequence[dict[str, Any]]) -> list[MetricValues]:
        return [_evaluate(self._job, params) for params in sets]


def evaluate_sets(
    data: pd.DataFrame, strategy: str, sets: Sequence[dict[str, Any]], **options: Any
) -> list[MetricValues]:
    """Metrics of given, already validated parameter sets (see `SetEvaluator`)."""
    return SetEvaluator(data, strategy, **options)(sets)


def optimize(
    data: pd.DataFrame,
    strategy: str,
    space: Mapping[str, Sequence[Any]],
    *,
    method: str = "grid",
    samples: int = 100,
    seed: int = 0,
    metric: str = "sharpe_ratio",
    maximize: bool = True,
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    on_results: ResultsCallback | None = None,
    cash: float = 10_000.0,
    commission: float = 0.0,
    slippage_bps: float = 0.0,
    fraction: float = 1.0,
    lot_size: float = 0.0,
    stop_loss: float | None = None,
    take_profit: float | None = None,
    periods_per_year: float | None = None,
    risk_free_rate: float = 0.0,
    validate: bool = True,
) -> OptimizationResult:
    """Evaluate a strategy over a parameter space and rank the sets by `metric` (best first).

    `method` is "grid" (every combination) or "random" (`samples` distinct combinations, seeded).
    `workers=1` evaluates in this process; `None` uses every CPU core. `on_results`, if given, receives
    each finished chunk's parameter sets and their metrics (before `progress`), so a caller can show the
    best results so far while the search runs.
    """
    if metric not in metric_names():
        raise InvalidParameter(f"unknown metric; choose one of {', '.join(metric_names())}", name="metric")
    if method not in ("grid", "random"):
        raise InvalidParameter("must be 'grid' or 'random'", name="method")
    frame = validate_ohlcv(data) if validate else data
    config = ExecutionConfig(cash, commission, slippage_bps, fraction, lot_size, stop_loss, take_profit)
    candidates = (
        parameter_grid(strategy, space) if method == "grid" else random_parameters(strategy, space, samples, seed=seed)
    )
    ppy = resolve_periods_per_year(pd.DatetimeIndex(frame.index), periods_per_year)
    wanted = tuple(dict.fromkeys((metric, *SUMMARY_METRICS)))
    job = _Job(bars_from_frame(frame), strategy, config, ppy, risk_free_rate, wanted)
    total = len(candidates)
    cancel = cancel or threading.Event()
    workers = max(1, min(workers or os.cpu_count() or 1, total or 1))
    # Small chunks keep progress fine-grained and cancellation prompt; they cost little, because the
    # indicator memo lives in the worker process, not in the chunk.
    size = chunk_size or min(MAX_CHUNK, max(1, math.ceil(total / (workers * 8))))
    chunks = [candidates[i : i + size] for i in range(0, total, size)]
    done_params: list[dict[str, Any]] = []
    done_values: list[MetricValues] = []
    if progress:
        progress(0, total)
    if workers == 1:
        _install_job(job)
        for chunk in chunks:
            if cancel.is_set():
                break
            values = _evaluate_chunk(chunk)
            done_values.extend(values)
            done_params.extend(chunk)
            if on_results:
                on_results(chunk, values)
            if progress:
                progress(len(done_params), total)
    else:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_install_job, initargs=(job,)) as pool:
            pending: dict[Future[list[MetricValues]], list[dict[str, Any]]] = {
                pool.submit(_evaluate_chunk, chunk): chunk for chunk in chunks
            }
            try:
                while pending:
                    finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in finished:
                        chunk = pending.pop(future)
                        if future.cancelled():
                            continue
                        values = future.result()
                        done_values.extend(values)
                        done_params.extend(chunk)
                        if on_results:
                            on_results(chunk, values)
                        if progress:
                            progress(len(done_params), total)
                    if cancel.is_set():
                        pool.shutdown(wait=True, cancel_futures=True)
                        break
            except BaseException:  # Ctrl-C or a failing chunk: drop the queued work before leaving
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    ranked = _rank(strategy, metric, maximize, done_params, done_values)
    return OptimizationResult(strategy, metric, maximize, ranked, total, cancelled=len(done_params) < total)


@dataclass
class WalkForwardFold:
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    params: dict[str, Any]
    in_sample: float
    out_of_sample: float


@dataclass
class WalkForwardResult:
    """Per-fold best parameters and their in- and out-of-sample metric values.

    `efficiency` is mean out-of-sample over mean in-sample metric: near 1 means the optimum generalizes,
    near 0 or negative means the in-sample optimum was mostly fitted noise.
    """

    strategy: str
    metric: str
    folds: list[WalkForwardFold]

    @property
    def mean_in_sample(self) -> float:
        return float(np.mean([f.in_sample for f in self.folds])) if self.folds else 0.0

    @property
    def mean_out_of_sample(self) -> float:
        return float(np.mean([f.out_of_sample for f in self.folds])) if self.folds else 0.0

    @property
    def efficiency(self) -> float:
        ins = self.mean_in_sample
        return self.mean_out_of_sample / ins if ins != 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "metric": self.metric,
            "mean_in_sample": self.mean_in_sample,
            "mean_out_of_sample": self.mean_out_of_sample,
            "efficiency": self.efficiency,
            "folds": [
                {
                    "train": [f.train_start.isoformat(), f.train_end.isoformat()],
                    "test": [f.test_start.isoformat(), f.test_end.isoformat()],
                    "params": f.params,
                    "in_sample": f.in_sample,
                    "out_of_sample": f.out_of_sample,
                }
                for f in self.folds
            ],
        }


def walk_forward(
    data: pd.DataFrame,
    strategy: str,
    space: Mapping[str, Sequence[Any]],
    *,
    folds: int = 5,
    train_ratio: float = 0.7,
    metric: str = "sharpe_ratio",
    maximize: bool = True,
    **kwargs: Any,
) -> WalkForwardResult:
    """Rolling walk-forward: split the data into `folds` consecutive windows; in each, optimize on the first
    `train_ratio` of the bars and evaluate the winner on the rest (which the optimizer never saw).

    Each test window is backtested on its own, so indicators warm up inside it (flat at its start);
    `kwargs` go to `optimize` (execution settings, method, workers, ...).
    """
    if folds < 1:
        raise InvalidParameter("must be at least 1", name="folds")
    if not 0 < train_ratio < 1:
        raise InvalidParameter("must be in (0, 1)", name="train_ratio")
    frame = validate_ohlcv(data)
    bounds = np.linspace(0, len(frame), folds + 1).astype(int)
    results: list[WalkForwardFold] = []
    execution = {k: v for k, v in kwargs.items() if k not in ("method", "samples", "seed", "workers", "chunk_size")}
    for start, end in itertools.pairwise(bounds.tolist()):
        split = start + int((end - start) * train_ratio)
        train, test = frame.iloc[start:split], frame.iloc[split:end]
        if len(train) < 2 or len(test) < 2:
            raise EngineError(f"walk-forward fold [{start}, {end}) is too short; use fewer folds")
        best = optimize(train, strategy, space, metric=metric, maximize=maximize, validate=False, **kwargs)
        if not best.best_params:
            continue
        test_result = optimize(
            test,
            strategy,
            {k: [v] for k, v in best.best_params.items()},
            metric=metric,
            workers=1,
            validate=False,
            **execution,
        )
        results.append(
            WalkForwardFold(
                train.index[0],
                train.index[-1],
                test.index[0],
                test.index[-1],
                best.best_params,
                best.best_value,
                test_result.best_value,
            )
        )
    return WalkForwardResult(strategy, metric, results)
