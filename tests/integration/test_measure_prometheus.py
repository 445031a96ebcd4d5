"""``prometheus.measure`` against a real Prometheus scraping a real router: the phase interval by interval
for the sequential tests, latency histograms that agree with ``histogram_quantile``, and range queries
that stay under Prometheus' 11,000 points however long a phase is held."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from backtest_devtools.prometheus import ScrapeJob, wait_for_sample
from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus, RolloutPhase
from backtest_operator.histograms import Histogram
from backtest_operator.prometheus import PrometheusClient, measure
from backtest_operator.queries import MAX_POINTS
from tests.support.processes import start_router, start_upstream

pytestmark = pytest.mark.prometheus
LABELS = {"namespace": "measure", "service": "quant"}


def spec(interval: str = "3s") -> BacktestServiceSpec:
    return BacktestServiceSpec.model_validate(
        {"image": "registry.example/backtest-engine:2.0.0", "analysis": {"interval": interval, "minRequests": 5}}
    )


def progressing(since: datetime) -> BacktestServiceStatus:
    return BacktestServiceStatus(
        phase=RolloutPhase.PROGRESSING, step=0, step_name="canary", canary_weight=50, phase_started_at=since,
        stable_revision="a", canary_revision="b",
    )  # fmt: skip


@pytest.fixture
def scraped_router(tmp_path_factory, prometheus):
    """A router at 50% in front of a stable upstream and a canary failing 30% of requests, scraped every
    second, with about 12 s of traffic recorded."""
    weight = tmp_path_factory.mktemp("router") / "weight"
    weight.write_text("50\n")
    stable = start_upstream("stable")
    canary = start_upstream("canary", UPSTREAM_ERROR_RATE="0.3", UPSTREAM_ERROR_STATUS="500", UPSTREAM_SEED="3")
    router = start_router(stable.url, canary.url, weight)
    try:
        server = prometheus([ScrapeJob("router", (router.url.removeprefix("http://"),), labels=LABELS)])
        server.wait_for_targets()
        wait_for_sample(server, 'backtest_router_requests_total{namespace="measure",track="canary",code="500"}')
        start = datetime.now(UTC)
        with httpx.Client(timeout=5.0) as client:
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                client.get(f"{router.url}/api/v1/strategies")
                time.sleep(0.01)
        time.sleep(2.5)  # two more scrapes
        yield server, start, datetime.now(UTC)
    finally:
        for process in (router, canary, stable):
            process.stop()


def _measure(url: str, spec_: BacktestServiceSpec, status: BacktestServiceStatus, now: datetime):
    async def run():
        client = PrometheusClient(url, timedelta(seconds=5))
        try:
            return await measure(client, spec_, status, LABELS, now)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_stretches_cover_the_phase_interval_by_interval_and_agree_with_histogram_quantile_when_measured(
    scraped_router,
):
    server, start, end = scraped_router
    obs = _measure(server.url, spec("3s"), progressing(start), end)

    assert obs.error is None, obs.error
    assert len(obs.stretches) >= 4  # 3 s grid over ~14 s, then the partial interval ending now
    requests = sum(s.requests for s in obs.stretches)
    assert requests == pytest.approx(obs.canary_phase.requests, rel=0.02)
    errors = sum(s.errors for s in obs.stretches)
    assert 0.2 < errors / requests < 0.4  # the canary fails 30% of its requests
    grid = [s for s in obs.stretches[:-1] if s.requests > 0]
    assert grid and all(s.latency is not None and s.stable_p95_seconds is not None for s in grid)
    window = f"{round((end - start).total_seconds())}s"
    query = (
        "histogram_quantile(0.95, sum by (le) (increase(backtest_router_request_duration_seconds_bucket"
        f'{{namespace="measure",service="quant",track="canary"}}[{window}])))'
    )
    answer = httpx.get(
        f"{server.url}/api/v1/query", params={"query": query, "time": f"{end.timestamp():.3f}"}, timeout=10
    ).json()
    theirs = float(answer["data"]["result"][0]["value"][1])
    ours = obs.canary_phase.latency_p95_seconds
    assert ours == pytest.approx(theirs, rel=1e-6)
    summed = Histogram(
        obs.stretches[0].latency.bounds,
        tuple(sum(c) for c in zip(*(s.latency.cumulative for s in obs.stretches if s.latency), strict=True)),
        sum(s.latency.total for s in obs.stretches if s.latency),
    )
    assert summed.quantile() == pytest.approx(theirs, rel=0.1)


@pytest.fixture
def empty_prometheus(prometheus):
    server = prometheus([])
    return server, datetime.now(UTC)


def test_prometheus_refuses_a_range_query_of_more_than_11000_points_when_asked_directly(empty_prometheus):
    server, end = empty_prometheus
    params = {
        "query": "sum(backtest_router_weight)",
        "start": f"{(end - timedelta(days=5)).timestamp():.3f}",
        "end": f"{end.timestamp():.3f}",
        "step": "30s",
    }
    answer = httpx.get(f"{server.url}/api/v1/query_range", params=params, timeout=10)
    assert answer.status_code == 400
    assert "11,000" in answer.text or "11000" in answer.text


def test_a_phase_held_for_five_days_is_measured_without_error_when_its_grid_would_exceed_the_limit(
    empty_prometheus,
):
    # 5 days at a 30 s interval is 14,400 intervals: asking Prometheus for them one by one fails, and three
    # failed evaluations in a row roll the rollout back. The grid is read at a coarser step instead.
    server, end = empty_prometheus
    obs = _measure(server.url, spec("30s"), progressing(end - timedelta(days=5)), end)

    assert obs.error is None, obs.error
    assert obs.stretch_intervals == 2
    assert len(obs.stretches) <= MAX_POINTS + 1
