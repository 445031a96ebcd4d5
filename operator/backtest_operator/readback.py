"""Read back what the data plane applies: the weight each provider really realises, and the ready pods.

The operator asks for a weight by writing an object (the router's ConfigMap, an HTTPRoute, Deployment
sizes); whether the data plane applies it is another matter (a router that has not seen the ConfigMap
yet, a gateway that has not accepted the route, pods not ready). The policy starts a phase's clock only
on what is read back here (``capacity.DataPlane``):

* ``router``: ``backtest_router_weight`` of every router pod, from Prometheus (docs/metrics-contract.md);
  confirmed when every router reports the weight asked for;
* ``gatewayAPI``: the HTTPRoute's status; confirmed when every parent Gateway has accepted the generation
  that carries the weights (Gateway API reports acceptance, not weights);
* ``replicas``: the ready pods behind the one Service; confirmed when the planned split is ready, and the
  effective weight is the ready ratio, whatever the requested weight was.
"""

from __future__ import annotations

from typing import Any

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.capacity import DataPlane, replica_share
from backtest_operator.errors import AnalysisError
from backtest_operator.kube import RevisionHealth
from backtest_operator.prometheus import PrometheusClient
from backtest_operator.queries import selector
from backtest_operator.workloads import replica_plan


def _ready(health: dict[str, RevisionHealth], revision: str | None) -> int:
    found = health.get(revision or "")
    return found.ready if found is not None else 0


def pods_only(status: BacktestServiceStatus, health: dict[str, RevisionHealth]) -> DataPlane:
    return DataPlane(
        measured=True,
        canary_ready=_ready(health, status.canary_revision),
        stable_ready=_ready(health, status.stable_revision),
    )


def router_plane(base: DataPlane, asked: int, reported: list[float], error: str = "") -> DataPlane:
    """Confirmed when at least one router reports a weight and every router reports the one asked for."""
    weights = sorted({round(value) for value in reported})
    if error or not weights:
        note = error or "no router reports backtest_router_weight to Prometheus yet"
        return DataPlane(True, base.canary_ready, base.stable_ready, None, None, note)
    if weights == [asked]:
        return DataPlane(True, base.canary_ready, base.stable_ready, asked, asked)
    spread = ", ".join(f"{w}%" for w in weights)
    effective = weights[0] if len(weights) == 1 else None
    note = f"{len(reported)} router pods report {spread}"
    return DataPlane(True, base.canary_ready, base.stable_ready, effective, None, note)


async def router_weights(client: PrometheusClient, labels: dict[str, str], at: Any) -> tuple[list[float], str]:
    query = f"backtest_router_weight{{{selector(labels)}}}"
    try:
        return await client.vector(query, at), ""
    except AnalysisError as exc:
        return [], f"the router's weight cannot be read: {exc}"


def gateway_plane(base: DataPlane, asked: int, previous: int | None, route: dict[str, Any] | None) -> DataPlane:
    """Confirmed when the route carries the weight and every parent accepted that generation."""
    if route is None:
        return DataPlane(True, base.canary_ready, base.stable_ready, None, None, "the HTTPRoute does not exist yet")
    generation = (route.get("metadata") or {}).get("generation")
    rules = (route.get("spec") or {}).get("rules") or [{}]
    weights = [ref.get("weight", 1) for ref in rules[0].get("backendRefs") or []]
    carried = weights[1] if len(weights) == 2 else None
    parents = ((route.get("status") or {}).get("parents")) or []
    accepted = [
        p for p in parents
        for c in p.get("conditions") or []
        if c.get("type") == "Accepted" and c.get("status") == "True" and c.get("observedGeneration") == generation
    ]  # fmt: skip
    if carried == asked and parents and len(accepted) == len(parents):
        return DataPlane(True, base.canary_ready, base.stable_ready, asked, asked)
    if not parents:
        note = "no Gateway reports on the HTTPRoute (is a Gateway API controller running for its parentRefs?)"
    else:
        note = f"{len(accepted)} of {len(parents)} Gateways accepted generation {generation} of the HTTPRoute"
    return DataPlane(True, base.canary_ready, base.stable_ready, previous, None, note)


def replicas_plane(
    spec: BacktestServiceSpec, status: BacktestServiceStatus, health: dict[str, RevisionHealth]
) -> DataPlane:
    """One Service spreads requests over ready pods: the weight is the ready ratio."""
    canary, stable = _ready(health, status.canary_revision), _ready(health, status.stable_revision)
    effective = replica_share(canary if status.canary_revision else 0, stable)
    plan = replica_plan(spec, status).by_revision
    planned = {revision: replicas for revision, (_, replicas) in plan.items()}
    split_ready = all(_ready(health, revision) == replicas for revision, replicas in planned.items())
    asked = status.canary_weight
    confirmed = asked if split_ready else None
    note = ""
    if split_ready and effective != asked:
        note = (
            f"one Service spreads requests over {canary} canary and {stable} stable ready pods, which is "
            f"{effective}%; {asked}% needs more replicas"
        )
    elif not split_ready:
        note = "the planned pod split is not ready yet"
    return DataPlane(True, canary, stable, effective, confirmed, note)
