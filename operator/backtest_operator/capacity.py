"""Capacity before traffic, and weights that count only once the data plane applies them. Pure functions.

A weight step is two facts about the cluster, not one write: the receiving track must have the ready pods
for its share of traffic *before* the weight moves (``canary_replicas``), and the phase's clock and
analysis window start only once the data plane (router, gateway, or replica ratio) reports the new weight
(``DataPlane.confirmed_weight``). The policy asks the two questions here; the reconciler measures the
answers (``kube.py``); the simulator, which has no cluster, uses ``IDEAL`` where both are always yes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus, RolloutPhase


def share_replicas(weight: int, total: int) -> int:
    """Pods a track needs to carry ``weight`` percent of a service sized ``total``: ceil, at least 1."""
    if total <= 0 or weight <= 0:
        return 0
    return max(1, math.ceil(weight * total / 100))


def canary_replicas(weight: int, total: int, provider: str) -> int:
    """Canary pods for a weight. Behind one Service (``replicas``) the ratio *is* the weight, so it is the
    nearest ratio (at least one pod); behind a router or gateway it is the capacity for the share."""
    if total <= 0 or weight <= 0:
        return 0
    if provider == "replicas":
        return min(total, max(1, round(weight * total / 100)))
    return share_replicas(weight, total)


def replica_share(canary: int, stable: int) -> int:
    """The percentage of traffic one Service spreads over ready pods sends to the canary."""
    return round(100 * canary / (canary + stable)) if canary + stable else 0


def target_weight(spec: BacktestServiceSpec, status: BacktestServiceStatus) -> int:
    """The weight the current step is heading for: its phase's weight (100 for a pending promotion)."""
    rolling = status.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED) and status.canary_revision
    if not rolling:
        return 0
    if status.promotion_pending:
        return 100
    phase = next((p for p in spec.phases if p.name == status.step_name), None)
    return status.canary_weight if phase is None else max(phase.weight, status.canary_weight)


@dataclass(frozen=True)
class DataPlane:
    """What the cluster holds at the time of an evaluation: ready pods per track, and the weight applied.

    ``measured`` is False for the ideal data plane of the simulator and of policy tests, where capacity is
    whatever ``Observation.canary_ready`` says and every weight is applied the moment it is asked for.
    """

    measured: bool = False
    canary_ready: int = 0
    """Ready pods of the canary revision (terminating pods excluded)."""
    stable_ready: int = 0
    """Ready pods of the stable revision."""
    effective_weight: int | None = None
    """The canary share the data plane applies now; None when it cannot be read."""
    confirmed_weight: int | None = None
    """The requested weight the data plane is known to realise (for ``replicas``: the planned pod split,
    whatever share it amounts to); None while nothing is confirmed."""
    note: str = ""
    """Why the weight is not (or only approximately) confirmed, in words, for the status condition."""


IDEAL = DataPlane()


def has_capacity(plane: DataPlane, canary_ready: bool, needed: int) -> bool:
    """Whether the canary has the ready pods for the share it is about to receive."""
    return plane.canary_ready >= needed if plane.measured else canary_ready


def is_confirmed(plane: DataPlane, weight: int) -> bool:
    return not plane.measured or plane.confirmed_weight == weight


def capacity_message(plane: DataPlane, needed: int, weight: int, total: int) -> str:
    have = f"{plane.canary_ready} of {needed}" if plane.measured else f"not all {needed}"
    return f"{have} canary pods ready for {weight}% of {total} replicas"
