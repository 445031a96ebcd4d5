"""A slow start is not a crash loop: engine and router containers get a startup probe, so their liveness
probe applies only once they answer (found on the real node, where a busy machine took the router over 30 s
to start and the kubelet restarted it again and again)."""

from __future__ import annotations

import pytest

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.traffic import router_provider
from backtest_operator.workloads import Owner, WorkloadDefaults, engine_deployment

OWNER = Owner(name="quant", namespace="research", uid="uid-1")


def containers() -> dict[str, dict]:
    spec = BacktestServiceSpec.model_validate({"image": "backtest-engine:1.0.0"})
    engine = engine_deployment(OWNER, spec.pod(), spec.revision(), "stable", 1)
    router = next(m for m in router_provider(OWNER, spec, BacktestServiceStatus(), WorkloadDefaults())
                  if m["kind"] == "Deployment")  # fmt: skip
    return {
        "engine": engine["spec"]["template"]["spec"]["containers"][0],
        "router": router["spec"]["template"]["spec"]["containers"][0],
    }


def failure_window(probe: dict) -> int:
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


@pytest.mark.parametrize("name", ["engine", "router"])
def test_liveness_waits_for_the_startup_probe_when_a_container_starts_slowly(name):
    container = containers()[name]
    startup, liveness = container["startupProbe"], container["livenessProbe"]

    assert startup["httpGet"] == liveness["httpGet"]
    assert failure_window(startup) >= 120
    assert failure_window(startup) > failure_window(liveness) + int(liveness.get("initialDelaySeconds", 0))
