"""``prometheus.measure`` reads the router's shadow comparisons from a real Prometheus: the phase's counts by
outcome, the same comparisons interval by interval for the sequential test, and the mismatching fields
(whose series are born with their first mismatch, which ``increase()`` cannot see)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from backtest_devtools.prometheus import ScrapeJob, wait_for_sample
from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus, RolloutPhase
from backtest_operator.prometheus import PrometheusClient, measure
from tests.support.processes import start_router, start_upstream

pytestmark = pytest.mark.prometheus
LABELS = {"namespace": "shadow-measure", "service": "quant"}
RESULT = {"id": "r1", "strategy": "sma_crossover", "params": {"fast": 5, "slow": 20},
          "metrics": {"total_return": 0.12, "sharpe_ratio": 1.1, "max_drawdown": -0.08}, "trades": []}  # fmt: skip


def test_shadow_counts_stretches_and_top_fields_are_measured_when_the_canary_answers_wrong_results(
    tmp_path, prometheus
):
    wrong = {**RESULT, "id": "r2", "metrics": {**RESULT["metrics"], "total_return": 0.1224}}  # 2% off
    (tmp_path / "stable.json").write_text(json.dumps(RESULT))
    (tmp_path / "canary.json").write_text(json.dumps(wrong))
    weight = tmp_path / "weight"
    weight.write_text("50\n")
    stable = start_upstream("stable", UPSTREAM_RESULT_FILE=str(tmp_path / "stable.json"))
    canary = start_upstream("canary", UPSTREAM_RESULT_FILE=str(tmp_path / "canary.json"))
    router = start_router(stable.url, canary.url, weight, "--shadow-fraction", "1")
    try:
        server = prometheus([ScrapeJob("router", (router.url.removeprefix("http://"),), labels=LABELS)])
        server.wait_for_targets()
        wait_for_sample(server, 'backtest_router_shadow_comparisons_total{namespace="shadow-measure"}')
        start = datetime.now(UTC)
        with httpx.Client(timeout=5.0) as client:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                client.get(f"{router.url}/api/v1/backtests/r1")
                time.sleep(0.02)
        time.sleep(2.5)  # two more scrapes
        end = datetime.now(UTC)
        state = httpx.get(f"{router.url}/router/state", timeout=5.0).json()["shadow"]
        spec = BacktestServiceSpec.model_validate(
            {"image": "engine:2", "analysis": {"interval": "3s"}, "traffic": {"shadow": {"fraction": 1.0}}}
        )
        status = BacktestServiceStatus(
            phase=RolloutPhase.PROGRESSING, step=0, step_name="canary", canary_weight=50, phase_started_at=start,
            stable_revision="a", canary_revision="b",
        )  # fmt: skip

        async def run():
            client = PrometheusClient(server.url, timedelta(seconds=5))
            try:
                return await measure(client, spec, status, LABELS, end)
            finally:
                await client.aclose()

        obs = asyncio.run(run())
    finally:
        for process in (router, canary, stable):
            process.stop()
    assert obs.error is None, obs.error
    assert obs.shadow is not None
    judged = state["comparisons"]["match"] + state["comparisons"]["mismatch"]
    assert state["comparisons"]["mismatch"] == judged > 0  # every copy of the result differs
    # Prometheus extrapolates increase() to the window's edges: close to the router's own counts, not equal.
    assert obs.shadow.mismatches == pytest.approx(obs.shadow.comparisons)
    assert obs.shadow.comparisons == pytest.approx(judged, rel=0.35)
    assert [f.field for f in obs.shadow.top_fields] == ["metrics.total_return"]
    assert obs.shadow.top_fields[0].count == pytest.approx(state["mismatched_fields"]["metrics.total_return"], rel=0.35)
    assert len(obs.stretches) >= 3  # 12 s at 3 s intervals: the grid plus the partial stretch
    assert sum(s.comparisons for s in obs.stretches) == pytest.approx(obs.shadow.comparisons)
    assert all(s.mismatches == pytest.approx(s.comparisons) for s in obs.stretches)
