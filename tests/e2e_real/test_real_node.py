"""The real node runs pods the way a cluster does: cluster DNS, Services through kube-proxy, probes, the
restricted securityContext, resource metrics; and pods have no way off this machine."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client as k8s

from backtest_devtools import netsetup
from backtest_devtools.realpods import wait_until
from backtest_operator.workloads import RESTRICTED_CONTAINER, RESTRICTED_POD

pytestmark = pytest.mark.real

ENGINE = "backtest-engine:0.1.0"
PROBE_SCRIPT = """
import json, os, socket, urllib.request
found = {"uid": os.getuid()}
found["kubernetes"] = socket.gethostbyname("kubernetes.default.svc.cluster.local")
try:
    found["outside"] = socket.gethostbyname("example.com")
except OSError:
    found["outside"] = None
found["routes"] = [line.split()[1] for line in open("/proc/net/route").read().splitlines()[1:]]
found["echo"] = urllib.request.urlopen("http://echo:8080/api/v1/health", timeout=10).status
try:
    open("/probe-write", "w")
    found["root_writable"] = True
except OSError:
    found["root_writable"] = False
print(json.dumps(found))
"""


def echo_server(namespace: str) -> tuple[dict, dict]:
    labels = {"app": "echo"}
    container = {
        "name": "engine", "image": ENGINE, "imagePullPolicy": "Never",
        "args": ["backtest-engine", "serve", "--host", "0.0.0.0", "--port", "8080"],
        "env": [{"name": "DATABASE_URL", "value": "sqlite:////tmp/results.db"}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/api/v1/ready", "port": "http"}, "periodSeconds": 2},
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }  # fmt: skip
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo", "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"securityContext": RESTRICTED_POD, "containers": [container],
                     "volumes": [{"name": "tmp", "emptyDir": {}}]}}},
    }  # fmt: skip
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": namespace},
               "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": "http"}]}}  # fmt: skip
    return deployment, service


def probe_pod(namespace: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": namespace},
        "spec": {"restartPolicy": "Never", "securityContext": RESTRICTED_POD, "containers": [{
            "name": "probe", "image": ENGINE, "imagePullPolicy": "Never", "args": ["python", "-c", PROBE_SCRIPT],
            "securityContext": RESTRICTED_CONTAINER}]},
    }  # fmt: skip


@pytest.fixture(scope="module")
def echo(real_k8s_api):
    """A namespace with an engine pod behind the Service `echo`, ready (shared by this module's tests)."""
    core = k8s.CoreV1Api(real_k8s_api)
    namespace = f"real-node-{uuid.uuid4().hex[:5]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    wait_until(lambda: core.list_namespaced_service_account(namespace).items, 30, "the default ServiceAccount")
    deployment, service = echo_server(namespace)
    k8s.AppsV1Api(real_k8s_api).create_namespaced_deployment(namespace, deployment)
    core.create_namespaced_service(namespace, service)

    def ready():
        endpoints = (
            k8s.DiscoveryV1Api(real_k8s_api)
            .list_namespaced_endpoint_slice(namespace, label_selector="kubernetes.io/service-name=echo")
            .items
        )
        return any(e.conditions.ready for s in endpoints for e in (s.endpoints or []))

    wait_until(ready, 120, "the echo pod passing its readiness probe")
    yield namespace
    core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def found(real_k8s_api, echo) -> dict:
    """What a restricted pod saw of its network, DNS, user and filesystem (run once)."""
    namespace = echo
    core = k8s.CoreV1Api(real_k8s_api)
    core.create_namespaced_pod(namespace, probe_pod(namespace))

    def finished():
        phase = core.read_namespaced_pod("probe", namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_until(finished, 120, "the probe pod finishing")
    log = core.read_namespaced_pod_log("probe", namespace)  # through the API server and the kubelet
    assert phase == "Succeeded", log
    return json.loads(log.strip().splitlines()[-1])


def test_pod_reaches_a_service_by_its_dns_name_when_running_on_the_real_node(found):
    assert found["echo"] == 200
    assert found["kubernetes"] == "10.0.0.1"


def test_pod_runs_as_the_restricted_user_with_a_read_only_root_when_the_security_context_says_so(found):
    assert found["uid"] == 10001
    assert found["root_writable"] is False


def test_pods_have_no_route_and_no_name_outside_the_machine_when_running(found):
    assert "00000000" not in found["routes"], "a pod has a default route"
    assert found["outside"] is None, "a name outside the cluster was resolved"


def test_pod_network_guard_and_bridge_exist_while_the_node_runs(real_cluster):
    assert netsetup.interface_exists(netsetup.NODE_INTERFACE)
    assert any(chain.endswith(netsetup.GUARD_CHAIN) for chain in netsetup.our_chains())


def test_metrics_api_reports_pod_usage_when_metrics_server_scraped_the_kubelet(real_k8s_api, echo):
    custom = k8s.CustomObjectsApi(real_k8s_api)

    def usage():
        listing = custom.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", echo, "pods")
        return [c["usage"] for item in listing["items"] for c in item["containers"]]

    found = wait_until(usage, 90, "metrics.k8s.io reporting the echo pod", interval=2.0)
    assert found[0]["cpu"] and found[0]["memory"]


def test_readiness_probe_keeps_a_pod_out_of_its_service_until_it_answers(real_k8s_api, real_namespace):
    deployment, service = echo_server(real_namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["path"] = "/does-not-exist"
    k8s.AppsV1Api(real_k8s_api).create_namespaced_deployment(real_namespace, deployment)
    k8s.CoreV1Api(real_k8s_api).create_namespaced_service(real_namespace, service)
    discovery = k8s.DiscoveryV1Api(real_k8s_api)
    core = k8s.CoreV1Api(real_k8s_api)

    def running_and_probed():
        pods = core.list_namespaced_pod(real_namespace, label_selector="app=echo").items
        return [p for p in pods if p.status.phase == "Running" and p.status.container_statuses
                and p.status.container_statuses[0].started]  # fmt: skip

    wait_until(running_and_probed, 120, "the echo pod running")

    def probe_failed():
        events = core.list_namespaced_event(real_namespace, field_selector="reason=Unhealthy").items
        return [e for e in events if "Readiness probe failed" in (e.message or "") and (e.count or 1) >= 2]

    wait_until(probe_failed, 60, "the kubelet reporting the readiness probe failing twice")
    slices = discovery.list_namespaced_endpoint_slice(real_namespace, label_selector="kubernetes.io/service-name=echo")
    ready = [e for s in slices.items for e in (s.endpoints or []) if e.conditions.ready]
    assert ready == []
