"""The Prometheus fixture runs a real server that scrapes real targets and answers PromQL."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from backtest_devtools.prometheus import ScrapeJob, wait_for_sample

pytestmark = pytest.mark.prometheus


@pytest.fixture
def probe_target():
    """A real /metrics endpoint (prometheus_client's HTTP server) with one labelled counter."""
    registry = CollectorRegistry()
    counter = Counter("backtest_fixture_probe", "Requests seen by the probe", ["track"], registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", counter
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_prometheus_answers_promql_with_scraped_values_when_a_target_is_configured(prometheus, probe_target):
    address, counter = probe_target
    counter.labels(track="canary").inc(7)
    server = prometheus([ScrapeJob("probe", (address,), labels={"service": "fixture"})])
    server.wait_for_targets()

    result = wait_for_sample(server, 'sum by (track, service) (backtest_fixture_probe_total{job="probe"})')

    assert [entry["metric"] for entry in result] == [{"service": "fixture", "track": "canary"}]
    assert float(result[0]["value"][1]) == 7.0


def test_prometheus_sees_new_samples_within_seconds_when_the_counter_moves(prometheus, probe_target):
    address, counter = probe_target
    counter.labels(track="stable").inc(1)
    server = prometheus([ScrapeJob("probe", (address,))])
    server.wait_for_targets()
    assert wait_for_sample(server, "backtest_fixture_probe_total")

    counter.labels(track="stable").inc(41)
    deadline = time.monotonic() + 15
    value = 0.0
    while time.monotonic() < deadline and value != 42.0:
        result = server.query('backtest_fixture_probe_total{track="stable"}')
        value = float(result[0]["value"][1]) if result else 0.0
        time.sleep(0.25)

    assert value == 42.0


def test_prometheus_reports_no_data_as_an_empty_result_when_a_series_does_not_exist(prometheus, probe_target):
    address, _counter = probe_target
    server = prometheus([ScrapeJob("probe", (address,))])
    server.wait_for_targets()

    assert server.query('backtest_router_requests_total{track="canary"}') == []
