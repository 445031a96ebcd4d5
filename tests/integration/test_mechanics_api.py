"""Rollout mechanics against the real API server (issue 13): CEL rules that keep the router startable, the
/scale subresource, owner references under OwnerReferencesPermissionEnforcement, replicas owned by another
field manager, gateway acceptance as weight confirmation, and `kubectl backtest status --watch` surviving
the server ending its watches."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from backtest_devtools import chart
from backtest_operator import ctl
from backtest_operator.kubeapi import Client, connect
from backtest_operator.policy import Action

from .test_rbac import bind, service_account_client
from .test_reconcile import Harness, wait_for

pytestmark = pytest.mark.cluster
GROUP, VERSION, PLURAL = "backtest.dev", "v1alpha1", "backtestservices"


def body(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService", "metadata": {"name": name},
            "spec": {"image": "backtest-engine:1.0.0", **spec}}  # fmt: skip


def rejected(custom: k8s.CustomObjectsApi, namespace: str, obj: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
    assert error.value.status == 422, error.value.body
    return str(json.loads(error.value.body)["message"])


def test_api_server_refuses_router_settings_that_cannot_work_and_accepts_a_5s_objective(k8s_api, crd_installed,
                                                                                        namespace):  # fmt: skip
    custom = k8s.CustomObjectsApi(k8s_api)
    message = rejected(
        custom, namespace, body("a", analysis={"latencyObjective": "5s"}, traffic={"canaryTimeout": "5s"})
    )
    assert "traffic.canaryTimeout must exceed analysis.latencyObjective" in message
    message = rejected(custom, namespace, body("b", analysis={"latencyObjective": "90s"}))
    assert "traffic.stableTimeout must exceed analysis.latencyObjective" in message
    message = rejected(
        custom, namespace, body("c", analysis={"latencyObjective": "3s"}, traffic={"provider": "replicas"})
    )
    assert "bucket bound of the engine's latency histogram" in message
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body("d", analysis={"latencyObjective": "5s"})
    )
    assert created["spec"]["traffic"]["stableTimeout"] == "1m"


def test_scale_subresource_resizes_spec_replicas_when_asked(k8s_api, crd_installed, namespace):
    custom = k8s.CustomObjectsApi(k8s_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body("quant", replicas=2))
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "quant",
        {"status": {"replicas": 2, "selector": "backtest.dev/service=quant,app.kubernetes.io/component=engine"}},
    )  # fmt: skip
    custom.patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "quant", {"spec": {"replicas": 5}})
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "quant")
    assert scale["spec"]["replicas"] == 5 and scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == "backtest.dev/service=quant,app.kubernetes.io/component=engine"
    assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quant")["spec"]["replicas"] == 5


def test_owner_references_need_the_finalizers_rule_when_the_admission_plugin_enforces_them(
    k8s_api, cluster, crd_installed, namespace
):
    """The review's defect: blockOwnerDeletion needs `update` on backtestservices/finalizers; OpenShift-like
    clusters answer 403 without it. The local API server runs OwnerReferencesPermissionEnforcement."""
    owner = k8s.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body("quant")
    )
    reference = k8s.V1OwnerReference(
        api_version=f"{GROUP}/{VERSION}", kind="BacktestService", name="quant", uid=owner["metadata"]["uid"],
        controller=True, block_owner_deletion=True,
    )  # fmt: skip
    rbac = k8s.RbacAuthorizationV1Api(k8s_api)
    without = chart.operator_cluster_role(f"no-finalizers-{namespace}")
    without["rules"] = [r for r in without["rules"] if "backtestservices/finalizers" not in r["resources"]]
    assert len(without["rules"]) == len(chart.operator_rules()) - 1
    rbac.create_cluster_role(without)
    complete = chart.operator_cluster_role(f"complete-{namespace}")
    rbac.create_cluster_role(complete)
    try:
        bind(k8s_api, without["metadata"]["name"], namespace, "lacking")
        bind(k8s_api, complete["metadata"]["name"], namespace, "operator")
        for account, expected in (("lacking", 403), ("operator", 201)):
            config_map = k8s.V1ConfigMap(
                metadata=k8s.V1ObjectMeta(name=f"owned-{account}", owner_references=[reference])
            )
            with service_account_client(k8s_api, cluster, namespace, account) as api:
                try:
                    k8s.CoreV1Api(api).create_namespaced_config_map(namespace, config_map)
                    status = 201
                except ApiException as error:
                    status = error.status
                    assert "cannot set blockOwnerDeletion" in error.body
            assert status == expected, account
    finally:
        for role in (without, complete):
            rbac.delete_cluster_role(role["metadata"]["name"])


@pytest.fixture
def harness(k8s_api, namespace, crd_installed, prometheus):
    made = Harness(k8s_api, namespace, {
        "image": "backtest-engine:1.0.0", "replicas": 3,
        "analysis": {"prometheus": {"url": prometheus([]).url, "timeout": "1s"}, "interval": "1s"},
    })  # fmt: skip
    yield made
    made.close()


def test_replicas_another_manager_set_are_left_alone_and_reported_when_not_the_operators(harness):
    stable = harness.step_until(Action.READY).decision.status.stable_revision
    deployment = f"quant-{stable}"
    harness.apps.patch_namespaced_deployment_scale(deployment, harness.namespace, {"spec": {"replicas": 5}})
    harness.patch({"spec": {"replicas": 4}})  # the plan changes, so the operator would write replicas
    harness.step()
    assert harness.deployments()[deployment] == 5
    warnings = [e for e in harness.events if e.reason == "ReplicasManagedElsewhere"]
    assert len(warnings) == 1 and "scale the BacktestService instead" in warnings[0].message
    harness.step()
    assert len([e for e in harness.events if e.reason == "ReplicasManagedElsewhere"]) == 1  # said once


def test_replicas_follow_the_service_size_when_nobody_else_owns_them(harness):
    stable = harness.step_until(Action.READY).decision.status.stable_revision
    harness.patch({"spec": {"replicas": 6}})
    harness.step()
    assert harness.deployments()[f"quant-{stable}"] == 6
    managers = {
        (m.manager, m.operation)
        for m in harness.apps.read_namespaced_deployment(f"quant-{stable}", harness.namespace).metadata.managed_fields
        if "f:replicas" in (m.fields_v1 or {}).get("f:spec", {})
    }
    assert managers == {("backtest-operator-replicas", "Apply")}


def test_gateway_weight_counts_once_the_gateway_accepted_the_route(k8s_api, namespace, crd_installed,
                                                                   gateway_api_installed, prometheus):  # fmt: skip
    made = Harness(k8s_api, namespace, {
        "image": "backtest-engine:1.0.0",
        "analysis": {"prometheus": {"url": prometheus([]).url, "timeout": "1s"}, "interval": "1s"},
        "traffic": {"provider": "gatewayAPI", "parentRefs": [{"name": "public"}]},
    })  # fmt: skip
    routes = k8s.CustomObjectsApi(k8s_api)
    try:
        made.step_until(Action.READY)
        made.patch({"spec": {"image": "backtest-engine:2.0.0"}})
        made.step()
        made.step_until(Action.BEGIN)
        assert made.get()["status"].get("phaseStartedAt") is None  # no gateway has said a word yet
        for _ in range(3):
            waiting = made.step()
            assert "no Gateway reports on the HTTPRoute" in waiting.decision.reason
        route = routes.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", "quant")
        # A Gateway API controller's report, written where it writes it (no controller runs here).
        accepted = {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                    "observedGeneration": route["metadata"]["generation"],
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
        parent = {"parentRef": {"name": "public"}, "controllerName": "example.net/gateway", "conditions": [accepted]}
        routes.patch_namespaced_custom_object_status(
            "gateway.networking.k8s.io", "v1", namespace, "httproutes", "quant", {"status": {"parents": [parent]}}
        )
        confirmed = made.step_until(Action.CONFIRM)
        assert confirmed.decision.status.effective_weight == 1
        assert made.get()["status"]["phaseStartedAt"]
    finally:
        made.close()


def test_status_watch_follows_changes_across_watches_the_server_ends(k8s_api, cluster, crd_installed, namespace,
                                                                     monkeypatch):  # fmt: skip
    """The review's defect: --watch exited silently when the API server closed the watch."""
    custom = k8s.CustomObjectsApi(k8s_api)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body("quant"))
    monkeypatch.setattr(ctl, "WATCH_SECONDS", 1)  # the server ends each watch after a second
    client = Client(connect(str(cluster.kubeconfig), None, namespace))
    collection = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    printed: list[str] = []
    monkeypatch.setattr("builtins.print", lambda *args, **_: printed.append(" ".join(map(str, args))))
    follower = threading.Thread(target=ctl.follow, args=(client, collection, "quant", created, time.sleep), daemon=True)
    follower.start()
    for message in ("first", "second", "third"):
        time.sleep(2.5)  # longer than a watch: each change arrives on a new one
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "quant",
                                                     {"status": {"message": message}})  # fmt: skip
    wait_for(lambda: any("Message:  third" in p for p in printed), 20, "third change printed")
    assert any("Message:  first" in p for p in printed) and any("Message:  second" in p for p in printed)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quant")
    follower.join(timeout=20)
    assert not follower.is_alive() and "quant was deleted" in printed[-1]


def test_status_watch_reads_again_when_its_resource_version_is_too_old(k8s_api, cluster, crd_installed, namespace,
                                                                       monkeypatch):  # fmt: skip
    custom = k8s.CustomObjectsApi(k8s_api)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body("quant"))
    stale = json.loads(json.dumps(created))
    stale["metadata"]["resourceVersion"] = "1"  # compacted away long ago: the server answers 410 Gone
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "quant",
                                                 {"status": {"message": "changed before the watch"}})  # fmt: skip
    client = Client(connect(str(cluster.kubeconfig), None, namespace))
    collection = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    printed: list[str] = []
    monkeypatch.setattr(ctl, "WATCH_SECONDS", 2)
    monkeypatch.setattr("builtins.print", lambda *args, **_: printed.append(" ".join(map(str, args))))
    follower = threading.Thread(target=ctl.follow, args=(client, collection, "quant", stale, time.sleep), daemon=True)
    follower.start()
    wait_for(lambda: any("changed before the watch" in p for p in printed), 20, "fresh read after 410")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quant")
    follower.join(timeout=20)
    assert not follower.is_alive()


def test_replicas_provider_reports_the_share_its_pods_give_when_the_weight_is_finer_than_a_pod(
    k8s_api, namespace, crd_installed, prometheus
):
    """The review's defect: the `replicas` provider reported 1% while one canary pod of two took half."""
    made = Harness(k8s_api, namespace, {
        "image": "backtest-engine:1.0.0", "replicas": 2, "traffic": {"provider": "replicas"},
        "analysis": {"prometheus": {"url": prometheus([]).url, "timeout": "1s"}, "interval": "1s"},
    })  # fmt: skip
    try:
        made.step_until(Action.READY)
        made.patch({"spec": {"image": "backtest-engine:2.0.0"}})
        made.step()
        made.step_until(Action.CONFIRM)
        status = made.get()["status"]
        assert (status["canaryWeight"], status["effectiveWeight"]) == (1, 50)
        condition = next(c for c in status["conditions"] if c["type"] == "WeightApplied")
        assert (condition["status"], condition["reason"]) == ("False", "Disagrees")
        assert "1 canary and 1 stable ready pods, which is 50%" in condition["message"]
    finally:
        made.close()
