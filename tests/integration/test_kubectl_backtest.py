"""`kubectl backtest` against the real API server: every command only patches the object."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client as k8s

from backtest_operator.api import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster
PLUGIN = Path(sys.executable).parent / "kubectl-backtest"


@pytest.fixture
def service(k8s_api, namespace, crd_installed):
    custom = k8s.CustomObjectsApi(k8s_api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService", "metadata": {"name": "quant"},
            "spec": {"image": "backtest-engine:1.0.0"}}  # fmt: skip
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return custom


def plugin(cluster, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(
        [str(PLUGIN), "-n", namespace, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_control_commands_set_annotations_and_paused_field_when_run(cluster, namespace, service):
    for command in (["promote", "quant"], ["promote", "--full", "quant"], ["abort", "quant"], ["retry", "quant"]):
        result = plugin(cluster, namespace, *command)
        assert result.returncode == 0, result.stderr
    annotations = service.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quant")["metadata"][
        "annotations"
    ]
    for key in ("promote", "promote-full", "abort", "retry"):
        assert annotations[f"backtest.dev/{key}"]
    assert plugin(cluster, namespace, "pause", "quant").returncode == 0
    spec = service.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quant")["spec"]
    assert spec["paused"] is True
    assert plugin(cluster, namespace, "resume", "quant").returncode == 0
    spec = service.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quant")["spec"]
    assert spec["paused"] is False


def test_repeated_promote_gives_a_new_token_each_time_when_run_twice(cluster, namespace, service):
    tokens = []
    for _ in range(2):
        assert plugin(cluster, namespace, "promote", "quant").returncode == 0
        body = service.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quant")
        tokens.append(body["metadata"]["annotations"]["backtest.dev/promote"])
    assert tokens[0] != tokens[1]


def test_status_prints_state_and_defaults_when_object_is_new(cluster, namespace, service):
    result = plugin(cluster, namespace, "status", "quant")
    assert result.returncode == 0, result.stderr
    assert f"{namespace}/quant  image backtest-engine:1.0.0" in result.stdout
    assert "State:    Initializing" in result.stdout


def test_unknown_service_exits_2_naming_it_when_not_found(cluster, namespace, crd_installed):
    result = plugin(cluster, namespace, "promote", "missing")
    assert result.returncode == 2
    assert "missing: not found" in result.stderr
