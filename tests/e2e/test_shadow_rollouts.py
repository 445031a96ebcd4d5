"""Rollouts judged by the shadow comparison: operator process, real API server, real Prometheus, real engine
and router processes, the router started with the shadow arguments the operator derives from the spec.

A release that answers 200, fast, with subtly wrong results (``engine.faultInjection.resultBias``) passes
every error and latency check; only the comparison of its results with stable's can catch it. A correct
release with shadowing on must be promoted: a false mismatch would roll back a good release.
"""

from __future__ import annotations

import pytest

from backtest_devtools.stack import Traffic, backtest_request
from backtest_operator.api import BacktestServiceSpec
from backtest_operator.traffic import shadow_args

from .lab import EVIDENCE, Lab, fast_spec, seconds_between
from .test_rollouts import STARTUP, stop_traffic

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.prometheus]

RATE = 20.0
"""Backtest requests per second: at 10% weight and a shadow fraction of 0.5 up to 9 copies a second."""
SHADOW = {"traffic": {"shadow": {"fraction": 0.5, "maxInFlight": 2}}}
"""At most two copies at once: the canary engine (two workers) keeps serving its own clients within the
lab's 0.5 s objective; with 16 copies queued in front of them its client requests time out and fall
back, and the rollout is rolled back for that, not for its results (seen on the shared 2-core machine)."""


def _release(rollout_lab: Lab, canary_faults: dict[str, str]) -> Traffic:
    """v1 healthy behind a router with the spec's shadow arguments, backtests flowing; then v2 applied."""
    spec = fast_spec(rollout_lab.prometheus.url, **SHADOW)
    stable, canary = rollout_lab.start_engine("stable"), rollout_lab.start_engine("canary", **canary_faults)
    router = rollout_lab.start_router(stable, canary, tuple(shadow_args(BacktestServiceSpec.model_validate(spec))))
    rollout_lab.start_operator()
    rollout_lab.apply(spec)
    rollout_lab.wait(lambda s: s.get("phase") == "Healthy", STARTUP, "the first revision to become healthy")
    rollout_lab.traffic = Traffic(backtest_request(router), RATE).start()
    rollout_lab.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    return rollout_lab.traffic


def test_silently_wrong_release_is_rolled_back_by_the_comparison_with_no_client_errors(rollout_lab):
    traffic = _release(rollout_lab, {"ENGINE_FAULT_RESULT_BIAS": "0.02"})
    # No wait for the first phase here: a bias on every result is often rolled back within its first look.
    status = rollout_lab.wait(
        lambda s: s.get("phase") == "Degraded", rollout_lab.timing.rollout() + STARTUP, "the rollback on wrong results"
    )
    entry = status["history"][0]
    assert entry["outcome"] == "rolled_back", entry
    assert entry["check"] in EVIDENCE["wrong results"], entry["reason"]
    assert "mismatching fields: metrics." in entry["reason"]
    shadow = status["lastAnalysis"]["shadow"]
    assert shadow["mismatches"] > 0 and shadow["topFields"][0]["field"].startswith("metrics.")
    rollout_lab.wait_router_weight(0, rollout_lab.timing.evaluations(1))
    stop_traffic(traffic)  # the wrong answers never reached a client as errors: 0 client errors
    found = rollout_lab.router_state()["shadow"]
    assert found["comparisons"].get("mismatch", 0) > 0, found
    assert any(name.startswith("metrics.") for name in found["mismatched_fields"]), found
    took = seconds_between(entry["startedAt"], entry["finishedAt"])
    print(f"\nrolled back {took:.1f}s after the rollout started ({entry['check']}: {entry['reason']})")


def test_correct_release_with_shadowing_on_is_promoted_without_a_false_mismatch(rollout_lab):
    traffic = _release(rollout_lab, {})
    status = rollout_lab.wait(
        lambda s: bool(s.get("history")) and s["history"][0]["outcome"] in ("promoted", "rolled_back"),
        rollout_lab.timing.rollout() + STARTUP,
        "the rollout's end",
    )
    entry = status["history"][0]
    assert entry["outcome"] == "promoted", entry["reason"]
    stop_traffic(traffic)
    condition = next(c for c in status["conditions"] if c["type"] == "ShadowComparison")
    assert (condition["status"], condition["reason"]) == ("True", "Comparing")
    series = rollout_lab.prometheus.query(
        f'sum by (outcome) (backtest_router_shadow_comparisons_total{{namespace="{rollout_lab.namespace}"}})'
    )
    counts = {item["metric"]["outcome"]: float(item["value"][1]) for item in series}
    assert counts.get("match", 0) > 0, counts  # the comparison really ran
    assert counts.get("mismatch", 0) == 0, counts
