"""Turn measurements of the canary and stable tracks into per-check verdicts.

Pure functions only. Every check that can roll back is a count of bad events out of requests, compared
with a limit by the sequential test of ``sequential.exceeds_limit``, so that looking every interval does
not multiply false alarms: a check **fails** only on evidence that holds over the whole rollout; it
**passes** when the observed numbers meet its threshold; otherwise it is **inconclusive** and the policy
keeps measuring. The families:

* rollback triggers (``trigger_checks``), in any phase, against ``spec.rollback``: error rate, fallback
  rate, latency increase over stable, and unhealthy canary pods (from Kubernetes);
* phase checks (``phase_checks``), against the phase's thresholds and against stable: enough requests,
  success rate, error rate, error rate and latency compared with stable. They fail early on evidence, and
  pass only when the phase's duration has passed (the policy's part);
* bake checks (``bake_checks``) guard the promoted revision during the bake window.

Latency is judged by counts, never by a p95 of a dozen requests: "the canary's p95 is more than X above
stable's" means "more than 5% of canary requests are slower than stable's p95 + X" (``histograms``).
The false-rollback budget ``analysis.noiseBudget`` is shared out by ``check_budget``. Counting rules follow
docs/metrics-contract.md; the statistics are explained in docs/rollout-policy.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from backtest_operator.api import (
    BacktestServiceSpec,
    CheckResult,
    Phase,
    TrackNumbers,
    Verdict,
    brief_duration,
)
from backtest_operator.histograms import P95, Histogram
from backtest_operator.sequential import Array, ArrayLike, Evidence, exceeds_limit


@dataclass(frozen=True)
class Stretch:
    """What the judged revision did over one stretch of the current phase (or of the bake window).

    Stretches are consecutive, one analysis interval long each (``Observation.stretch_intervals`` when a
    very long phase is read more coarsely), from the phase start; the last one ends now and may be shorter.
    """

    requests: float = 0.0
    errors: float = 0.0
    fallbacks: float = 0.0
    slow: float = 0.0
    """Requests over the latency objective (exact: the objective is a histogram bucket bound)."""
    latency: Histogram | None = None
    """The judged revision's latency histogram over the stretch, when known."""
    stable_p95_seconds: float | None = None
    """Stable's p95 over the same stretch, when stable had enough requests for one."""

    @property
    def failures(self) -> float:
        """Requests that count against the success rate: errors and slow ones (docs/metrics-contract.md)."""
        return min(self.requests, self.errors + self.slow)


@dataclass(frozen=True)
class Observation:
    """What the operator (or the simulator) measured at ``time``; the policy's only view of the world.

    ``*_recent`` cover the last analysis interval and ``*_phase`` the current phase so far (for display and
    the end-of-phase thresholds); ``stretches`` hold the same phase interval by interval, for the
    sequential tests. During the bake window the stretches describe the promoted revision.
    ``error`` is set when measuring failed.
    """

    time: datetime
    canary_recent: TrackNumbers = field(default_factory=TrackNumbers)
    stable_recent: TrackNumbers = field(default_factory=TrackNumbers)
    canary_phase: TrackNumbers = field(default_factory=TrackNumbers)
    stable_phase: TrackNumbers = field(default_factory=TrackNumbers)
    recent_window: timedelta = timedelta(0)
    phase_window: timedelta = timedelta(0)
    stretches: tuple[Stretch, ...] = ()
    stretch_intervals: int = 1
    canary_ready: bool = True
    stable_ready: bool = True
    canary_unhealthy_pods: int = 0
    stable_unhealthy_pods: int = 0
    error: str | None = None


def judged_stretches(obs: Observation, phase_numbers: TrackNumbers) -> tuple[Stretch, ...]:
    """The stretches to test; without any, the phase totals as one stretch (e.g. a one-row recording)."""
    if obs.stretches:
        return obs.stretches
    if phase_numbers.requests <= 0:
        return ()
    numbers = phase_numbers
    return (Stretch(numbers.requests, numbers.errors, numbers.fallbacks, numbers.slow),)


def error_rate(track: TrackNumbers) -> float | None:
    return track.errors / track.requests if track.requests > 0 else None


def fallback_rate(track: TrackNumbers) -> float | None:
    return track.fallbacks / track.requests if track.requests > 0 else None


def success_rate(track: TrackNumbers) -> float | None:
    """Share answered without error within the latency objective (docs/metrics-contract.md)."""
    if track.requests <= 0:
        return None
    return max(0.0, track.requests - track.errors - track.slow) / track.requests


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
    "unhealthy",
    "error_rate",
    "success_rate",
    "error_rate_vs_stable",
    "latency_vs_stable",
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


BUDGET_WEIGHTS = {
    "error_rate": 3.0,
    "success_rate": 3.0,
    "error_rate_vs_stable": 3.0,
    "latency_vs_stable": 1.0,
    "error_rate_trigger": 1.0,
    "fallback_rate_trigger": 1.0,
    "latency_trigger": 1.0,
}
"""How the noise budget is split among the sequential checks of a stage: the phase's error and success
thresholds and the error comparison with stable carry the detection goals at low traffic (they hold the
tightest limits), the others back them up."""

BAKE = "bake"
"""The stage after promotion (``check_budget``'s name for the bake window)."""


def stage_checks(spec: BacktestServiceSpec, stage: Phase | str) -> tuple[str, ...]:
    """The sequential checks that can roll back in a stage (a phase, or ``BAKE``)."""
    if stage == BAKE:
        return ("error_rate_trigger", "success_rate")
    assert isinstance(stage, Phase)
    checks = ["error_rate", "success_rate", "error_rate_trigger", "fallback_rate_trigger"]
    if stage.weight < 100:
        checks.append("latency_trigger")
        if spec.analysis.comparison.enabled:
            checks += ["error_rate_vs_stable", "latency_vs_stable"]
    return tuple(checks)


def check_budget(spec: BacktestServiceSpec, check: str, stage: Phase | str) -> float:
    """The false-alarm probability one check may spend in one stage (a phase, or the bake window).

    ``analysis.noiseBudget`` is shared out over every (stage, check) pair of the rollout in proportion to
    ``BUDGET_WEIGHTS``, so the false rollbacks of all of them add up to at most the budget (a union bound).
    """
    stages: list[Phase | str] = [*spec.phases]
    if spec.rollback.bake_window.total_seconds() > 0:
        stages.append(BAKE)
    total = sum(BUDGET_WEIGHTS[name] for each in stages for name in stage_checks(spec, each))
    return spec.analysis.noise_budget * BUDGET_WEIGHTS[check] / total


def analysis_error_check(obs: Observation) -> CheckResult:
    """An evaluation that could not be made (Prometheus unreachable, a bad query), as a check in error."""
    return CheckResult(name="analysis", verdict=Verdict.ERROR, message=f"analysis failed: {obs.error}")


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _too_few(name: str, requests: float, needed: int, where: str, who: str = "canary") -> CheckResult:
    return CheckResult(
        name=name,
        verdict=Verdict.INCONCLUSIVE,
        message=f"only {requests:.0f} {who} requests {where}, {needed} needed",
    )


@dataclass(frozen=True)
class RateRule:
    """One rate check: what is counted, the limit, and how it reads in messages."""

    name: str
    label: str
    """e.g. "canary error rate"."""
    limit: float
    limit_label: str
    """e.g. "the phase limit" or "rollback.maxErrorRate"."""
    strict: bool = False
    """Pass only below the limit (a phase's maxErrorRate fails when the rate reaches it)."""
    note: str = ""
    """Said after the limit's value, e.g. how it was derived."""


def rate_check(
    spec: BacktestServiceSpec,
    stage: Phase | str,
    rule: RateRule,
    trials: Sequence[float],
    events: Sequence[float],
    where: str,
    *,
    stride: int = 1,
    min_trials: float = 0.0,
    pass_needs: float = 0.0,
) -> CheckResult:
    """Fail on sequential evidence that the rate is above ``rule.limit``; pass when the observed rate is
    at or below it with at least ``pass_needs`` trials; otherwise inconclusive (keep measuring)."""
    evidence = exceeds_limit(trials, events, rule.limit, check_budget(spec, rule.name, stage), stride=stride)
    total, rate = evidence.trials, evidence.rate
    if total <= 0 or rate is None or total < min_trials:
        return _too_few(rule.name, total, max(1, round(min_trials)), where)
    counts = f"{evidence.events:.0f} of {total:.0f}"
    if evidence.exceeded:
        return _result(
            rule,
            Verdict.FAIL,
            rate,
            evidence,
            f"{rule.label} {_pct(rate)} ({counts}) {where} is above {rule.limit_label} "
            f"({_pct(rule.limit)}{rule.note}): {evidence.describe()}",
        )
    meets = rate < rule.limit if rule.strict else rate <= rule.limit
    within, beyond = ("<", ">=") if rule.strict else ("<=", ">")
    if meets and total >= pass_needs:
        return _result(
            rule,
            Verdict.PASS,
            rate,
            evidence,
            f"{rule.label} {_pct(rate)} {within} {_pct(rule.limit)} {where} ({counts})",
        )
    if meets:
        return _result(
            rule,
            Verdict.INCONCLUSIVE,
            rate,
            evidence,
            f"{rule.label} {_pct(rate)} {within} {_pct(rule.limit)} {where}, but only {total:.0f} requests, "
            f"{pass_needs:.0f} needed",
        )
    return _result(
        rule,
        Verdict.INCONCLUSIVE,
        rate,
        evidence,
        f"{rule.label} {_pct(rate)} {beyond} {_pct(rule.limit)} {where} ({counts}), not yet clearly above it "
        f"({evidence.describe()}): measuring on",
    )


def _result(rule: RateRule, verdict: Verdict, rate: float, evidence: Evidence, message: str) -> CheckResult:
    return CheckResult(
        name=rule.name, verdict=verdict, value=rate, threshold=rule.limit, p_value=evidence.p_value, message=message
    )


def pod_checks(spec: BacktestServiceSpec, unhealthy: int, who: str = "canary") -> list[CheckResult]:
    """Pod health, from the Kubernetes API: it holds whether or not Prometheus answers."""
    if not spec.rollback.on_unhealthy:
        return []
    return [
        CheckResult(
            name="unhealthy",
            verdict=Verdict.FAIL if unhealthy > 0 else Verdict.PASS,
            value=float(unhealthy),
            threshold=0.0,
            message=f"{unhealthy} {who} pods not ready or restarting",
        )
    ]


def _where(obs: Observation) -> str:
    return f"over {brief_duration(obs.phase_window)}"


def trigger_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """Immediate rollback triggers: pod health, then the rollback limits tested sequentially over the
    phase so far (every stretch since the phase began, and every later stretch boundary, so a fault that
    starts late is not averaged away by a long healthy start)."""
    rules = spec.rollback
    checks = pod_checks(spec, obs.canary_unhealthy_pods)
    stretches, where, stride = judged_stretches(obs, obs.canary_phase), _where(obs), obs.stretch_intervals
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
    return checks


def latency_check(
    spec: BacktestServiceSpec, phase: Phase, obs: Observation, name: str, increase: timedelta, setting: str
) -> CheckResult:
    """Is the canary's p95 more than ``increase`` above stable's? Counted, never estimated from a handful.

    In each stretch, the canary requests slower than stable's p95 + ``increase`` are counted from the
    canary's histogram; more than 5% of them is the same as a p95 above that time, so the count is tested
    against 5% with the sequential test. Stretches where stable had too few requests for a p95 are left
    out. At weight 100 stable gets no traffic: the check is skipped and latency is judged by the requests
    over the latency objective (``success_rate``).
    """
    if phase.weight >= 100:
        return CheckResult(
            name=name,
            verdict=Verdict.SKIPPED,
            message="stable receives no traffic at weight 100; latency is judged by the success rate",
        )
    seconds = increase.total_seconds()
    trials: list[float] = []
    events: list[float] = []
    for stretch in obs.stretches:
        usable = stretch.latency is not None and stretch.stable_p95_seconds is not None
        trials.append(stretch.latency.total if usable and stretch.latency else 0.0)
        events.append(
            stretch.latency.count_above(stretch.stable_p95_seconds + seconds)
            if usable and stretch.latency and stretch.stable_p95_seconds is not None
            else 0.0
        )
    if not any(stretch.latency is not None for stretch in obs.stretches):
        return CheckResult(
            name=name,
            verdict=Verdict.SKIPPED,
            threshold=seconds,
            message="the measurements hold no latency histogram (a recording without le= columns)",
        )
    if sum(trials) <= 0:
        return CheckResult(
            name=name,
            verdict=Verdict.INCONCLUSIVE,
            threshold=seconds,
            message="no canary latency histogram with a stable p95 to compare against yet",
        )
    label = f"share of canary requests slower than stable's p95 + {increase.total_seconds():g}s"
    result = rate_check(
        spec,
        phase,
        RateRule(name, label, 1.0 - P95, f"the share a p95 within {setting} allows"),
        trials,
        events,
        _where(obs),
        stride=obs.stretch_intervals,
        min_trials=float(spec.rollback.min_requests),
    )
    canary_p95, stable_p95 = obs.canary_phase.latency_p95_seconds, obs.stable_phase.latency_p95_seconds
    if canary_p95 is not None and stable_p95 is not None:
        shown = f"canary p95 {canary_p95:.3f}s against stable {stable_p95:.3f}s ({canary_p95 - stable_p95:+.3f}s); "
        result = result.model_copy(update={"message": shown + result.message})
    return result


def phase_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """The checks that decide whether a phase may advance, over the phase so far.

    Each fails as soon as the evidence is clear, whatever the phase's clock says; passing needs
    ``analysis.minRequests`` canary requests and the observed numbers within the phase's thresholds.
    """
    canary, where, needed = obs.canary_phase, _where(obs), spec.analysis.min_requests
    stretches, stride = judged_stretches(obs, canary), obs.stretch_intervals
    total = sum(s.requests for s in stretches)
    if total < needed:
        checks = [_too_few("requests", total, needed, where)]
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
        f"what the success rate {_pct(phase.min_success_rate)} allows",
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
    return checks


def _as_success(check: CheckResult) -> CheckResult:
    """Report the success-rate check as a success rate (1 - failure share), as the phase states it."""
    if check.value is None or check.threshold is None:
        return check
    return check.model_copy(update={"value": 1.0 - check.value, "threshold": 1.0 - check.threshold})


def comparison_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """Is the canary clearly worse than stable? Skipped at 100% weight, where stable gets nothing."""
    settings = spec.analysis.comparison
    if not settings.enabled or phase.weight >= 100:
        why = "disabled" if not settings.enabled else "stable receives no traffic at weight 100"
        return [
            CheckResult(name=name, verdict=Verdict.SKIPPED, message=why)
            for name in ("error_rate_vs_stable", "latency_vs_stable")
        ]
    latency = latency_check(
        spec, phase, obs, "latency_vs_stable", settings.latency_margin, "analysis.comparison.latencyMargin"
    )
    return [_error_rate_comparison(spec, phase, obs), _not_worse(latency)]


def _not_worse(check: CheckResult) -> CheckResult:
    """A comparison passes unless the evidence says worse: noise alone must not hold a phase."""
    if check.verdict == Verdict.INCONCLUSIVE and check.value is not None:
        return check.model_copy(update={"verdict": Verdict.PASS})
    return check


def stable_upper_bound(errors: ArrayLike, requests: ArrayLike) -> Array:
    """Upper 97.5% (Clopper-Pearson) bound of stable's error rate: the comparison never leans on luck."""
    from scipy.special import betaincinv  # noqa: PLC0415 - keeps scipy out of CLI start-up

    n = np.asarray(requests, dtype=np.float64)
    x = np.clip(np.asarray(errors, dtype=np.float64), 0.0, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = betaincinv(x + 1.0, n - x, 0.975)
    return np.asarray(np.where((n <= 0) | (x >= n), 1.0, bound), dtype=np.float64)


def _error_rate_comparison(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> CheckResult:
    """Sequential test of the canary's errors against stable's error rate (upper bound) plus the margin."""
    settings, stable = spec.analysis.comparison, obs.stable_phase
    if stable.requests < spec.analysis.min_requests:
        return _too_few(
            "error_rate_vs_stable", stable.requests, spec.analysis.min_requests, "to compare against", "stable"
        )
    limit = min(1.0, float(stable_upper_bound(stable.errors, stable.requests)) + settings.error_rate_margin)
    stretches = judged_stretches(obs, obs.canary_phase)
    stable_rate = _pct(error_rate(stable) or 0.0)
    rule = RateRule(
        "error_rate_vs_stable",
        "canary error rate",
        limit,
        f"stable's {stable_rate} plus the {_pct(settings.error_rate_margin)} margin",
        note=", from stable's upper 97.5% bound",
    )
    check = rate_check(
        spec,
        phase,
        rule,
        [s.requests for s in stretches],
        [s.errors for s in stretches],
        _where(obs),
        stride=obs.stretch_intervals,
        min_trials=float(spec.rollback.min_requests),
    )
    return _not_worse(check)


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
        f"what phase {last.name}'s success rate {_pct(last.min_success_rate)} allows",
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
