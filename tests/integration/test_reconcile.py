"""The reconciler against the real API server: workloads, status, events, rollback, promotion and GC."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client as k8s

from backtest_operator.api import GROUP, PLURAL, VERSION
from backtest_operator.kube import Cluster
from backtest_operator.policy import Action, Event
from backtest_operator.reconcile import Reconciler
from backtest_operator.workloads import Owner, WorkloadDefaults

pytestmark = pytest.mark.cluster
LOG = logging.getLogger("test")
CLOSED_PORT_URL = "http://127.0.0.1:9"  # discard port: nothing listens, the connection is refused


def wait_for(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"{what} not met within {timeout:.0f}s")


class Harness:
    """A Reconciler with a hand-driven clock and recorded events, on one BacktestService."""

    def __init__(self, api_client: Any, namespace: str, spec: dict[str, Any]) -> None:
        self.custom = k8s.CustomObjectsApi(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.namespace = namespace
        self.now = datetime.now(UTC)
        self.events: list[Event] = []
        self.reconciler = Reconciler(
            Cluster(api_client), WorkloadDefaults(router_image="backtest-engine:test"),
            lambda _body, event: self.events.append(event), clock=lambda: self.now,
        )  # fmt: skip
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService",
                "metadata": {"name": "quant"}, "spec": spec}  # fmt: skip
        created = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        self.owner = Owner("quant", namespace, created["metadata"]["uid"])
        self.loop = asyncio.new_event_loop()  # one loop for the whole test, as in the operator

    def step(self):
        return self.loop.run_until_complete(self.reconciler.reconcile(self.owner, LOG))

    def close(self) -> None:
        self.loop.run_until_complete(self.reconciler.close())
        self.loop.close()

    def step_until(self, action: Action, attempts: int = 120):
        for _ in range(attempts):
            result = self.step()
            if result.decision.action == action:
                return result
            time.sleep(0.25)
        pytest.fail(f"never reached {action}; last: {result.decision.reason}")

    def get(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, "quant")

    def patch(self, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, "quant", body)

    def deployments(self) -> dict[str, int]:
        items = self.apps.list_namespaced_deployment(self.namespace, label_selector="backtest.dev/service=quant")
        return {d.metadata.name: d.spec.replicas for d in items.items}

    def selector(self, service: str) -> dict[str, str]:
        return self.core.read_namespaced_service(service, self.namespace).spec.selector

    def weight(self) -> str:
        return self.core.read_namespaced_config_map("quant-weight", self.namespace).data["weight"]


FAST = {
    "replicas": 2,
    "analysis": {"prometheus": {"url": CLOSED_PORT_URL, "timeout": "1s"}, "interval": "1s"},
    "rollback": {"bakeWindow": "1m"},
}


@pytest.fixture
def make_harness(k8s_api, namespace, crd_installed):
    made: list[Harness] = []

    def make(**spec: Any) -> Harness:
        made.append(Harness(k8s_api, namespace, {"image": "backtest-engine:1.0.0", **FAST, **spec}))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def harness(make_harness):
    return make_harness()


def test_new_object_becomes_healthy_with_its_workloads_when_pods_are_ready(harness):
    first = harness.step()
    assert first.decision.action == Action.INITIALIZE
    stable = first.decision.status.stable_revision
    assert harness.deployments() == {f"quant-{stable}": 2, "quant-router": 1}
    assert harness.selector("quant-stable")["backtest.dev/revision"] == stable
    assert harness.selector("quant-canary")["backtest.dev/revision"] == "none"
    assert harness.weight() == "0"
    harness.step_until(Action.READY)
    status = harness.get()["status"]
    assert status["phase"] == "Healthy"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "Progressing": "False", "Degraded": "False", "Reconciling": "False", "Stalled": "False",
        "ShadowComparison": "False",
    }  # fmt: skip
    assert [e.reason for e in harness.events] == ["Initializing", "Ready"]


def test_second_pass_writes_and_applies_nothing_when_nothing_changed(harness):
    harness.step_until(Action.READY)
    before = harness.get()["metadata"]["resourceVersion"]
    again = harness.step()
    assert (again.decision.action, again.wrote_status, again.applied) == (Action.HOLD, False, False)
    assert harness.get()["metadata"]["resourceVersion"] == before


def test_rollout_rolls_back_and_scales_canary_down_when_prometheus_stays_unreachable(harness):
    harness.step_until(Action.READY)
    harness.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    start = harness.step()
    canary = start.decision.status.canary_revision
    assert start.decision.action == Action.START
    assert harness.deployments()[f"quant-{canary}"] == 1
    begin = harness.step_until(Action.BEGIN)
    assert harness.weight() == "1"
    assert harness.selector("quant-canary")["backtest.dev/revision"] == canary
    # One interval from the start of the pass (0 when the pass itself took the whole interval: loaded machine).
    assert timedelta(0) <= begin.next_in <= timedelta(seconds=1)
    holds = [harness.step() for _ in range(2)]
    assert [h.decision.action for h in holds] == [Action.HOLD, Action.HOLD]
    assert "unreachable" in holds[0].decision.reason
    rollback = harness.step()
    assert rollback.decision.action == Action.ROLLBACK
    assert harness.weight() == "0"
    assert harness.deployments()[f"quant-{canary}"] == 0
    status = harness.get()["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "analysis failed 3 times in a row" in degraded["message"]
    assert status["history"][0]["check"] == "analysis"
    assert harness.events[-1].type == "Warning" and harness.events[-1].reason == "RolledBack"


def test_promotion_switches_stable_service_and_keeps_previous_ready_when_fully_promoted(harness, prometheus):
    server = prometheus([])  # a real Prometheus with no data: the bake sees "no data", never a failure
    harness.patch({"spec": {"analysis": {"prometheus": {"url": server.url}}}})
    old = harness.step_until(Action.READY).decision.status.stable_revision
    harness.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    new = harness.step().decision.status.canary_revision
    harness.step_until(Action.BEGIN)
    harness.patch({"metadata": {"annotations": {"backtest.dev/promote-full": "t1"}}})
    waiting = harness.step()  # one canary pod of two: the switch waits for the whole new revision
    assert waiting.decision.action == Action.PROMOTING and waiting.decision.status.promotion_pending
    assert harness.selector("quant-stable")["backtest.dev/revision"] == old
    harness.step_until(Action.PROMOTE)
    assert harness.selector("quant-stable")["backtest.dev/revision"] == new
    assert harness.deployments() == {f"quant-{new}": 2, f"quant-{old}": 2, "quant-router": 1}
    assert harness.get()["status"]["previousRevision"] == old
    harness.now += timedelta(minutes=1)
    done = harness.step()
    assert done.decision.action == Action.COMPLETE
    assert harness.deployments() == {f"quant-{new}": 2, "quant-router": 1}
    assert harness.get()["status"]["handledControls"] == {"promoteFull": "t1"}


def test_owned_objects_are_garbage_collected_when_service_is_deleted(harness):
    harness.step_until(Action.READY)
    harness.custom.delete_namespaced_custom_object(GROUP, VERSION, harness.namespace, PLURAL, "quant")
    wait_for(lambda: not harness.deployments(), what="owned Deployments deleted")
    services = harness.core.list_namespaced_service(harness.namespace, label_selector="backtest.dev/service=quant")
    wait_for(
        lambda: (
            not harness.core.list_namespaced_service(
                harness.namespace, label_selector="backtest.dev/service=quant"
            ).items
        ),
        what=f"owned Services deleted ({len(services.items)} before)",
    )
    assert harness.step() is None


def test_replicas_provider_splits_pods_by_weight_when_progressing(make_harness, prometheus):
    harness = make_harness(replicas=10, traffic={"provider": "replicas"})
    # A real Prometheus with no data: weights move (no analysis error), phases never pass on their own.
    harness.patch({"spec": {"analysis": {"prometheus": {"url": prometheus([]).url}}}})
    stable = harness.step_until(Action.READY).decision.status.stable_revision
    harness.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    canary = harness.step().decision.status.canary_revision
    harness.step_until(Action.BEGIN)
    harness.patch({"metadata": {"annotations": {"backtest.dev/promote": "to-testing"}}})
    harness.step()
    assert harness.deployments() == {f"quant-{stable}": 9, f"quant-{canary}": 1}
    harness.patch({"metadata": {"annotations": {"backtest.dev/promote": "to-validation"}}})
    harness.step()
    # Capacity before traffic: the canary grows to 5 while stable keeps 9, until the 5 are ready.
    assert harness.deployments() == {f"quant-{stable}": 9, f"quant-{canary}": 5}
    harness.step_until(Action.SHIFT)
    assert harness.deployments() == {f"quant-{stable}": 5, f"quant-{canary}": 5}
    entry = harness.core.read_namespaced_service("quant", harness.namespace).spec.selector
    assert entry == {"backtest.dev/service": "quant", "app.kubernetes.io/component": "engine"}


def test_gateway_provider_sets_httproute_backend_weights_when_progressing(make_harness, gateway_api_installed):
    parent = {"name": "public", "namespace": "gateways"}
    harness = make_harness(traffic={"provider": "gatewayAPI", "parentRefs": [parent]})
    harness.step_until(Action.READY)
    routes = k8s.CustomObjectsApi(harness.custom.api_client)

    def backends() -> list[tuple[str, int]]:
        route = routes.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", harness.namespace, "httproutes", "quant"
        )
        assert route["spec"]["parentRefs"][0]["name"] == "public"
        return [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]]

    assert backends() == [("quant-stable", 100), ("quant-canary", 0)]
    harness.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    harness.step()
    harness.step_until(Action.BEGIN)
    assert backends() == [("quant-stable", 99), ("quant-canary", 1)]
    assert "quant-router" not in harness.deployments()
