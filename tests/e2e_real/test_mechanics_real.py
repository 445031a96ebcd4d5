"""Rollout mechanics on real pods (issue 13), the parts kwok cannot show: an HPA fed by metrics-server
resizing a BacktestService through its /scale subresource, and evictions of healthy canary pods that the
kubelet really stops mid-rollout.

These run with the real node (issue 16: kubelet, containerd, kube-proxy, CoreDNS, metrics-server; fixtures
in backtest_devtools.realfixtures); the kwok variants in tests/e2e/test_mechanics.py run in the e2e tier.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from backtest_devtools.realpods import GROUP, PLURAL, VERSION, ready_pods, wait_until

from .test_rollouts_real import NAME, Rollout

pytestmark = pytest.mark.real


@pytest.fixture
def rollout(real_k8s_api, real_namespace, operator_release, router_prometheus):
    built = Rollout(real_k8s_api, real_namespace, router_prometheus.url)
    try:
        yield built
    finally:
        built.close()


def _replicas(rollout: Rollout) -> int:
    body = rollout.custom.get_namespaced_custom_object(GROUP, VERSION, rollout.namespace, PLURAL, NAME)
    return int(body["spec"]["replicas"])


def test_hpa_fed_by_metrics_server_scales_the_service_when_its_pods_are_busy(rollout, node_image, real_k8s_api):
    url = rollout.start(node_image("backtest-engine:real-1"))
    rollout.custom.patch_namespaced_custom_object(GROUP, VERSION, rollout.namespace, PLURAL, NAME,
                                                  {"spec": {"replicas": 1}})  # fmt: skip
    hpa: dict[str, Any] = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": NAME},
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService", "name": NAME},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Resource",
                         "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 10}}}],
        },
    }  # fmt: skip
    k8s.AutoscalingV2Api(real_k8s_api).create_namespaced_horizontal_pod_autoscaler(rollout.namespace, hpa)
    rollout.send_traffic(url, rate=40.0)  # real backtests: CPU well above 10% of the 100m request
    wait_until(lambda: _replicas(rollout) > 1, 300, "the HPA raising spec.replicas through /scale")
    size = _replicas(rollout)
    stable = rollout.status()["stableRevision"]
    selector = f"backtest.dev/service={NAME},backtest.dev/revision={stable}"
    wait_until(lambda: len(ready_pods(rollout.core, rollout.namespace, selector)) >= size, 180,
               f"{size} ready stable pods")  # fmt: skip
    status = rollout.wait(lambda s: s.get("replicas", 0) >= size, 30, f"status.replicas reporting {size} pods")
    assert status["selector"] == f"backtest.dev/service={NAME},app.kubernetes.io/component=engine"


def test_evicting_healthy_canary_pods_mid_rollout_on_real_pods_neither_rolls_back_nor_promotes_early(
    rollout, node_image, real_k8s_api
):
    url = rollout.start(node_image("backtest-engine:real-1"))
    # About what one loaded core serves: this test is about pods going away, not about load, and on two
    # shared cores a replacement pod's start-up must not read as the release's latency.
    traffic = rollout.send_traffic(url, rate=8.0)
    spec = rollout.spec(node_image("backtest-engine:real-2"))
    rollout.custom.patch_namespaced_custom_object(GROUP, VERSION, rollout.namespace, PLURAL, NAME, {"spec": spec})
    status = rollout.wait(lambda s: s.get("stepName") == "validation" and s.get("phaseStartedAt"), 300,
                          "the validation phase running")  # fmt: skip
    canary = status["canaryRevision"]
    selector = f"backtest.dev/service={NAME},backtest.dev/revision={canary}"
    for pod in ready_pods(rollout.core, rollout.namespace, selector):
        eviction = k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name=pod.metadata.name, namespace=rollout.namespace))
        rollout.core.create_namespaced_pod_eviction(pod.metadata.name, rollout.namespace, eviction)
    final = rollout.wait(lambda s: s.get("phase") in ("Degraded", "Baking", "Healthy"), 300, "the rollout ending")
    traffic.stop()
    assert final["phase"] != "Degraded", final["message"]
    assert final["history"][0]["outcome"] == "promoted"
    assert traffic.client_errors == 0
