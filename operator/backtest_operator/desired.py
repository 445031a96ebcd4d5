"""The complete desired state of one BacktestService: engine workloads plus its traffic provider's objects."""

from __future__ import annotations

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.traffic import traffic_manifests
from backtest_operator.workloads import Manifest, Owner, WorkloadDefaults, engine_workloads


def desired_manifests(
    owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus, defaults: WorkloadDefaults
) -> list[Manifest]:
    """Everything to apply, in an order where nothing refers to an object that does not exist yet."""
    return [*engine_workloads(owner, spec, status), *traffic_manifests(owner, spec, status, defaults)]
