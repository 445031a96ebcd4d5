"""Result mismatches: the canary answers 200, fast, and wrong. Judged from the router's shadow comparisons.

With ``traffic.shadow.fraction`` above 0 the router copies a sample of stable-served requests that are safe
to repeat to the canary and compares the answers (docs/router.md, "Shadow comparison"). The mismatch rate
is mismatch / (match + mismatch): copies without a comparable canary answer (``error``) and sampled
requests not sent (``skipped``) are neither (docs/metrics-contract.md). Two checks read it, both with the
sequential evidence of every other check (``rate_checks``), so one odd answer never rolls back:

* ``result_mismatch_rate``, in every phase below weight 100, against the phase's ``maxResultMismatchRate``;
* ``result_mismatch_trigger``, the rollback trigger, against ``rollback.maxResultMismatchRate``.

A limit of 0 (the phase default) tolerates no wrong results, yet a sequential test needs a rate to test
against: it is tested against ``MISMATCH_ALLOWANCE``, so the check fails once mismatches are clearly more
frequent than one comparison in a thousand. At weight 100 stable serves nothing, so there is nothing to
copy and the checks are skipped; without shadowing (or without a router) they do not exist at all, and the
``ShadowComparison`` condition says why.
"""

from __future__ import annotations

from datetime import datetime

from backtest_operator.api import BacktestServiceSpec, CheckResult, Condition, Phase, Verdict
from backtest_operator.budget import shadowing
from backtest_operator.comparisons import where
from backtest_operator.conditions import ConditionStatus, set_condition
from backtest_operator.observation import Observation
from backtest_operator.rate_checks import RateRule, pct, rate_check

MISMATCH_ALLOWANCE = 0.001
"""The mismatch rate a limit of 0 is tested against: a comparison flaking once in a thousand is noise."""
PHASE_CHECK = "result_mismatch_rate"
TRIGGER = "result_mismatch_trigger"
CONDITION = "ShadowComparison"


def mismatch_counts(obs: Observation) -> tuple[list[float], list[float]]:
    """Judged comparisons and mismatches, stretch by stretch (or the phase totals as one stretch)."""
    if obs.stretches:
        return [s.comparisons for s in obs.stretches], [s.mismatches for s in obs.stretches]
    if obs.shadow is None:
        return [], []
    return [obs.shadow.comparisons], [obs.shadow.mismatches]


def mismatch_check(
    spec: BacktestServiceSpec, phase: Phase, obs: Observation, name: str, limit: float, setting: str
) -> CheckResult:
    """Fail on sequential evidence that canary results differ from stable's more often than ``limit``
    allows; pass otherwise once ``rollback.minRequests`` comparisons were judged (noise never holds)."""
    if phase.weight >= 100:
        return CheckResult(
            name=name,
            verdict=Verdict.SKIPPED,
            message="stable serves no traffic at weight 100: there is nothing to copy to the canary and compare",
        )
    trials, events = mismatch_counts(obs)
    judged, floor = sum(trials), spec.rollback.min_requests
    if judged < floor:
        errors = (
            f", {obs.shadow.errors:.0f} without a comparable canary answer" if obs.shadow and obs.shadow.errors else ""
        )
        return CheckResult(
            name=name,
            verdict=Verdict.INCONCLUSIVE,
            threshold=limit,
            message=f"only {judged:.0f} shadow comparisons {where(obs)}{errors}, {floor} needed",
        )
    tested = max(limit, MISMATCH_ALLOWANCE)
    note = "" if tested == limit else f"; tested against {pct(tested)} so that a flaky comparison is not enough"
    rule = RateRule(name, "canary result mismatch rate", tested, setting, note=note)
    check = rate_check(
        spec, phase, rule, trials, events, where(obs), stride=obs.stretch_intervals, min_trials=float(floor)
    )
    update: dict[str, object] = {"threshold": limit}
    if check.verdict == Verdict.INCONCLUSIVE and check.value is not None:
        update["verdict"] = Verdict.PASS  # not clearly above: a few odd answers never hold a phase
    fields = top_fields_text(obs)
    if fields and check.verdict == Verdict.FAIL:
        update["message"] = f"{check.message}; mismatching fields: {fields}"
    return check.model_copy(update=update)


def top_fields_text(obs: Observation) -> str:
    """The most frequently mismatching fields, e.g. ``metrics.total_return (41), trades.pnl (3)``."""
    if obs.shadow is None:
        return ""
    return ", ".join(f"{item.field} ({item.count:.0f})" for item in obs.shadow.top_fields)


def phase_mismatch_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """The phase's check, when shadowing is on."""
    if not shadowing(spec):
        return []
    limit = phase.max_result_mismatch_rate
    return [mismatch_check(spec, phase, obs, PHASE_CHECK, limit, f"phase {phase.name}'s maxResultMismatchRate")]


def trigger_mismatch_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """The rollback trigger, when shadowing is on."""
    if not shadowing(spec):
        return []
    limit = spec.rollback.max_result_mismatch_rate
    return [mismatch_check(spec, phase, obs, TRIGGER, limit, "rollback.maxResultMismatchRate")]


def shadow_condition(
    conditions: list[Condition], spec: BacktestServiceSpec, generation: int, now: datetime
) -> list[Condition]:
    """ShadowComparison: True while the router compares canary results with stable's; False with the
    reason otherwise (``NoRouter`` for the gatewayAPI and replicas providers, ``Disabled`` for fraction 0)."""
    shadow = spec.traffic.shadow
    status: ConditionStatus
    if spec.traffic.provider != "router":
        status, reason = "False", "NoRouter"
        message = (
            f"provider {spec.traffic.provider} has no router to copy requests to the canary: results are not "
            "compared (traffic.shadow needs provider router)"
        )
    elif shadow.fraction <= 0:
        status, reason = "False", "Disabled"
        message = "traffic.shadow.fraction is 0: canary results are not compared with stable's"
    else:
        status, reason = "True", "Comparing"
        message = (
            f"{pct(shadow.fraction)} of the repeatable requests stable serves are copied to the canary and the "
            f"results compared (at most {shadow.max_in_flight} at once per router pod)"
        )
    return set_condition(conditions, CONDITION, status, reason, message, generation, now)
