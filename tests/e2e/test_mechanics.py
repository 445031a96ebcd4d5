"""Rollout mechanics on the local API server (issue 13): capacity before traffic, pod churn, scaling,
steering with kubectl backtest, GitOps health, deletion without an operator.

kwok runs the pods: readiness is slowed with kwok's own per-pod delay annotations (set through
spec.podAnnotations like any pod annotation), evictions go through the eviction API (``kubectl drain``),
and container states are patched through the pods' status subresource where a real kubelet would write
them. The real engine and router processes of the lab serve the traffic the analysis judges.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from backtest_devtools import gitops
from backtest_devtools.prometheus import ScrapeJob
from backtest_devtools.stack import Traffic, strategies_request
from backtest_operator.api import BacktestServiceSpec
from backtest_operator.capacity import share_replicas

from .lab import GROUP, NAME, PLURAL, VERSION, Lab, fast_spec, lab
from .timeline import Timeline, capacity_checks

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.prometheus]
PLUGIN = Path(sys.executable).parent / "kubectl-backtest"
SLOW_READY = {"pod-ready.stage.kwok.x-k8s.io/delay": "3s", "pod-ready.stage.kwok.x-k8s.io/jitter-delay": "6s"}
"""kwok marks a pod Ready 3 to 9 s after it starts (its pod-ready stage reads these annotations)."""


@pytest.fixture
def mechanics_lab(cluster, k8s_api, namespace, crd_installed, prometheus, tmp_path):
    with lab(cluster, k8s_api, namespace, prometheus, tmp_path) as built:
        yield built


def _promoted(status: dict[str, Any]) -> bool:
    return bool(status.get("history")) and status["history"][0]["outcome"] == "promoted"


def _healthy(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Healthy"


def begin(rollout_lab: Lab, rate: float = 60.0, **overrides: Any) -> Traffic:
    """Engines, router and operator up; the first revision healthy; steady traffic through the router
    (none with ``rate=0``: the returned Traffic was never started)."""
    stable, canary = rollout_lab.start_engine("stable"), rollout_lab.start_engine("canary")
    router = rollout_lab.start_router(stable, canary)
    rollout_lab.start_operator()
    rollout_lab.apply(fast_spec(rollout_lab.prometheus.url, **overrides))
    rollout_lab.wait(_healthy, 120, "first revision healthy")
    traffic = Traffic(strategies_request(router), rate or 1.0)
    return traffic.start() if rate else traffic


def events(rollout_lab: Lab, reason: str) -> list[str]:
    return [e.message for e in rollout_lab.events() if e.reason == reason]


def test_no_track_gets_more_traffic_than_its_ready_share_when_ten_pods_become_ready_slowly(mechanics_lab):
    traffic = begin(mechanics_lab, replicas=10, podAnnotations=SLOW_READY)
    timeline = Timeline(mechanics_lab.core, mechanics_lab.namespace).start()
    mechanics_lab.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    final = mechanics_lab.wait(_promoted, 300, "promotion")
    mechanics_lab.wait(_healthy, 60, "bake window over")
    changes = timeline.stop()
    traffic.stop()
    checks = capacity_checks(changes, total=10)
    report = "\n".join(
        f"  rv {c.version}: {c.what}: canary {c.canary_ready}/{c.canary_needed} ready, "
        f"stable {c.stable_ready}/{c.stable_needed}"
        for c in checks
    )
    print(f"\ntraffic moves and the ready pods behind them:\n{report}")
    assert [c for c in checks if not c.ok] == [], report
    weights = [c.weight for c in checks if c.what.startswith("weight")]
    assert weights == [10, 25, 50, 100, 0], report  # every step checked, then promotion (weight back to 0)
    assert any(c.what.startswith("stable Service selects") for c in checks), report  # the promotion switch
    # The operator's own account agrees: each TrafficShifted event names the ready pods it saw.
    shifted = events(mechanics_lab, "TrafficShifted")
    assert len(shifted) == 4, shifted
    for message in shifted:
        found = re.search(r"-> (\d+)% .*?(\d+) canary and (\d+) stable pods ready", message)
        assert found, message
        weight, canary, stable = (int(group) for group in found.groups())
        assert canary >= share_replicas(weight, 10) and stable >= share_replicas(100 - weight, 10), message
    assert final["history"][0]["outcome"] == "promoted"


def _evict_canary_pods_with_kubectl_drain(rollout_lab: Lab, canary: str) -> list[str]:
    """Drain the nodes under the canary's pods (kubectl's eviction API path), then make them schedulable."""
    pods = rollout_lab.core.list_namespaced_pod(rollout_lab.namespace, label_selector=f"backtest.dev/revision={canary}")
    nodes = sorted({p.spec.node_name for p in pods.items if p.spec.node_name})
    env = {**os.environ, "KUBECONFIG": str(rollout_lab.cluster.kubeconfig)}
    try:
        for node in nodes:
            done = subprocess.run(
                ["kubectl", "drain", node, "--pod-selector", f"backtest.dev/revision={canary}",
                 "--delete-emptydir-data", "--ignore-daemonsets", "--timeout", "90s"],
                env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
    finally:
        for node in nodes:
            subprocess.run(["kubectl", "uncordon", node], env=env, capture_output=True, timeout=60, check=False)
    return [p.metadata.name for p in pods.items]


def test_draining_the_nodes_under_healthy_canary_pods_neither_rolls_back_nor_promotes_early(mechanics_lab):
    traffic = begin(mechanics_lab, replicas=4, podAnnotations=SLOW_READY)
    timeline = Timeline(mechanics_lab.core, mechanics_lab.namespace).start()
    mechanics_lab.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    status = mechanics_lab.wait(
        lambda s: s.get("stepName") == "validation" and s.get("phaseStartedAt"), 240, "validation phase running"
    )
    canary = status["canaryRevision"]
    # An old restart on a canary pod (as a kubelet reports it): before the rollout, so not a failure.
    pod = mechanics_lab.core.list_namespaced_pod(
        mechanics_lab.namespace, label_selector=f"backtest.dev/revision={canary}"
    ).items[0]
    long_ago = "2020-01-01T00:00:00Z"
    crash = {"exitCode": 137, "finishedAt": long_ago, "reason": "OOMKilled"}
    container = {"name": "engine", "image": pod.spec.containers[0].image, "imageID": "", "ready": True,
                 "restartCount": 1, "started": True, "state": {"running": {"startedAt": long_ago}},
                 "lastState": {"terminated": crash}}  # fmt: skip
    mechanics_lab.core.patch_namespaced_pod_status(
        pod.metadata.name, mechanics_lab.namespace, {"status": {"containerStatuses": [container]}}
    )
    evicted = _evict_canary_pods_with_kubectl_drain(mechanics_lab, canary)
    final = mechanics_lab.wait(lambda s: s.get("phase") in ("Degraded", "Baking", "Healthy"), 300, "rollout ends")
    changes = timeline.stop()
    traffic.stop()
    assert final["phase"] != "Degraded", final["message"]
    assert _promoted(final)
    assert "RolledBack" not in {e.reason for e in mechanics_lab.events()}
    # Not early either: when stable switched to the new revision, all of its pods were ready again.
    checks = capacity_checks(changes, total=4)
    assert [c for c in checks if not c.ok] == []
    gone = {c.obj.metadata.name for c in changes if c.kind == "pod" and c.event == "DELETED"}
    assert set(evicted) <= gone  # the drain did evict them (kwok finished their termination)


def test_kubectl_scale_resizes_the_service_mid_rollout_and_the_new_size_is_split(mechanics_lab):
    traffic = begin(mechanics_lab, replicas=4)
    mechanics_lab.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    status = mechanics_lab.wait(lambda s: s.get("stepName") == "testing", 120, "testing phase")
    env = {**os.environ, "KUBECONFIG": str(mechanics_lab.cluster.kubeconfig)}
    done = subprocess.run(
        ["kubectl", "scale", "bts", NAME, "-n", mechanics_lab.namespace, "--replicas=8"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    apps = k8s.AppsV1Api(mechanics_lab.api)
    canary = f"{NAME}-{status['canaryRevision']}"
    stable = f"{NAME}-{status['stableRevision']}"

    def sizes() -> dict[str, int]:
        return {name: apps.read_namespaced_deployment(name, mechanics_lab.namespace).spec.replicas
                for name in (canary, stable)}  # fmt: skip

    deadline = time.monotonic() + 60
    while sizes()[stable] != 8 and time.monotonic() < deadline:
        time.sleep(0.5)
    during = sizes()
    assert during[stable] == 8 and during[canary] >= 2, during  # 25% of 8 needs 2 canary pods
    final = mechanics_lab.wait(_promoted, 240, "promotion")
    traffic.stop()
    mechanics_lab.wait(_healthy, 60, "bake window over")
    assert apps.read_namespaced_deployment(canary, mechanics_lab.namespace).spec.replicas == 8
    body = mechanics_lab.get()
    assert body["spec"]["replicas"] == 8  # nobody took it back
    scale = mechanics_lab.custom.get_namespaced_custom_object_scale(
        GROUP, VERSION, mechanics_lab.namespace, PLURAL, NAME
    )
    assert scale["spec"]["replicas"] == 8 and scale["status"]["replicas"] >= 8
    assert scale["status"]["selector"] == f"backtest.dev/service={NAME},app.kubernetes.io/component=engine"
    assert final["history"][0]["outcome"] == "promoted"


def _kubeconfig_with_context(rollout_lab: Lab, path: Path) -> Path:
    """The admin kubeconfig with a second context, `prod`, whose namespace is the test's; the current
    context stays on `default`, so only honouring --context finds the object."""
    config = yaml.safe_load(rollout_lab.cluster.kubeconfig.read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    config["contexts"].append({"name": "prod", "context": {**current["context"], "namespace": rollout_lab.namespace}})
    current["context"]["namespace"] = "default"
    path.write_text(yaml.safe_dump(config))
    return path


def plugin(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run([str(PLUGIN), *args, "--kubeconfig", str(kubeconfig), "--context", "prod"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def health(body: dict[str, Any]) -> tuple[str, str]:
    """(kstatus, Argo CD) verdicts of the object as the operator wrote it, computed by their own code."""
    flux = gitops.kstatus(gitops_settings(), [body])[0]["status"]
    argo = gitops.argocd_health(body)["status"]
    return flux, argo


def gitops_settings() -> Any:
    from backtest_devtools.config import load_settings  # noqa: PLC0415

    return load_settings()


def test_kubectl_backtest_steers_a_running_operator_and_gitops_tools_read_each_state(mechanics_lab, tmp_path):
    # A long interval: only the control annotation waking the worker makes the operator act within seconds.
    traffic = begin(mechanics_lab, analysis={"interval": "30s"}, rollback={"bakeWindow": "2s", "minRequests": 5})
    kubeconfig = _kubeconfig_with_context(mechanics_lab, tmp_path / "kubeconfig")
    watcher = subprocess.Popen(
        [str(PLUGIN), "status", NAME, "--watch", "--kubeconfig", str(kubeconfig), "--context", "prod"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert health(mechanics_lab.get()) == ("Current", "Healthy")
    mechanics_lab.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    mechanics_lab.wait(lambda s: s.get("stepName") == "canary" and s.get("phaseStartedAt"), 120, "canary phase")
    assert health(mechanics_lab.get()) == ("InProgress", "Progressing")

    assert plugin(kubeconfig, "pause", NAME).returncode == 0
    mechanics_lab.wait(lambda s: s.get("phase") == "Paused", 10, "paused within seconds")
    assert health(mechanics_lab.get()) == ("InProgress", "Suspended")
    assert plugin(kubeconfig, "resume", NAME).returncode == 0
    mechanics_lab.wait(lambda s: s.get("phase") == "Progressing", 10, "resumed within seconds")

    assert plugin(kubeconfig, "promote", NAME).returncode == 0
    mechanics_lab.wait(lambda s: s.get("stepName") == "testing", 15, "next phase within seconds")
    # Its clock running, the worker sleeps for the 30s interval: only being woken makes the abort quick.
    mechanics_lab.wait(lambda s: s.get("phaseStartedAt"), 30, "testing phase running")

    asked = time.monotonic()
    result = plugin(kubeconfig, "abort", NAME)
    assert result.returncode == 0, result.stderr
    aborted = mechanics_lab.wait(lambda s: s.get("phase") == "Degraded", 10, "abort acted on within seconds")
    print(f"\nabort acted on after {time.monotonic() - asked:.1f}s (analysis interval 30s)")
    assert aborted["history"][0]["outcome"] == "aborted"
    assert health(mechanics_lab.get()) == ("Failed", "Degraded")

    assert plugin(kubeconfig, "retry", NAME).returncode == 0
    mechanics_lab.wait(lambda s: s.get("phase") == "Progressing", 10, "retry acted on within seconds")
    assert health(mechanics_lab.get())[0] == "InProgress"

    assert plugin(kubeconfig, "promote", "--full", NAME).returncode == 0
    mechanics_lab.wait(_promoted, 30, "full promotion")
    mechanics_lab.wait(_healthy, 60, "bake window over")
    traffic.stop()
    assert health(mechanics_lab.get()) == ("Current", "Healthy")

    status = plugin(kubeconfig, "status", NAME)
    assert status.returncode == 0 and f"{mechanics_lab.namespace}/{NAME}" in status.stdout
    watcher.terminate()
    printed, _ = watcher.communicate(timeout=30)
    for state in ("State:    Paused", "State:    Degraded", "State:    Baking", "State:    Healthy"):
        assert state in printed


def test_deleting_a_service_completes_while_no_operator_runs(mechanics_lab):
    begin(mechanics_lab, rate=0)
    body = mechanics_lab.get()
    assert not body["metadata"].get("finalizers")  # the operator adds none
    mechanics_lab.kill_operator()
    mechanics_lab.custom.delete_namespaced_custom_object(GROUP, VERSION, mechanics_lab.namespace, PLURAL, NAME)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = mechanics_lab.custom.list_namespaced_custom_object(GROUP, VERSION, mechanics_lab.namespace, PLURAL)
        if not found["items"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the BacktestService was not deleted within 30s with the operator stopped")
    apps = k8s.AppsV1Api(mechanics_lab.api)
    selector = f"backtest.dev/service={NAME}"
    deadline = time.monotonic() + 60
    while apps.list_namespaced_deployment(mechanics_lab.namespace, label_selector=selector).items:
        if time.monotonic() > deadline:
            pytest.fail("owned Deployments not garbage-collected within 60s")
        time.sleep(0.5)


def test_finalizer_of_an_earlier_operator_version_is_removed_when_the_operator_sees_it(mechanics_lab):
    mechanics_lab.start_operator()
    spec = fast_spec(mechanics_lab.prometheus.url)
    kopf_notes = {"backtest.dev/last-handled-configuration": json.dumps({"spec": spec})}
    legacy = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService", "spec": spec,
              "metadata": {"name": NAME, "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"],
                           "annotations": kopf_notes}}  # fmt: skip
    mechanics_lab.custom.create_namespaced_custom_object(GROUP, VERSION, mechanics_lab.namespace, PLURAL, legacy)
    deadline = time.monotonic() + 60
    while mechanics_lab.get()["metadata"].get("finalizers"):
        if time.monotonic() > deadline:
            pytest.fail("legacy finalizer still present after 60s")
        time.sleep(0.2)
    assert "backtest.dev/last-handled-configuration" not in (mechanics_lab.get()["metadata"].get("annotations") or {})


@pytest.mark.parametrize(("faults", "outcome"), [({}, "promoted"), ({"ENGINE_FAULT_ERROR_RATE": "0.3"}, "rolled_back")])
def test_replicas_provider_rollout_is_judged_from_the_engines_own_series(mechanics_lab, prometheus, faults, outcome):
    """The review's defect: with `replicas` (and `gatewayAPI`) the default queries read router series that
    do not exist, so every phase stayed inconclusive. The engines' series carry their revision."""
    base = fast_spec("http://unused", traffic={"provider": "replicas"}, replicas=4)
    revisions = {
        track: BacktestServiceSpec.model_validate({**base, "image": image}).revision()
        for track, image in (("stable", "backtest-engine:1.0.0"), ("canary", "backtest-engine:2.0.0"))
    }
    stable = mechanics_lab.start_engine("stable", ENGINE_VERSION=revisions["stable"])
    canary = mechanics_lab.start_engine("canary", ENGINE_VERSION=revisions["canary"], **faults)
    engines = prometheus([ScrapeJob("engines", tuple(u.removeprefix("http://") for u in (stable, canary)),
                                    labels={"namespace": mechanics_lab.namespace})])  # fmt: skip
    mechanics_lab.start_operator()
    mechanics_lab.apply(fast_spec(engines.url, traffic={"provider": "replicas"}, replicas=4))
    mechanics_lab.wait(_healthy, 120, "first revision healthy")
    # One Service spreads requests over the pods of both revisions; here each engine process gets its share.
    loads = [Traffic(strategies_request(stable), 40.0).start(), Traffic(strategies_request(canary), 20.0).start()]
    mechanics_lab.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    try:
        final = mechanics_lab.wait(lambda s: bool(s.get("history")), 240, f"the rollout {outcome}")
    finally:
        for load in loads:
            load.stop()
    entry = final["history"][0]
    assert entry["outcome"] == outcome, entry["reason"]
    if outcome == "rolled_back":
        assert entry["check"] in ("error_rate_trigger", "error_rate", "error_rate_vs_stable", "success_rate")
        assert health(mechanics_lab.get()) == ("Failed", "Degraded")  # an automatic rollback, as GitOps sees it
    else:  # a promotion needs every phase to pass on at least analysis.minRequests canary requests
        assert "every phase passed" in entry["reason"], entry["reason"]
