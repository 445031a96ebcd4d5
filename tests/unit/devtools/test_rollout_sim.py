"""The benchmark's fast path judges exactly as the operator's policy does: sample runs of the noise model,
replayed through ``policy.decide`` (``backtest-operator simulate``), end the same way at the same time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from backtest_devtools.rollout_noise import ROUTER_BUCKETS, Behaviour, Fault, NoiseModel
from backtest_devtools.rollout_sim import (
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    Recording,
    judge_argo,
    judge_flagger,
    judge_policy,
    record,
    schedule,
)
from backtest_operator.api import BacktestServiceSpec, ShadowNumbers, TrackNumbers
from backtest_operator.histograms import Histogram
from backtest_operator.recordings import Interval
from backtest_operator.simulate import Outcome, replay

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SPEC = BacktestServiceSpec.model_validate({"image": "registry.example/backtest-engine:2.0.0"})
SHORT = BacktestServiceSpec.model_validate(
    {
        "image": "registry.example/backtest-engine:2.0.0",
        "phases": [
            {"name": "canary", "weight": 5, "duration": "3m"},
            {"name": "half", "weight": 50, "duration": "3m", "maxErrorRate": 0.02},
            {"name": "full", "weight": 100, "duration": "2m", "minSuccessRate": 0.98, "maxErrorRate": 0.01},
        ],
        "rollback": {"bakeWindow": "2m"},
    }
)


def intervals_of(rec: Recording, run: int, spec: BacktestServiceSpec) -> list[Interval]:
    """One run of a recording as the simulator reads a CSV file."""
    assert rec.buckets is not None and rec.stable_buckets is not None
    step = spec.analysis.interval
    found = []
    for column in range(rec.intervals):
        canary = TrackNumbers(
            requests=rec.requests[run, column], errors=rec.errors[run, column],
            fallbacks=rec.fallbacks[run, column], slow=rec.slow[run, column],
            latency_p95_seconds=None if np.isnan(rec.canary_p95[run, column]) else rec.canary_p95[run, column],
        )  # fmt: skip
        stable = TrackNumbers(
            requests=rec.stable_requests[run, column], errors=rec.stable_errors[run, column],
            slow=rec.stable_slow[run, column],
        )  # fmt: skip
        latency = {
            track: Histogram(ROUTER_BUCKETS, tuple(buckets[run, column, :-1]), float(buckets[run, column, -1]))
            for track, buckets in (("canary", rec.buckets), ("stable", rec.stable_buckets))
        }
        shadow = None
        if rec.comparisons is not None and rec.mismatches is not None:
            shadow = ShadowNumbers(comparisons=rec.comparisons[run, column], mismatches=rec.mismatches[run, column])
        found.append(Interval(T0 + column * step, {"canary": canary, "stable": stable}, 0, latency, shadow))
    return found


def replayed(spec: BacktestServiceSpec, intervals: list[Interval]) -> Outcome:
    return next(item for item in replay(spec, intervals) if isinstance(item, Outcome))


CASES = {
    "healthy": NoiseModel(40, 3, seed=11),
    "errors-15": NoiseModel(40, 4, fault=Fault(Behaviour(error_rate=0.15)), seed=12),
    "slower": NoiseModel(40, 4, fault=Fault(Behaviour(added_seconds=2.5)), seed=13),
    "timeouts": NoiseModel(200, 4, fault=Fault(Behaviour(timeout_rate=0.35)), seed=14),
    "late-fault": NoiseModel(200, 4, fault=Fault(Behaviour(error_rate=0.12), start_seconds=240), seed=15),
    "marginal": NoiseModel(200, 4, fault=Fault(Behaviour(error_rate=0.025)), seed=16),
    "slower-than-stable": NoiseModel(200, 4, fault=Fault(Behaviour(median_seconds=0.3)), seed=17),
    "slow-tail": NoiseModel(40, 4, fault=Fault(Behaviour(slow_rate=0.1)), seed=18),
    "at-the-limit": NoiseModel(200, 4, stable=Behaviour(error_rate=0.02), canary=Behaviour(error_rate=0.02), seed=19),
    "shadow-healthy": NoiseModel(40, 3, canary=Behaviour(mismatch_rate=0.0005), shadow_fraction=0.1, seed=20),
    "shadow-wrong-5": NoiseModel(40, 4, fault=Fault(Behaviour(mismatch_rate=0.05)), shadow_fraction=0.1, seed=21),
    "shadow-wrong-late": NoiseModel(
        200, 4, fault=Fault(Behaviour(mismatch_rate=0.02), start_seconds=240), shadow_fraction=0.1, seed=22
    ),
}
SHADOWED = {"shadow-healthy", "shadow-wrong-5", "shadow-wrong-late"}


@pytest.mark.parametrize("case", list(CASES))
def test_vectorized_policy_ends_each_run_like_the_policy_replay_when_given_the_same_recording(case):
    spec = SPEC if case in ("healthy", "shadow-healthy") else SHORT
    if case in SHADOWED:
        spec = BacktestServiceSpec.model_validate(
            {**spec.model_dump(mode="json", by_alias=True), "traffic": {"shadow": {"fraction": 0.1}}}
        )
    rec = record(spec, CASES[case], keep_buckets=True)
    verdicts = judge_policy(spec, rec)
    for run in range(rec.requests.shape[0]):
        outcome = replayed(spec, intervals_of(rec, run, spec))
        seconds = (outcome.time - T0).total_seconds()
        if verdicts.outcome[run] == ROLLED_BACK and verdicts.phase[run] < len(spec.phases):
            assert (outcome.outcome, outcome.check) == ("rolled_back", verdicts.check[run]), outcome.reason
            assert seconds == verdicts.seconds[run]
        elif not np.isnan(verdicts.promoted_seconds[run]):  # promoted (perhaps rolled back while baking)
            assert outcome.outcome == "promoted", outcome.reason
            assert seconds == verdicts.promoted_seconds[run]
        else:
            assert verdicts.outcome[run] == RUNNING
            assert outcome.outcome == "in_progress"


def test_recordings_follow_the_planned_weights_then_full_traffic_for_the_bake_window():
    weights = schedule(SHORT)
    assert weights[:6] == [5] * 6 and weights[6:12] == [50] * 6 and weights[12:16] == [100] * 4
    assert len(weights) == 16 + 4 + 20  # bake window, then slack for a held phase


def test_flagger_baseline_rolls_back_at_its_fifth_failed_check_when_every_interval_fails():
    rec = record(SHORT, NoiseModel(200, 5, fault=Fault(Behaviour(error_rate=0.5)), seed=3))
    verdicts = judge_flagger(SHORT, rec)
    assert np.all(verdicts.outcome == ROLLED_BACK)
    assert np.all(verdicts.seconds == 5 * 30)


def test_argo_baseline_rolls_back_after_more_than_three_failed_measurements_when_every_one_fails():
    rec = record(SHORT, NoiseModel(200, 5, fault=Fault(Behaviour(error_rate=0.5)), seed=3))
    verdicts = judge_argo(SHORT, rec)
    assert np.all(verdicts.outcome == ROLLED_BACK)
    assert np.all(verdicts.seconds == 4 * 30)


def test_baselines_promote_when_the_schedule_ends_without_enough_failed_checks():
    rec = record(SHORT, NoiseModel(200, 5, canary=Behaviour(error_rate=0.0, slow_rate=0.0), seed=4))
    for judge in (judge_flagger, judge_argo):
        verdicts = judge(SHORT, rec)
        assert np.all(verdicts.outcome == PROMOTED)
        assert np.all(verdicts.promoted_seconds == timedelta(minutes=8).total_seconds())


def test_noise_model_counts_slow_requests_exactly_at_the_objective_bucket_when_drawn():
    model = NoiseModel(100, 2000, canary=Behaviour(error_rate=0.0, slow_rate=0.1), seed=5)
    canary, stable = model.interval(np.full(2000, 50.0), 30.0)
    share = canary.slow.sum() / canary.requests.sum()
    assert share == pytest.approx(0.1, abs=0.005)
    assert np.all(canary.buckets[:, -1] == canary.requests)
    assert stable.requests.mean() == pytest.approx(1500, rel=0.02)


def test_shadow_cases_are_judged_by_the_comparison_when_results_are_wrong_and_promoted_when_right():
    """The replays above are not vacuous: the wrong releases are rolled back by a result-mismatch check."""
    spec = BacktestServiceSpec.model_validate(
        {**SHORT.model_dump(mode="json", by_alias=True), "traffic": {"shadow": {"fraction": 0.1}}}
    )
    wrong = judge_policy(spec, record(spec, CASES["shadow-wrong-5"]))
    assert np.all(wrong.outcome == ROLLED_BACK)
    assert set(wrong.check) <= {"result_mismatch_rate", "result_mismatch_trigger"}
    right = judge_policy(spec, record(spec, NoiseModel(40, 20, shadow_fraction=0.1, seed=23)))
    assert np.all(right.outcome == PROMOTED)
