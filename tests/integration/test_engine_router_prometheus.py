"""Real processes end to end: a stable engine, a faulty canary engine, the router in front at weight 50,
and a real Prometheus scraping all three. The operator's own PromQL (built by `build_queries`) must give
the canary's error, fallback and success rates and p95 latency as docs/metrics-contract.md defines them, matching the
router's own counters, and the engines' series must tell the two versions apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backtest_devtools.prometheus import ScrapeJob
from backtest_devtools.stack import free_port
from backtest_operator.api import AnalysisSettings
from backtest_operator.queries import build_queries

pytestmark = pytest.mark.prometheus

KEY = "integration-key"
CANARY_ERROR_RATE = 0.15
CANARY_LATENCY = 0.3  # lands in the router's (0.25, 0.5] bucket, far below the 2 s objective
BURST = 400
SELECTOR = {"namespace": "itest", "service": "quant"}


@dataclass
class Proc:
    name: str
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def target(self) -> str:
        return self.url.removeprefix("http://")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_ready(process: Proc, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.proc.returncode}")
        try:
            if httpx.get(process.url + path, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} not ready after {timeout}s")


def start_engine(name: str, tmp_path: Path, **env: str) -> Proc:
    port = free_port()
    full_env = {
        **os.environ,
        "ENGINE_API_KEYS": KEY,
        "ENGINE_RATE_LIMIT": "1000000",
        "DATABASE_URL": f"sqlite:///{tmp_path / name}.db",
        **env,
    }
    command = [sys.executable, "-m", "backtest_engine.service", "--host", "127.0.0.1", "--port", str(port)]
    process = Proc(name, f"http://127.0.0.1:{port}", subprocess.Popen(command, env=full_env))
    wait_ready(process, "/api/v1/ready")
    return process


def start_router(stable: Proc, canary: Proc, weight_file: Path) -> Proc:
    port = free_port()
    command = [sys.executable, "-m", "backtest_engine.router", "--stable", stable.url, "--canary", canary.url]
    command += ["--weight-file", str(weight_file), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = Proc("router", f"http://127.0.0.1:{port}", subprocess.Popen(command))
    wait_ready(process, "/router/health")
    return process


def router_counters(router: Proc) -> dict[str, float]:
    """The router's own view: canary requests, errors, fallbacks, and canary/stable duration buckets."""
    out: dict[str, float] = {"requests": 0.0, "errors": 0.0, "fallbacks": 0.0}
    for family in text_string_to_metric_families(httpx.get(router.url + "/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "backtest_router_requests_total" and labels.get("track") == "canary":
                out["requests"] += sample.value
                if labels["code"].startswith("5") or labels["code"] == "transport":
                    out["errors"] += sample.value
            elif sample.name == "backtest_router_fallbacks_total":
                out["fallbacks"] += sample.value
            elif sample.name == "backtest_router_request_duration_seconds_bucket":
                out[f"bucket:{labels['track']}:{float(labels['le'])}"] = sample.value
    return out


def p95_from_buckets(before: dict[str, float], after: dict[str, float], track: str) -> float:
    """histogram_quantile(0.95) over the bucket increases, the way Prometheus interpolates."""
    bounds = sorted(float(k.split(":")[2]) for k in after if k.startswith(f"bucket:{track}:"))
    counts = [after[f"bucket:{track}:{b}"] - before.get(f"bucket:{track}:{b}", 0.0) for b in bounds]
    rank = 0.95 * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return bounds[-2]


def scalar(server, promql: str) -> float:
    result = server.query(promql)
    assert result, f"no data for {promql}"
    return float(result[0]["value"][1])


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for process in reversed(started):
        process.stop()


def test_promql_yields_the_canary_rates_and_p95_when_a_faulty_canary_serves_half_the_traffic(
    prometheus, processes, tmp_path
):
    stable = start_engine("stable", tmp_path, ENGINE_VERSION="v1", ENGINE_TRACK="stable")
    processes.append(stable)
    canary = start_engine(
        "canary",
        tmp_path,
        ENGINE_VERSION="v2",
        ENGINE_TRACK="canary",
        ENGINE_FAULT_ERROR_RATE=str(CANARY_ERROR_RATE),
        ENGINE_FAULT_LATENCY_SECONDS=str(CANARY_LATENCY),
        ENGINE_FAULT_SEED="15",
    )
    processes.append(canary)
    assert httpx.get(canary.url + "/api/v1/health").json()["faults"]["enabled"] is True
    weight = tmp_path / "weight"
    weight.write_text("50\n")
    router = start_router(stable, canary, weight)
    processes.append(router)
    server = prometheus(
        [
            ScrapeJob("router", (router.target,), labels=SELECTOR),
            ScrapeJob("engine-stable", (stable.target,), labels=SELECTOR),
            ScrapeJob("engine-canary", (canary.target,), labels=SELECTOR),
        ]
    )
    server.wait_for_targets()

    headers = {"X-API-Key": KEY}
    backtest = {"strategy": "sma_crossover", "params": {"fast": 5, "slow": 20}, "synthetic": {"bars": 300}}

    def call(i: int) -> int:
        if i % 10 == 0:  # an idempotent POST (cached after the first run on each track)
            response = client.post("/api/v1/backtests", json=backtest, headers={**headers, "Idempotency-Key": "bt"})
        else:
            response = client.get("/api/v1/strategies", headers=headers)
        return response.status_code

    with httpx.Client(base_url=router.url, timeout=30) as client:
        # Warm up until the canary's 5xx series exists and Prometheus has scraped it, so the window below
        # starts after every series was born (increase() cannot see a series' first value).
        deadline = time.monotonic() + 30
        while router_counters(router)["errors"] < 1:
            assert time.monotonic() < deadline, "the canary produced no error during warm-up"
            client.get("/api/v1/strategies", headers=headers)
        server.wait_for_scrape_after(time.time() + 0.5)  # Prometheus holds the counters the burst starts from
        before = router_counters(router)
        burst_started = time.time()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(BURST)))
    assert set(codes) <= {200, 201}, "every canary failure must be re-served by stable"
    after = router_counters(router)

    # Wait for Prometheus to hold the final values.
    deadline = time.monotonic() + 20
    total = 'sum(backtest_router_requests_total{job="router",track="canary"})'
    while scalar(server, total) < after["requests"]:
        assert time.monotonic() < deadline, "Prometheus did not scrape the final counters"
        time.sleep(0.5)
    server.wait_for_scrape_after(time.time() + 1.0)  # one more scrape after the final values

    window = timedelta(seconds=round(time.time() - burst_started + 1.5))
    canary_q = build_queries(AnalysisSettings(), SELECTOR, "canary", window)
    stable_q = build_queries(AnalysisSettings(), SELECTOR, "stable", window)
    requests = scalar(server, canary_q.requests)
    errors = scalar(server, canary_q.errors)
    fallbacks = scalar(server, canary_q.fallbacks)
    fast = scalar(server, canary_q.fast)
    slow = requests - fast
    error_rate, fallback_rate = errors / requests, fallbacks / requests
    success_rate = (requests - errors - slow) / requests
    p95_canary, p95_stable = scalar(server, canary_q.latency_p95), scalar(server, stable_q.latency_p95)

    n = after["requests"] - before["requests"]
    expected_error = (after["errors"] - before["errors"]) / n
    expected_fallback = (after["fallbacks"] - before["fallbacks"]) / n
    expected_p95 = p95_from_buckets(before, after, "canary")
    report = (
        f"canary requests={n:.0f} promql: error={error_rate:.4f} fallback={fallback_rate:.4f} "
        f"success={success_rate:.4f} p95={p95_canary:.4f}s (stable p95={p95_stable:.4f}s); "
        f"router counters: error={expected_error:.4f} fallback={expected_fallback:.4f} p95={expected_p95:.4f}s"
    )
    print(report)

    assert 150 <= n <= 250  # weight 50 of 400
    assert error_rate == pytest.approx(expected_error, abs=0.01), report
    assert fallback_rate == pytest.approx(expected_fallback, abs=0.01), report
    assert fallback_rate == pytest.approx(error_rate, abs=0.01), report  # every failed request was replayable
    assert 0.07 <= error_rate <= 0.25, report  # binomial(~200, 0.15): more than 3 standard deviations
    assert slow / requests == pytest.approx(0.0, abs=0.01), (
        report
    )  # nothing near the 2 s objective (extrapolation noise)
    assert success_rate == pytest.approx(1 - error_rate, abs=0.02), report
    assert p95_canary == pytest.approx(expected_p95, abs=0.02), report
    assert CANARY_LATENCY <= p95_canary <= 0.5, report
    assert p95_stable < p95_canary, report

    # The engines' own series: versions and tracks apart, the injected 500s counted by the canary only.
    engine_5xx = scalar(
        server,
        f'sum(increase(backtest_engine_http_requests_total{{track="canary",version="v2",code="500"}}[{round(window.total_seconds())}s]))',
    )
    assert engine_5xx == pytest.approx(errors, rel=0.2, abs=2), report
    stable_5xx = server.query('sum(backtest_engine_http_requests_total{track="stable",code=~"5.."})')
    assert not stable_5xx or float(stable_5xx[0]["value"][1]) == 0
