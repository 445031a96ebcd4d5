"""`backtest-operator simulate --prometheus`: the same replay, fed by a real Prometheus scraping a real router."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from backtest_devtools.prometheus import ScrapeJob, wait_for_sample
from tests.support.processes import start_router, start_upstream

pytestmark = pytest.mark.prometheus
ROOT = Path(__file__).parents[2]


def test_simulator_replays_router_series_from_prometheus_when_given_a_range(prometheus, tmp_path):
    weight = tmp_path / "weight"
    weight.write_text("50\n")
    stable = start_upstream("stable")
    canary = start_upstream("canary", UPSTREAM_ERROR_RATE="0.3", UPSTREAM_ERROR_STATUS="500", UPSTREAM_SEED="7")
    router = start_router(stable.url, canary.url, weight)
    try:
        target = router.url.removeprefix("http://")
        server = prometheus([ScrapeJob("router", (target,), labels={"namespace": "sim", "service": "quant"})])
        server.wait_for_targets()
        wait_for_sample(server, 'backtest_router_requests_total{namespace="sim",track="canary",code="500"}')
        start = datetime.now(UTC)
        with httpx.Client(timeout=5.0) as client:
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                client.get(f"{router.url}/api/v1/strategies")
                time.sleep(0.01)
        server.wait_for_scrape_after(time.time() + 1.0)  # the last requests are in Prometheus
        end = datetime.now(UTC)
    finally:
        for process in (router, canary, stable):
            process.stop()
    manifest = yaml.safe_load((ROOT / "examples" / "backtestservice.yaml").read_text())
    manifest["spec"]["analysis"]["interval"] = "3s"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(manifest))
    command = [
        str(Path(sys.executable).parent / "backtest-operator"), "simulate", "--policy", str(policy),
        "--prometheus", server.url, "--from", start.isoformat(), "--to", (end - timedelta(seconds=1)).isoformat(),
        "--label", "namespace=sim", "--label", "service=quant",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    final = lines[-1]
    assert final["outcome"] == "rolled_back", final
    assert "canary error rate" in final["reason"]
    assert any(line.get("canary", {}).get("requests", 0) > 0 for line in lines[:-1])


def test_simulator_exits_2_when_prometheus_is_unreachable(tmp_path):
    command = [
        str(Path(sys.executable).parent / "backtest-operator"), "simulate",
        "--policy", str(ROOT / "examples" / "backtestservice.yaml"), "--prometheus", "http://127.0.0.1:9",
        "--from", "2026-11-02T09:00:00Z", "--to", "2026-11-02T10:00:00Z",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "Prometheus at http://127.0.0.1:9" in result.stderr
