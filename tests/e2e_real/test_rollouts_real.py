"""Rollouts on real pods: the operator installed by the chart, engines and router as pods of the built
images, Prometheus discovering the routers through the chart's PodMonitor, clients calling the entry
Service through kube-proxy. What kwok cannot show: probes, Service endpoints, DNS names, pod restarts."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s

from backtest_devtools.certs import NODE_IP
from backtest_devtools.errors import DevtoolsError
from backtest_devtools.netsetup import POD_CIDR
from backtest_devtools.postgres import PostgresServer
from backtest_devtools.realpods import (
    GROUP,
    PLURAL,
    VERSION,
    api_keys_secret,
    backtest_service,
    entry_url,
    pod_metric,
    real_spec,
    wait_answering,
    wait_until,
)
from backtest_devtools.stack import API_KEY, Traffic, backtest_request
from backtest_operator.api import BacktestServiceSpec

pytestmark = pytest.mark.real

NAME = "quant"
ROLLOUT_SECONDS = 300
READINESS_GRACE_SECONDS = 20
"""rollback.readinessGrace of the never-ready canary: its pods are unhealthy this long after starting."""
BACKTEST_REQUESTS = 'backtest_engine_http_requests_total{route="/api/v1/backtests"'


class Rollout:
    """One BacktestService on the real node, with steady client traffic through its entry Service."""

    def __init__(self, api: Any, namespace: str, prometheus_url: str) -> None:
        self.core, self.custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        self.namespace, self.prometheus_url = namespace, prometheus_url
        self.traffic: Traffic | None = None
        self.seen: Counter[str] = Counter()
        api_keys_secret(self.core, namespace)

    def spec(self, image: str, **overrides: Any) -> dict[str, Any]:
        return real_spec(self.prometheus_url, image, **overrides)

    def start(self, image: str) -> str:
        """The first revision, Healthy and answering through its entry Service; returns that URL."""
        self.start_spec(self.spec(image))
        url = entry_url(self.core, self.namespace, NAME)
        wait_answering(url)
        return url

    def start_spec(self, spec: dict[str, Any]) -> None:
        body = backtest_service(NAME, spec)
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        self.wait(lambda s: s.get("phase") == "Healthy", 180, "the first revision Healthy")

    def release(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Apply a new spec and wait until its rollout ends; returns that rollout's history entry."""
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME, {"spec": spec})
        revision = BacktestServiceSpec.model_validate(spec).revision()

        def ended(status: dict[str, Any]) -> bool:
            last = (status.get("history") or [{}])[0]
            return last.get("revision") == revision and last.get("outcome") in ("promoted", "rolled_back")

        status = self.wait(ended, ROLLOUT_SECONDS, f"the rollout of {revision} ending")
        return dict(status["history"][0])

    def status(self) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME)
        return dict(body.get("status") or {})

    def wait(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        def matching() -> dict[str, Any] | None:
            status = self.status()
            return status if predicate(status) else None

        try:
            return dict(wait_until(matching, timeout, what))
        except DevtoolsError as error:
            status = self.status()
            pods = self.core.list_namespaced_pod(self.namespace).items
            states = [f"{p.metadata.name} {p.status.phase} ready={_ready(p)}" for p in pods]
            raise DevtoolsError(
                f"{error}; status {status.get('phase')}: {status.get('message')}; pods: {states}\n{self.diagnose()}"
            ) from None

    def send_traffic(self, url: str, rate: float = 20.0) -> Traffic:
        self.traffic = Traffic(self._recorded(backtest_request(url)), rate).start()
        return self.traffic

    def _recorded(self, send: Callable[[httpx.Client], int]) -> Callable[[httpx.Client], int]:
        """Counts what clients saw by status code or exception, for the failure message."""

        def request(client: httpx.Client) -> int:
            try:
                code = send(client)
            except httpx.HTTPError as error:
                self.seen[type(error).__name__] += 1
                raise
            self.seen[str(code)] += 1
            return code

        return request

    def diagnose(self) -> str:
        """Client outcomes, router logs and recent events, for the message of a failed assertion."""
        lines = [f"clients saw {dict(self.seen)}"]
        for pod in self.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=router"
        ).items:
            log = self.core.read_namespaced_pod_log(pod.metadata.name, self.namespace, tail_lines=15)
            lines.append(f"--- router {pod.metadata.name} ---\n{log}")
        events = self.core.list_namespaced_event(self.namespace).items[-15:]
        lines += [f"event {e.reason}: {e.involved_object.name}: {e.message}" for e in events]
        return "\n".join(lines)

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


@pytest.fixture
def rollout(real_k8s_api, real_namespace, operator_release, router_prometheus):
    built = Rollout(real_k8s_api, real_namespace, router_prometheus.url)
    try:
        yield built
    finally:
        built.close()


def test_healthy_release_is_promoted_on_real_pods_with_no_client_errors(rollout, node_image, router_prometheus):
    url = rollout.start(node_image("backtest-engine:real-1"))
    traffic = rollout.send_traffic(url)

    entry = rollout.release(rollout.spec(node_image("backtest-engine:real-2")))
    traffic.stop()

    assert entry["outcome"] == "promoted", entry
    assert traffic.client_errors == 0, rollout.diagnose()
    assert traffic.sent > 100
    series = router_prometheus.query(
        f'sum(backtest_router_requests_total{{namespace="{rollout.namespace}",service="{NAME}"}})'
    )
    assert series and float(series[0]["value"][1]) > 0, "the PodMonitor's discovery did not label router series"


def test_release_with_injected_errors_is_rolled_back_on_real_pods_with_no_client_errors(rollout, node_image):
    url = rollout.start(node_image("backtest-engine:real-1"))
    traffic = rollout.send_traffic(url)

    entry = rollout.release(rollout.spec(node_image("backtest-engine:real-2"), error_rate=0.2))
    traffic.stop()

    assert entry["outcome"] == "rolled_back", entry
    assert traffic.client_errors == 0, rollout.diagnose()


@dataclass
class NeverReady:
    """What happened while a canary's readiness probe kept failing (observed once, asserted twice)."""

    served: dict[str, float]
    client_errors: int
    seen: dict[str, int]
    entry: dict[str, Any]
    status: dict[str, Any]


@pytest.fixture(scope="module")
def never_ready(real_k8s_api, operator_release, router_prometheus, node_image) -> Iterator[NeverReady]:
    """A release whose database is unreachable (a closed port on the node), so /api/v1/ready answers 503:
    its pods never join the canary Service. Watched until the rollout ends, or until the operator's
    readiness grace and three analysis intervals have passed since the canary pods started."""
    core = k8s.CoreV1Api(real_k8s_api)
    namespace = f"never-ready-{uuid.uuid4().hex[:5]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    wait_until(lambda: core.list_namespaced_service_account(namespace).items, 30, "the default ServiceAccount")
    rollout = Rollout(real_k8s_api, namespace, router_prometheus.url)
    core.create_namespaced_secret(namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="unreachable-db"),
        string_data={"url": f"postgresql://nobody@{NODE_IP}:9/none?connect_timeout=1"}))  # fmt: skip
    try:
        url = rollout.start(node_image("backtest-engine:real-1"))
        traffic = rollout.send_traffic(url)
        spec = rollout.spec(node_image("backtest-engine:real-2"))
        spec["engine"] |= {"storage": "shared", "databaseUrlSecret": {"name": "unreachable-db", "key": "url"}}
        spec["rollback"] |= {"readinessGrace": f"{READINESS_GRACE_SECONDS}s"}
        revision = BacktestServiceSpec.model_validate(spec).revision()
        selector = f"backtest.dev/service={NAME},backtest.dev/revision={revision}"
        served: dict[str, float] = {}

        def canary_pods_running() -> list[Any]:
            pods = [p for p in core.list_namespaced_pod(namespace, label_selector=selector).items
                    if p.status.phase == "Running" and p.status.pod_ip]  # fmt: skip
            for pod in pods:  # the pods' own counters, read until the rollback deletes them
                count = pod_metric(pod, 8080, BACKTEST_REQUESTS)
                if count is not None:
                    served[pod.metadata.name] = count
            return pods

        rollout.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, {"spec": spec})
        wait_until(canary_pods_running, 120, "the canary pods running (not ready)")
        window = READINESS_GRACE_SECONDS + 3 * 4 + 30

        def ended_while_sampling() -> bool:
            canary_pods_running()
            return (rollout.status().get("history") or [{}])[0].get("revision") == revision

        with contextlib.suppress(DevtoolsError):  # not ending within the window is an observation too
            wait_until(ended_while_sampling, window, "the rollout of the never-ready canary ending")
        traffic.stop()
        status = rollout.status()
        last = (status.get("history") or [{}])[0]
        ended = last if last.get("revision") == revision else {}
        yield NeverReady(served, traffic.client_errors, dict(rollout.seen), ended, status)
    finally:
        rollout.close()
        core.delete_namespace(namespace)


def test_canary_whose_readiness_probe_fails_never_gets_traffic(never_ready):
    assert never_ready.served, "no canary pod answered on /metrics"
    assert all(count == 0 for count in never_ready.served.values()), never_ready.served
    assert never_ready.entry.get("outcome") != "promoted"
    assert never_ready.client_errors == 0, never_ready.seen


def test_canary_that_never_becomes_ready_is_rolled_back_after_the_readiness_grace(never_ready):
    assert never_ready.entry.get("outcome") == "rolled_back", (
        f"{never_ready.status.get('phase')}: {never_ready.status.get('message')}"
    )


@pytest.fixture(scope="module")
def node_postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL on the node's address that pods may reach (the pod network is trusted): the
    shared results store an engine.databaseUrlSecret names. (The managed PostgreSQL needs a volume
    provisioner this node does not have.)"""
    server = PostgresServer(host=NODE_IP, clients=(POD_CIDR, f"{NODE_IP}/32")).start()
    try:
        yield server
    finally:
        server.stop()


def test_results_written_before_a_rollout_are_readable_from_the_new_revision(rollout, node_image, node_postgres):
    database = node_postgres.create_database(f"results_{uuid.uuid4().hex[:8]}")
    rollout.core.create_namespaced_secret(rollout.namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="results-db"), string_data={"url": database}))  # fmt: skip
    shared = {"storage": "shared", "databaseUrlSecret": {"name": "results-db", "key": "url"}}

    def spec(image: str) -> dict[str, Any]:
        built = rollout.spec(image)
        built["engine"] = {**built["engine"], **shared}
        return built

    rollout.start_spec(spec(node_image("backtest-engine:real-1")))
    url = entry_url(rollout.core, rollout.namespace, NAME)
    wait_answering(url)
    body = {"strategy": "sma_crossover", "params": {"fast": 5, "slow": 40},
            "synthetic": {"symbol": "KEEP", "bars": 500, "seed": 7}}  # fmt: skip
    created = httpx.post(f"{url}/api/v1/backtests", json=body, headers={"X-API-Key": API_KEY}, timeout=30)
    assert created.status_code in (200, 201), created.text
    backtest_id = created.json()["id"]

    rollout.send_traffic(url, rate=8.0)  # the phases are judged on live traffic; the results are the point
    entry = rollout.release(spec(node_image("backtest-engine:real-2")))
    assert entry["outcome"] == "promoted", entry
    rollout.wait(lambda s: s.get("phase") == "Healthy", 120, "the bake window ending")

    answers = [httpx.get(f"{url}/api/v1/backtests/{backtest_id}", headers={"X-API-Key": API_KEY}, timeout=10)
               for _ in range(6)]  # fmt: skip
    assert [a.status_code for a in answers] == [200] * 6
