"""Series names, labels and buckets as docs/metrics-contract.md fixes them."""

import pytest

from backtest_engine.router.app import ConfigError, RouterConfig
from backtest_engine.router.metrics import RouterMetrics, latency_buckets
from backtest_engine.router.routing import Failure, FallbackReason, Outcome, Track


@pytest.mark.parametrize("objective", [2.0, 0.3, 1.5, 7.0])
def test_buckets_contain_objective_when_configured(objective):
    buckets = latency_buckets(objective)
    assert objective in buckets
    assert list(buckets) == sorted(set(buckets))


def test_series_follow_the_contract_when_attempts_are_recorded():
    metrics = RouterMetrics(latency_objective_seconds=2.0)
    metrics.record_attempt(Track.STABLE, Outcome.answered(200), 0.01)
    metrics.record_attempt(Track.CANARY, Outcome.answered(503), 0.02)
    metrics.record_attempt(Track.CANARY, Outcome.failed(Failure.TIMEOUT), 5.0)
    metrics.record_fallback(FallbackReason.TIMEOUT)
    metrics.set_weight(10)
    text = metrics.exposition().decode()
    assert 'backtest_router_requests_total{code="503",track="canary"} 1.0' in text
    assert 'backtest_router_requests_total{code="timeout",track="canary"} 1.0' in text
    assert 'backtest_router_fallbacks_total{reason="timeout"} 1.0' in text
    assert 'backtest_router_fallbacks_total{reason="status"} 0.0' in text
    assert "backtest_router_weight 10.0" in text
    # the abandoned attempt lies above the objective: slow = count - bucket(le=objective)
    assert 'backtest_router_request_duration_seconds_bucket{le="2.0",track="canary"} 1.0' in text
    assert 'backtest_router_request_duration_seconds_count{track="canary"} 2.0' in text


def test_snapshot_counts_errors_when_canary_fails():
    metrics = RouterMetrics()
    metrics.record_attempt(Track.CANARY, Outcome.answered(503), 0.02)
    metrics.record_attempt(Track.CANARY, Outcome.failed(Failure.TRANSPORT), 0.001)
    metrics.record_attempt(Track.CANARY, Outcome.failed(Failure.TIMEOUT), 5.0)
    metrics.record_attempt(Track.CANARY, Outcome.answered(404), 0.01)
    snapshot = metrics.snapshot()
    assert snapshot["errors"] == {"stable": 0, "canary": 2}
    assert snapshot["totals"] == {"stable": 0, "canary": 4}


def test_config_is_refused_when_canary_timeout_does_not_exceed_objective():
    with pytest.raises(ConfigError, match="must exceed"):
        RouterConfig("http://s", "http://c", latency_objective_seconds=2.0, canary_timeout_seconds=2.0).validate()


def test_failure_series_exist_at_zero_before_any_failure_when_router_starts():
    """increase() ignores a series' first sample: an error series born with its first error hides it."""
    text = RouterMetrics().exposition().decode()
    for track in ("stable", "canary"):
        for code in ("500", "503", "transport", "timeout"):
            assert f'backtest_router_requests_total{{code="{code}",track="{track}"}} 0.0' in text
