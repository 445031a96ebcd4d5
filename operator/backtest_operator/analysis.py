"""Turn measurements of the canary and stable tracks into per-check verdicts.

Pure functions only. Every check that can roll back is a count of bad events out of requests, compared
with a limit by the sequential test of ``sequential.exceeds_limit``, so that looking every interval does
not multiply false alarms: a check **fails** only on evidence that holds over the whole rollout; it
**passes** when the observed numbers meet its threshold; otherwise it is **inconclusive** and the policy
keeps measuring. The families:

* rollback triggers (``trigger_checks``), in any phase, against ``spec.rollback``: error rate, fallback
  rate, latency increase over stable, result mismatches (with shadowing, ``mismatches``), and unhealthy
  canary pods (from Kubernetes);
* phase checks (``phase_checks``), against the phase's thresholds and against stable (``comparisons``):
  enough requests, success rate, error rate; error rate, slow share and latency compared with stable;
  the share of shadow comparisons whose result differs from stable's (with shadowing).
  They fail early on evidence, and pass only when the phase's duration has passed (the policy's part);
* bake checks (``bake_checks``) guard the promoted revision during the bake window.

Latency is judged by counts, never by a p95 of a dozen requests: "the canary's p95 is more than X above
stable's" means "more than 5% of canary requests are slower than stable's p95 + X" (``histograms``).
The false-rollback budget ``analysis.noiseBudget`` is shared out by ``budget.check_budget``; one check is
built by ``rate_checks.rate_check`` (the reusable part for new checks). Counting rules follow
docs/metrics-contract.md; the statistics are explained in docs/rollout-policy.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from backtest_operator.api import BacktestServiceSpec, CheckResult, Phase, Verdict, brief_duration
from backtest_operator.budget import BAKE
from backtest_operator.comparisons import comparison_checks, latency_check
from backtest_operator.comparisons import where as over_phase
from backtest_operator.mismatches import phase_mismatch_checks, trigger_mismatch_checks
from backtest_operator.observation import (
    Observation,
    Stretch,
    error_rate,
    fallback_rate,
    judged_stretches,
    success_rate,
)
from backtest_operator.rate_checks import RateRule, pct, rate_check, too_few

__all__ = [
    "FAILURE_PRECEDENCE",
    "Observation",
    "Stretch",
    "analysis_error_check",
    "bake_checks",
    "error_rate",
    "fallback_rate",
    "first_failure",
    "overall",
    "phase_checks",
    "pod_checks",
    "success_rate",
    "trigger_checks",
]


def overall(checks: Sequence[CheckResult]) -> Verdict:
    """Any fail fails; otherwise anything unknown keeps the result inconclusive; else pass."""
    verdicts = {c.verdict for c in checks}
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if verdicts & {Verdict.INCONCLUSIVE, Verdict.ERROR}:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


FAILURE_PRECEDENCE = (
    "error_rate_trigger",
    "fallback_rate_trigger",
    "latency_trigger",
    "result_mismatch_trigger",
    "unhealthy",
    "error_rate",
    "success_rate",
    "error_rate_vs_stable",
    "slow_rate_vs_stable",
    "latency_vs_stable",
    "result_mismatch_rate",
    "requests",
)
"""Which failing check is reported when several fail in one evaluation (docs/rollout-policy.md, "Which
check is reported"): rollback triggers before phase checks, the most direct evidence first (errors, then
fallbacks, then latency, then pod health; a failed success rate is often the same errors seen again).
Checks not listed come after these, in the order given."""


def first_failure(checks: Sequence[CheckResult]) -> CheckResult | None:
    """The failing check to report, by ``FAILURE_PRECEDENCE``; never by which query answered first."""
    failed = [c for c in checks if c.verdict == Verdict.FAIL]
    rank = {name: index for index, name in enumerate(FAILURE_PRECEDENCE)}
    return min(failed, key=lambda c: rank.get(c.name, len(rank)), default=None)


def analysis_error_check(obs: Observation) -> CheckResult:
    """An evaluation that could not be made (Prometheus unreachable, a bad query), as a check in error."""
    return CheckResult(name="analysis", verdict=Verdict.ERROR, message=f"analysis failed: {obs.error}")


def pod_checks(spec: BacktestServiceSpec, unhealthy: int, who: str = "canary") -> list[CheckResult]:
    """Pod health, from the Kubernetes API: it holds whether or not Prometheus answers."""
    if not spec.rollback.on_unhealthy:
        return []
    tolerated = spec.rollback.max_unhealthy_pods
    return [
        CheckResult(
            name="unhealthy",
            verdict=Verdict.FAIL if unhealthy > tolerated else Verdict.PASS,
            value=float(unhealthy),
            threshold=float(tolerated),
            message=f"{unhealthy} {who} pods unhealthy (crash loop, or not ready past the grace period)",
        )
    ]


def trigger_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """Immediate rollback triggers: pod health, then the rollback limits tested sequentially over the
    phase so far (every stretch since the phase began, and every later stretch boundary, so a fault that
    starts late is not averaged away by a long healthy start)."""
    rules = spec.rollback
    checks = pod_checks(spec, obs.canary_unhealthy_pods)
    stretches, where, stride = judged_stretches(obs, obs.canary_phase), over_phase(obs), obs.stretch_intervals
    trials = [s.requests for s in stretches]
    floor = float(rules.min_requests)
    checks.append(
        rate_check(
            spec,
            phase,
            RateRule("error_rate_trigger", "canary error rate", rules.max_error_rate, "rollback.maxErrorRate"),
            trials,
            [s.errors for s in stretches],
            where,
            stride=stride,
            min_trials=floor,
        )
    )
    checks.append(
        rate_check(
            spec,
            phase,
            RateRule(
                "fallback_rate_trigger", "canary fallback rate", rules.max_fallback_rate, "rollback.maxFallbackRate"
            ),
            trials,
            [s.fallbacks for s in stretches],
            where,
            stride=stride,
            min_trials=floor,
        )
    )
    checks.append(
        latency_check(spec, phase, obs, "latency_trigger", rules.max_latency_increase, "rollback.maxLatencyIncrease")
    )
    checks.extend(trigger_mismatch_checks(spec, phase, obs))
    return checks


def phase_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """The checks that decide whether a phase may advance, over the phase so far.

    Each fails as soon as the evidence is clear, whatever the phase's clock says; passing needs
    ``analysis.minRequests`` canary requests and the observed numbers within the phase's thresholds.
    """
    canary, where, needed = obs.canary_phase, over_phase(obs), spec.analysis.min_requests
    stretches, stride = judged_stretches(obs, canary), obs.stretch_intervals
    total = sum(s.requests for s in stretches)
    if total < needed:
        checks = [too_few("requests", total, needed, where)]
    else:
        checks = [
            CheckResult(
                name="requests",
                verdict=Verdict.PASS,
                value=total,
                threshold=float(needed),
                message=f"{total:.0f} canary requests {where}",
            )
        ]
    trials, floor = [s.requests for s in stretches], float(spec.rollback.min_requests)
    success = RateRule(
        "success_rate",
        "canary failure rate (errors and slow)",
        1.0 - phase.min_success_rate,
        f"what the success rate {pct(phase.min_success_rate)} allows",
    )
    checks.append(
        _as_success(
            rate_check(
                spec,
                phase,
                success,
                trials,
                [s.failures for s in stretches],
                where,
                stride=stride,
                min_trials=floor,
                pass_needs=needed,
            )
        )
    )
    errors = RateRule("error_rate", "canary error rate", phase.max_error_rate, "the phase limit", strict=True)
    checks.append(
        rate_check(
            spec,
            phase,
            errors,
            trials,
            [s.errors for s in stretches],
            where,
            stride=stride,
            min_trials=floor,
            pass_needs=needed,
        )
    )
    checks.extend(comparison_checks(spec, phase, obs))
    checks.extend(phase_mismatch_checks(spec, phase, obs))
    return checks


def _as_success(check: CheckResult) -> CheckResult:
    """Report the success-rate check as a success rate (1 - failure share), as the phase states it."""
    if check.value is None or check.threshold is None:
        return check
    return check.model_copy(update={"value": 1.0 - check.value, "threshold": 1.0 - check.threshold})


def bake_checks(spec: BacktestServiceSpec, obs: Observation) -> list[CheckResult]:
    """After promotion the new revision serves as stable. It stays held to the rollback error limit and
    to the last phase's success rate (errors plus requests over the latency objective), both tested
    sequentially over the bake window so far. The latency and fallback triggers need a canary and a
    stable side to compare, which the bake window no longer has; the success rate is what guards latency.
    """
    checks = pod_checks(spec, obs.stable_unhealthy_pods, "promoted")
    stretches, where = judged_stretches(obs, obs.stable_phase), f"since promotion ({brief_duration(obs.phase_window)})"
    trials, floor = [s.requests for s in stretches], float(spec.rollback.min_requests)
    errors = RateRule(
        "error_rate_trigger", "promoted revision error rate", spec.rollback.max_error_rate, "rollback.maxErrorRate"
    )
    checks.append(
        rate_check(
            spec,
            BAKE,
            errors,
            trials,
            [s.errors for s in stretches],
            where,
            stride=obs.stretch_intervals,
            min_trials=floor,
        )
    )
    last = spec.phases[-1]
    success = RateRule(
        "success_rate",
        "promoted revision failure rate (errors and slow)",
        1.0 - last.min_success_rate,
        f"what phase {last.name}'s success rate {pct(last.min_success_rate)} allows",
    )
    checks.append(
        _as_success(
            rate_check(
                spec,
                BAKE,
                success,
                trials,
                [s.failures for s in stretches],
                where,
                stride=obs.stretch_intervals,
                min_trials=floor,
            )
        )
    )
    return checks
