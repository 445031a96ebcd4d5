"""Helpers for rollouts on real pods, shared by the real e2e tier and `make demo`: BacktestServices whose
pods run on the real node, reached through their Service as a client in the cluster would.

The host reaches ClusterIPs through kube-proxy's rules (and pod IPs through the pod bridge), so the traffic
generator, Prometheus and the tests all talk to the pods the operator created, over the paths users use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from backtest_devtools.errors import DevtoolsError
from backtest_devtools.stack import API_KEY

GROUP, VERSION, PLURAL = "backtest.dev", "v1alpha1", "backtestservices"
KEYS_SECRET = "engine-api-keys"
KEYS_KEY = "keys"


def api_keys_secret(core: k8s.CoreV1Api, namespace: str) -> dict[str, str]:
    """A Secret holding the engine's API key (the one the traffic generator sends); returns its reference."""
    body = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=KEYS_SECRET), string_data={KEYS_KEY: API_KEY})
    try:
        core.create_namespaced_secret(namespace, body)
    except ApiException as error:
        if error.status != 409:
            raise
    return {"name": KEYS_SECRET, "key": KEYS_KEY}


def real_spec(prometheus_url: str, image: str, error_rate: float = 0.0, **overrides: Any) -> dict[str, Any]:
    """Seconds instead of minutes, through the spec; the engine requires the API key from the Secret.

    Results stay in each pod (`storage: local`): this node has no volume provisioner for the managed
    PostgreSQL's claim; a test that needs shared results passes `databaseUrlSecret` to a host PostgreSQL.
    One key sends all the traffic, so its rate limit is lifted; injected faults are seeded."""
    spec: dict[str, Any] = {
        "image": image,
        "replicas": 2,
        "env": [{"name": "ENGINE_RATE_LIMIT", "value": "10000000"}, {"name": "ENGINE_FAULT_SEED", "value": "1"}],
        "engine": {
            "faultInjection": {"errorRate": error_rate},
            "apiKeysSecret": {"name": KEYS_SECRET, "key": KEYS_KEY},
            "storage": "local",
        },
        "analysis": {
            "prometheus": {"url": prometheus_url, "timeout": "2s"},
            "interval": "4s",
            "minRequests": 20,
            "latencyObjective": "2s",
        },
        "phases": [
            {"name": "canary", "weight": 10, "duration": "12s", "minSuccessRate": 0.95, "maxErrorRate": 0.02},
            {"name": "testing", "weight": 25, "duration": "12s", "minSuccessRate": 0.95, "maxErrorRate": 0.03},
            {"name": "validation", "weight": 50, "duration": "12s", "minSuccessRate": 0.97, "maxErrorRate": 0.02},
            {"name": "full", "weight": 100, "duration": "12s", "minSuccessRate": 0.98, "maxErrorRate": 0.01},
        ],
        "rollback": {"minRequests": 5, "bakeWindow": "8s"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def backtest_service(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService", "metadata": {"name": name}, "spec": spec}


def entry_url(core: k8s.CoreV1Api, namespace: str, name: str, timeout: float = 60.0) -> str:
    """URL of the BacktestService's entry Service (ClusterIP), once the operator has created it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            service: Any = core.read_namespaced_service(name, namespace)
            return f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}"
        except ApiException as error:
            if error.status != 404:
                raise
        time.sleep(0.5)
    raise DevtoolsError(f"the entry Service {namespace}/{name} did not appear within {timeout:.0f}s")


def ready_pods(core: k8s.CoreV1Api, namespace: str, selector: str) -> list[Any]:
    pods: list[Any] = core.list_namespaced_pod(namespace, label_selector=selector).items
    return [
        pod
        for pod in pods
        if pod.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
    ]


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll until `check` returns something truthy; the error names what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise DevtoolsError(f"{what} not reached within {timeout:.0f}s")


def wait_answering(url: str, timeout: float = 120.0) -> None:
    """Until the entry Service answers health through the router (pods Ready, kube-proxy rules in place)."""

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/router/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout, f"{url} answering")


def pod_metric(pod: Any, port: int, series: str) -> float | None:
    """Sum of one series scraped straight from a pod (its IP is on the host's pod bridge); None while the
    pod does not answer yet (a container is Running before its server listens)."""
    try:
        text = httpx.get(f"http://{pod.status.pod_ip}:{port}/metrics", timeout=3.0).text
    except httpx.HTTPError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(series) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
