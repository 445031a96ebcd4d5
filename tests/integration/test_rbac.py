"""RBAC is enforced: an identity without rights gets 403, one bound to the operator's ClusterRole
(the rules in charts/backtest-operator/files/operator-rules.yaml) can do the operator's work."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from backtest_devtools import chart

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "backtest.dev", "v1alpha1", "backtestservices"


def service_account_client(k8s_api, cluster, namespace: str, name: str) -> k8s.ApiClient:
    """An ApiClient that authenticates with a fresh ServiceAccount token (TokenRequest API)."""
    core = k8s.CoreV1Api(k8s_api)
    core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name)))
    request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = core.create_namespaced_service_account_token(name, namespace, request).status.token
    configuration = k8s.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.pki.ca.cert)
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(configuration)


@pytest.fixture(scope="module")
def operator_cluster_role(k8s_api) -> str:
    rbac = k8s.RbacAuthorizationV1Api(k8s_api)
    body = chart.operator_cluster_role()
    name = body["metadata"]["name"]
    try:
        rbac.create_cluster_role(body)
    except ApiException as error:
        if error.status != 409:
            raise
        rbac.replace_cluster_role(name, body)
    return name


def bind(k8s_api, role: str, namespace: str, account: str) -> None:
    binding = k8s.V1ClusterRoleBinding(
        metadata=k8s.V1ObjectMeta(name=f"{role}-{namespace}"),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
        subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)],
    )
    k8s.RbacAuthorizationV1Api(k8s_api).create_cluster_role_binding(binding)


def test_identity_without_rights_gets_403_when_it_lists_backtestservices(k8s_api, cluster, crd_installed, namespace):
    api = service_account_client(k8s_api, cluster, namespace, "nobody")
    with api, pytest.raises(ApiException) as error:
        k8s.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)

    assert error.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in error.value.body
    assert "backtestservices" in error.value.body


def test_identity_with_operator_cluster_role_does_the_operator_work_when_bound(
    k8s_api, cluster, crd_installed, namespace, operator_cluster_role
):
    admin_objects = k8s.CustomObjectsApi(k8s_api)
    admin_objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BacktestService",
            "metadata": {"name": "svc"},
            "spec": {"image": "backtest-engine:1.0.0"},
        },
    )
    bind(k8s_api, operator_cluster_role, namespace, "operator")
    try:
        with service_account_client(k8s_api, cluster, namespace, "operator") as api:
            objects = k8s.CustomObjectsApi(api)
            listed = objects.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "svc", {"metadata": {"annotations": {"seen": "yes"}}}
            )
            objects.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, "svc", {"status": {"phase": "Healthy"}}
            )
            apps = k8s.AppsV1Api(api)
            core = k8s.CoreV1Api(api)
            apps.create_namespaced_deployment(
                namespace,
                k8s.V1Deployment(
                    metadata=k8s.V1ObjectMeta(name="svc-stable"),
                    spec=k8s.V1DeploymentSpec(
                        replicas=0,
                        selector=k8s.V1LabelSelector(match_labels={"app": "svc"}),
                        template=k8s.V1PodTemplateSpec(
                            metadata=k8s.V1ObjectMeta(labels={"app": "svc"}),
                            spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="engine", image="e:1")]),
                        ),
                    ),
                ),
            )
            apps.delete_namespaced_deployment("svc-stable", namespace)
            core.create_namespaced_service(
                namespace,
                k8s.V1Service(
                    metadata=k8s.V1ObjectMeta(name="svc"),
                    spec=k8s.V1ServiceSpec(selector={"app": "svc"}, ports=[k8s.V1ServicePort(port=80)]),
                ),
            )
            core.create_namespaced_config_map(
                namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="svc-router"), data={"weight": "1"})
            )
            core.create_namespaced_event(
                namespace,
                k8s.CoreV1Event(
                    metadata=k8s.V1ObjectMeta(generate_name="svc."),
                    involved_object=k8s.V1ObjectReference(
                        api_version=f"{GROUP}/{VERSION}", kind="BacktestService", name="svc", namespace=namespace
                    ),
                    reason="PhaseStarted",
                    message="canary started",
                    type="Normal",
                ),
            )
            with pytest.raises(ApiException) as denied:
                core.list_namespaced_secret(namespace)
    finally:
        k8s.RbacAuthorizationV1Api(k8s_api).delete_cluster_role_binding(f"{operator_cluster_role}-{namespace}")

    assert [item["metadata"]["name"] for item in listed["items"] if item["metadata"]["namespace"] == namespace] == [
        "svc"
    ]
    stored = admin_objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "svc")
    assert stored["status"]["phase"] == "Healthy"
    assert stored["metadata"]["annotations"]["seen"] == "yes"
    assert denied.value.status == 403, "the operator role must not grant access to secrets"
