"""One evaluation of one BacktestService: read, measure, decide, persist, apply. Level-based and idempotent.

The order matters for restarts: status (the only state) is persisted before the workloads are applied
from it, so an operator killed between the two re-applies the same desired state on its next pass, and
never repeats a decision (a promotion is recorded before it is carried out).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from backtest_operator import metrics, readback
from backtest_operator.analysis import Observation
from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus, RolloutPhase
from backtest_operator.capacity import DataPlane
from backtest_operator.controls import Controls
from backtest_operator.credentials import with_storage_status
from backtest_operator.desired import desired_manifests
from backtest_operator.errors import InvalidSpec
from backtest_operator.generated_secrets import ensure_credentials
from backtest_operator.kube import Cluster, RevisionHealth, merge_patch
from backtest_operator.policy import Action, Decision, Event, decide
from backtest_operator.prometheus import PrometheusClient, measure, with_pod_health
from backtest_operator.workloads import LABEL_COMPONENT, LABEL_SERVICE, Manifest, Owner, WorkloadDefaults

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"

POLL_WHILE_WAITING = timedelta(seconds=5)
"""How often to look at pods that are becoming ready (nothing wakes the worker when they do)."""
POLL_WHILE_ENTERING = timedelta(seconds=2)
"""How often to look while a phase waits for canary capacity or for the data plane to confirm its weight:
the phase's clock starts at the first look that sees the weight applied."""
RESYNC = timedelta(minutes=1)
"""How often an idle object is re-checked (drift of owned objects, pods turning unhealthy)."""
REAPPLY = timedelta(minutes=5)

EventPoster = Callable[[dict[str, Any], Event], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Pass:
    """What one reconcile pass did, for the caller's logging and scheduling."""

    decision: Decision
    wrote_status: bool
    applied: bool
    next_in: timedelta


@dataclass
class Reconciler:
    cluster: Cluster
    defaults: WorkloadDefaults
    post_event: EventPoster
    clock: Callable[[], datetime] = utcnow
    _prometheus: dict[str, PrometheusClient] = field(default_factory=dict)
    _applied: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    _yielded: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def prometheus_for(self, spec: BacktestServiceSpec) -> PrometheusClient:
        """One pooled client per Prometheus URL, shared by every object that uses it."""
        settings = spec.analysis.prometheus
        key = f"{settings.url}|{settings.timeout.total_seconds()}"
        if key not in self._prometheus:
            self._prometheus[key] = PrometheusClient(settings.url, settings.timeout)
        return self._prometheus[key]

    async def close(self) -> None:
        for client in self._prometheus.values():
            await client.aclose()

    async def reconcile(self, owner: Owner, log: logging.Logger | logging.LoggerAdapter[Any]) -> Pass | None:
        started = time.perf_counter()
        body = await self.cluster.get(owner)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        spec, status = _parse(body)
        now = self.clock()
        health, deployments = await self.cluster.engine_state(
            owner, now, status.rollout_started_at, spec.rollback.readiness_grace
        )
        obs = await self._observe(owner, spec, status, health, now)
        plane = await self._read_plane(owner, spec, status, health, now)
        decision = decide(
            spec, status, obs, now,
            generation=int(body["metadata"].get("generation", 0)),
            controls=Controls.from_annotations(body["metadata"].get("annotations")),
            plane=plane,
        )  # fmt: skip
        status = with_storage_status(owner.name, spec, decision.status)
        status = status.evolve(replicas=sum(h.pods for h in health.values()), selector=engine_selector(owner))
        decision = replace(decision, status=status)
        wrote = await self._persist(owner, body.get("status") or {}, status)
        for event in decision.events:
            self.post_event(body, event)
        applied, yielded = await self._apply(owner, spec, status, now, deployments)
        for note in yielded:
            if note not in self._yielded.get((owner.namespace, owner.name), set()):
                self.post_event(body, Event("Warning", "ReplicasManagedElsewhere", note))
        self._yielded[(owner.namespace, owner.name)] = set(yielded)
        self._record(owner, decision)
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        if decision.action != Action.HOLD or wrote:
            log.info(
                "decision action=%s phase=%s step=%s weight=%s reason=%r",
                decision.action.value, decision.status.phase.value, decision.status.step_name,
                decision.status.canary_weight, decision.reason,
            )  # fmt: skip
        # Evaluations start one interval apart (not one interval after the previous pass ended), so that a
        # slow pass does not stretch the analysis interval the detection times are promised in.
        elapsed = timedelta(seconds=time.perf_counter() - started)
        return Pass(decision, wrote, applied, max(timedelta(0), next_pass(spec, decision.status) - elapsed))

    async def _observe(
        self, owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus,
        health: dict[str, RevisionHealth], now: datetime,
    ) -> Observation:  # fmt: skip
        canary = health.get(status.canary_revision or "")
        stable = health.get(status.stable_revision or "")
        if needs_metrics(status):
            obs = await measure(self.prometheus_for(spec), spec, status, series_labels(owner, spec), now)
        else:
            obs = Observation(time=now)
        return with_pod_health(
            obs,
            canary_ready=bool(canary and canary.desired > 0 and canary.is_ready),
            stable_ready=bool(stable and stable.is_ready),
            canary_unhealthy=canary.unhealthy if canary else 0,
            stable_unhealthy=stable.unhealthy if stable else 0,
        )

    async def _read_plane(
        self, owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus,
        health: dict[str, RevisionHealth], now: datetime,
    ) -> DataPlane:  # fmt: skip
        """Ready pods per track and the weight the data plane applies (readback.py)."""
        base = readback.pods_only(status, health)
        provider = spec.traffic.provider
        if provider == "replicas":
            return readback.replicas_plane(spec, status, health)
        if provider == "gatewayAPI":
            name = spec.traffic.http_route or owner.name
            route = await self.cluster.read(GATEWAY_API_VERSION, "HTTPRoute", owner.namespace, name)
            return readback.gateway_plane(base, status.canary_weight, status.effective_weight, route)
        if not rolling(status):
            return base  # nothing to confirm: no Prometheus round trip for an idle object
        labels = spec.analysis.selector or {"namespace": owner.namespace, "service": owner.name}
        reported, error = await readback.router_weights(self.prometheus_for(spec), labels, now)
        return readback.router_plane(base, status.canary_weight, reported, error)

    async def _persist(self, owner: Owner, old: dict[str, Any], status: BacktestServiceStatus) -> bool:
        """Write status only when it changed (no churn, no needless watch events)."""
        new = status.to_wire()
        if new == old:
            return False
        await self.cluster.patch_status(owner, merge_patch(old, new))
        return True

    async def _apply(
        self, owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus, now: datetime,
        deployments: dict[str, Any],
    ) -> tuple[bool, list[str]]:  # fmt: skip
        """Apply the desired objects when they changed, and every few minutes to undo drift."""
        manifests = desired_manifests(owner, spec, status, self.defaults)
        digest = hashlib.sha256(json.dumps(manifests, sort_keys=True).encode()).hexdigest()
        key = (owner.namespace, owner.name)
        last = self._applied.get(key)
        if last is not None and last[0] == digest and now.timestamp() - last[1] < REAPPLY.total_seconds():
            return False, sorted(self._yielded.get(key, set()))
        await ensure_credentials(self.cluster.core, owner, spec, status)  # before pods that reference it
        yielded = await self.cluster.apply(manifests, deployments)
        await self.cluster.prune_engine_deployments(owner, _engine_deployments(manifests))
        self._applied[key] = (digest, now.timestamp())
        return True, yielded

    def _record(self, owner: Owner, decision: Decision) -> None:
        metrics.record_status(owner.namespace, owner.name, decision.status)
        metrics.record_checks(owner.namespace, owner.name, decision.checks)
        if decision.action == Action.ROLLBACK:
            metrics.ROLLBACKS.labels(decision.failing_check or "unknown").inc()
        elif decision.action == Action.PROMOTE:
            metrics.PROMOTIONS.inc()

    def forget(self, owner: Owner) -> None:
        self._applied.pop((owner.namespace, owner.name), None)
        self._yielded.pop((owner.namespace, owner.name), None)
        metrics.forget(owner.namespace, owner.name)


def _parse(body: dict[str, Any]) -> tuple[BacktestServiceSpec, BacktestServiceStatus]:
    try:
        spec = BacktestServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise InvalidSpec(f"spec: {exc}") from None
    try:
        status = BacktestServiceStatus.model_validate(body.get("status") or {})
    except ValidationError as exc:
        raise InvalidSpec(f"status cannot be read (edited by hand?): {exc}") from None
    return spec, status


def _engine_deployments(manifests: list[Manifest]) -> set[str]:
    return {
        m["metadata"]["name"]
        for m in manifests
        if m["kind"] == "Deployment" and m["metadata"]["labels"].get(LABEL_COMPONENT) == "engine"
    }


def rolling(status: BacktestServiceStatus) -> bool:
    return status.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)


def needs_metrics(status: BacktestServiceStatus) -> bool:
    """Prometheus is asked only while traffic reaches a new revision (or it bakes)."""
    in_phase = rolling(status) and (status.phase_started_at or status.canary_weight > 0)
    return bool(in_phase) or status.phase == RolloutPhase.BAKING


def engine_selector(owner: Owner) -> str:
    """The label selector of every engine pod of a BacktestService (the /scale subresource's)."""
    return f"{LABEL_SERVICE}={owner.name},{LABEL_COMPONENT}=engine"


def series_labels(owner: Owner, spec: BacktestServiceSpec) -> dict[str, str]:
    """Labels selecting this service's series: its router's, or (without router) its namespace's engines."""
    if spec.analysis.selector:
        return dict(spec.analysis.selector)
    if spec.traffic.provider == "router":
        return {"namespace": owner.namespace, "service": owner.name}
    return {"namespace": owner.namespace}


def next_pass(spec: BacktestServiceSpec, status: BacktestServiceStatus) -> timedelta:
    if rolling(status) and status.phase_started_at is None and status.canary_weight > 0:
        return min(POLL_WHILE_ENTERING, spec.analysis.interval)
    if needs_metrics(status):
        return spec.analysis.interval
    if status.phase in (RolloutPhase.INITIALIZING, RolloutPhase.PROGRESSING, RolloutPhase.PAUSED):
        return POLL_WHILE_WAITING
    if status.replicas != spec.replicas:
        # Resized (kubectl scale, an HPA through /scale): status.replicas, which the HPA reads back, follows
        # the pods as they come and go instead of waiting for the next resync.
        return POLL_WHILE_WAITING
    return RESYNC
