"""The ConfigMap weight source against the real API server: list-then-watch, validation, deletion, and the
router process itself under the narrow Role the operator grants it (get/list/watch on one ConfigMap name)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest
from kubernetes import client as k8s

from backtest_engine.router.weights import ConfigMapWeightSource, WeightState
from tests.support.processes import free_port, start_upstream, wait_ready

pytestmark = pytest.mark.cluster

CM_NAME = "demo-weight"


def configmap(weight: str) -> k8s.V1ConfigMap:
    return k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=CM_NAME), data={"weight": weight})


def set_weight(core: k8s.CoreV1Api, namespace: str, weight: str) -> None:
    core.patch_namespaced_config_map(CM_NAME, namespace, {"data": {"weight": weight}})


async def wait_for(state: WeightState, value: int, within: float = 1.0) -> float:
    started = time.monotonic()
    while state.value != value:
        if time.monotonic() - started > within:
            raise AssertionError(f"weight {state.value}, expected {value} within {within}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def router_identity(k8s_api, cluster, namespace: str) -> k8s.ApiClient:
    """A ServiceAccount bound to the same rule the operator's router Role has (traffic._router_rbac)."""
    core, rbac = k8s.CoreV1Api(k8s_api), k8s.RbacAuthorizationV1Api(k8s_api)
    name = "router"
    core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name)))
    rule = k8s.V1PolicyRule(
        api_groups=[""], resources=["configmaps"], resource_names=[CM_NAME], verbs=["get", "list", "watch"]
    )
    rbac.create_namespaced_role(namespace, k8s.V1Role(metadata=k8s.V1ObjectMeta(name=name), rules=[rule]))
    rbac.create_namespaced_role_binding(
        namespace,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name=name),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
        ),
    )
    request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = core.create_namespaced_service_account_token(name, namespace, request).status.token
    configuration = k8s.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.pki.ca.cert)
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(configuration)


async def test_weight_follows_configmap_when_it_changes_under_the_router_role(k8s_api, cluster, namespace):
    core = k8s.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, configmap("10"))
    identity = router_identity(k8s_api, cluster, namespace)
    source = ConfigMapWeightSource(namespace, CM_NAME, api_factory=lambda: k8s.CoreV1Api(identity))
    state = WeightState()
    await source.start(state)
    try:
        await wait_for(state, 10, within=5.0)  # first list
        set_weight(core, namespace, "60")
        assert await wait_for(state, 60) < 1.0
        set_weight(core, namespace, "sixty")  # invalid: the last good weight stays
        set_weight(core, namespace, "250")
        await asyncio.sleep(0.5)
        assert state.value == 60
        core.delete_namespaced_config_map(CM_NAME, namespace)
        await asyncio.sleep(0.5)
        assert state.value == 60  # deleted: keep routing as before rather than jump to 0
        core.create_namespaced_config_map(namespace, configmap("5"))
        await wait_for(state, 5)
    finally:
        await source.stop()
        identity.close()


async def test_weight_resumes_when_watch_times_out_and_is_reopened(k8s_api, namespace):
    core = k8s.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, configmap("1"))
    source = ConfigMapWeightSource(
        namespace, CM_NAME, api_factory=lambda: k8s.CoreV1Api(k8s_api), watch_timeout_seconds=1
    )
    state = WeightState()
    await source.start(state)
    try:
        await wait_for(state, 1, within=5.0)
        await asyncio.sleep(2.5)  # the server ends the watch after 1 s, twice
        set_weight(core, namespace, "42")
        await wait_for(state, 42, within=2.0)
    finally:
        await source.stop()


def test_router_process_applies_new_weight_within_a_second_when_configmap_is_patched(k8s_api, cluster, namespace):
    core = k8s.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, configmap("0"))
    stable = start_upstream("stable")
    canary = start_upstream("canary")
    port = free_port()
    router = subprocess.Popen(
        [
            sys.executable, "-m", "backtest_engine.router", "--stable", stable.url, "--canary", canary.url,
            "--weight-configmap", f"{namespace}/{CM_NAME}", "--port", str(port), "--host", "127.0.0.1",
        ],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/router/health", router)
        with httpx.Client(base_url=url) as client:
            deadline = time.monotonic() + 5
            while client.get("/router/state").json()["weight_updated_at"] is None:
                assert time.monotonic() < deadline, "router never read the ConfigMap"
                time.sleep(0.05)
            assert {client.get("/x").headers["x-backtest-track"] for _ in range(20)} == {"stable"}
            set_weight(core, namespace, "100")
            changed = time.monotonic()
            while client.get("/router/state").json()["weight"] != 100:
                assert time.monotonic() - changed < 1.0, "weight not applied within a second"
                time.sleep(0.02)
            assert {client.get("/x").headers["x-backtest-track"] for _ in range(20)} == {"canary"}
            assert client.get("/router/state").json()["weight_source"] == f"configmap:{namespace}/{CM_NAME}"
    finally:
        router.terminate()
        router.wait(timeout=10)
        stable.stop()
        canary.stop()
