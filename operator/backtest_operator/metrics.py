"""The operator's own Prometheus series (docs/metrics-contract.md, "Operator's own series")."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from backtest_operator.api import BacktestServiceStatus, CheckResult, RolloutPhase

REGISTRY = CollectorRegistry(auto_describe=True)

ROLLOUT_PHASE = Gauge(
    "backtest_operator_rollout_phase", "1 for the current state of each BacktestService",
    ["namespace", "name", "phase"], registry=REGISTRY,
)  # fmt: skip
CANARY_WEIGHT = Gauge(
    "backtest_operator_canary_weight", "Canary weight applied (0-100)", ["namespace", "name"], registry=REGISTRY
)
ANALYSIS_VALUE = Gauge(
    "backtest_operator_analysis_value", "Latest measured value of each check",
    ["namespace", "name", "check"], registry=REGISTRY,
)  # fmt: skip
ANALYSIS_VERDICTS = Counter(
    "backtest_operator_analysis_verdicts_total", "Check verdicts", ["check", "verdict"], registry=REGISTRY
)
ROLLBACKS = Counter("backtest_operator_rollbacks_total", "Rollbacks by failing check", ["reason"], registry=REGISTRY)
PROMOTIONS = Counter("backtest_operator_promotions_total", "Promotions", registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "backtest_operator_reconcile_duration_seconds", "Time of one reconcile of one object", registry=REGISTRY
)
RECONCILE_ERRORS = Counter(
    "backtest_operator_reconcile_errors_total", "Reconciles that raised", ["kind"], registry=REGISTRY
)


def record_status(namespace: str, name: str, status: BacktestServiceStatus) -> None:
    for phase in RolloutPhase:
        ROLLOUT_PHASE.labels(namespace, name, phase.value).set(1.0 if status.phase == phase else 0.0)
    CANARY_WEIGHT.labels(namespace, name).set(status.canary_weight)


def record_checks(namespace: str, name: str, checks: tuple[CheckResult, ...]) -> None:
    for check in checks:
        ANALYSIS_VERDICTS.labels(check.name, check.verdict.value).inc()
        if check.value is not None:
            ANALYSIS_VALUE.labels(namespace, name, check.name).set(check.value)


def forget(namespace: str, name: str) -> None:
    """Drop the series of a deleted object so they do not linger."""
    for phase in RolloutPhase:
        with contextlib.suppress(KeyError):
            ROLLOUT_PHASE.remove(namespace, name, phase.value)
    with contextlib.suppress(KeyError):
        CANARY_WEIGHT.remove(namespace, name)
