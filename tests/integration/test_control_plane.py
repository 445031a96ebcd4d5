"""The local control plane behaves like a real cluster: versions, nodes, scheduling, controllers, GC."""

from __future__ import annotations

import time

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from backtest_devtools import build

pytestmark = pytest.mark.cluster


def wait_for(condition, timeout=60.0, interval=0.25, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what} not met within {timeout:.0f}s")


def deployment(name: str, replicas: int) -> k8s.V1Deployment:
    labels = {"app": name}
    return k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1DeploymentSpec(
            replicas=replicas,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="engine", image="backtest-engine:dev")]),
            ),
        ),
    )


def test_apiserver_reports_the_built_release_when_asked_for_its_version(k8s_api):
    info = k8s.VersionApi(k8s_api).get_code()

    assert info.git_version == build.KUBERNETES.version
    assert (info.major, info.minor) == ("1", build.KUBERNETES.version.split(".")[1])


def test_fake_nodes_are_ready_when_the_cluster_is_up(k8s_api, cluster):
    nodes = k8s.CoreV1Api(k8s_api).list_node().items
    ready = {
        node.metadata.name
        for node in nodes
        if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    }

    assert set(cluster.node_names) <= ready


def test_deployment_becomes_available_when_it_asks_for_two_replicas(k8s_api, namespace):
    apps = k8s.AppsV1Api(k8s_api)
    apps.create_namespaced_deployment(namespace, deployment("engine", replicas=2))

    def available():
        status = apps.read_namespaced_deployment_status("engine", namespace).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return conditions.get("Available") == "True" and status.ready_replicas == 2

    wait_for(available, what="Deployment engine Available with 2 ready replicas")
    pods = k8s.CoreV1Api(k8s_api).list_namespaced_pod(namespace, label_selector="app=engine").items
    assert len(pods) == 2
    assert all(pod.spec.node_name and pod.status.phase == "Running" for pod in pods)
    assert all(pod.status.pod_ip for pod in pods)


def test_garbage_collector_deletes_owned_objects_when_their_owner_is_deleted(k8s_api, namespace):
    apps = k8s.AppsV1Api(k8s_api)
    core = k8s.CoreV1Api(k8s_api)
    owner = apps.create_namespaced_deployment(namespace, deployment("owner", replicas=1))
    reference = k8s.V1OwnerReference(
        api_version="apps/v1", kind="Deployment", name="owner", uid=owner.metadata.uid, controller=True
    )
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owned", owner_references=[reference]), data={"a": "b"}),
    )

    apps.delete_namespaced_deployment("owner", namespace, propagation_policy="Background")

    def config_map_gone():
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(config_map_gone, what="owned ConfigMap garbage-collected")
    wait_for(
        lambda: not apps.list_namespaced_replica_set(namespace).items,
        what="ReplicaSet of the deleted Deployment garbage-collected",
    )


def test_new_namespace_gets_root_ca_and_service_account_when_controllers_run(k8s_api, namespace):
    core = k8s.CoreV1Api(k8s_api)

    root_ca = wait_for(
        lambda: _read_or_none(lambda: core.read_namespaced_config_map("kube-root-ca.crt", namespace)),
        what="kube-root-ca.crt ConfigMap",
    )

    assert "BEGIN CERTIFICATE" in root_ca.data["ca.crt"]
    assert core.read_namespaced_service_account("default", namespace).metadata.name == "default"


def test_update_with_a_stale_resource_version_is_rejected_when_another_writer_won(k8s_api, namespace):
    core = k8s.CoreV1Api(k8s_api)
    created = core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="contended"), data={"v": "0"})
    )
    core.patch_namespaced_config_map("contended", namespace, {"data": {"v": "1"}})
    created.data = {"v": "stale"}

    with pytest.raises(ApiException) as error:
        core.replace_namespaced_config_map("contended", namespace, created)

    assert error.value.status == 409


def _read_or_none(read):
    try:
        return read()
    except ApiException as error:
        if error.status == 404:
            return None
        raise
