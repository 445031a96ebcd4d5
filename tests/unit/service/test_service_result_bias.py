"""Silent corruption for rehearsals (ENGINE_FAULT_RESULT_BIAS): return-based metrics are reported times
(1 + X) while the answer stays a normal 200/201; the stored row, and so the other track, stays correct."""

from __future__ import annotations

import pytest

from backtest_engine.metrics import get_metric, metric_names
from backtest_engine.service.faults import RETURN_METRICS, biased
from backtest_engine.service.settings import ServiceSettings, SettingsError, load_settings
from tests.unit.service.conftest import AUTH, ClientFactory, backtest_body

BIAS = 0.05


def test_every_return_based_metric_is_reported_times_one_plus_bias_when_the_bias_is_set(make_client: ClientFactory):
    honest = make_client().post("/api/v1/backtests", json=backtest_body(), headers=AUTH)
    assert honest.status_code == 201
    # a second engine on the same store, with the fault: it reads the stored row and reports it skewed
    faulty = make_client(fault_result_bias=BIAS)
    skewed = faulty.post("/api/v1/backtests", json=backtest_body(), headers=AUTH)
    assert skewed.status_code == 200  # answers normally (here: the cached result)
    truth, reported = honest.json()["metrics"], skewed.json()["metrics"]
    moved = {name for name in truth if reported[name] != truth[name]}
    assert moved == {name for name in RETURN_METRICS if truth[name] != 0}
    assert moved  # the run has trades and returns, so the fault is visible
    for name in RETURN_METRICS:
        assert reported[name] == pytest.approx(truth[name] * (1 + BIAS), rel=1e-12)
    assert skewed.json()["trades"] == honest.json()["trades"]
    assert faulty.get("/api/v1/health").json()["faults"] == {
        "enabled": True,
        "error_rate": 0.0,
        "latency_seconds": 0.0,
        "result_bias": BIAS,
    }


def test_reads_and_listings_are_biased_but_the_stored_row_is_not_when_the_bias_is_set(make_client: ClientFactory):
    faulty = make_client(fault_result_bias=BIAS)
    created = faulty.post("/api/v1/backtests", json=backtest_body(), headers=AUTH).json()
    honest = make_client()
    stored = honest.get(f"/api/v1/backtests/{created['id']}", headers=AUTH).json()["metrics"]
    read = faulty.get(f"/api/v1/backtests/{created['id']}", headers=AUTH).json()["metrics"]
    assert read["total_return"] == pytest.approx(stored["total_return"] * (1 + BIAS), rel=1e-12)
    assert created["metrics"]["total_return"] == read["total_return"]
    listed = faulty.get("/api/v1/backtests", headers=AUTH).json()["items"][0]["metrics"]
    assert listed["total_return"] == pytest.approx(stored["total_return"] * (1 + BIAS), rel=1e-12)
    assert listed["sharpe_ratio"] == stored["sharpe_ratio"]


def test_results_are_reported_unchanged_when_the_bias_is_zero():
    payload = {"metrics": {"total_return": 0.2, "sharpe_ratio": 1.1}, "id": "x"}
    assert biased(payload, 0.0) is payload
    assert biased(payload, 0.1)["metrics"] == {"total_return": pytest.approx(0.22), "sharpe_ratio": 1.1}


def test_return_metrics_name_registered_return_metrics_when_declared():
    names = set(metric_names())
    assert names >= RETURN_METRICS
    assert all(get_metric(name).unit.startswith("fraction") for name in RETURN_METRICS)
    assert "benchmark_return" not in RETURN_METRICS  # the benchmark's return is not the strategy's


def test_bias_outside_bounds_is_refused_with_the_variable_named_when_configured(monkeypatch):
    monkeypatch.setenv("ENGINE_FAULT_RESULT_BIAS", "2")
    with pytest.raises(SettingsError, match="ENGINE_FAULT_RESULT_BIAS"):
        load_settings()
    monkeypatch.setenv("ENGINE_FAULT_RESULT_BIAS", "-0.1")
    assert load_settings().fault_result_bias == -0.1
    assert ServiceSettings(fault_result_bias=0.0).faults_enabled is False
