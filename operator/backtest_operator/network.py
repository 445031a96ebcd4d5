"""NetworkPolicies of a BacktestService: engine pods reachable only from their router and Prometheus.

With the router provider, nothing but the router (and the scraping Prometheus, chosen by
spec.networkPolicy.prometheus) can reach an engine pod, so no client can bypass the router's fallback,
metrics or proxy token. The managed database accepts only the engine pods. With the gatewayAPI or
replicas provider the engine pods are the entry point, so their port stays open to every peer unless
spec.networkPolicy.extraIngressFrom narrows it. Policies only act where the network plugin enforces them.
"""

from __future__ import annotations

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.credentials import DATABASE_PORT, live_pods, uses_managed_database
from backtest_operator.database import database_labels
from backtest_operator.workloads import ENGINE_PORT, LABEL_COMPONENT, LABEL_SERVICE, Manifest, Owner, object_metadata


def _policy(owner: Owner, name: str, pod_selector: dict[str, str], port: int, peers: list[Manifest] | None) -> Manifest:
    rule: Manifest = {"ports": [{"protocol": "TCP", "port": port}]}
    if peers is not None:
        rule["from"] = peers
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_metadata(owner, name, {LABEL_COMPONENT: "network-policy"}),
        "spec": {"podSelector": {"matchLabels": pod_selector}, "policyTypes": ["Ingress"], "ingress": [rule]},
    }


def network_policies(owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus) -> list[Manifest]:
    settings = spec.network_policy
    if not settings.enabled:
        return []
    prometheus: Manifest = {
        "namespaceSelector": {"matchLabels": settings.prometheus.namespace_selector},
        "podSelector": {"matchLabels": settings.prometheus.pod_selector},
    }
    router = {"podSelector": {"matchLabels": {LABEL_SERVICE: owner.name, LABEL_COMPONENT: "router"}}}
    engine_selector = {LABEL_SERVICE: owner.name, LABEL_COMPONENT: "engine"}
    if spec.traffic.provider == "router":
        engine_peers: list[Manifest] | None = [router, prometheus, *settings.extra_ingress_from]
    else:  # the engine pods are the entry point
        engine_peers = [prometheus, *settings.extra_ingress_from] if settings.extra_ingress_from else None
    policies = [_policy(owner, f"{owner.name}-engine", engine_selector, ENGINE_PORT, engine_peers)]
    if spec.traffic.provider == "router":
        selector = {LABEL_SERVICE: owner.name, LABEL_COMPONENT: "router"}
        policies.append(_policy(owner, f"{owner.name}-router", selector, ENGINE_PORT, None))  # the entry point
    if any(uses_managed_database(pod) for pod in live_pods(spec, status)):
        engines = [{"podSelector": {"matchLabels": engine_selector}}]
        policies.append(_policy(owner, f"{owner.name}-db", database_labels(owner), DATABASE_PORT, engines))
    return policies
