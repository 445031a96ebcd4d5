"""Turn measurements of the canary and stable tracks into per-check verdicts.

Pure functions only. Two families of checks exist:

* triggers (``trigger_checks``) act at once in any phase: canary error rate, fallback rate, p95 latency
  increase over stable, unhealthy canary pods;
* phase checks (``phase_checks``) judge a phase when its minimum duration has passed: enough requests,
  success rate, error rate, and a statistical comparison against stable (a one-sided exact binomial test
  on the error rate, a one-sided Mann-Whitney U test on p95 latency samples).

Verdicts are ``pass``, ``fail``, ``inconclusive`` (not enough data: never a pass), ``error`` and
``skipped`` (the check does not apply). Counting rules follow docs/metrics-contract.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from scipy import stats

from backtest_operator.api import (
    BacktestServiceSpec,
    CheckResult,
    Phase,
    TrackNumbers,
    Verdict,
    brief_duration,
)


@dataclass(frozen=True)
class Observation:
    """What the operator (or the simulator) measured at ``time``; the policy's only view of the world.

    ``*_recent`` cover the last analysis interval, ``*_phase`` the current phase so far, and the p95
    sample series are one value per interval over the phase. ``error`` is set when measuring failed.
    """

    time: datetime
    canary_recent: TrackNumbers = field(default_factory=TrackNumbers)
    stable_recent: TrackNumbers = field(default_factory=TrackNumbers)
    canary_phase: TrackNumbers = field(default_factory=TrackNumbers)
    stable_phase: TrackNumbers = field(default_factory=TrackNumbers)
    recent_window: timedelta = timedelta(0)
    phase_window: timedelta = timedelta(0)
    canary_p95_samples: tuple[float, ...] = ()
    stable_p95_samples: tuple[float, ...] = ()
    canary_ready: bool = True
    stable_ready: bool = True
    canary_unhealthy_pods: int = 0
    stable_unhealthy_pods: int = 0
    error: str | None = None


def error_rate(track: TrackNumbers) -> float | None:
    return track.errors / track.requests if track.requests > 0 else None


def fallback_rate(track: TrackNumbers) -> float | None:
    return track.fallbacks / track.requests if track.requests > 0 else None


def success_rate(track: TrackNumbers) -> float | None:
    """Share answered without error within the latency objective (a slow error is counted once)."""
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


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _too_few(name: str, requests: float, needed: int, where: str) -> CheckResult:
    return CheckResult(
        name=name,
        verdict=Verdict.INCONCLUSIVE,
        value=None,
        threshold=None,
        message=f"only {requests:.0f} canary requests {where}, {needed} needed",
    )


def _rate_check(
    name: str, label: str, value: float, threshold: float, failed: bool, op: str, where: str
) -> CheckResult:
    shown = f"canary {label} {_pct(value)} {op} {_pct(threshold)} {where}"
    return CheckResult(
        name=name,
        verdict=Verdict.FAIL if failed else Verdict.PASS,
        value=value,
        threshold=threshold,
        message=shown,
    )


def trigger_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """Immediate rollback triggers over the last interval, or over the phase so far when the interval
    alone has too few canary requests to say anything (low traffic must not hide a broken canary).

    The error and fallback triggers act when the observed rate exceeds the rollback limit *and* is
    significantly above the failure rate the phase tolerates (one-sided exact binomial test at
    ``analysis.comparison.alpha``): at 1% weight a canary sees a dozen requests per interval, where two
    unlucky errors would otherwise look like 15% and roll back a good version.
    """
    rules = spec.rollback
    checks: list[CheckResult] = []
    if rules.on_unhealthy:
        unhealthy = obs.canary_unhealthy_pods
        checks.append(
            CheckResult(
                name="unhealthy",
                verdict=Verdict.FAIL if unhealthy > rules.max_unhealthy_pods else Verdict.PASS,
                value=float(unhealthy),
                threshold=float(rules.max_unhealthy_pods),
                message=f"{unhealthy} canary pods unhealthy (crash loop, or not ready past the grace period)",
            )
        )
    canary, stable, window = obs.canary_recent, obs.stable_recent, obs.recent_window
    if canary.requests < rules.min_requests and obs.canary_phase.requests >= rules.min_requests:
        canary, stable, window = obs.canary_phase, obs.stable_phase, obs.phase_window
    where = f"over the last {brief_duration(window)}"
    if canary.requests < rules.min_requests:
        for name in ("error_rate_trigger", "fallback_rate_trigger", "latency_trigger"):
            checks.append(_too_few(name, canary.requests, rules.min_requests, where))
        return checks
    tolerated = phase.max_error_rate
    alpha = spec.analysis.comparison.alpha
    checks.append(
        _significant_excess(
            "error_rate_trigger",
            "error rate",
            canary.errors,
            canary.requests,
            rules.max_error_rate,
            tolerated,
            alpha,
            where,
        )
    )
    checks.append(
        _significant_excess(
            "fallback_rate_trigger",
            "fallback rate",
            canary.fallbacks,
            canary.requests,
            rules.max_fallback_rate,
            tolerated,
            alpha,
            where,
        )
    )
    checks.append(_latency_trigger(spec, canary, stable, where))
    return checks


def _significant_excess(
    name: str,
    label: str,
    failures: float,
    requests: float,
    limit: float,
    tolerated: float,
    alpha: float,
    where: str,
) -> CheckResult:
    trials = round(requests)
    count = min(trials, round(failures))
    rate = count / trials
    p_value = float(stats.binomtest(count, trials, tolerated, alternative="greater").pvalue) if tolerated < 1 else 1.0
    failed = rate > limit and p_value < alpha
    if failed:
        message = f"canary {label} {_pct(rate)} > {_pct(limit)} {where}"
    elif rate > limit:
        message = (
            f"canary {label} {_pct(rate)} > {_pct(limit)} {where}, but only {count} of {trials} requests: "
            f"not significant against the {_pct(tolerated)} the phase tolerates (p={p_value:.3g})"
        )
    else:
        message = f"canary {label} {_pct(rate)} <= {_pct(limit)} {where}"
    return CheckResult(
        name=name,
        verdict=Verdict.FAIL if failed else Verdict.PASS,
        value=rate,
        threshold=limit,
        p_value=p_value,
        message=message,
    )


def _latency_trigger(spec: BacktestServiceSpec, canary: TrackNumbers, stable: TrackNumbers, where: str) -> CheckResult:
    limit = spec.rollback.max_latency_increase.total_seconds()
    if canary.latency_p95_seconds is None or stable.latency_p95_seconds is None:
        return CheckResult(
            name="latency_trigger",
            verdict=Verdict.INCONCLUSIVE,
            threshold=limit,
            message=f"no p95 latency for {'canary' if canary.latency_p95_seconds is None else 'stable'}",
        )
    increase = canary.latency_p95_seconds - stable.latency_p95_seconds
    failed = increase > limit
    return CheckResult(
        name="latency_trigger",
        verdict=Verdict.FAIL if failed else Verdict.PASS,
        value=increase,
        threshold=limit,
        message=(
            f"canary p95 {canary.latency_p95_seconds:.3f}s is {increase:+.3f}s against stable "
            f"{stable.latency_p95_seconds:.3f}s ({'>' if failed else '<='} {limit:g}s) {where}"
        ),
    )


def phase_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """The checks that decide whether a phase may advance, over the phase so far."""
    canary, where = obs.canary_phase, f"over {brief_duration(obs.phase_window)}"
    needed = spec.analysis.min_requests
    if canary.requests < needed:
        return [_too_few("requests", canary.requests, needed, where)]
    checks = [
        CheckResult(
            name="requests",
            verdict=Verdict.PASS,
            value=canary.requests,
            threshold=float(needed),
            message=f"{canary.requests:.0f} canary requests {where}",
        )
    ]
    success = success_rate(canary) or 0.0
    checks.append(
        _rate_check(
            "success_rate",
            "success rate",
            success,
            phase.min_success_rate,
            success < phase.min_success_rate,
            "<" if success < phase.min_success_rate else ">=",
            where,
        )
    )
    errors = error_rate(canary) or 0.0
    checks.append(
        _rate_check(
            "error_rate",
            "error rate",
            errors,
            phase.max_error_rate,
            errors >= phase.max_error_rate,
            ">=" if errors >= phase.max_error_rate else "<",
            where,
        )
    )
    checks.extend(comparison_checks(spec, phase, obs))
    return checks


def comparison_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """Is the canary significantly worse than stable? Skipped at 100% weight, where stable gets nothing."""
    settings = spec.analysis.comparison
    if not settings.enabled or phase.weight >= 100:
        why = "disabled" if not settings.enabled else "stable receives no traffic at weight 100"
        return [
            CheckResult(name=name, verdict=Verdict.SKIPPED, message=why)
            for name in ("error_rate_vs_stable", "latency_vs_stable")
        ]
    return [_error_rate_comparison(spec, obs), _latency_comparison(spec, obs)]


def _error_rate_comparison(spec: BacktestServiceSpec, obs: Observation) -> CheckResult:
    """Exact one-sided binomial test: are the canary's errors unlikely under stable's rate plus margin?"""
    settings, canary, stable = spec.analysis.comparison, obs.canary_phase, obs.stable_phase
    if stable.requests < spec.analysis.min_requests:
        return CheckResult(
            name="error_rate_vs_stable",
            verdict=Verdict.INCONCLUSIVE,
            message=f"only {stable.requests:.0f} stable requests to compare against",
        )
    baseline = min(1.0, (error_rate(stable) or 0.0) + settings.error_rate_margin)
    trials = round(canary.requests)
    failures = min(trials, round(canary.errors))
    p_value = float(stats.binomtest(failures, trials, baseline, alternative="greater").pvalue)
    failed = p_value < settings.alpha
    canary_rate = failures / trials
    return CheckResult(
        name="error_rate_vs_stable",
        verdict=Verdict.FAIL if failed else Verdict.PASS,
        value=canary_rate,
        threshold=baseline,
        p_value=p_value,
        message=(
            f"canary error rate {_pct(canary_rate)} against stable {_pct(error_rate(stable) or 0.0)} "
            f"+ margin {_pct(settings.error_rate_margin)}: p={p_value:.3g} "
            f"({'significantly worse' if failed else 'not significantly worse'}, alpha={settings.alpha:g})"
        ),
    )


def _latency_comparison(spec: BacktestServiceSpec, obs: Observation) -> CheckResult:
    """One-sided Mann-Whitney U on per-interval p95 samples, stable shifted by the margin (Kayenta-like)."""
    settings = spec.analysis.comparison
    canary, stable = obs.canary_p95_samples, obs.stable_p95_samples
    if min(len(canary), len(stable)) < settings.min_latency_samples:
        return CheckResult(
            name="latency_vs_stable",
            verdict=Verdict.INCONCLUSIVE,
            message=(
                f"{len(canary)} canary and {len(stable)} stable p95 samples, {settings.min_latency_samples} each needed"
            ),
        )
    margin = settings.latency_margin.total_seconds()
    shifted = [value + margin for value in stable]
    if max(canary) == min(canary) == max(shifted) == min(shifted):
        p_value = 1.0  # identical constant samples: the test is undefined, and nothing is worse
    else:
        p_value = float(stats.mannwhitneyu(canary, shifted, alternative="greater").pvalue)
    failed = p_value < settings.alpha
    canary_median = float(sorted(canary)[len(canary) // 2])
    stable_median = float(sorted(stable)[len(stable) // 2])
    return CheckResult(
        name="latency_vs_stable",
        verdict=Verdict.FAIL if failed else Verdict.PASS,
        value=canary_median - stable_median,
        threshold=margin,
        p_value=p_value,
        message=(
            f"canary p95 median {canary_median:.3f}s against stable {stable_median:.3f}s + {margin:g}s: "
            f"p={p_value:.3g} ({'significantly slower' if failed else 'not significantly slower'})"
        ),
    )


def bake_checks(spec: BacktestServiceSpec, obs: Observation) -> list[CheckResult]:
    """After promotion the new revision serves as stable; the absolute triggers still guard it."""
    rules, track = spec.rollback, obs.stable_recent
    where = f"over the last {brief_duration(obs.recent_window)}"
    checks: list[CheckResult] = []
    if rules.on_unhealthy:
        checks.append(
            CheckResult(
                name="unhealthy",
                verdict=Verdict.FAIL if obs.stable_unhealthy_pods > rules.max_unhealthy_pods else Verdict.PASS,
                value=float(obs.stable_unhealthy_pods),
                threshold=float(rules.max_unhealthy_pods),
                message=f"{obs.stable_unhealthy_pods} promoted pods unhealthy (crash loop, or long not ready)",
            )
        )
    if track.requests < rules.min_requests:
        checks.append(_too_few("error_rate_trigger", track.requests, rules.min_requests, where))
        return checks
    errors = error_rate(track) or 0.0
    failed = errors > rules.max_error_rate
    checks.append(
        CheckResult(
            name="error_rate_trigger",
            verdict=Verdict.FAIL if failed else Verdict.PASS,
            value=errors,
            threshold=rules.max_error_rate,
            message=(
                f"promoted revision error rate {_pct(errors)} {'>' if failed else '<='} "
                f"{_pct(rules.max_error_rate)} {where}"
            ),
        )
    )
    return checks
