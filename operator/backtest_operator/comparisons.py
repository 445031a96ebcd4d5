"""The canary against stable: latency counted against stable's p95, errors and slow requests against
stable's rates. A comparison fails only on evidence that the canary is worse; noise never holds a phase.

Latency is judged by counts, never by a p95 of a dozen requests: "the canary's p95 is more than X above
stable's" is the same statement as "more than 5% of canary requests are slower than stable's p95 + X"
(``histograms``), and a count can be tested at any sample size.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from backtest_operator.api import BacktestServiceSpec, CheckResult, Phase, Verdict, brief_duration
from backtest_operator.histograms import P95
from backtest_operator.observation import Observation, judged_stretches
from backtest_operator.rate_checks import RateRule, pct, rate_check, too_few
from backtest_operator.sequential import Array, ArrayLike


def where(obs: Observation) -> str:
    return f"over {brief_duration(obs.phase_window)}"


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
        where(obs),
        stride=obs.stretch_intervals,
        min_trials=float(spec.rollback.min_requests),
    )
    canary_p95, stable_p95 = obs.canary_phase.latency_p95_seconds, obs.stable_phase.latency_p95_seconds
    if canary_p95 is not None and stable_p95 is not None:
        shown = f"canary p95 {canary_p95:.3f}s against stable {stable_p95:.3f}s ({canary_p95 - stable_p95:+.3f}s); "
        result = result.model_copy(update={"message": shown + result.message})
    return result


COMPARISONS = ("error_rate_vs_stable", "slow_rate_vs_stable", "latency_vs_stable")


def comparison_checks(spec: BacktestServiceSpec, phase: Phase, obs: Observation) -> list[CheckResult]:
    """Is the canary clearly worse than stable? Skipped at 100% weight, where stable gets nothing."""
    settings = spec.analysis.comparison
    if not settings.enabled or phase.weight >= 100:
        why = "disabled" if not settings.enabled else "stable receives no traffic at weight 100"
        return [CheckResult(name=name, verdict=Verdict.SKIPPED, message=why) for name in COMPARISONS]
    latency = latency_check(
        spec, phase, obs, "latency_vs_stable", settings.latency_margin, "analysis.comparison.latencyMargin"
    )
    return [
        _rate_comparison(spec, phase, obs, "error_rate_vs_stable", "error rate", settings.error_rate_margin),
        _rate_comparison(spec, phase, obs, "slow_rate_vs_stable", "slow share", settings.slow_rate_margin),
        _not_worse(latency),
    ]


def _not_worse(check: CheckResult) -> CheckResult:
    """A comparison passes unless the evidence says worse: noise alone must not hold a phase."""
    if check.verdict == Verdict.INCONCLUSIVE and check.value is not None:
        return check.model_copy(update={"verdict": Verdict.PASS})
    return check


def stable_upper_bound(events: ArrayLike, requests: ArrayLike) -> Array:
    """Upper 97.5% (Clopper-Pearson) bound of a stable rate: a comparison never leans on stable's luck."""
    from scipy.special import betaincinv  # noqa: PLC0415 - keeps scipy out of CLI start-up

    n = np.asarray(requests, dtype=np.float64)
    x = np.clip(np.asarray(events, dtype=np.float64), 0.0, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = betaincinv(x + 1.0, n - x, 0.975)
    return np.asarray(np.where((n <= 0) | (x >= n), 1.0, bound), dtype=np.float64)


def _rate_comparison(
    spec: BacktestServiceSpec, phase: Phase, obs: Observation, name: str, label: str, margin: float
) -> CheckResult:
    """Sequential test of a canary rate (errors, or requests over the latency objective) against stable's
    rate over the phase (its upper 97.5% bound) plus ``margin``."""
    stable = obs.stable_phase
    if stable.requests < spec.analysis.min_requests:
        return too_few(name, stable.requests, spec.analysis.min_requests, "to compare against", "stable")
    stable_events = stable.errors if name == "error_rate_vs_stable" else stable.slow
    limit = min(1.0, float(stable_upper_bound(stable_events, stable.requests)) + margin)
    stretches = judged_stretches(obs, obs.canary_phase)
    events = [s.errors if name == "error_rate_vs_stable" else s.slow for s in stretches]
    rule = RateRule(
        name,
        f"canary {label}",
        limit,
        f"stable's {pct(stable_events / stable.requests)} plus the {pct(margin)} margin",
        note=", from stable's upper 97.5% bound",
    )
    check = rate_check(
        spec, phase, rule, [s.requests for s in stretches], events, where(obs),
        stride=obs.stretch_intervals, min_trials=float(spec.rollback.min_requests),
    )  # fmt: skip
    return _not_worse(check)
