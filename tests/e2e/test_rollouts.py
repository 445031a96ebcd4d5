"""Whole rollouts: operator process, real API server, real Prometheus, real engine and router processes."""

from __future__ import annotations

import time

import pytest
from kubernetes import client as k8s

from backtest_devtools.stack import Traffic, strategies_request

from .lab import NAME, Lab, fast_spec, lab

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.prometheus]


@pytest.fixture
def rollout_lab(cluster, k8s_api, namespace, crd_installed, prometheus, tmp_path):
    with lab(cluster, k8s_api, namespace, prometheus, tmp_path) as built:
        yield built


def _healthy(status):
    return status.get("phase") == "Healthy"


def start_release(rollout_lab: Lab, traffic_rate: float = 60.0, **spec_overrides):
    """Engines and router up, the operator running, v1 healthy, steady traffic flowing; then v2 applied."""
    stable, canary = rollout_lab.start_engine("stable"), rollout_lab.start_engine("canary", **spec_overrides.pop(
        "canary_faults", {}))  # fmt: skip
    router = rollout_lab.start_router(stable, canary)
    rollout_lab.start_operator()
    rollout_lab.apply(fast_spec(rollout_lab.prometheus.url, **spec_overrides))
    rollout_lab.wait(_healthy, 60, "first revision healthy")
    traffic = Traffic(strategies_request(router), traffic_rate).start() if traffic_rate else None
    rollout_lab.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    return traffic


def test_healthy_release_walks_every_phase_and_is_promoted(rollout_lab):
    traffic = start_release(rollout_lab)
    seen_weights: list[int] = []

    def promoted(status):
        weight = status.get("canaryWeight", 0)
        if not seen_weights or seen_weights[-1] != weight:
            seen_weights.append(weight)
        return bool(status.get("history")) and status["history"][0]["outcome"] == "promoted"

    status = rollout_lab.wait(promoted, 120, "promotion")
    traffic.stop()
    assert [w for w in seen_weights if w] == [10, 25, 50, 100]
    assert status["phase"] in ("Baking", "Healthy")
    final = rollout_lab.wait(_healthy, 30, "bake window over")
    assert final["stableRevision"] == final["history"][0]["revision"]
    reasons = [e.reason for e in rollout_lab.events()]
    for reason in ("RolloutStarted", "PhaseStarted", "Promoted", "BakeComplete"):
        assert reason in reasons
    assert traffic.client_errors == 0
    assert rollout_lab.operator_series("backtest_operator_promotions_total") == {"": 1.0}
    phases = rollout_lab.operator_series("backtest_operator_rollout_phase")
    assert phases[f'{{name="{NAME}",namespace="{rollout_lab.namespace}",phase="Healthy"}}'] == 1.0


def test_release_with_errors_is_rolled_back_within_an_interval_when_canary_fails_15_percent(rollout_lab):
    traffic = start_release(rollout_lab, canary_faults={"ENGINE_FAULT_ERROR_RATE": "0.15"})
    first = rollout_lab.wait(lambda s: s.get("canaryWeight", 0) > 0, 60, "canary taking traffic")
    errors_from = time.monotonic()
    status = rollout_lab.wait(lambda s: s.get("phase") == "Degraded", 60, "automatic rollback")
    detection = time.monotonic() - errors_from
    traffic.stop()
    entry = status["history"][0]
    assert entry["outcome"] == "rolled_back"
    assert entry["check"] in ("error_rate_trigger", "error_rate")
    assert status["canaryWeight"] == 0
    assert rollout_lab.router_weight() == 0
    print(f"\ndetection latency: {detection:.1f}s (interval 4s, scrape 1s); phase {first.get('stepName')}")
    assert detection < 20


def test_nothing_is_promoted_when_traffic_is_too_low(rollout_lab):
    start_release(rollout_lab, traffic_rate=0)
    rollout_lab.wait(lambda s: s.get("canaryWeight", 0) == 10, 60, "canary phase")
    time.sleep(12)  # twice the phase duration
    status = rollout_lab.status()
    assert status["stepName"] == "canary" and status["canaryWeight"] == 10
    assert "inconclusive" in status["message"]


def test_operator_restart_resumes_the_same_phase_without_restarting_its_clock(rollout_lab):
    traffic = start_release(rollout_lab)
    status = rollout_lab.wait(lambda s: s.get("stepName") == "testing" and s.get("phaseStartedAt"), 60, "testing phase")
    started = status["phaseStartedAt"]
    rollout_lab.kill_operator()
    time.sleep(10)  # longer than the phase: its clock runs on while no operator is there
    assert rollout_lab.status()["phaseStartedAt"] == started
    rollout_lab.start_operator()
    rollout_lab.wait_operator_serving(60)  # a loaded machine takes seconds to start a Python process
    restarted = time.time()
    rollout_lab.wait(lambda s: s.get("stepName") != "testing", 60, "the phase after testing")
    # testing had run its 8 s before the restart: the new operator advances at its first evaluations
    # instead of starting testing's clock again (which would take at least another 8 s). The next phase's
    # own clock starts later, once its weight is confirmed, so the moment the step moved is what counts.
    assert time.time() - restarted < 8
    final = rollout_lab.wait(lambda s: s.get("history") and s["history"][0]["outcome"] == "promoted", 90, "promotion")
    traffic.stop()
    assert [h["outcome"] for h in final["history"]].count("promoted") == 1


def test_spec_change_mid_rollout_restarts_with_the_newest_revision(rollout_lab):
    traffic = start_release(rollout_lab)
    first = rollout_lab.wait(lambda s: s.get("stepName") == "testing", 60, "testing phase")["canaryRevision"]
    rollout_lab.patch({"spec": {"image": "backtest-engine:3.0.0"}})
    status = rollout_lab.wait(lambda s: s.get("canaryRevision") not in (first, None), 30, "restart")
    traffic.stop()
    assert status["stepName"] == "canary"
    assert status["history"][0]["outcome"] == "superseded"


def test_deleting_the_service_removes_everything_it_owned(rollout_lab, k8s_api):
    start_release(rollout_lab, traffic_rate=0)
    rollout_lab.wait(lambda s: s.get("canaryRevision"), 60, "rollout started")
    rollout_lab.custom.delete_namespaced_custom_object("backtest.dev", "v1alpha1", rollout_lab.namespace,
                                                       "backtestservices", NAME)  # fmt: skip
    apps = k8s.AppsV1Api(k8s_api)
    selector = f"backtest.dev/service={NAME}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = (
            len(apps.list_namespaced_deployment(rollout_lab.namespace, label_selector=selector).items)
            + len(rollout_lab.core.list_namespaced_service(rollout_lab.namespace, label_selector=selector).items)
            + len(rollout_lab.core.list_namespaced_config_map(rollout_lab.namespace, label_selector=selector).items)
        )
        if left == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"{left} owned objects left after deletion")


def _rolled_back_by(rollout_lab: Lab, faults: dict[str, str], checks: set[str], **spec) -> float:
    """Start a faulty release; return the seconds from the canary taking traffic to the rollback."""
    traffic = start_release(rollout_lab, canary_faults=faults, **spec)
    rollout_lab.wait(lambda s: s.get("canaryWeight", 0) > 0, 60, "canary taking traffic")
    errors_from = time.monotonic()
    status = rollout_lab.wait(lambda s: s.get("phase") == "Degraded", 90, "automatic rollback")
    detection = time.monotonic() - errors_from
    traffic.stop()
    entry = status["history"][0]
    assert entry["outcome"] == "rolled_back"
    assert entry["check"] in checks, entry["reason"]
    assert rollout_lab.router_weight() == 0
    return detection


def test_release_whose_canary_times_out_is_rolled_back_on_fallback_rate(rollout_lab):
    detection = _rolled_back_by(rollout_lab, {"ENGINE_FAULT_LATENCY_SECONDS": "1.5"}, {"fallback_rate_trigger"})
    print(f"\nfallback detection latency: {detection:.1f}s")


def test_release_with_slower_canary_is_rolled_back_on_latency_regression(rollout_lab):
    detection = _rolled_back_by(rollout_lab, {"ENGINE_FAULT_LATENCY_SECONDS": "0.45"}, {"latency_trigger"})
    print(f"\nlatency detection latency: {detection:.1f}s")


def test_release_ending_a_phase_below_its_thresholds_is_rolled_back_at_phase_end(rollout_lab):
    _rolled_back_by(
        rollout_lab, {"ENGINE_FAULT_ERROR_RATE": "0.10"}, {"error_rate", "error_rate_vs_stable", "success_rate"},
        rollback={"maxErrorRate": 0.5, "minRequests": 5, "bakeWindow": "4s"},
    )  # fmt: skip
    reason = rollout_lab.status()["history"][0]["reason"]
    assert reason.startswith("rolled back in phase ")


def test_rollout_holds_while_prometheus_is_down_and_continues_when_it_returns(rollout_lab):
    traffic = start_release(rollout_lab, rollback={"maxAnalysisErrors": 100, "minRequests": 5, "bakeWindow": "4s"})
    rollout_lab.wait(lambda s: s.get("stepName") == "canary" and s.get("canaryWeight") == 10, 60, "canary phase")
    rollout_lab.prometheus.stop()
    held = rollout_lab.wait(lambda s: s.get("analysisErrors", 0) >= 3, 30, "analysis errors counted")
    time.sleep(8)  # longer than the phase: nothing may advance without data
    during = rollout_lab.status()
    assert (during["stepName"], during["canaryWeight"]) == (held["stepName"], 10)
    rollout_lab.prometheus.start()
    final = rollout_lab.wait(lambda s: s.get("history") and s["history"][0]["outcome"] == "promoted", 120, "promotion")
    traffic.stop()
    assert final["analysisErrors"] == 0


def test_rollout_rolls_back_when_prometheus_stays_down_for_max_analysis_errors(rollout_lab):
    traffic = start_release(rollout_lab)
    rollout_lab.wait(lambda s: s.get("canaryWeight", 0) > 0, 60, "canary taking traffic")
    rollout_lab.prometheus.stop()
    status = rollout_lab.wait(lambda s: s.get("phase") == "Degraded", 60, "rollback after analysis errors")
    traffic.stop()
    assert status["history"][0]["check"] == "analysis"
    assert "analysis failed 3 times in a row" in status["history"][0]["reason"]
