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


APPLY_DEADLINE = 10.0
"""Seconds a watch event may take to reach the weight state; generous for a loaded machine. The router
documents "within a second" on a quiet one; tests wait for the value rather than time it."""


async def wait_for(state: WeightState, value: int, within: float = APPLY_DEADLINE) -> None:
    deadline = time.monotonic() + within
    while state.value != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:.0f}s for weight {value} to be applied; it is still {state.value}")
        await asyncio.sleep(0.02)


def recording(state: WeightState) -> list[int]:
    """Every value the state is given from now on (valid updates only: rejected ones never reach it)."""
    applied: list[int] = []
    state.subscribe(applied.append)
    applied.clear()  # subscribe() replays the current value
    return applied


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
        await wait_for(state, 10)  # first list
        set_weight(core, namespace, "60")
        await wait_for(state, 60)
        applied = recording(state)
        set_weight(core, namespace, "sixty")  # invalid: the last good weight stays
        set_weight(core, namespace, "250")
        set_weight(core, namespace, "61")  # sentinel: watch events arrive in order, so both were handled
        await wait_for(state, 61)
        # (a re-list after a dropped watch may re-apply 60: that is the same weight, not a jump)
        assert set(applied) <= {60, 61}, f"invalid weights reached the router: {applied}"
        applied.clear()
        core.delete_namespaced_config_map(CM_NAME, namespace)  # deleted: keep routing as before, not 0
        core.create_namespaced_config_map(namespace, configmap("5"))  # sentinel after the deletion
        await wait_for(state, 5)
        assert set(applied) <= {61, 5}, f"the deletion changed the weight: {applied}"
    finally:
        await source.stop()
        identity.close()


class CountingApi:
    """The real CoreV1Api, counting the watches the source opens (each is a list call with watch=True)."""

    def __init__(self, api: k8s.CoreV1Api) -> None:
        self.api = api
        self.watches = 0

    def list_namespaced_config_map(self, *args, **kwargs):
        if kwargs.get("watch"):
            self.watches += 1
        return self.api.list_namespaced_config_map(*args, **kwargs)


async def test_weight_resumes_when_watch_times_out_and_is_reopened(k8s_api, namespace):
    core = k8s.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, configmap("1"))
    api = CountingApi(k8s.CoreV1Api(k8s_api))
    source = ConfigMapWeightSource(namespace, CM_NAME, api_factory=lambda: api, watch_timeout_seconds=1)
    state = WeightState()
    await source.start(state)
    try:
        await wait_for(state, 1)
        deadline = time.monotonic() + 30
        while api.watches < 3:  # the server ends each watch after 1 s: wait until it was reopened twice
            assert time.monotonic() < deadline, f"only {api.watches} watches opened in 30s"
            await asyncio.sleep(0.05)
        set_weight(core, namespace, "42")
        await wait_for(state, 42)
    finally:
        await source.stop()


def test_router_process_applies_new_weight_when_configmap_is_patched(k8s_api, cluster, namespace):
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
            deadline = time.monotonic() + APPLY_DEADLINE
            while client.get("/router/state").json()["weight_updated_at"] is None:
                assert time.monotonic() < deadline, f"router did not read the ConfigMap within {APPLY_DEADLINE:.0f}s"
                time.sleep(0.05)
            assert {client.get("/x").headers["x-backtest-track"] for _ in range(20)} == {"stable"}
            set_weight(core, namespace, "100")
            deadline = time.monotonic() + APPLY_DEADLINE
            while client.get("/router/state").json()["weight"] != 100:
                assert time.monotonic() < deadline, f"weight 100 not applied within {APPLY_DEADLINE:.0f}s"
                time.sleep(0.02)
            assert {client.get("/x").headers["x-backtest-track"] for _ in range(20)} == {"canary"}
            assert client.get("/router/state").json()["weight_source"] == f"configmap:{namespace}/{CM_NAME}"
    finally:
        router.terminate()
        router.wait(timeout=10)
        stable.stop()
        canary.stop()
