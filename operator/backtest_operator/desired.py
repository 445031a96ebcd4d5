"""The complete desired state of one BacktestService: engine workloads plus its traffic provider's objects."""

from __future__ import annotations

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.traffic import traffic_manifests
from backtest_operator.workloads import Manifest, Owner, WorkloadDefaults, engine_workloads


def desired_manifests(
    owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus, defaults: WorkloadDefaults
) -> list[Manifest]:
    """Everything to apply: the traffic objects first, so a weight that drops (rollback, promotion) leaves a
    track before its Service selector or its pods change; a weight that rises was already given capacity in
    earlier passes (capacity before traffic)."""
    return [*traffic_manifests(owner, spec, status, defaults), *engine_workloads(owner, spec, status)]
