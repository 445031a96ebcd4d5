"""The Helm chart as tests see it: its folder, the operator's ClusterRole rules, and helm itself.

The ClusterRole rules live once, in the chart (``files/operator-rules.yaml``); tests that run the operator
under a restricted identity build their ClusterRole from the same file. ``helm`` is built from the Go
module proxy and cached like the control plane (``build.HELM``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from backtest_devtools import build
from backtest_devtools.config import REPO_ROOT, Settings

CHART_DIR = REPO_ROOT / "charts" / "backtest-operator"
RULES_FILE = CHART_DIR / "files" / "operator-rules.yaml"
CLUSTER_ROLE_NAME = "backtest-operator"


def operator_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(RULES_FILE.read_text())
    return rules


def operator_cluster_role(name: str = CLUSTER_ROLE_NAME) -> dict[str, Any]:
    """The operator's ClusterRole with exactly the chart's rules."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "backtest-operator", "app.kubernetes.io/component": "operator"},
        },
        "rules": operator_rules(),
    }


def helm_binary(settings: Settings) -> Path:
    return build.binary(settings, "helm")


def helm(settings: Settings, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the cached helm with a private home (no repositories, no plugins, nothing of the user's)."""
    home = settings.cache_dir / "helm-home"
    env = {
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [str(helm_binary(settings)), *args], env=env, capture_output=True, text=True, check=check, timeout=timeout
    )


def render(
    settings: Settings,
    *,
    values: list[Path] | None = None,
    set_values: list[str] | None = None,
    release: str = "backtest-operator",
    namespace: str = "backtest-system",
) -> list[dict[str, Any]]:
    """`helm template` of the chart, as a list of objects (CRDs from crds/ not included)."""
    args = ["template", release, str(CHART_DIR), "--namespace", namespace]
    for path in values or []:
        args += ["--values", str(path)]
    for item in set_values or []:
        args += ["--set", item]
    result = helm(settings, *args, check=True)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# prometheus-operator's own CRDs (ServiceMonitor, PodMonitor, PrometheusRule), from its Go module, so the
# chart's monitoring objects can be dry-run against the local API server like everything else.
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
MONITORING_CRDS = ("servicemonitors", "podmonitors", "prometheusrules")


def monitoring_crds(settings: Settings) -> list[dict[str, Any]]:
    """The CRDs of the monitoring.coreos.com kinds the chart renders."""
    folder = build.module_dir(settings, PROMETHEUS_OPERATOR_MODULE, PROMETHEUS_OPERATOR_VERSION)
    crds: list[dict[str, Any]] = []
    for plural in MONITORING_CRDS:
        path = folder / "example" / "prometheus-operator-crd" / f"monitoring.coreos.com_{plural}.yaml"
        crds.append(yaml.safe_load(path.read_text()))
    return crds


def helm_install(
    settings: Settings, kubeconfig: Path, release: str, namespace: str, extra: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`helm upgrade --install` of the chart on a real cluster (also what an upgrade runs)."""
    args = ["upgrade", "--install", release, str(CHART_DIR), "--namespace", namespace, "--create-namespace",
            "--kubeconfig", str(kubeconfig), *(extra or [])]  # fmt: skip
    return helm(settings, *args, timeout=600)


def helm_uninstall(
    settings: Settings, kubeconfig: Path, release: str, namespace: str
) -> subprocess.CompletedProcess[str]:
    args = [
        "uninstall",
        release,
        "--namespace",
        namespace,
        "--kubeconfig",
        str(kubeconfig),
        "--wait",
        "--timeout",
        "3m",
    ]
    return helm(settings, *args, timeout=600)


def router_scrape_configs(settings: Settings, kubeconfig: Path, interval: str = "15s") -> list[dict[str, Any]]:
    """What the chart's router PodMonitor tells prometheus-operator to scrape, for a Prometheus on the host."""
    from backtest_devtools.podmonitor import scrape_configs  # noqa: PLC0415

    rendered = render(
        settings,
        set_values=[
            "monitoring.routerPodMonitor.enabled=true",
            f"monitoring.routerPodMonitor.interval={interval}",
            f"monitoring.routerPodMonitor.scrapeTimeout={interval}",
        ],
    )
    monitors = [
        doc for doc in rendered if doc.get("kind") == "PodMonitor" and doc["metadata"]["name"].endswith("-routers")
    ]
    if len(monitors) != 1:
        raise ValueError(f"expected one router PodMonitor in the chart, found {len(monitors)}")
    return scrape_configs(monitors[0], kubeconfig)
