"""Whole rollouts: operator process, real API server, real Prometheus, real engine and router processes.

Every wait has a deadline derived from the spec under test (``lab.timing``) and says what it waited for;
timing bounds are computed from the operator's own timestamps in status, not from this test's clock.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime

import pytest
from kubernetes import client as k8s

from backtest_devtools.stack import Traffic, strategies_request

from .lab import EVIDENCE, NAME, Lab, fast_spec, seconds_between

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.prometheus]

STARTUP = 90.0
"""Deadline for processes to start and the first revision to become healthy on a loaded machine."""


def _healthy(status):
    return status.get("phase") == "Healthy"


def _promoted(status):
    return bool(status.get("history")) and status["history"][0]["outcome"] == "promoted"


def start_release(rollout_lab: Lab, traffic_rate: float = 60.0, **spec_overrides) -> Traffic | None:
    """Engines and router up, the operator running, v1 healthy, steady traffic flowing; then v2 applied."""
    canary_faults = spec_overrides.pop("canary_faults", {})
    stable, canary = rollout_lab.start_engine("stable"), rollout_lab.start_engine("canary", **canary_faults)
    router = rollout_lab.start_router(stable, canary)
    rollout_lab.start_operator()
    rollout_lab.apply(fast_spec(rollout_lab.prometheus.url, **spec_overrides))
    rollout_lab.wait(_healthy, STARTUP, "the first revision to become healthy")
    if traffic_rate:
        rollout_lab.traffic = Traffic(strategies_request(router), traffic_rate).start()
    rollout_lab.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    return rollout_lab.traffic


def canary_taking_traffic(rollout_lab: Lab) -> dict:
    """Wait for the first phase's weight, confirmed: its status carries the phase clock's start."""
    return rollout_lab.wait(
        lambda s: s.get("canaryWeight", 0) > 0 and s.get("phaseStartedAt"),
        rollout_lab.timing.evaluations(3) + STARTUP,
        "the canary's first phase",
    )


def stop_traffic(traffic: Traffic | None, *, expect_errors: bool = False) -> None:
    """Traffic that never flowed, or that clients saw fail, must not let a rollout test pass."""
    assert traffic is not None
    traffic.stop()
    assert traffic.sent > 0, "no request was sent"
    if not expect_errors:
        assert traffic.client_errors == 0, traffic.summary()


def phase_weights_from_events(rollout_lab: Lab) -> list[int]:
    """The weight of every phase the operator started, in order, from its PhaseStarted events."""
    events = [e for e in rollout_lab.events() if e.reason == "PhaseStarted"]
    events.sort(key=lambda e: (e.metadata.creation_timestamp, e.metadata.name))
    return [int(re.search(r"(\d+)% of traffic", e.message).group(1)) for e in events]


def test_healthy_release_walks_every_phase_and_is_promoted(rollout_lab):
    traffic = start_release(rollout_lab)
    status = rollout_lab.wait(_promoted, rollout_lab.timing.rollout() + STARTUP, "promotion")
    assert phase_weights_from_events(rollout_lab) == [10, 25, 50, 100]
    assert status["phase"] in ("Baking", "Healthy")
    final = rollout_lab.wait(_healthy, rollout_lab.timing.evaluations(3), "the end of the bake window")
    stop_traffic(traffic)
    assert final["stableRevision"] == final["history"][0]["revision"]
    reasons = [e.reason for e in rollout_lab.events()]
    for reason in ("RolloutStarted", "PhaseStarted", "Promoted", "BakeComplete"):
        assert reason in reasons
    assert rollout_lab.operator_series("backtest_operator_promotions_total") == {"": 1.0}
    phases = rollout_lab.operator_series("backtest_operator_rollout_phase")
    assert phases[f'{{name="{NAME}",namespace="{rollout_lab.namespace}",phase="Healthy"}}'] == 1.0


ERROR_TEST_RATE = 200.0
"""Requests per second in the error-rate test: at 10% weight the first evaluation after the canary takes
traffic sees about 60 canary requests, enough evidence that 15% errors are above the phase's 2% limit
(docs/rollout-policy.md, "How fast a fault is found"); 60 req/s would need three evaluations."""


def _rolled_back_by(
    rollout_lab: Lab, faults: dict[str, str], evidence: str, traffic_rate: float = 60.0, **spec
) -> float:
    """Start a faulty release; return the seconds from the canary's first phase starting to the rollback,
    both as the operator recorded them."""
    traffic = start_release(rollout_lab, traffic_rate, canary_faults=faults, **spec)
    # A trigger may act on the traffic the canary already has while its first weight is still being
    # confirmed: then the rollback comes before any phase clock starts.
    first = rollout_lab.wait(
        lambda s: (s.get("canaryWeight", 0) > 0 and s.get("phaseStartedAt")) or s.get("phase") == "Degraded",
        rollout_lab.timing.evaluations(3) + STARTUP,
        "the canary's first phase, or its rollback",
    )
    status = rollout_lab.wait(
        lambda s: s.get("phase") == "Degraded", rollout_lab.timing.rollout(), "the automatic rollback"
    )
    entry = status["history"][0]
    assert entry["outcome"] == "rolled_back", entry
    assert entry["check"] in EVIDENCE[evidence], entry["reason"]
    assert status["canaryWeight"] == 0
    rollout_lab.wait_router_weight(0, rollout_lab.timing.evaluations(1))
    stop_traffic(traffic)
    started = first.get("phaseStartedAt") if first.get("phase") != "Degraded" else None
    detection = seconds_between(started or _first_traffic_shift(rollout_lab), entry["finishedAt"])
    print(f"\ndetection {detection:.1f}s after the canary took traffic ({entry['check']}: {entry['reason']})")
    return detection


def _first_traffic_shift(rollout_lab: Lab) -> str:
    """When the operator first gave the canary a weight (its TrafficShifted event), as RFC 3339."""
    shifts = [e for e in rollout_lab.events() if e.reason == "TrafficShifted"]
    assert shifts, "the canary was never given a weight"
    moment = min(e.first_timestamp or e.metadata.creation_timestamp for e in shifts)
    return str(moment.isoformat())


def test_release_with_errors_is_rolled_back_within_an_interval_when_canary_fails_15_percent(rollout_lab):
    detection = _rolled_back_by(rollout_lab, {"ENGINE_FAULT_ERROR_RATE": "0.15"}, "errors", ERROR_TEST_RATE)
    assert detection <= rollout_lab.timing.detection_bound, f"{detection:.1f}s"


def test_release_whose_canary_times_out_is_rolled_back_on_fallback_rate(rollout_lab):
    detection = _rolled_back_by(rollout_lab, {"ENGINE_FAULT_LATENCY_SECONDS": "1.5"}, "fallbacks")
    assert detection <= 2 * rollout_lab.timing.interval + rollout_lab.timing.scrape, f"{detection:.1f}s"


def test_release_with_slower_canary_is_rolled_back_on_latency_regression(rollout_lab):
    detection = _rolled_back_by(rollout_lab, {"ENGINE_FAULT_LATENCY_SECONDS": "0.45"}, "slowness")
    assert detection <= 2 * rollout_lab.timing.interval + rollout_lab.timing.scrape, f"{detection:.1f}s"


def test_release_ending_a_phase_below_its_thresholds_is_rolled_back_at_phase_end(rollout_lab):
    _rolled_back_by(
        rollout_lab, {"ENGINE_FAULT_ERROR_RATE": "0.10"}, "errors",
        rollback={"maxErrorRate": 0.5, "minRequests": 5, "bakeWindow": "4s"},
    )  # fmt: skip
    entry = rollout_lab.status()["history"][0]
    assert entry["reason"].startswith("rolled back in phase ")
    assert entry["check"] != "error_rate_trigger"  # 10% errors never reach the 50% trigger


def test_nothing_is_promoted_when_traffic_is_too_low(rollout_lab):
    start_release(rollout_lab, traffic_rate=0)
    first = canary_taking_traffic(rollout_lab)
    twice = 2 * rollout_lab.timing.phases[0]

    def judged_twice_the_phase(status):
        analysis = status.get("lastAnalysis") or {}
        return "time" in analysis and seconds_between(first["phaseStartedAt"], analysis["time"]) >= twice

    status = rollout_lab.wait(judged_twice_the_phase, twice + rollout_lab.timing.evaluations(2), "two phase lengths")
    assert (status["stepName"], status["canaryWeight"]) == ("canary", 10)
    assert status["lastAnalysis"]["verdict"] == "inconclusive"
    assert "inconclusive" in status["message"]


def test_operator_restart_resumes_the_same_phase_without_restarting_its_clock(rollout_lab):
    traffic = start_release(rollout_lab)
    timing = rollout_lab.timing
    testing = rollout_lab.wait(
        lambda s: s.get("stepName") == "testing" and s.get("phaseStartedAt"), timing.rollout(), "the testing phase"
    )
    rollout_lab.kill_operator()
    # Let the phase's whole duration pass while no operator runs: its clock must keep running.
    ends = datetime.fromisoformat(testing["phaseStartedAt"]).timestamp() + timing.phases[1] + timing.interval
    while (left := ends - time.time()) > 0:
        time.sleep(left)
    rollout_lab.start_operator()
    seen: set[str] = set()

    def advanced(status):
        if status.get("stepName") == "testing" and status.get("phaseStartedAt"):
            seen.add(status["phaseStartedAt"])
        return status.get("stepName") not in ("testing", None)

    after = rollout_lab.wait(advanced, STARTUP + timing.evaluations(2), "the phase after testing")
    assert seen <= {testing["phaseStartedAt"]}, f"the testing phase's clock was restarted: {sorted(seen)}"
    assert after["stepName"] == "validation"
    # At most one PhaseStarted event for testing (the killed operator may not have posted its own).
    testing_starts = [w for w in phase_weights_from_events(rollout_lab) if w == 25]
    assert len(testing_starts) <= 1, "testing was started again after the restart"
    final = rollout_lab.wait(_promoted, timing.rollout(), "promotion")
    stop_traffic(traffic)
    assert [h["outcome"] for h in final["history"]].count("promoted") == 1


def test_spec_change_mid_rollout_restarts_with_the_newest_revision(rollout_lab):
    traffic = start_release(rollout_lab)
    timing = rollout_lab.timing
    first = rollout_lab.wait(lambda s: s.get("stepName") == "testing", timing.rollout(), "the testing phase")
    rollout_lab.patch({"spec": {"image": "backtest-engine:3.0.0"}})
    status = rollout_lab.wait(
        lambda s: s.get("canaryRevision") not in (first["canaryRevision"], None),
        timing.evaluations(2),
        "the rollout to restart with the newest revision",
    )
    stop_traffic(traffic)
    assert status["stepName"] == "canary"
    assert status["history"][0]["outcome"] == "superseded"


def test_deleting_the_service_removes_everything_it_owned(rollout_lab, k8s_api):
    start_release(rollout_lab, traffic_rate=0)
    rollout_lab.wait(lambda s: s.get("canaryRevision"), rollout_lab.timing.evaluations(2), "the rollout to start")
    rollout_lab.custom.delete_namespaced_custom_object("backtest.dev", "v1alpha1", rollout_lab.namespace,
                                                       "backtestservices", NAME)  # fmt: skip
    apps = k8s.AppsV1Api(k8s_api)
    selector = f"backtest.dev/service={NAME}"
    deadline = time.monotonic() + 60  # garbage collection by kube-controller-manager
    while time.monotonic() < deadline:
        left = (
            len(apps.list_namespaced_deployment(rollout_lab.namespace, label_selector=selector).items)
            + len(rollout_lab.core.list_namespaced_service(rollout_lab.namespace, label_selector=selector).items)
            + len(rollout_lab.core.list_namespaced_config_map(rollout_lab.namespace, label_selector=selector).items)
        )
        if left == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"waited 60s for garbage collection; {left} owned objects left after deletion")


def test_rollout_holds_while_prometheus_is_down_and_continues_when_it_returns(rollout_lab):
    traffic = start_release(rollout_lab, rollback={"maxAnalysisErrors": 100, "minRequests": 5, "bakeWindow": "4s"})
    timing = rollout_lab.timing
    canary = rollout_lab.wait(
        lambda s: s.get("canaryWeight") == 10 and s.get("phaseStartedAt"), timing.rollout(), "the canary phase"
    )
    rollout_lab.prometheus.stop()
    # More failed evaluations than fit in the phase: the phase's time has passed without data.
    failures = math.ceil(timing.phases[0] / timing.interval) + 1
    held = rollout_lab.wait(
        lambda s: s.get("analysisErrors", 0) >= failures,
        timing.evaluations(failures + 1),
        f"{failures} failed evaluations in a row",
    )
    assert (held["stepName"], held["canaryWeight"]) == ("canary", 10), "advanced without data"
    assert held["phaseStartedAt"] == canary["phaseStartedAt"]
    rollout_lab.prometheus.start()
    final = rollout_lab.wait(_promoted, timing.rollout(), "promotion once Prometheus is back")
    stop_traffic(traffic)
    assert final["analysisErrors"] == 0


def test_rollout_rolls_back_when_prometheus_stays_down_for_max_analysis_errors(rollout_lab):
    traffic = start_release(rollout_lab)
    timing = rollout_lab.timing
    canary_taking_traffic(rollout_lab)
    rollout_lab.prometheus.stop()
    status = rollout_lab.wait(
        lambda s: s.get("phase") == "Degraded", timing.evaluations(3 + 1), "the rollback after 3 analysis errors"
    )
    stop_traffic(traffic)
    assert status["history"][0]["check"] == "analysis"
    assert "analysis failed 3 times in a row" in status["history"][0]["reason"]
