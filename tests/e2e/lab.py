"""A rollout lab: the local control plane, a real Prometheus, the operator, and engine and router processes.

The Deployments in the cluster are the operator's view (kwok runs their pods); real processes stand in
for those pods, started from the same entry points as the images: a stable and a canary engine
(``backtest-engine serve``), and the router (``backtest-engine router``) reading its weight from the
ConfigMap the operator writes, through the real API server. Prometheus scrapes the router with the labels
service discovery would add in a cluster, and the operator runs as a separate process under the
ClusterRole the chart ships (its rules: ``charts/backtest-operator/files/operator-rules.yaml``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from backtest_devtools import processes
from backtest_devtools.chart import operator_cluster_role
from backtest_devtools.prometheus import PrometheusServer, ScrapeJob

GROUP, VERSION, PLURAL = "backtest.dev", "v1alpha1", "backtestservices"
ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
API_KEY = "e2e-key"
NAME = "quant"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fast_spec(prometheus_url: str, image: str = "backtest-engine:1.0.0", **overrides: Any) -> dict[str, Any]:
    """Seconds instead of minutes, set through the spec like any user would (no special code path)."""
    spec: dict[str, Any] = {
        "image": image,
        "replicas": 1,
        "analysis": {
            "prometheus": {"url": prometheus_url, "timeout": "2s"},
            "interval": "4s",
            "minRequests": 20,
            "latencyObjective": "0.5s",
            "comparison": {"minLatencySamples": 3},
        },
        "phases": [
            {"name": "canary", "weight": 10, "duration": "8s"},
            {"name": "testing", "weight": 25, "duration": "8s"},
            {"name": "validation", "weight": 50, "duration": "8s"},
            {"name": "full", "weight": 100, "duration": "8s", "minSuccessRate": 0.95, "maxErrorRate": 0.02},
        ],
        "rollback": {"minRequests": 5, "maxLatencyIncrease": "0.3s", "bakeWindow": "4s"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@dataclass
class Traffic:
    """Steady traffic through the router from several client threads, counting what clients see.

    Several threads keep the rate when some answers are slow (a canary timing out must not throttle
    the load that is supposed to reveal it).
    """

    url: str
    rate: float
    clients: int = 8
    sent: int = 0
    client_errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Traffic:
        for index in range(self.clients):
            thread = threading.Thread(target=self._run, args=(index,), name=f"traffic-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def _run(self, index: int) -> None:
        period = self.clients / self.rate
        with httpx.Client(timeout=10.0, headers={"X-API-Key": API_KEY}) as client:
            next_at = time.monotonic() + index * period / self.clients
            while not self._stop.is_set():
                try:
                    failed = client.get(f"{self.url}/api/v1/strategies").status_code >= 500
                except httpx.HTTPError:
                    failed = True
                with self._lock:
                    self.sent += 1
                    self.client_errors += int(failed)
                next_at += period
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


class Lab:
    def __init__(
        self, cluster: Any, k8s_api: Any, namespace: str, start_prometheus: Callable[[list[ScrapeJob]], Any],
        workdir: Path,
    ) -> None:  # fmt: skip
        self.cluster, self.api, self.namespace, self.workdir = cluster, k8s_api, namespace, workdir
        self.custom = k8s.CustomObjectsApi(k8s_api)
        self.core = k8s.CoreV1Api(k8s_api)
        self.started: list[processes.Managed] = []
        self.router_port = free_port()
        self.prometheus: PrometheusServer = start_prometheus(
            [ScrapeJob("router", (f"127.0.0.1:{self.router_port}",), labels={"namespace": namespace, "service": NAME})]
        )
        self.operator: processes.Managed | None = None
        self.operator_metrics = ""
        self.operator_kubeconfig = self._operator_identity()

    # processes -------------------------------------------------------------------------------------
    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> processes.Managed:
        managed = processes.start(
            name, command, run_dir=self.workdir / "run", log_dir=self.workdir / "logs",
            owner_mark=command[0], die_with_parent=True, env=env,
        )  # fmt: skip
        self.started.append(managed)
        return managed

    def start_engine(self, track: str, **faults: str) -> str:
        """An engine process for one track; faults are ENGINE_FAULT_* settings. Returns its URL."""
        port = free_port()
        env = {"ENGINE_API_KEYS": API_KEY, "ENGINE_TRACK": track, "ENGINE_VERSION": f"e2e-{track}",
               "DATABASE_URL": f"sqlite:///{self.workdir / f'{track}.db'}", **faults}  # fmt: skip
        self._start(f"engine-{track}", [str(BIN / "backtest-engine"), "serve", "--host", "127.0.0.1",
                                        "--port", str(port)], env)  # fmt: skip
        self._wait_http(f"http://127.0.0.1:{port}/api/v1/health", f"engine-{track}")
        return f"http://127.0.0.1:{port}"

    def start_router(self, stable: str, canary: str, objective: str = "0.5") -> str:
        command = [
            str(BIN / "backtest-engine"), "router", "--stable", stable, "--canary", canary,
            "--weight-configmap", f"{self.namespace}/{NAME}-weight", "--host", "127.0.0.1",
            "--port", str(self.router_port), "--latency-objective", objective, "--canary-timeout", "1",
        ]  # fmt: skip
        self._start("router", command, {"KUBECONFIG": str(self.cluster.kubeconfig)})
        self._wait_http(f"http://127.0.0.1:{self.router_port}/router/health", "router")
        self.prometheus.wait_for_targets()
        return f"http://127.0.0.1:{self.router_port}"

    def start_operator(self) -> processes.Managed:
        self.operator_metrics = f"http://127.0.0.1:{free_port()}/metrics"
        env = {
            "KUBECONFIG": str(self.operator_kubeconfig),
            "OPERATOR_METRICS_PORT": self.operator_metrics.split(":")[2].split("/")[0],
            "OPERATOR_METRICS_HOST": "127.0.0.1",
        }
        command = [str(BIN / "backtest-operator"), "run", "--namespace", self.namespace,
                   "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]  # fmt: skip
        self.operator = self._start("operator", command, env)
        return self.operator

    def kill_operator(self) -> None:
        assert self.operator is not None
        pid = self.operator.pid()
        assert pid is not None, "operator is not running"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        processes.wait_until(lambda: not self.operator.is_running(), 10)  # type: ignore[union-attr]

    def _wait_http(self, url: str, what: str, timeout: float = 30.0) -> None:
        def up() -> bool:
            try:
                return httpx.get(url, timeout=1.0).status_code < 500
            except httpx.HTTPError:
                return False

        if not processes.wait_until(up, timeout, 0.2):
            pytest.fail(f"{what} did not answer at {url} within {timeout:.0f}s (logs: {self.workdir / 'logs'})")

    def close(self) -> None:
        for managed in reversed(self.started):
            processes.stop(managed, grace=5.0)

    # identity --------------------------------------------------------------------------------------
    def _operator_identity(self) -> Path:
        """A kubeconfig for a ServiceAccount bound to the operator's ClusterRole, and nothing else."""
        rbac = k8s.RbacAuthorizationV1Api(self.api)
        role = operator_cluster_role()
        try:
            rbac.create_cluster_role(role)
        except ApiException as error:
            if error.status != 409:
                raise
            rbac.replace_cluster_role(role["metadata"]["name"], role)
        account = "backtest-operator"
        self.core.create_namespaced_service_account(
            self.namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=account))
        )
        binding = k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=f"backtest-operator-{self.namespace}"),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="backtest-operator"),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=account, namespace=self.namespace)],
        )
        rbac.create_cluster_role_binding(binding)
        request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
        token = self.core.create_namespaced_service_account_token(account, self.namespace, request).status.token
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "operator",
            "clusters": [{"name": "local", "cluster": {"server": self.cluster.server,
                                                       "certificate-authority": str(self.cluster.pki.ca.cert)}}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator",
                                                          "namespace": self.namespace}}],
        }  # fmt: skip
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    # the BacktestService ---------------------------------------------------------------------------
    def apply(self, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService", "metadata": {"name": NAME}, "spec": spec}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME, body)

    def get(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME)

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.2)
        pytest.fail(f"{what} not reached within {timeout:.0f}s; status: {status.get('phase')} "
                    f"{status.get('stepName')} {status.get('message')} (logs: {self.workdir / 'logs'})")  # fmt: skip

    def events(self) -> list[Any]:
        return self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={NAME}").items

    def operator_series(self, name: str) -> dict[str, float]:
        """Samples of one of the operator's own series, keyed by their label text."""
        text = httpx.get(self.operator_metrics, timeout=2.0).text
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                found[key[len(name) :]] = float(value)
        return found

    def router_weight(self) -> int:
        state = httpx.get(f"http://127.0.0.1:{self.router_port}/router/state", timeout=2.0).json()
        return int(state["weight"])


@contextlib.contextmanager
def lab(cluster: Any, k8s_api: Any, namespace: str, prometheus: Any, tmp_path: Path) -> Iterator[Lab]:
    built = Lab(cluster, k8s_api, namespace, prometheus, tmp_path)
    try:
        yield built
    finally:
        built.close()
