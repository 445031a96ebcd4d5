"""The status view of `kubectl backtest status`."""

from backtest_operator.ctl import render_status

from .rollouts import started, track


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
