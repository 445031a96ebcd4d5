"""The Helm chart installed for real: the operator runs as a pod under the chart's ServiceAccount and RBAC,
with its probes and securityContext, and `helm upgrade` / `helm uninstall` leave nothing behind."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from backtest_devtools.chart import helm_install, helm_uninstall
from backtest_devtools.config import load_settings
from backtest_devtools.realfixtures import OPERATOR_NAMESPACE
from backtest_devtools.realpods import wait_until

pytestmark = pytest.mark.real

SELECTOR = "app.kubernetes.io/name=backtest-operator,app.kubernetes.io/instance={release}"


def operator_pods(core: k8s.CoreV1Api, namespace: str, release: str) -> list:
    return core.list_namespaced_pod(namespace, label_selector=SELECTOR.format(release=release)).items


def ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_operator_pod_runs_under_the_charts_service_account_when_installed(real_k8s_api, operator_release):
    core = k8s.CoreV1Api(real_k8s_api)
    (pod,) = wait_until(lambda: [p for p in operator_pods(core, OPERATOR_NAMESPACE, operator_release) if ready(p)],
                        120, "the operator pod Ready")  # fmt: skip

    assert pod.spec.service_account_name == operator_release + "-backtest-operator"
    assert pod.spec.node_name == "backtest-node"
    assert pod.status.container_statuses[0].restart_count == 0
    assert pod.spec.containers[0].security_context.read_only_root_filesystem is True


def test_operator_uses_the_charts_rbac_and_is_denied_the_rest_when_running(real_k8s_api, operator_release):
    """The ServiceAccount may manage BacktestServices and their workloads and nothing like nodes/proxy (asked
    of the API server's authorizer, for the identity the operator pod runs as)."""
    authz = k8s.AuthorizationV1Api(real_k8s_api)
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{operator_release}-backtest-operator"

    def allowed(verb: str, resource: str, group: str = "", subresource: str = "") -> bool:
        review = k8s.V1SubjectAccessReview(spec=k8s.V1SubjectAccessReviewSpec(
            user=user, resource_attributes=k8s.V1ResourceAttributes(
                verb=verb, resource=resource, group=group, subresource=subresource or None)))  # fmt: skip
        return bool(authz.create_subject_access_review(review).status.allowed)

    assert allowed("patch", "backtestservices", "backtest.dev", "status")
    assert allowed("create", "deployments", "apps")
    assert not allowed("get", "nodes", subresource="proxy")


def test_upgrade_then_uninstall_leaves_nothing_of_the_release_when_run_for_real(real_cluster, real_k8s_api):
    settings = load_settings()
    release, namespace = "lifecycle", "chart-lifecycle"
    kubeconfig = real_cluster.info.kubeconfig
    core = k8s.CoreV1Api(real_k8s_api)
    watch_own = ["--set", f"operator.watchNamespaces[0]={namespace}"]

    installed = helm_install(settings, kubeconfig, release, namespace, [*watch_own, "--wait", "--timeout", "3m"])
    assert installed.returncode == 0, installed.stderr
    first = wait_until(lambda: [p for p in operator_pods(core, namespace, release) if ready(p)], 120, "first pod")

    change = ["--set", "operator.maxAnalysisConcurrency=5", "--wait", "--timeout", "3m"]
    upgraded = helm_install(settings, kubeconfig, release, namespace, [*watch_own, *change])
    assert upgraded.returncode == 0, upgraded.stderr
    old = first[0].metadata.uid
    second = wait_until(
        lambda: [p for p in operator_pods(core, namespace, release) if ready(p) and p.metadata.uid != old],
        120,
        "the upgraded pod Ready",
    )
    env = {e.name: e.value for e in second[0].spec.containers[0].env}
    assert env["OPERATOR_MAX_ANALYSIS_CONCURRENCY"] == "5"

    removed = helm_uninstall(settings, kubeconfig, release, namespace)
    assert removed.returncode == 0, removed.stderr
    wait_until(lambda: not operator_pods(core, namespace, release), 120, "the operator pods gone")
    name = f"{release}-backtest-operator"
    rbac, apps = k8s.RbacAuthorizationV1Api(real_k8s_api), k8s.AppsV1Api(real_k8s_api)
    for read in (
        lambda: apps.read_namespaced_deployment(name, namespace),
        lambda: core.read_namespaced_service_account(name, namespace),
        lambda: core.read_namespaced_service(f"{name}-metrics", namespace),
        lambda: rbac.read_cluster_role(name),
        lambda: rbac.read_cluster_role_binding(name),
    ):
        with pytest.raises(ApiException) as error:
            read()
        assert error.value.status == 404
    assert not core.list_namespaced_secret(namespace, label_selector=f"owner=helm,name={release}").items
