"""What a pod's status says about the release it runs. Pure functions over ``kubernetes`` V1Pod objects.

Pods come and go for reasons that have nothing to do with the release: a node drain or a cluster
autoscaler evicts them, the scheduler preempts them, a node stops reporting and its pods are marked not
ready, an old restart lingers in ``restartCount``. Reading any of that as a failed canary rolls back
healthy releases (and, during a bake, healthy promotions). So a pod counts against its release only for
what the release does: its containers crash-loop or cannot start from its image or configuration, or its
readiness has failed for longer than a grace period measured from the pod's last Ready transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

RELEASE_WAITING_REASONS = frozenset(
    {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
     "CreateContainerError", "RunContainerError"}
)  # fmt: skip
"""Container waiting reasons that come from the release itself (its image, command or configuration)."""


class PodState(StrEnum):
    READY = "ready"
    STARTING = "starting"
    """Not ready yet, within the grace period of its last Ready transition."""
    DISRUPTED = "disrupted"
    """Terminating, evicted, preempted, failed or stranded on an unreachable node: not the release's fault."""
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class PodVerdict:
    state: PodState
    reason: str = ""


def _condition(status: Any, kind: str) -> Any:
    return next((c for c in (status.conditions or []) if c.type == kind), None)


def classify(pod: Any, now: datetime, since: datetime | None, grace: timedelta) -> PodVerdict:
    """The state of one pod; ``since`` is when the rollout started (earlier restarts do not count)."""
    meta, status = pod.metadata, pod.status
    if meta is not None and meta.deletion_timestamp is not None:
        return PodVerdict(PodState.DISRUPTED, "terminating")
    if status is None:
        return PodVerdict(PodState.STARTING, "no status yet")
    if status.phase in ("Failed", "Succeeded"):
        # A Deployment's pods restart in place; they end only when evicted, preempted, or rejected by a node.
        return PodVerdict(PodState.DISRUPTED, f"{status.phase.lower()}: {status.reason or 'ended'}")
    disruption = _condition(status, "DisruptionTarget")
    if disruption is not None and disruption.status == "True":
        return PodVerdict(PodState.DISRUPTED, f"disruption: {disruption.reason or 'pending'}")
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state is not None else None
        if waiting is None or waiting.reason not in RELEASE_WAITING_REASONS:
            continue
        if waiting.reason == "CrashLoopBackOff" and not _crashed_since(container, since):
            continue
        return PodVerdict(PodState.UNHEALTHY, f"container {container.name}: {waiting.reason}")
    ready = _condition(status, "Ready")
    if ready is not None and ready.status == "True":
        return PodVerdict(PodState.READY)
    containers = status.container_statuses or []
    if ready is not None and containers and all(c.ready for c in containers):
        # The node controller marks pods of an unreachable node not ready; the kubelet, had it seen a failing
        # probe, would have marked the container itself. The pod is evicted later: not the release's fault.
        return PodVerdict(PodState.DISRUPTED, "node not ready")
    changed = ready.last_transition_time if ready is not None else None
    changed = changed or status.start_time or (meta.creation_timestamp if meta is not None else None)
    if changed is not None and now - changed > grace:
        return PodVerdict(PodState.UNHEALTHY, f"not ready for {int((now - changed).total_seconds())}s")
    return PodVerdict(PodState.STARTING)


def _crashed_since(container: Any, since: datetime | None) -> bool:
    terminated = container.last_state.terminated if container.last_state is not None else None
    finished = terminated.finished_at if terminated is not None else None
    return since is None or finished is None or finished >= since
