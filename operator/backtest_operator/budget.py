"""How the false-rollback budget ``analysis.noiseBudget`` is shared out over the checks of a rollout.

Every check that can roll back spends part of the budget on its false alarms; the parts add up to at most
the budget over the whole rollout (a union bound; docs/rollout-policy.md, "Statistics").
"""

from __future__ import annotations

from backtest_operator.api import BacktestServiceSpec, Phase

BUDGET_WEIGHTS = {
    "error_rate": 3.0,
    "success_rate": 3.0,
    "error_rate_vs_stable": 3.0,
    "slow_rate_vs_stable": 3.0,
    "latency_vs_stable": 1.0,
    "error_rate_trigger": 1.0,
    "fallback_rate_trigger": 1.0,
    "latency_trigger": 1.0,
    "result_mismatch_rate": 3.0,
    "result_mismatch_trigger": 1.0,
}
"""How the noise budget is split among the sequential checks of a stage: the phase's error and success
thresholds and the error and slow-request comparisons with stable carry the detection goals at low
traffic (they hold the tightest limits), the others back them up. The result-mismatch checks exist only
while shadowing is on (``shadowing``), so turning it on takes budget from the others and off gives it back."""

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
            checks += ["error_rate_vs_stable", "slow_rate_vs_stable", "latency_vs_stable"]
        if shadowing(spec):
            # Shadow copies are of stable-served requests: at weight 100 there are none to judge.
            checks += ["result_mismatch_rate", "result_mismatch_trigger"]
    return tuple(checks)


def shadowing(spec: BacktestServiceSpec) -> bool:
    """Does the router compare canary results with stable's? Only the router provider has a router."""
    return spec.traffic.provider == "router" and spec.traffic.shadow.fraction > 0


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
