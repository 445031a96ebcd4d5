"""The Helm chart: it lints, renders what an operator install needs, rejects bad values, every rendered
object passes a server-side dry-run on the local API server, its alerts pass promtool, and the operator
does its work under exactly the chart's ServiceAccount and ClusterRole.

helm is built from the Go module proxy and cached like the control plane (`backtest_devtools.build.HELM`);
the `cluster` marker makes the session build it before the first test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import dynamic
from prometheus_client import generate_latest

from backtest_devtools import chart, processes
from backtest_devtools.crds import install_crd_documents
from backtest_devtools.kubeconfig import service_account_kubeconfig
from backtest_devtools.stack import free_port
from backtest_operator import metrics
from backtest_operator.analysis import Observation
from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.cli import build_parser
from backtest_operator.traffic import router_provider
from backtest_operator.workloads import Owner, WorkloadDefaults
from tests.unit.operator.rollouts import started

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "backtest.dev", "v1alpha1", "backtestservices"
BIN = Path(sys.executable).parent
# How a denial shows in the operator's log: the kubernetes client's ApiException "(403)" / "Forbidden".
RBAC_DENIAL = re.compile(r"\(403\)|Forbidden")
MONITORING = [
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.routerPodMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.grafanaDashboard.enabled=true",
]
CORE_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "NetworkPolicy"}
ALERTS = {
    "BacktestRolloutRolledBack",
    "BacktestRolloutStuck",
    "BacktestServiceInitializingTooLong",
    "BacktestAnalysisFailing",
    "BacktestOperatorReconcileErrors",
    "BacktestCanaryErrorRateAboveRollbackThreshold",
    "BacktestCanaryLatencyAboveRollbackThreshold",
    "BacktestOperatorDown",
}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def default_objects(devtools_settings) -> list[dict[str, Any]]:
    return chart.render(devtools_settings)


@pytest.fixture(scope="module")
def monitoring_objects(devtools_settings) -> list[dict[str, Any]]:
    return chart.render(devtools_settings, set_values=MONITORING)


@pytest.fixture(scope="module")
def alert_rules(monitoring_objects) -> list[dict[str, Any]]:
    groups = one(monitoring_objects, "PrometheusRule")["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


# helm lint and helm template ----------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], MONITORING], ids=["defaults", "monitoring"])
def test_chart_passes_helm_lint_strict_when_linted(devtools_settings, values):
    args = [item for value in values for item in ("--set", value)]
    result = chart.helm(devtools_settings, "lint", "--strict", str(chart.CHART_DIR), *args)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_helm_is_the_cached_release_when_asked_its_version(devtools_settings):
    result = chart.helm(devtools_settings, "version", "--short", check=True)

    assert result.stdout.startswith(chart.build.HELM.version)


def test_helm_assumes_the_kubernetes_version_of_its_client_go_when_built(devtools_settings):
    """HELM_KUBE_VERSION (the -X flags) must follow helm's go.mod when HELM.version changes."""
    go_mod = (
        chart.build.module_dir(devtools_settings, chart.build.HELM.module, chart.build.HELM.version) / "go.mod"
    ).read_text()
    client_go = re.search(r"k8s.io/client-go v0\.(\d+)\.", go_mod)
    assert client_go is not None
    assert ("1", client_go.group(1)) == chart.build.HELM_KUBE_VERSION


def test_template_renders_only_the_operator_objects_when_values_are_defaults(default_objects):
    assert {obj["kind"] for obj in default_objects} == CORE_KINDS
    assert all(obj["metadata"]["name"] == "backtest-operator" for obj in default_objects if obj["kind"] != "Service")


def test_operator_deployment_is_one_recreated_hardened_replica_when_rendered(default_objects):
    deployment = one(default_objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]

    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["image"] == "ghcr.io/backtest-dev/backtest-operator:0.1.0"
    assert pod["serviceAccountName"] == one(default_objects, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_liveness_probe_targets_the_port_of_the_liveness_argument_when_rendered(default_objects):
    container = one(default_objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert f"--liveness=http://0.0.0.0:{ports['liveness']}/healthz" in container["args"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["OPERATOR_METRICS_PORT"] == str(ports["metrics"])
    assert env["OPERATOR_ROUTER_IMAGE"] == "ghcr.io/backtest-dev/backtest-engine:0.1.0"


def test_operator_watches_only_the_listed_namespaces_when_watch_namespaces_is_set(devtools_settings):
    objects = chart.render(devtools_settings, set_values=["operator.watchNamespaces={research,prod}"])
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]

    assert args[:3] == ["run", "--namespace=research", "--namespace=prod"]
    assert "--all-namespaces" not in args


def test_image_is_pulled_by_digest_when_a_digest_is_set(devtools_settings):
    digest = "sha256:" + "a" * 64
    objects = chart.render(devtools_settings, set_values=[f"image.digest={digest}"])

    image = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/backtest-dev/backtest-operator@{digest}"


def test_cluster_role_has_exactly_the_rules_file_and_no_wildcard_when_rendered(default_objects):
    rules = one(default_objects, "ClusterRole")["rules"]

    assert rules == chart.operator_rules()
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {rule}"
        if "secrets" in rule["resources"]:  # the generated credentials Secret: never listed, watched or deleted
            assert rule["resources"] == ["secrets"] and sorted(rule["verbs"]) == ["create", "get", "patch"]


def test_every_rbac_rule_is_commented_when_reading_the_rules_file():
    lines = chart.RULES_FILE.read_text().splitlines()

    starts = [i for i, line in enumerate(lines) if line.startswith("- apiGroups:")]
    assert starts
    for index in starts:
        previous = lines[index - 1]
        commented = previous.startswith("#") or lines[index - 3].startswith("- apiGroups:")
        assert commented, f"rule at line {index + 1} has no comment saying why"


def test_binding_grants_the_cluster_role_to_the_service_account_when_rendered(default_objects):
    binding = one(default_objects, "ClusterRoleBinding")
    account = one(default_objects, "ServiceAccount")

    assert binding["roleRef"]["name"] == one(default_objects, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "backtest-system"}
    ]


def test_monitoring_objects_render_when_monitoring_is_enabled(monitoring_objects):
    kinds = {obj["kind"] for obj in monitoring_objects}

    assert kinds == CORE_KINDS | {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    monitor = one(monitoring_objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    routers = one(monitoring_objects, "PodMonitor")
    assert routers["spec"]["namespaceSelector"] == {"any": True}
    relabel = routers["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert relabel["targetLabel"] == "service"


def test_router_pod_monitor_selects_the_router_pods_the_operator_creates_when_rendered(monitoring_objects):
    owner = Owner(name="quant", namespace="research", uid="uid-1")
    spec = BacktestServiceSpec.model_validate({"image": "backtest-engine:1.0.0"})
    manifests = router_provider(owner, spec, BacktestServiceStatus(), WorkloadDefaults())
    pod = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]
    selector = one(monitoring_objects, "PodMonitor")["spec"]

    assert selector["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    for expression in selector["selector"]["matchExpressions"]:
        assert expression["key"] in pod["metadata"]["labels"]
    ports = {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    assert selector["podMetricsEndpoints"][0]["port"] in ports


def test_default_operator_args_parse_with_the_operator_cli_when_rendered(default_objects):
    args = one(default_objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]

    parsed = build_parser().parse_args(args)

    assert parsed.command == "run"
    assert parsed.all_namespaces is True
    assert parsed.liveness == "http://0.0.0.0:8080/healthz"


def test_dashboard_is_grafana_json_with_the_rollout_panels_when_rendered(monitoring_objects):
    configmap = one(monitoring_objects, "ConfigMap")
    dashboard = json.loads(configmap["data"]["backtest-operator.json"])

    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Rollout phase",
        "Canary weight",
        "Error rate: canary vs stable",
        "p95 latency per track",
        "Fallbacks to stable",
        "Analysis verdicts",
        "Rollbacks",
    } <= titles
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]


def test_every_alert_has_for_severity_texts_and_a_runbook_when_rendered(alert_rules):
    assert {rule["alert"] for rule in alert_rules} == ALERTS
    for rule in alert_rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        for key in ("summary", "description"):
            assert "{{ $labels.namespace }}" in rule["annotations"][key] or rule["alert"] == "BacktestOperatorDown"
        assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower())


def test_runbook_anchors_exist_in_the_chart_readme_when_alerts_link_them(alert_rules):
    readme = (chart.CHART_DIR / "README.md").read_text()

    for rule in alert_rules:
        assert f"### {rule['alert']}" in readme


def test_rendered_alert_rules_pass_promtool_check_when_monitoring_is_enabled(monitoring_objects, tmp_path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": one(monitoring_objects, "PrometheusRule")["spec"]["groups"]}))

    result = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def expand(text: str, labels: dict[str, str], value: str = "") -> str:
    """An alert text as Prometheus renders it, for the few template forms the chart's alerts use."""
    for key, label in labels.items():
        text = text.replace(f"{{{{ $labels.{key} }}}}", label)
    for form in ("{{ $value | humanize }}", "{{ $value | humanizePercentage }}", "{{ $value | humanizeDuration }}"):
        text = text.replace(form, value)
    return text


def operator_exposition_after_a_failed_analysis() -> str:
    """What the operator's /metrics shows after one evaluation Prometheus could not answer: the policy's
    decision recorded by the operator's own metrics code (the process-wide registry it serves)."""
    driver = started()
    decision = driver.step(Observation(time=driver.now, error="Prometheus at http://prometheus:9090 unreachable"))
    metrics.record_checks("prod", "quant", decision.checks)
    return generate_latest(metrics.REGISTRY).decode()


def test_alerts_fire_with_the_object_named_when_promtool_replays_bad_series(monitoring_objects, alert_rules, tmp_path):
    """promtool's rule unit tests: synthetic series in, every alert with its labels and texts out. The
    analysis-failure series is the one the operator itself exports after an evaluation that failed."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": one(monitoring_objects, "PrometheusRule")["spec"]["groups"]}))
    annotations = {rule["alert"]: rule["annotations"] for rule in alert_rules}

    def expected(alert: str, labels: dict[str, str], value: str = "") -> dict[str, Any]:
        texts = {key: expand(text, labels, value) for key, text in annotations[alert].items()}
        return {"exp_labels": labels, "exp_annotations": texts}

    canary = 'backtest_router_requests_total{namespace="prod",service="quant",track="canary"'
    duration = 'backtest_router_request_duration_seconds_bucket{namespace="prod",service="quant",'
    canary_latency, stable_latency = duration + 'track="canary"', duration + 'track="stable"'
    exported = [
        line.split(" ")[0] for line in operator_exposition_after_a_failed_analysis().splitlines()
        if line.startswith("backtest_operator_analysis_verdicts_total{") and 'verdict="error"' in line
    ]  # fmt: skip
    assert exported == ['backtest_operator_analysis_verdicts_total{check="analysis",verdict="error"}']
    analysis_errors = exported[0].replace("{", '{namespace="backtest-system",', 1)
    object_labels = {"namespace": "prod", "name": "quant"}
    router_labels = {"namespace": "prod", "service": "quant"}
    operator_labels = {"namespace": "backtest-system"}
    tests = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'backtest_operator_rollout_phase{namespace="prod",name="quant",phase="Degraded"}',
                        "values": "1x10",
                    },
                    {"series": canary + ',code="200"}', "values": "0+60x20"},
                    {"series": canary + ',code="500"}', "values": "0+30x20"},
                    {"series": 'up{job="backtest-operator-metrics",namespace="backtest-system"}', "values": "0x20"},
                    {"series": analysis_errors, "values": "0+1x20"},
                    {
                        "series": 'backtest_operator_rollout_phase{namespace="prod",name="fresh",phase="Initializing"}',
                        "values": "1x30",
                    },
                    {
                        "series": 'backtest_operator_reconcile_errors_total{namespace="backtest-system",kind="api"}',
                        "values": "0+1x40",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "BacktestRolloutRolledBack",
                        "exp_alerts": [expected("BacktestRolloutRolledBack", {"severity": "warning", **object_labels})],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "BacktestCanaryErrorRateAboveRollbackThreshold",
                        "exp_alerts": [
                            expected(
                                "BacktestCanaryErrorRateAboveRollbackThreshold",
                                {"severity": "critical", **router_labels},
                                "33.33%",
                            )
                        ],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "BacktestOperatorDown",
                        "exp_alerts": [expected("BacktestOperatorDown", {"severity": "critical", **operator_labels})],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "BacktestAnalysisFailing",
                        "exp_alerts": [
                            expected(
                                "BacktestAnalysisFailing",
                                {"severity": "warning", "check": "analysis", **operator_labels},
                                "5",
                            )
                        ],
                    },
                    {"eval_time": "10m", "alertname": "BacktestServiceInitializingTooLong", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": "BacktestServiceInitializingTooLong",
                        "exp_alerts": [
                            expected(
                                "BacktestServiceInitializingTooLong",
                                {"severity": "warning", "namespace": "prod", "name": "fresh"},
                            )
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "BacktestOperatorReconcileErrors",
                        "exp_alerts": [
                            expected(
                                "BacktestOperatorReconcileErrors",
                                {"severity": "warning", "kind": "api", **operator_labels},
                            )
                        ],
                    },
                    {"eval_time": "10m", "alertname": "BacktestRolloutStuck", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "BacktestCanaryLatencyAboveRollbackThreshold", "exp_alerts": []},
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'backtest_operator_rollout_phase{namespace="prod",name="quant",phase="Progressing"}',
                        "values": "1x120",
                    },
                    {"series": 'backtest_operator_canary_weight{namespace="prod",name="quant"}', "values": "10x120"},
                    *[
                        {"series": latency + f',le="{le}"}}', "values": f"0+{count}x20"}
                        for latency, buckets in (
                            (canary_latency, {"0.5": 0, "2.5": 0, "5": 60, "+Inf": 60}),
                            (stable_latency, {"0.5": 60, "2.5": 60, "5": 60, "+Inf": 60}),
                        )
                        for le, count in buckets.items()
                    ],
                ],
                "alert_rule_test": [
                    {"eval_time": "80m", "alertname": "BacktestRolloutStuck", "exp_alerts": []},
                    {
                        "eval_time": "100m",
                        "alertname": "BacktestRolloutStuck",
                        "exp_alerts": [expected("BacktestRolloutStuck", {"severity": "warning", **object_labels})],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "BacktestCanaryLatencyAboveRollbackThreshold",
                        "exp_alerts": [
                            expected(
                                "BacktestCanaryLatencyAboveRollbackThreshold",
                                {"severity": "critical", **router_labels},
                                "4.4s",
                            )
                        ],
                    },
                ],
            },
        ],
    }
    fired = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == ALERTS, f"alerts no promtool case makes fire: {sorted(ALERTS - fired)}"
    tests_file = tmp_path / "tests.yaml"
    tests_file.write_text(yaml.safe_dump(tests))

    result = subprocess.run(["promtool", "test", "rules", str(tests_file)], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stdout + result.stderr


# values.schema.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "replicaCount=two",
        "replicaCount=2",
        "image.tag=5",
        "image.pullPolicy=Sometimes",
        "replicas=1",
        "operator.watchNamespaces={Not_A_Namespace}",
        "operator.metricsPort=70000",
        "monitoring.prometheusRule.stuckAfter=soon",
        "monitoring.prometheusRule.canaryErrorRate=2",
    ],
)
def test_install_fails_naming_the_value_when_a_value_breaks_the_schema(devtools_settings, bad):
    result = chart.helm(devtools_settings, "template", "x", str(chart.CHART_DIR), "--set", bad)

    assert result.returncode != 0, f"{bad} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    key = bad.split("=")[0].split(".")[-1]
    assert key in result.stderr


# the local API server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def monitoring_crds_installed(k8s_api, devtools_settings) -> list[str]:
    return install_crd_documents(k8s_api, chart.monitoring_crds(devtools_settings))


def dry_run_apply(api: dynamic.DynamicClient, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    resource = api.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    result = api.server_side_apply(
        resource,
        body=obj,
        namespace=namespace if resource.namespaced else None,
        field_manager="helm-dry-run",
        force_conflicts=True,
        dry_run="All",
    )
    return dict(result.to_dict())


def test_every_rendered_object_passes_a_server_side_dry_run_when_applied(
    k8s_api, devtools_settings, crd_installed, monitoring_crds_installed, namespace
):
    objects = chart.render(devtools_settings, set_values=MONITORING, namespace=namespace)
    crd = yaml.safe_load((chart.CHART_DIR / "crds" / "backtest.dev_backtestservices.yaml").read_text())
    api = dynamic.DynamicClient(k8s_api)

    applied = [dry_run_apply(api, obj, namespace) for obj in [crd, *objects]]

    assert [obj["kind"] for obj in applied] == [obj["kind"] for obj in [crd, *objects]]
    # A dry run persists nothing.
    assert not k8s.AppsV1Api(k8s_api).list_namespaced_deployment(namespace).items


def test_helm_install_server_dry_run_succeeds_and_prints_the_crd_upgrade_note_when_run_against_the_cluster(
    cluster, devtools_settings, crd_installed, monitoring_crds_installed, namespace
):
    """helm's own view: `helm install --dry-run=server` looks the release up on the API server and
    renders NOTES.txt, which reminds of the CRD upgrade path."""
    args = [item for value in MONITORING for item in ("--set", value)]
    result = chart.helm(
        devtools_settings, "install", "dry", str(chart.CHART_DIR), "--namespace", namespace, "--dry-run=server",
        "--kubeconfig", str(cluster.kubeconfig), *args,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "STATUS: pending-install" in result.stdout
    assert "kubectl apply --server-side --force-conflicts" in result.stdout


def test_dry_run_is_rejected_by_the_api_server_when_a_rendered_object_is_invalid(k8s_api, devtools_settings, namespace):
    deployment = one(chart.render(devtools_settings, namespace=namespace), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 0
    api = dynamic.DynamicClient(k8s_api)

    with pytest.raises(dynamic.exceptions.DynamicApiError) as error:
        dry_run_apply(api, deployment, namespace)

    assert error.value.status == 422
    body = error.value.body
    text = body.decode() if isinstance(body, bytes) else str(body)
    assert "containerPort" in text, text


# the operator under the chart's identity ------------------------------------------------------------


@pytest.fixture
def chart_identity(k8s_api, cluster, devtools_settings, namespace, tmp_path) -> Iterator[Callable[..., OperatorRun]]:
    """Creates the chart's ServiceAccount, ClusterRole and binding from the rendered template (optionally
    with a rule taken away), writes a kubeconfig with a token of that ServiceAccount, and starts the
    operator with the rendered container's arguments and environment under it."""
    core, rbac = k8s.CoreV1Api(k8s_api), k8s.RbacAuthorizationV1Api(k8s_api)
    created: list[tuple[str, str]] = []
    started: list[processes.Managed] = []

    def start(without_resource: str | None = None) -> OperatorRun:
        release = f"chart-{uuid.uuid4().hex[:8]}"
        objects = chart.render(
            devtools_settings, release=release, namespace=namespace,
            set_values=[f"operator.watchNamespaces={{{namespace}}}"],
        )  # fmt: skip
        account, role, binding = (
            one(objects, kind) for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
        )
        if without_resource:
            role["rules"] = [rule for rule in role["rules"] if without_resource not in rule["resources"]]
        core.create_namespaced_service_account(namespace, account)
        rbac.create_cluster_role(role)
        created.append(("role", role["metadata"]["name"]))
        rbac.create_cluster_role_binding(binding)
        created.append(("binding", binding["metadata"]["name"]))
        kubeconfig = service_account_kubeconfig(
            core, tmp_path / f"{release}.kubeconfig", cluster.server, cluster.pki.ca.cert, namespace,
            account["metadata"]["name"],
        )  # fmt: skip
        # The container's own command line and environment, as the chart renders them; only the listen
        # addresses change (a pod owns its ports, a test process shares the machine).
        container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        args = [arg for arg in container["args"] if not arg.startswith("--liveness=")]
        liveness = f"http://127.0.0.1:{free_port()}/healthz"
        env = {item["name"]: item["value"] for item in container["env"]}
        env |= {"KUBECONFIG": str(kubeconfig), "OPERATOR_METRICS_HOST": "127.0.0.1",
                "OPERATOR_METRICS_PORT": str(free_port())}  # fmt: skip
        managed = processes.start(
            "operator", [str(BIN / "backtest-operator"), *args, f"--liveness={liveness}"], run_dir=tmp_path / "run",
            log_dir=tmp_path / "logs", owner_mark=str(BIN / "backtest-operator"), die_with_parent=True, env=env,
        )  # fmt: skip
        started.append(managed)
        return OperatorRun(managed, args, liveness)

    yield start
    for managed in started:
        processes.stop(managed, grace=5.0)
    for kind, name in reversed(created):
        if kind == "binding":
            rbac.delete_cluster_role_binding(name)
        else:
            rbac.delete_cluster_role(name)


@dataclass(frozen=True)
class OperatorRun:
    process: processes.Managed
    args: list[str]
    liveness: str

    def log(self) -> str:
        return self.process.log.read_text()


def create_service(k8s_api: k8s.ApiClient, namespace: str) -> None:
    k8s.CustomObjectsApi(k8s_api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService", "metadata": {"name": "quant"},
        "spec": {"image": "backtest-engine:1.0.0", "replicas": 1,
                 "analysis": {"prometheus": {"url": "http://127.0.0.1:9", "timeout": "1s"}, "interval": "1s"}},
    })  # fmt: skip


def status_of(k8s_api: k8s.ApiClient, namespace: str) -> dict[str, Any]:
    body = k8s.CustomObjectsApi(k8s_api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quant")
    return dict(body.get("status") or {})


def test_operator_brings_a_service_to_healthy_without_403_when_running_under_the_chart_rbac(
    k8s_api, crd_installed, namespace, chart_identity
):
    operator = chart_identity()
    assert processes.wait_until(lambda: http_ok(operator.liveness), 30, 0.2), f"not live; log: {operator.log()}"

    create_service(k8s_api, namespace)

    healthy = processes.wait_until(lambda: status_of(k8s_api, namespace).get("phase") == "Healthy", 120, 0.3)
    assert healthy, f"not Healthy within 120s: {status_of(k8s_api, namespace)}; log: {operator.log()}"
    assert status_of(k8s_api, namespace)["stableRevision"]
    assert k8s.AppsV1Api(k8s_api).list_namespaced_deployment(namespace).items, "the operator created no Deployment"
    assert operator.args[:2] == ["run", f"--namespace={namespace}"]
    assert not RBAC_DENIAL.search(operator.log()), f"the operator hit RBAC denials: {operator.log()}"


def test_operator_logs_forbidden_and_stays_unhealthy_when_the_chart_rules_lack_deployments(
    k8s_api, crd_installed, namespace, chart_identity
):
    """The control experiment: the log check above does see RBAC denials when there are some."""
    operator = chart_identity(without_resource="deployments")
    create_service(k8s_api, namespace)

    denied = processes.wait_until(lambda: RBAC_DENIAL.search(operator.log()) is not None, 60, 0.3)

    assert denied, f"no RBAC denial logged: {operator.log()}"
    assert status_of(k8s_api, namespace).get("phase") != "Healthy"


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_operator_accepts_only_prometheus_on_its_metrics_port_when_rendered(default_objects):
    policy = one(default_objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == one(default_objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {}},
                      "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
            "ports": [{"port": "metrics", "protocol": "TCP"}],
        }
    ]  # fmt: skip
    probe = one(default_objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "liveness"}
