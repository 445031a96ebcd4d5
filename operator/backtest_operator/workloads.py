"""Pure builders of the objects a BacktestService owns, as a function of its spec and status.

Engine Deployments are named by revision (``<name>-<revision>``) and the track Services select a revision
by label, so promotion and rollback are a Service selector change: no pod restarts, and the previous
revision stays ready through the bake window. Everything carries an owner reference to the
BacktestService (garbage-collected with it) and is applied with server-side apply, so applying the same
desired state twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backtest_operator import credentials
from backtest_operator.api import (
    API_VERSION,
    KIND,
    BacktestServiceSpec,
    BacktestServiceStatus,
    PodSettings,
    RolloutPhase,
)
from backtest_operator.capacity import canary_replicas, share_replicas, target_weight

Manifest = dict[str, Any]

LABEL_SERVICE = "backtest.dev/service"
LABEL_TRACK = "backtest.dev/track"
LABEL_REVISION = "backtest.dev/revision"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "backtest-operator"
ENGINE_PORT = 8080
NO_REVISION = "none"
"""Selector value of a track Service while the track has no revision (selects no pod)."""


@dataclass(frozen=True)
class Owner:
    """The BacktestService being rendered."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class WorkloadDefaults:
    """Operator-wide defaults (from the operator's settings)."""

    router_image: str = "backtest-engine:0.1.0"
    engine_port: int = ENGINE_PORT


def owner_reference(owner: Owner) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_metadata(owner: Owner, name: str, labels: dict[str, str]) -> Manifest:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {LABEL_SERVICE: owner.name, LABEL_MANAGED_BY: MANAGER, **labels},
        "ownerReferences": [owner_reference(owner)],
    }


def deployment_name(owner: Owner, revision: str) -> str:
    return f"{owner.name}-{revision}"


def track_service_name(owner: Owner, track: str) -> str:
    return f"{owner.name}-{track}"


def weight_configmap_name(owner: Owner) -> str:
    return f"{owner.name}-weight"


RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}
STARTUP_PROBE = {"periodSeconds": 2, "failureThreshold": 90}
"""Up to 3 minutes to start answering (imports take seconds, many on a busy node) before liveness applies."""
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}


def engine_env(pod: PodSettings, revision: str, service: str = "") -> list[Manifest]:
    """Environment of an engine container: the engine settings, then the user's extra variables.

    The track is deliberately absent: a revision changes track at promotion, and anything in the pod
    template would restart every pod at that moment. In a cluster the track of engine series comes from
    the Service a pod is scraped through.
    """
    engine = pod.engine
    env: list[Manifest] = [
        {"name": "ENGINE_VERSION", "value": revision},
        {"name": "ENGINE_WORKERS", "value": str(engine.workers)},
        {"name": "ENGINE_CACHE_SIZE", "value": str(engine.cache_size)},
        {"name": "ENGINE_LOG_LEVEL", "value": engine.log_level},
    ]
    env += credentials.database_env(service, pod)  # shared PostgreSQL by default (credentials.py)
    env += credentials.engine_access_env(service, pod)  # auth on by default, proxy token, shutdown budget
    faults = engine.fault_injection
    if faults.error_rate > 0:
        env.append({"name": "ENGINE_FAULT_ERROR_RATE", "value": f"{faults.error_rate:g}"})
    if faults.added_latency.total_seconds() > 0:
        env.append({"name": "ENGINE_FAULT_LATENCY_SECONDS", "value": f"{faults.added_latency.total_seconds():g}"})
    if faults.result_bias != 0:
        env.append({"name": "ENGINE_FAULT_RESULT_BIAS", "value": f"{faults.result_bias:g}"})
    return [*env, *pod.env]


def engine_deployment(owner: Owner, pod: PodSettings, revision: str, track: str, replicas: int) -> Manifest:
    labels = {LABEL_COMPONENT: "engine", LABEL_REVISION: revision}
    pod_labels = {**pod.pod_labels, LABEL_SERVICE: owner.name, **labels}
    deployment_labels = {**labels, LABEL_TRACK: track}
    probe_port = "http"
    template_spec: Manifest = {
        "securityContext": RESTRICTED_POD,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": credentials.grace_period_seconds(pod),
        "containers": [
            {
                "name": "engine",
                "image": pod.image,
                "args": ["backtest-engine", "serve", "--host", "0.0.0.0", "--port", str(ENGINE_PORT)],
                "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
                "env": engine_env(pod, revision, owner.name),
                "resources": pod.resources or DEFAULT_RESOURCES,
                "securityContext": RESTRICTED_CONTAINER,
                # Liveness starts once the process answers: a slow start (a loaded node) is not a crash loop.
                "startupProbe": STARTUP_PROBE | {"httpGet": {"path": "/api/v1/health", "port": probe_port}},
                "livenessProbe": {"httpGet": {"path": "/api/v1/health", "port": probe_port}, "periodSeconds": 10},
                "readinessProbe": {"httpGet": {"path": "/api/v1/ready", "port": probe_port}, "periodSeconds": 5},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    }
    optional = {
        "nodeSelector": pod.node_selector,
        "tolerations": pod.tolerations,
        "affinity": pod.affinity,
        "imagePullSecrets": pod.image_pull_secrets,
        "serviceAccountName": pod.service_account_name,
    }
    template_spec.update({key: value for key, value in optional.items() if value})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_metadata(owner, deployment_name(owner, revision), deployment_labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL_SERVICE: owner.name, LABEL_REVISION: revision}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(pod.pod_annotations)},
                "spec": template_spec,
            },
        },
    }


def track_service(owner: Owner, track: str, revision: str | None) -> Manifest:
    """The Service of one track; it follows the track's revision by selector."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(owner, track_service_name(owner, track), {LABEL_TRACK: track}),
        "spec": {
            "selector": {LABEL_SERVICE: owner.name, LABEL_REVISION: revision or NO_REVISION},
            "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http"}],
        },
    }


@dataclass(frozen=True)
class ReplicaPlan:
    """Replicas of each engine Deployment, by revision."""

    by_revision: dict[str, tuple[str, int]]
    """revision -> (track it serves, replicas)."""


def replica_plan(spec: BacktestServiceSpec, status: BacktestServiceStatus) -> ReplicaPlan:
    """How many pods each revision gets: capacity before traffic.

    The canary is sized for the weight its step is heading for (``target_weight``), so its pods are ready
    before the weight moves; the policy moves the weight only then. Stable keeps every replica until
    traffic has left it: always behind a router or gateway (unless ``traffic.dynamicStableScale``, where it
    shrinks as the applied *and* read-back weight leaves it); behind one Service (``replicas``) it shrinks
    only once the canary's weight is applied, so the two together never have fewer than ``replicas``.
    """
    plan: dict[str, tuple[str, int]] = {}
    total, provider = spec.replicas, spec.traffic.provider
    rolling = status.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED) and status.canary_revision
    canary = canary_replicas(target_weight(spec, status), total, provider) if rolling else 0
    stable = total
    if rolling and provider == "replicas":
        stable = total - canary_replicas(status.canary_weight, total, provider)
    elif rolling and spec.traffic.dynamic_stable_scale:
        left = min(status.canary_weight, status.effective_weight or 0)
        stable = share_replicas(100 - left, total)
    if status.stable_revision:
        plan[status.stable_revision] = ("stable", stable)
    if status.canary_revision and status.canary_revision != status.stable_revision:
        plan[status.canary_revision] = ("canary", canary)
    if status.phase == RolloutPhase.BAKING and status.previous_revision:
        # Behind one shared Service (replicas provider) a ready previous revision would take traffic.
        keep = provider != "replicas" and not spec.traffic.dynamic_stable_scale
        plan[status.previous_revision] = ("previous", total if keep else 0)
    return ReplicaPlan(plan)


def pod_of(revision: str, spec: BacktestServiceSpec, status: BacktestServiceStatus) -> PodSettings | None:
    """The pod settings a revision was made from (spec for the newest, status for older ones)."""
    if revision == spec.revision():
        return spec.pod()
    if revision == status.stable_revision:
        return status.stable_pod
    if revision == status.previous_revision:
        return status.previous_pod
    return None


def engine_workloads(owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus) -> list[Manifest]:
    """Engine Deployments and the two track Services."""
    manifests: list[Manifest] = []
    for revision, (track, replicas) in replica_plan(spec, status).by_revision.items():
        pod = pod_of(revision, spec, status)
        if pod is not None:
            manifests.append(engine_deployment(owner, pod, revision, track, replicas))
    manifests.append(track_service(owner, "stable", status.stable_revision))
    manifests.append(track_service(owner, "canary", canary_service_revision(status)))
    return manifests


def canary_service_revision(status: BacktestServiceStatus) -> str | None:
    """The revision the canary Service selects: the canary's while it rolls out; the promoted one while it
    bakes, so requests still in flight to the canary track at the switch land on the same pods."""
    if status.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED):
        return status.canary_revision
    if status.phase == RolloutPhase.BAKING:
        return status.stable_revision
    return None
