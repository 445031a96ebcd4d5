"""Thousands of rollouts at once: recordings from the noise model, judged by the policy and by baselines.

``record`` draws one recording per run, at the weights of the planned phase schedule (then at 100% for the
bake window and some slack), exactly as ``backtest-operator simulate`` replays a recording: every policy
sees the same numbers, whatever it decides. Three judges read them, interval by interval, vectorized:

* ``judge_policy``: the operator's rules, made of the operator's own functions (``sequential.margins``,
  ``analysis.check_budget``, ``analysis.stable_upper_bound``, ``histograms``); a unit test replays sample
  runs through ``policy.decide`` and requires the same outcome, phase and time;
* ``judge_flagger``: per-interval threshold checks, rollback after ``N`` failed checks (Flagger's
  ``analysis.threshold``), promotion when the schedule ends;
* ``judge_argo``: a background analysis measuring a trailing 5-minute window every interval, failing the
  rollout when failed measurements exceed ``failureLimit`` (Argo Rollouts), promotion when the schedule ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from backtest_devtools.rollout_noise import ROUTER_BUCKETS, NoiseModel
from backtest_operator.analysis import FAILURE_PRECEDENCE
from backtest_operator.api import BacktestServiceSpec, Phase
from backtest_operator.budget import BAKE, check_budget, shadowing, stage_checks
from backtest_operator.comparisons import stable_upper_bound
from backtest_operator.histograms import MIN_REFERENCE_REQUESTS, P95, count_above, quantile
from backtest_operator.mismatches import MISMATCH_ALLOWANCE
from backtest_operator.sequential import margins

Array = npt.NDArray[np.float64]
BOUNDS = np.asarray(ROUTER_BUCKETS)
SLACK_INTERVALS = 20
"""Intervals recorded after the bake window, so that a policy that held a phase can still finish."""

RUNNING, PROMOTED, ROLLED_BACK = 0, 1, 2
FLAGGER_THRESHOLD = 5
"""Failed checks before Flagger rolls back (``analysis.threshold``), as the issue sets it."""
ARGO_FAILURE_LIMIT = 3
"""Failed measurements an Argo analysis tolerates (``failureLimit``); one more fails it."""
ARGO_WINDOW_SECONDS = 300
"""The range of Argo's measurement queries (``rate(...[5m])``, as in its examples)."""


@dataclass
class Recording:
    """Per run (rows) and interval (columns): what the canary and stable did, and the planned weight."""

    weight: Array
    requests: Array
    errors: Array
    fallbacks: Array
    slow: Array
    stable_requests: Array
    stable_errors: Array
    stable_slow: Array
    canary_p95: Array
    stable_p95: Array
    """NaN where stable had fewer than MIN_REFERENCE_REQUESTS requests."""
    canary_p95_window: Array
    """p95 over the trailing ``ARGO_WINDOW_SECONDS`` (what an Argo analysis query over [5m] reads)."""
    stable_p95_window: Array
    latency_trials: Array
    """Canary requests in intervals with a stable p95 to compare against."""
    above_increase: Array
    """Canary requests slower than stable's p95 + rollback.maxLatencyIncrease."""
    above_margin: Array
    """Canary requests slower than stable's p95 + analysis.comparison.latencyMargin."""
    buckets: Array | None = None
    """Kept only when asked (canary and stable cumulative buckets), for replays through the policy."""
    stable_buckets: Array | None = None
    comparisons: Array | None = None
    """Shadow comparisons judged (match plus mismatch), when the noise model shadows."""
    mismatches: Array | None = None

    @property
    def intervals(self) -> int:
        return int(self.requests.shape[1])

    @cached_property
    def failures(self) -> Array:
        return np.minimum(self.requests, self.errors + self.slow)


def schedule(spec: BacktestServiceSpec) -> list[int]:
    """The planned canary weight of every interval: each phase for its duration, then 100%."""
    interval = spec.analysis.interval.total_seconds()
    weights = [phase.weight for phase in spec.phases for _ in range(round(phase.duration.total_seconds() / interval))]
    extra = round(spec.rollback.bake_window.total_seconds() / interval) + SLACK_INTERVALS
    return weights + [100] * extra


def record(spec: BacktestServiceSpec, model: NoiseModel, *, keep_buckets: bool = False) -> Recording:
    """One recording per run of the noise model, at the planned weights."""
    weights = schedule(spec)
    interval = spec.analysis.interval.total_seconds()
    increase = spec.rollback.max_latency_increase.total_seconds()
    margin = spec.analysis.comparison.latency_margin.total_seconds()
    columns: dict[str, list[Array]] = {name: [] for name in Recording.__dataclass_fields__}
    lookback = max(1, round(ARGO_WINDOW_SECONDS / interval))
    recent: list[tuple[Array, Array]] = []
    for index, weight in enumerate(weights):
        canary, stable = model.interval(np.full(model.runs, float(weight)), (index + 1) * interval)
        recent = [*recent[-(lookback - 1) :], (canary.buckets, stable.buckets)] if lookback > 1 else [
            (canary.buckets, stable.buckets)]  # fmt: skip
        columns["canary_p95_window"].append(quantile(BOUNDS, np.sum([c for c, _ in recent], axis=0), P95))
        columns["stable_p95_window"].append(quantile(BOUNDS, np.sum([s for _, s in recent], axis=0), P95))
        stable_p95 = np.where(stable.requests >= MIN_REFERENCE_REQUESTS, quantile(BOUNDS, stable.buckets, P95), np.nan)
        known = ~np.isnan(stable_p95)
        reference = np.where(known, stable_p95, 0.0)
        columns["weight"].append(np.full(model.runs, float(weight)))
        for name, value in (
            ("requests", canary.requests), ("errors", canary.errors), ("fallbacks", canary.fallbacks),
            ("slow", canary.slow), ("stable_requests", stable.requests), ("stable_errors", stable.errors),
            ("stable_slow", stable.slow),
        ):  # fmt: skip
            columns[name].append(value)
        columns["canary_p95"].append(quantile(BOUNDS, canary.buckets, P95))
        columns["stable_p95"].append(stable_p95)
        columns["latency_trials"].append(np.where(known, canary.buckets[:, -1], 0.0))
        columns["above_increase"].append(np.where(known, count_above(BOUNDS, canary.buckets, reference + increase), 0))
        columns["above_margin"].append(np.where(known, count_above(BOUNDS, canary.buckets, reference + margin), 0.0))
        if keep_buckets:
            columns["buckets"].append(canary.buckets)
            columns["stable_buckets"].append(stable.buckets)
        if stable.comparisons is not None and stable.mismatches is not None:
            columns["comparisons"].append(stable.comparisons)
            columns["mismatches"].append(stable.mismatches)
    stacked = {name: np.stack(values, axis=1) for name, values in columns.items() if values}
    return Recording(**stacked)


@dataclass
class Verdicts:
    """Per run: outcome (RUNNING, PROMOTED, ROLLED_BACK), when (seconds after the canary's first traffic),
    in which phase (index; ``len(phases)`` is the bake window), which check, and when it was promoted."""

    outcome: npt.NDArray[np.int64]
    seconds: Array
    phase: npt.NDArray[np.int64]
    check: npt.NDArray[np.object_]
    promoted_seconds: Array

    @classmethod
    def empty(cls, runs: int) -> Verdicts:
        return cls(
            np.zeros(runs, dtype=np.int64), np.full(runs, np.nan), np.zeros(runs, dtype=np.int64),
            np.full(runs, None, dtype=object), np.full(runs, np.nan),
        )  # fmt: skip

    def finish(self, mask: npt.NDArray[np.bool_], outcome: int, seconds: float, phase: Array, check: str) -> None:
        self.outcome[mask] = outcome
        self.seconds[mask] = seconds
        self.phase[mask] = phase[mask]
        self.check[mask] = check


def _running_sums(values: Array) -> Array:
    """Cumulative sums along the intervals, with a leading zero column (sums of [a, b] in O(1))."""
    return np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(values, axis=1)], axis=1)


def _stage_sums(cumulative: Array, start: npt.NDArray[np.int64] | int, end: int) -> Array:
    """Per row, the sum over columns [start, end], from ``_running_sums``."""
    first = cumulative[np.arange(cumulative.shape[0]), start] if isinstance(start, np.ndarray) else cumulative[:, start]
    return np.asarray(cumulative[:, end + 1] - first, dtype=np.float64)


def judge_policy(spec: BacktestServiceSpec, rec: Recording) -> Verdicts:
    """The operator's policy over every run: sequential checks each interval, phase ends, the bake window."""
    runs, phases = rec.requests.shape[0], spec.phases
    interval = spec.analysis.interval.total_seconds()
    durations = [round(phase.duration.total_seconds() / interval) for phase in phases]
    bake = round(spec.rollback.bake_window.total_seconds() / interval)
    verdicts = Verdicts.empty(runs)
    stage = np.zeros(runs, dtype=np.int64)  # phase index; len(phases) while baking
    stage_start = np.zeros(runs, dtype=np.int64)  # first column of the current stage
    floor, needed = spec.rollback.min_requests, spec.analysis.min_requests
    sums = {
        name: _running_sums(getattr(rec, name))
        for name in ("requests", "errors", "stable_requests", "stable_errors", "stable_slow", "latency_trials")
    }
    sums["failures"] = _running_sums(rec.failures)
    if rec.comparisons is not None:
        sums["comparisons"] = _running_sums(rec.comparisons)
    stages: list[Phase | str] = [*phases, BAKE]
    budgets = {(name, index): check_budget(spec, name, stage) for index, stage in enumerate(stages)
               for name in stage_checks(spec, stage)}  # fmt: skip
    for column in range(rec.intervals):
        active = verdicts.outcome == RUNNING
        active |= (verdicts.outcome == PROMOTED) & (stage == len(phases))
        if not active.any():
            break
        seconds = (column + 1) * interval
        hit = np.zeros(runs, dtype=bool)
        names = np.full(runs, None, dtype=object)
        keys = np.unique(stage_start[active] * (len(phases) + 2) + stage[active])
        groups = [(int(key) // (len(phases) + 2), int(key) % (len(phases) + 2)) for key in keys]
        for first, index in groups:  # runs that started the same stage together
            rows = np.flatnonzero(active & (stage_start == first) & (stage == index))
            failed, check = _failures(spec, rec, sums, budgets, rows, index, first, column, floor)
            hit[rows] = failed
            names[rows] = check
        for name in set(names[hit]):
            verdicts.finish(hit & (names == name), ROLLED_BACK, seconds, stage.astype(np.float64), name)
        elapsed = column + 1 - stage_start
        baking = active & ~hit & (stage == len(phases))
        done_baking = baking & (elapsed >= bake)
        stage[done_baking] = len(phases) + 1  # bake over: nothing more to judge
        deciding = active & ~hit & (stage < len(phases))
        for index, phase in enumerate(phases):
            due = deciding & (stage == index) & (elapsed >= durations[index])
            if not due.any():
                continue
            start = stage_start
            total = _stage_sums(sums["requests"], start, column)
            errors = _stage_sums(sums["errors"], start, column)
            failures = _stage_sums(sums["failures"], start, column)
            passes = due & (total >= needed) & (errors < phase.max_error_rate * total)
            passes &= failures <= (1.0 - phase.min_success_rate) * total
            if phase.weight < 100:
                stable = _stage_sums(sums["stable_requests"], start, column)
                passes &= (stable >= needed) & (_stage_sums(sums["latency_trials"], start, column) >= floor)
                if "comparisons" in sums and shadowing(spec):  # the mismatch check needs comparisons to pass
                    passes &= _stage_sums(sums["comparisons"], start, column) >= floor
            stage_start[passes] = column + 1
            if index + 1 < len(phases):
                stage[passes] = index + 1
                continue
            verdicts.outcome[passes] = PROMOTED
            verdicts.promoted_seconds[passes] = seconds
            stage[passes] = len(phases) if bake > 0 else len(phases) + 1
    verdicts.phase[verdicts.outcome == RUNNING] = stage[verdicts.outcome == RUNNING]
    return verdicts


def _failures(
    spec: BacktestServiceSpec, rec: Recording, sums: dict[str, Array], budgets: dict[tuple[str, int], float],
    rows: npt.NDArray[np.int64], stage: int, start: int, column: int, floor: int,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.object_]]:  # fmt: skip
    """Which of ``rows`` (all in ``stage`` since column ``start``) have evidence to roll back at ``column``,
    and the check reported for each."""
    phases, rules = spec.phases, spec.rollback
    phase = phases[min(stage, len(phases) - 1)]
    span = slice(start, column + 1)
    n = rec.requests[rows, span]
    enough = n.sum(axis=1) >= floor
    found: dict[str, npt.NDArray[np.bool_]] = {}

    def test(name: str, events: Array, limit: Array | float, trials: Array | None = None) -> npt.NDArray[np.bool_]:
        budget = budgets.get((name, min(stage, len(phases))))
        if budget is None:  # the check does not apply in this stage
            return np.zeros(len(rows), dtype=bool)
        counts = n if trials is None else trials
        exceeded = margins(counts, events[rows, span], limit, budget).exceeded
        return np.asarray(exceeded & (counts.sum(axis=1) >= floor))

    latency = rec.latency_trials[rows, span]
    found["error_rate_trigger"] = test("error_rate_trigger", rec.errors, rules.max_error_rate)
    found["fallback_rate_trigger"] = test("fallback_rate_trigger", rec.fallbacks, rules.max_fallback_rate)
    found["latency_trigger"] = test("latency_trigger", rec.above_increase, 1.0 - P95, latency)
    found["success_rate"] = test("success_rate", rec.failures, 1.0 - phase.min_success_rate)
    found["error_rate"] = test("error_rate", rec.errors, phase.max_error_rate)
    settings = spec.analysis.comparison
    stable_n = _stage_sums(sums["stable_requests"][rows], start, column)
    comparable = stable_n >= spec.analysis.min_requests
    for name, events, stable_events, margin in (
        ("error_rate_vs_stable", rec.errors, "stable_errors", settings.error_rate_margin),
        ("slow_rate_vs_stable", rec.slow, "stable_slow", settings.slow_rate_margin),
    ):
        stable_x = _stage_sums(sums[stable_events][rows], start, column)
        limit = np.minimum(1.0 - 1e-9, stable_upper_bound(stable_x, stable_n) + margin)
        found[name] = comparable & test(name, events, limit)
    found["latency_vs_stable"] = test("latency_vs_stable", rec.above_margin, 1.0 - P95, latency)
    if rec.comparisons is not None and rec.mismatches is not None:
        compared = rec.comparisons[rows, span]
        for name, allowed in (
            ("result_mismatch_trigger", rules.max_result_mismatch_rate),
            ("result_mismatch_rate", phase.max_result_mismatch_rate),
        ):
            found[name] = test(name, rec.mismatches, float(max(allowed, MISMATCH_ALLOWANCE)), compared)
    failed = np.zeros(len(rows), dtype=bool)
    check = np.full(len(rows), None, dtype=object)
    for name in FAILURE_PRECEDENCE:
        if name in found:
            # The mismatch checks count comparisons (of stable's requests), not canary requests.
            new = found[name] & (True if name.startswith("result_mismatch") else enough) & ~failed
            check[new] = name
            failed |= new
    return failed, check


def _interval_failed(spec: BacktestServiceSpec, rec: Recording, column: int, lookback: int) -> npt.NDArray[np.bool_]:
    # Flagger reads each interval's own p95s; Argo's [5m] queries read the window's.
    """Did a threshold check over the last ``lookback`` intervals fail (the baselines' measurement)?"""
    first = max(0, column + 1 - lookback)
    chunk = slice(first, column + 1)
    n = rec.requests[:, chunk].sum(axis=1)
    errors = rec.errors[:, chunk].sum(axis=1)
    failures = rec.failures[:, chunk].sum(axis=1)
    fallbacks = rec.fallbacks[:, chunk].sum(axis=1)
    weight = rec.weight[:, column]
    phase = _phase_at(spec, column)
    with np.errstate(divide="ignore", invalid="ignore"):
        bad = (errors / n >= phase.max_error_rate) | (failures / n > 1.0 - phase.min_success_rate)
        bad |= fallbacks / n > spec.rollback.max_fallback_rate
        if lookback > 1:
            increase = rec.canary_p95_window[:, column] - rec.stable_p95_window[:, column]
        else:
            increase = rec.canary_p95[:, column] - rec.stable_p95[:, column]
        bad |= (weight < 100) & (increase > spec.rollback.max_latency_increase.total_seconds())
    return np.asarray(bad | (n <= 0))


def _phase_at(spec: BacktestServiceSpec, column: int) -> Phase:
    interval = spec.analysis.interval.total_seconds()
    elapsed = 0
    for phase in spec.phases:
        elapsed += round(phase.duration.total_seconds() / interval)
        if column < elapsed:
            return phase
    return spec.phases[-1]


def _judge_by_count(spec: BacktestServiceSpec, rec: Recording, lookback: int, fails_at: int) -> Verdicts:
    runs = rec.requests.shape[0]
    interval = spec.analysis.interval.total_seconds()
    planned = sum(round(phase.duration.total_seconds() / interval) for phase in spec.phases)
    verdicts = Verdicts.empty(runs)
    failed_checks = np.zeros(runs)
    for column in range(planned):
        running = verdicts.outcome == RUNNING
        failed_checks += running & _interval_failed(spec, rec, column, lookback)
        phase = np.full(runs, float(_phase_index(spec, column)))
        verdicts.finish(running & (failed_checks >= fails_at), ROLLED_BACK, (column + 1) * interval, phase, "threshold")
    promoted = verdicts.outcome == RUNNING
    verdicts.outcome[promoted] = PROMOTED
    verdicts.promoted_seconds[promoted] = planned * interval
    verdicts.seconds[promoted] = planned * interval
    return verdicts


def _phase_index(spec: BacktestServiceSpec, column: int) -> int:
    return spec.phases.index(_phase_at(spec, column))


def judge_flagger(spec: BacktestServiceSpec, rec: Recording) -> Verdicts:
    """Flagger-style: every interval checks that interval's numbers; the 5th failed check rolls back."""
    return _judge_by_count(spec, rec, 1, FLAGGER_THRESHOLD)


def judge_argo(spec: BacktestServiceSpec, rec: Recording) -> Verdicts:
    """Argo-style: every interval measures the last 5 minutes; more than 3 failed measurements roll back."""
    lookback = max(1, round(ARGO_WINDOW_SECONDS / spec.analysis.interval.total_seconds()))
    return _judge_by_count(spec, rec, lookback, ARGO_FAILURE_LIMIT + 1)
