"""The complete desired state of one BacktestService: the managed database, engine workloads, the traffic
provider's objects and the NetworkPolicies (the generated credentials Secret is written by
`generated_secrets`, never applied, because its values are random)."""

from __future__ import annotations

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.database import database_manifests
from backtest_operator.network import network_policies
from backtest_operator.traffic import traffic_manifests
from backtest_operator.workloads import Manifest, Owner, WorkloadDefaults, engine_workloads


def desired_manifests(
    owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus, defaults: WorkloadDefaults
) -> list[Manifest]:
    """Everything to apply. The traffic objects come before the engine workloads, so a weight that drops
    (rollback, promotion) leaves a track before its Service selector or its pods change; a weight that rises
    was given its capacity in earlier passes (capacity before traffic). The database comes first (the
    engines need it), the network policies last."""
    return [
        *database_manifests(owner, spec, status),
        *traffic_manifests(owner, spec, status, defaults),
        *engine_workloads(owner, spec, status),
        *network_policies(owner, spec, status),
    ]
