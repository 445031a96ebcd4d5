"""Fault injection: off by default, visible in health, never on health/ready/metrics."""

from __future__ import annotations

import time

from tests.unit.service.conftest import AUTH, ClientFactory


def test_every_api_request_fails_with_500_when_the_error_rate_is_one(make_client: ClientFactory):
    client = make_client(fault_error_rate=1.0)
    response = client.get("/api/v1/strategies", headers=AUTH)
    assert response.status_code == 500
    assert response.headers["x-fault-injected"] == "1"
    assert response.json()["detail"].startswith("injected fault")
    assert client.get("/api/v1/health").status_code == 200
    assert client.get("/api/v1/ready").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'code="500",method="GET",route="/api/v1/strategies"' in metrics.text


def test_health_shows_the_faults_when_they_are_on(make_client: ClientFactory):
    client = make_client(fault_error_rate=0.15, fault_latency_seconds=0.05)
    faults = client.get("/api/v1/health").json()["faults"]
    assert faults == {"enabled": True, "error_rate": 0.15, "latency_seconds": 0.05, "result_bias": 0.0}


def test_api_requests_are_slowed_down_when_latency_is_added(make_client: ClientFactory):
    client = make_client(fault_latency_seconds=0.2)
    started = time.perf_counter()
    assert client.get("/api/v1/strategies", headers=AUTH).status_code == 200
    assert time.perf_counter() - started >= 0.2  # a lower bound: sleeping never takes less


def test_health_is_never_slowed_down_when_latency_is_added(make_client: ClientFactory):
    # 30 s of added latency would make a delayed health answer impossible to miss, however busy the machine.
    client = make_client(fault_latency_seconds=30.0)
    started = time.perf_counter()
    assert client.get("/api/v1/health").status_code == 200
    assert time.perf_counter() - started < 15.0


def test_the_same_requests_fail_when_the_fault_seed_is_fixed(make_client: ClientFactory):
    def codes(seed: int) -> list[int]:
        client = make_client(fault_error_rate=0.3, fault_seed=seed, rate_limit=10_000)
        return [client.get("/api/v1/strategies", headers=AUTH).status_code for _ in range(200)]

    first = codes(7)
    assert codes(7) == first
    assert codes(8) != first
    assert set(first) == {200, 500}
    # binomial(200, 0.3) with this seed: the share is fixed, and near the configured rate
    assert 0.15 < first.count(500) / len(first) < 0.45
