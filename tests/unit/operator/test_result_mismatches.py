"""Result mismatches from the router's shadow comparisons: the phase check, the rollback trigger, the
ShadowComparison condition and the rule that shadowing needs the router (docs/rollout-policy.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_operator.analysis import Stretch, phase_checks, trigger_checks
from backtest_operator.api import BacktestServiceSpec, FieldCount, Outcome, ShadowNumbers, Verdict
from backtest_operator.budget import BAKE, check_budget, stage_checks
from backtest_operator.mismatches import MISMATCH_ALLOWANCE, mismatch_check
from backtest_operator.policy import Action
from backtest_operator.shadow_measure import shadow_numbers, top_fields

from .rollouts import histogram, make_spec, observe, pass_phase, started, track

SHADOW = {"traffic": {"shadow": {"fraction": 0.1}}}
FIELDS = [FieldCount(field="metrics.total_return", count=80), FieldCount(field="metrics.cagr", count=80)]


def compared(comparisons: float, mismatches: float, *, errors: float = 0.0, fields: list[FieldCount] | None = None):
    """One healthy stretch of canary traffic plus what the shadow comparisons of the phase found."""
    canary = track(100)
    stretch = Stretch(
        requests=100, latency=histogram(100, 0.2), stable_p95_seconds=0.2,
        comparisons=comparisons, mismatches=mismatches,
    )  # fmt: skip
    shadow = ShadowNumbers(comparisons=comparisons, mismatches=mismatches, errors=errors, top_fields=fields or [])
    return {"canary": canary, "stretches": (stretch,), "shadow": shadow}


def test_wrong_results_roll_back_naming_the_mismatching_fields_when_the_canary_answers_200_fast():
    driver = started(**SHADOW)
    driver.advance_clock(timedelta(seconds=30))
    decision = driver.step(**compared(400, 80, fields=FIELDS), phase_window=timedelta(seconds=30))
    assert decision.action == Action.ROLLBACK
    assert decision.failing_check == "result_mismatch_trigger"  # 20% against rollback's 5%
    assert "canary result mismatch rate 20.0% (80 of 400) over 30s is above rollback.maxResultMismatchRate" in (
        decision.reason
    )
    assert "mismatching fields: metrics.total_return (80), metrics.cagr (80)" in decision.reason
    entry = decision.status.history[0]
    assert (entry.outcome, entry.check) == (Outcome.ROLLED_BACK, "result_mismatch_trigger")
    assert decision.status.last_analysis.shadow.top_fields[0].field == "metrics.total_return"  # as measured


def test_phase_check_rolls_back_on_a_few_percent_of_wrong_results_when_the_trigger_does_not():
    driver = started(**SHADOW)
    driver.advance_clock(timedelta(minutes=2))
    decision = driver.step(**compared(400, 8), phase_window=timedelta(minutes=2))  # 2%: under the trigger's 5%
    assert (decision.action, decision.failing_check) == (Action.ROLLBACK, "result_mismatch_rate")
    trigger = next(c for c in decision.checks if c.name == "result_mismatch_trigger")
    assert trigger.verdict != Verdict.FAIL
    assert "tested against 0.1% so that a flaky comparison is not enough" in decision.reason


@pytest.mark.parametrize("comparisons", [10, 40, 400, 5000])
def test_one_odd_answer_does_not_roll_back_and_the_phase_still_passes_when_a_comparison_flakes(comparisons):
    driver = started(**SHADOW)
    driver.advance_clock(timedelta(minutes=2))
    decision = driver.step(**compared(comparisons, 1), phase_window=timedelta(minutes=2))
    assert decision.action == Action.HOLD
    check = next(c for c in decision.checks if c.name == "result_mismatch_rate")
    assert check.verdict == Verdict.PASS


def test_errors_and_skipped_copies_are_not_mismatches_when_the_canary_fails_its_shadow_copies():
    driver = started(**SHADOW)
    driver.advance_clock(timedelta(minutes=2))
    decision = driver.step(**compared(50, 0, errors=900), phase_window=timedelta(minutes=2))
    assert decision.action == Action.HOLD
    assert decision.status.last_analysis.shadow.errors == 900
    numbers = shadow_numbers({"match": 5, "mismatch": 1, "error": 7, "skipped": 9}, {})
    assert (numbers.comparisons, numbers.mismatches, numbers.errors, numbers.skipped) == (6, 1, 7, 9)


def test_phase_waits_for_comparisons_when_shadowing_is_on_but_too_few_were_judged():
    driver = started(**SHADOW)
    phase = driver.spec.phases[0]
    driver.advance_clock(phase.duration)
    decision = driver.step(**compared(3, 0), phase_window=phase.duration)
    assert decision.action == Action.HOLD
    check = next(c for c in decision.checks if c.name == "result_mismatch_rate")
    assert check.verdict == Verdict.INCONCLUSIVE
    assert check.message.startswith("only 3 shadow comparisons over 10m, 10 needed")


def test_healthy_canary_with_shadowing_walks_the_phases_when_every_comparison_matches():
    driver = started(**SHADOW)
    for _ in driver.spec.phases[:-1]:
        assert driver.status.step is not None
        phase = driver.spec.phases[driver.status.step]
        driver.advance_clock(phase.duration)
        decision = driver.step(**compared(500, 0), phase_window=phase.duration)
        assert decision.action == Action.ADVANCE, decision.reason
    decision = pass_phase(driver)  # weight 100: stable serves nothing, nothing is compared
    assert decision.action == Action.PROMOTE
    skipped = next(c for c in decision.checks if c.name == "result_mismatch_rate")
    assert skipped.verdict == Verdict.SKIPPED


def test_mismatch_checks_do_not_exist_when_shadowing_is_off():
    spec = make_spec()
    obs = observe(started().now, **{k: v for k, v in compared(400, 40).items() if k != "shadow"})
    names = {c.name for c in trigger_checks(spec, spec.phases[0], obs) + phase_checks(spec, spec.phases[0], obs)}
    assert not names & {"result_mismatch_rate", "result_mismatch_trigger"}
    assert "result_mismatch_rate" not in stage_checks(spec, spec.phases[0])


def test_shadow_budget_is_taken_from_the_other_checks_when_shadowing_is_on():
    plain, shadowed = make_spec(), make_spec(**SHADOW)
    total = sum(
        check_budget(shadowed, name, stage)
        for stage in [*shadowed.phases, BAKE]
        for name in stage_checks(shadowed, stage)
    )
    assert total == pytest.approx(shadowed.analysis.noise_budget)
    assert check_budget(shadowed, "error_rate", shadowed.phases[0]) < check_budget(plain, "error_rate", plain.phases[0])
    assert "result_mismatch_rate" not in stage_checks(shadowed, shadowed.phases[-1])  # weight 100


def test_shadow_condition_names_the_reason_when_shadowing_is_off_or_on():
    def condition(**overrides):
        driver = started(**overrides)
        return driver.status.condition("ShadowComparison")

    on = condition(**SHADOW)
    assert (on.status, on.reason) == ("True", "Comparing")
    assert "10.0% of the repeatable requests stable serves" in on.message
    off = condition()
    assert (off.status, off.reason) == ("False", "Disabled")
    replicas = condition(traffic={"provider": "replicas"}, analysis={"latencyObjective": "2s"})
    assert (replicas.status, replicas.reason) == ("False", "NoRouter")
    assert replicas.message.startswith("provider replicas has no router")


@pytest.mark.parametrize("provider", ["replicas", "gatewayAPI"])
def test_shadowing_is_refused_naming_the_field_when_the_provider_has_no_router(provider):
    with pytest.raises(ValueError, match=r"traffic\.shadow\.fraction needs the router provider"):
        BacktestServiceSpec.model_validate(
            {"image": "engine:1", "traffic": {"provider": provider, "shadow": {"fraction": 0.1}}}
        )
    # Off is fine with any provider.
    BacktestServiceSpec.model_validate({"image": "engine:1", "traffic": {"provider": provider, "shadow": {}}})


def test_top_fields_are_bounded_and_ordered_when_many_fields_mismatch():
    counts = {f"metrics.m{i}": float(i % 7) for i in range(50)} | {"": 99.0}
    fields = top_fields(counts)
    assert len(fields) == 5
    assert [f.count for f in fields] == sorted((f.count for f in fields), reverse=True)
    assert all(f.field for f in fields) and fields[0].count == 6


def _check(comparisons: list[int], mismatches: list[int], limit: float = 0.0):
    spec = make_spec(**SHADOW)
    stretches = tuple(
        Stretch(requests=100, comparisons=float(n), mismatches=float(x))
        for n, x in zip(comparisons, mismatches, strict=True)
    )
    shadow = ShadowNumbers(comparisons=float(sum(comparisons)), mismatches=float(sum(mismatches)))
    obs = observe(started().now, phase_window=timedelta(minutes=5), stretches=stretches, shadow=shadow)
    return mismatch_check(spec, spec.phases[0], obs, "result_mismatch_rate", limit, "the limit")


counts = st.lists(st.integers(min_value=0, max_value=2000), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(counts, st.data())
def test_one_or_two_odd_answers_never_roll_back_whatever_the_comparisons(comparisons, data):
    mismatches = [0] * len(comparisons)
    for _ in range(data.draw(st.integers(min_value=0, max_value=2))):
        index = data.draw(st.integers(min_value=0, max_value=len(comparisons) - 1))
        if mismatches[index] < comparisons[index]:
            mismatches[index] += 1
    assert _check(comparisons, mismatches).verdict != Verdict.FAIL


@settings(max_examples=150, deadline=None)
@given(counts, st.data())
def test_more_mismatches_never_turn_a_failure_into_a_pass_when_comparisons_are_the_same(comparisons, data):
    mismatches = [data.draw(st.integers(min_value=0, max_value=n)) for n in comparisons]
    more = [
        min(n, x + data.draw(st.integers(min_value=0, max_value=5)))
        for n, x in zip(comparisons, mismatches, strict=True)
    ]
    if _check(comparisons, mismatches).verdict == Verdict.FAIL:
        assert _check(comparisons, more).verdict == Verdict.FAIL


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.0, max_value=0.2), counts)
def test_a_limit_of_zero_is_tested_against_the_allowance_and_never_below_it(limit, comparisons):
    mismatches = [round(n * MISMATCH_ALLOWANCE) for n in comparisons]  # exactly at the allowance
    result = _check(comparisons, mismatches, limit)
    assert result.verdict != Verdict.FAIL
    assert result.threshold == limit
