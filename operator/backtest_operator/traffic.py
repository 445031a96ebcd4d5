"""Traffic providers: how a canary weight becomes reality. One interface, chosen by spec.traffic.provider.

* ``router`` (default): the bundled router reads the weight from a ConfigMap the operator owns and
  splits requests between the stable and canary Services, with fallback to stable and per-track metrics.
* ``gatewayAPI``: an HTTPRoute with two weighted backendRefs (the Services of both tracks).
* ``replicas``: one Service over both tracks; the weight is the replica ratio (see ``replica_plan``).

Each provider is a pure function from (owner, spec, status) to the manifests that realise the weight.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.credentials import router_env
from backtest_operator.workloads import (
    ENGINE_PORT,
    LABEL_COMPONENT,
    LABEL_SERVICE,
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    STARTUP_PROBE,
    Manifest,
    Owner,
    WorkloadDefaults,
    object_metadata,
    track_service_name,
    weight_configmap_name,
)

ROUTER_DEFAULT_BODY_BYTES = 50 * 1024 * 1024
"""The router's default body limit: the engine's default upload limit (backtest_engine.limits)."""
Provider = Callable[[Owner, BacktestServiceSpec, BacktestServiceStatus, WorkloadDefaults], list[Manifest]]
WEIGHT_KEY = "weight"


def router_name(owner: Owner) -> str:
    return f"{owner.name}-router"


def weight_configmap(owner: Owner, weight: int) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(owner, weight_configmap_name(owner), {LABEL_COMPONENT: "router"}),
        "data": {WEIGHT_KEY: str(weight)},
    }


def _router_rbac(owner: Owner) -> list[Manifest]:
    """The router may read and watch its own weight ConfigMap, and nothing else."""
    labels = {LABEL_COMPONENT: "router"}
    name = router_name(owner)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": object_metadata(owner, name, labels)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": object_metadata(owner, name, labels),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [weight_configmap_name(owner)],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": object_metadata(owner, name, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
        },
    ]


def router_settings(spec: BacktestServiceSpec) -> list[str]:
    """Router flags that follow the spec: its timeouts from the latency objective (the CRD's CEL rules
    refuse combinations the router would exit on), and a body limit no smaller than the engine's upload
    limit, so the router never refuses an upload the engine would take (the router's default body limit
    is the engine's default upload limit, backtest_engine.limits)."""
    flags = [
        "--latency-objective", _seconds(spec.analysis.latency_objective),
        "--canary-timeout", _seconds(spec.canary_timeout()),
        "--stable-timeout", _seconds(spec.traffic.stable_timeout),
    ]  # fmt: skip
    upload = _engine_upload_limit(spec)
    return flags if upload is None else [*flags, "--max-body-bytes", str(upload)]


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}"


def _engine_upload_limit(spec: BacktestServiceSpec) -> int | None:
    """ENGINE_MAX_UPLOAD_BYTES when spec.env sets it to a literal number larger than the router's default."""
    for variable in spec.env:
        value = variable.get("value")
        if variable.get("name") == "ENGINE_MAX_UPLOAD_BYTES" and isinstance(value, str) and value.isdigit():
            return max(int(value), ROUTER_DEFAULT_BODY_BYTES)
    return None


def shadow_args(spec: BacktestServiceSpec) -> list[str]:
    """The router's shadow arguments from ``traffic.shadow``; none when off, so enabling it later is the only
    change to existing routers."""
    shadow = spec.traffic.shadow
    if shadow.fraction <= 0:
        return []
    return ["--shadow-fraction", f"{shadow.fraction:g}", "--shadow-max-in-flight", str(shadow.max_in_flight)]


def _router_deployment(owner: Owner, spec: BacktestServiceSpec, defaults: WorkloadDefaults) -> Manifest:
    labels = {LABEL_COMPONENT: "router"}
    selector = {LABEL_SERVICE: owner.name, LABEL_COMPONENT: "router"}
    args = [
        "backtest-engine", "router",
        "--stable", f"http://{track_service_name(owner, 'stable')}:{ENGINE_PORT}",
        "--canary", f"http://{track_service_name(owner, 'canary')}:{ENGINE_PORT}",
        "--weight-configmap", f"{owner.namespace}/{weight_configmap_name(owner)}",
        *router_settings(spec),
        "--host", "0.0.0.0", "--port", str(ENGINE_PORT),
    ]  # fmt: skip
    args += shadow_args(spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_metadata(owner, router_name(owner), labels),
        "spec": {
            "replicas": spec.traffic.router_replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "serviceAccountName": router_name(owner),
                    "securityContext": RESTRICTED_POD,
                    "containers": [
                        {
                            "name": "router",
                            "image": spec.traffic.router_image or defaults.router_image,
                            "args": args,
                            "env": router_env(owner.name),  # the proxy token engines trust X-Forwarded-For with
                            "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "1", "memory": "512Mi"},
                            },
                            "securityContext": RESTRICTED_CONTAINER,
                            "startupProbe": STARTUP_PROBE | {"httpGet": {"path": "/router/health", "port": "http"}},
                            "livenessProbe": {"httpGet": {"path": "/router/health", "port": "http"}},
                            "readinessProbe": {"httpGet": {"path": "/router/health", "port": "http"}},
                        }
                    ],
                },
            },
        },
    }


def _entry_service(owner: Owner, selector: dict[str, str]) -> Manifest:
    """The Service clients call, named like the BacktestService."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(owner, owner.name, {LABEL_COMPONENT: "entry"}),
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def router_provider(
    owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus, defaults: WorkloadDefaults
) -> list[Manifest]:
    return [
        weight_configmap(owner, status.canary_weight),
        *_router_rbac(owner),
        _router_deployment(owner, spec, defaults),
        _entry_service(owner, {LABEL_SERVICE: owner.name, LABEL_COMPONENT: "router"}),
    ]


def gateway_provider(
    owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus, defaults: WorkloadDefaults
) -> list[Manifest]:
    weight = status.canary_weight
    backends = [
        {"name": track_service_name(owner, "stable"), "port": ENGINE_PORT, "weight": 100 - weight},
        {"name": track_service_name(owner, "canary"), "port": ENGINE_PORT, "weight": weight},
    ]
    return [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": object_metadata(owner, spec.traffic.http_route or owner.name, {LABEL_COMPONENT: "route"}),
            "spec": {"parentRefs": list(spec.traffic.parent_refs), "rules": [{"backendRefs": backends}]},
        }
    ]


def replicas_provider(
    owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus, defaults: WorkloadDefaults
) -> list[Manifest]:
    return [_entry_service(owner, {LABEL_SERVICE: owner.name, LABEL_COMPONENT: "engine"})]


PROVIDERS: dict[str, Provider] = {
    "router": router_provider,
    "gatewayAPI": gateway_provider,
    "replicas": replicas_provider,
}


def traffic_manifests(
    owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus, defaults: WorkloadDefaults
) -> list[Manifest]:
    return PROVIDERS[spec.traffic.provider](owner, spec, status, defaults)
