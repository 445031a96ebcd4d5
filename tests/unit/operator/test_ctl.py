"""The status view of `kubectl backtest status`."""

from datetime import timedelta

from backtest_operator.analysis import Stretch
from backtest_operator.api import FieldCount, ShadowNumbers
from backtest_operator.ctl import render_status

from .rollouts import histogram, started, track


def test_status_view_shows_checks_conditions_and_history_when_rolled_back():
    driver = started()
    driver.step(canary=track(200, errors=60))
    body = {"metadata": {"namespace": "prod", "name": "quant"}, "spec": {"image": "x:2"},
            "status": driver.status.to_wire()}  # fmt: skip
    text = render_status(body)
    assert "State:    Degraded" in text
    assert "error_rate_trigger" in text and "fail" in text
    assert "Degraded      True    RolledBack" in text
    assert "Stalled       True    RolledBack" in text
    assert "rolled_back" in text


def test_status_view_shows_shadow_comparisons_and_top_fields_when_wrong_results_rolled_back():
    driver = started(traffic={"shadow": {"fraction": 0.25}})
    driver.advance_clock(timedelta(seconds=30))
    fields = [FieldCount(field="metrics.total_return", count=80), FieldCount(field="trades.pnl", count=3)]
    shadow = ShadowNumbers(comparisons=400, mismatches=80, errors=2, skipped=1, top_fields=fields)
    stretch = Stretch(requests=100, latency=histogram(100, 0.2), stable_p95_seconds=0.2, comparisons=400, mismatches=80)
    driver.step(canary=track(100), stretches=(stretch,), shadow=shadow, phase_window=timedelta(seconds=30))
    body = {"metadata": {"namespace": "prod", "name": "quant"}, "spec": {"image": "x:2"},
            "status": driver.status.to_wire()}  # fmt: skip
    text = render_status(body)
    assert "Shadow:   400 comparisons, 80 mismatches (20.0%), 2 errors, 1 skipped" in text
    assert "  mismatching fields: metrics.total_return (80), trades.pnl (3)" in text
    assert "result_mismatch_trigger" in text
    assert "ShadowComparison True    Comparing" in text
