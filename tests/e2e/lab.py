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
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from backtest_devtools import processes
from backtest_devtools.chart import operator_cluster_role
from backtest_devtools.kubeconfig import service_account_kubeconfig
from backtest_devtools.prometheus import PrometheusServer, ScrapeJob
from backtest_devtools.stack import Stack, Traffic, free_port
from backtest_operator.api.durations import parse_duration

GROUP, VERSION, PLURAL = "backtest.dev", "v1alpha1", "backtestservices"
ROOT = Path(__file__).parents[2]
NAME = "quant"
SCRAPE_SECONDS = 1.0
"""Scrape interval of the e2e Prometheus (the `prometheus` fixture's)."""
ARTIFACTS = Path(os.environ.get("BACKTEST_TEST_ARTIFACTS", ROOT / "test-artifacts"))
"""Where a failing e2e test leaves its status, events, logs and router state (CI keeps this folder)."""


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


@dataclass(frozen=True)
class Timing:
    """Deadlines derived from the spec under test, so that every wait says how long it may take and why.

    Bounds the product promises (detection within one interval plus one scrape) are checked from the
    operator's own timestamps in status; the deadlines here only decide how long a test keeps looking
    before it fails, and are generous because a busy machine delays processes, never the operator's clock.
    """

    interval: float
    phases: tuple[float, ...]
    scrape: float = SCRAPE_SECONDS
    slack: float = 30.0
    """Seconds added to every deadline for process start-up and scheduling delays on a loaded machine."""

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Timing:
        analysis = spec.get("analysis", {})
        return cls(
            interval=parse_duration(analysis.get("interval", "30s")).total_seconds(),
            phases=tuple(parse_duration(p["duration"]).total_seconds() for p in spec["phases"]),
        )

    def evaluations(self, count: int) -> float:
        """Deadline for something the operator does within ``count`` evaluations."""
        return count * self.interval + self.scrape + self.slack

    def rollout(self) -> float:
        """Deadline for a whole rollout: every phase, two evaluations of slack each, and the bake window."""
        return sum(self.phases) + 2 * len(self.phases) * self.interval + self.evaluations(2)

    @property
    def detection_bound(self) -> float:
        """The product's promise for a clear fault: within one interval plus one scrape interval."""
        return self.interval + self.scrape


EVIDENCE = {
    "errors": {"error_rate_trigger", "error_rate", "error_rate_vs_stable", "success_rate"},
    "slowness": {"latency_trigger", "latency_vs_stable", "slow_rate_vs_stable", "success_rate"},
    "wrong results": {"result_mismatch_trigger", "result_mismatch_rate"},
    "fallbacks": {
        "fallback_rate_trigger",
        "latency_trigger",
        "latency_vs_stable",
        "slow_rate_vs_stable",
        "success_rate",
    },
}
"""Checks that count as evidence of a fault class. A test asserts the class it provoked, never one check:
which of several failing checks is reported follows the documented precedence (docs/rollout-policy.md),
and a canary failing 15% of requests fails its success rate as surely as its error rate."""


def seconds_between(earlier: str, later: str) -> float:
    """Seconds between two RFC 3339 timestamps the operator wrote."""
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


class Lab:
    def __init__(
        self, cluster: Any, k8s_api: Any, namespace: str, start_prometheus: Callable[[list[ScrapeJob]], Any],
        workdir: Path,
    ) -> None:  # fmt: skip
        self.cluster, self.api, self.namespace, self.workdir = cluster, k8s_api, namespace, workdir
        self.custom = k8s.CustomObjectsApi(k8s_api)
        self.core = k8s.CoreV1Api(k8s_api)
        self.stack = Stack(workdir)
        self.router_port = free_port()
        self.prometheus: PrometheusServer = start_prometheus(
            [ScrapeJob("router", (f"127.0.0.1:{self.router_port}",), labels={"namespace": namespace, "service": NAME})]
        )
        self.operator: processes.Managed | None = None
        self.router: processes.Managed | None = None
        self.operator_metrics = ""
        self.operator_kubeconfig = self._operator_identity()
        self.traffic: Traffic | None = None
        self.timing = Timing.of(fast_spec(""))

    # processes -------------------------------------------------------------------------------------
    def start_engine(self, track: str, **faults: str) -> str:
        """An engine process for one track; faults are ENGINE_FAULT_* settings. Returns its URL."""
        port = free_port()
        self.stack.engine(track, port, {"ENGINE_VERSION": f"e2e-{track}", **faults})
        return f"http://127.0.0.1:{port}"

    def start_router(self, stable: str, canary: str, extra: tuple[str, ...] = ()) -> str:
        """``extra``: more router arguments, e.g. ``traffic.shadow_args(spec)`` as the operator sets them."""
        self.router = self.stack.router(stable, canary, f"{self.namespace}/{NAME}-weight", self.router_port,
                                        self.cluster.kubeconfig, objective_seconds=0.5, extra=extra)  # fmt: skip
        self.prometheus.wait_for_targets()
        return f"http://127.0.0.1:{self.router_port}"

    def start_operator(self) -> processes.Managed:
        port = free_port()
        self.operator_metrics = f"http://127.0.0.1:{port}/metrics"
        self.operator = self.stack.operator(self.namespace, self.operator_kubeconfig, port)
        return self.operator

    def wait_operator_serving(self, timeout: float) -> None:
        """Until the operator process answers on its metrics endpoint (it has started its handlers)."""

        def serving() -> bool:
            try:
                return httpx.get(self.operator_metrics, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        if not processes.wait_until(serving, timeout, 0.2):
            pytest.fail(f"operator not serving {self.operator_metrics} within {timeout:.0f}s")

    def kill_operator(self) -> None:
        assert self.operator is not None
        pid = self.operator.pid()
        assert pid is not None, "operator is not running"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        processes.wait_until(lambda: not self.operator.is_running(), 10)  # type: ignore[union-attr]

    def close(self) -> None:
        self.stack.close()

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
        return service_account_kubeconfig(
            self.core, self.workdir / "operator.kubeconfig", self.cluster.server, self.cluster.pki.ca.cert,
            self.namespace, account,
        )  # fmt: skip

    # the BacktestService ---------------------------------------------------------------------------
    def apply(self, spec: dict[str, Any]) -> None:
        self.timing = Timing.of(spec)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService", "metadata": {"name": NAME}, "spec": spec}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME, body)

    def get(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME)

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Poll status until ``predicate`` holds; fail naming what was awaited, for how long, and the state."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.2)
        where = f"{status.get('phase')} {status.get('stepName')} weight {status.get('canaryWeight')}"
        pytest.fail(f"waited {timeout:.0f}s for {what}; status is {where}: {status.get('message')}")

    def wait_router_weight(self, weight: int, timeout: float) -> None:
        """The data plane follows the operator's decision through the ConfigMap watch: wait for it."""
        deadline = time.monotonic() + timeout
        applied = self.router_weight()
        while applied != weight:
            if time.monotonic() > deadline:
                pytest.fail(f"waited {timeout:.0f}s for the router to apply weight {weight}; it applies {applied}")
            time.sleep(0.1)
            applied = self.router_weight()

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

    def router_state(self) -> dict[str, Any]:
        state: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.router_port}/router/state", timeout=5.0).json()
        return state

    def router_weight(self) -> int:
        return int(self.router_state()["weight"])

    # diagnostics -----------------------------------------------------------------------------------
    def diagnose(self, test_name: str) -> str:
        """Everything needed to understand a failed rollout test, written to ARTIFACTS/<test> and returned
        as text for the test report: status, events, the router's state, and the tails of the logs."""
        folder = ARTIFACTS / test_name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        parts: list[str] = []

        def section(title: str, text: str, file: str) -> None:
            (folder / file).write_text(text)
            parts.append(f"----- {title} ({folder / file}) -----\n{text}")

        section(
            "BacktestService", _safely(lambda: yaml.safe_dump(_readable(self.get()), sort_keys=False)), "object.yaml"
        )
        section("events", _safely(self._event_lines), "events.txt")
        section("router state", _safely(lambda: json.dumps(self.router_state(), indent=2)), "router-state.json")
        if self.traffic is not None:
            section("client traffic", self.traffic.summary(), "traffic.txt")
        logs = self.workdir / "logs"
        for log in sorted(logs.glob("*.log")) if logs.exists() else []:
            shutil.copy(log, folder / log.name)
            if log.stem in ("operator", "router"):
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                parts.append(f"----- last lines of {log.name} ({folder / log.name}) -----\n{tail}")
        return "\n".join(parts)

    def _event_lines(self) -> str:
        events = self.core.list_namespaced_event(self.namespace).items
        events.sort(key=lambda e: str(e.event_time or e.last_timestamp or e.first_timestamp or ""))
        return "\n".join(
            f"{e.last_timestamp or e.event_time} {e.type} {e.involved_object.kind}/{e.involved_object.name} "
            f"{e.reason} x{e.count or 1}: {e.message}"
            for e in events
        )


def _readable(body: dict[str, Any]) -> dict[str, Any]:
    """The object without the bookkeeping that buries its status: managed fields and kopf's annotations."""
    metadata = dict(body.get("metadata", {}))
    metadata.pop("managedFields", None)
    metadata["annotations"] = {
        key: value for key, value in (metadata.get("annotations") or {}).items() if "kopf" not in key
        and not key.endswith("last-handled-configuration")
    }  # fmt: skip
    return {**body, "metadata": metadata}


def _safely(read: Callable[[], str]) -> str:
    """A diagnostic that could not be read says why instead of hiding the test's own failure."""
    try:
        return read()
    except Exception as error:  # any failure here is reported, never raised
        return f"(could not be read: {error!r})"


@contextlib.contextmanager
def lab(cluster: Any, k8s_api: Any, namespace: str, prometheus: Any, tmp_path: Path) -> Iterator[Lab]:
    built = Lab(cluster, k8s_api, namespace, prometheus, tmp_path)
    try:
        yield built
    finally:
        built.close()
