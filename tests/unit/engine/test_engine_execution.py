"""Execution semantics: hand-checked scenarios and agreement with a naive bar-by-bar reference."""

from __future__ import annotations

import numpy as np
import pytest
from engine_reference_simulator import reference_simulate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_engine.data import synthetic_ohlcv
from backtest_engine.errors import InvalidParameter
from backtest_engine.execution import EXIT_REASONS, ExecutionConfig, simulate

OPENS = np.array([10.0, 11.0, 12.0, 13.0, 14.0])
CLOSES = np.array([10.5, 11.5, 12.5, 13.5, 14.5])
HIGHS = np.maximum(OPENS, CLOSES) + 0.5
LOWS = np.minimum(OPENS, CLOSES) - 0.5


def run(target, highs=HIGHS, lows=LOWS, opens=OPENS, closes=CLOSES, **config):
    return simulate(opens, highs, lows, closes, np.asarray(target, dtype=float), config=ExecutionConfig(**config))


def test_long_trade_fills_at_next_open_and_pays_commission_on_both_sides_when_signal_flips():
    sim = run([1, 1, 0, 0, 0], cash=1000.0, commission=0.01)
    units = 1000.0 / (11.0 * 1.01)  # all equity, commission included, at bar 1's open
    fees = units * 11.0 * 0.01 + units * 13.0 * 0.01
    assert sim.num_trades == 1
    assert (sim.entry_bar[0], sim.exit_bar[0]) == (1, 3)
    assert sim.entry_price[0] == 11.0 and sim.exit_price[0] == 13.0
    assert sim.size[0] == pytest.approx(units)
    assert sim.pnl[0] == pytest.approx(units * 2.0 - fees)
    expected_equity = [
        1000.0,
        units * 11.5,
        units * 12.5,
        1000.0 + units * 2 - fees,
        1000.0 + units * 2 - fees,
    ]
    np.testing.assert_allclose(sim.equity, expected_equity)


def test_short_trade_closes_on_the_last_close_with_slippage_when_data_ends():
    sim = run([-1, -1, -1, -1, -1], cash=1000.0, slippage_bps=10)
    entry, exit_ = 11.0 * (1 - 0.001), 14.5 * (1 + 0.001)
    units = 1000.0 / entry
    assert sim.size[0] == pytest.approx(-units)
    assert EXIT_REASONS[sim.exit_reason[0]] == "end_of_data"
    assert sim.exit_bar[0] == 4
    assert sim.pnl[0] == pytest.approx(units * (entry - exit_))
    assert sim.equity[-1] == pytest.approx(1000.0 + units * (entry - exit_))


def test_stop_loss_fills_at_the_stop_price_when_the_low_touches_it():
    lows = LOWS.copy()
    lows[2] = 11.0 * 0.94  # bar 2 trades below a 5% stop under the 11.0 entry
    sim = run([1, 1, 1, 1, 1], lows=lows, cash=1000.0, stop_loss=0.05)
    assert sim.num_trades == 1, "after a stop the strategy stays flat until its target changes"
    assert EXIT_REASONS[sim.exit_reason[0]] == "stop_loss"
    assert sim.exit_bar[0] == 2
    assert sim.exit_price[0] == pytest.approx(11.0 * 0.95)
    assert sim.units[2] == 0 and sim.equity[-1] == pytest.approx(1000.0 * 0.95)


def test_stop_loss_fills_at_the_open_when_the_price_gaps_through_it():
    opens, lows, highs = OPENS.copy(), LOWS.copy(), HIGHS.copy()
    opens[2], lows[2] = 9.0, 8.5  # opens far below the 10.45 stop
    sim = run([1, 1, 1, 1, 1], opens=opens, lows=lows, highs=highs, cash=1000.0, stop_loss=0.05)
    assert sim.exit_price[0] == 9.0


def test_stop_loss_wins_when_stop_and_take_profit_are_both_inside_one_bar():
    lows, highs = LOWS.copy(), HIGHS.copy()
    lows[2], highs[2] = 10.0, 13.0  # both a 5% stop (10.45) and a 10% target (12.1) are inside the range
    sim = run([1, 1, 1, 1, 1], lows=lows, highs=highs, cash=1000.0, stop_loss=0.05, take_profit=0.10)
    assert EXIT_REASONS[sim.exit_reason[0]] == "stop_loss"
    assert sim.exit_price[0] == pytest.approx(10.45)


def test_take_profit_fills_at_its_level_and_re_entry_waits_for_a_new_signal():
    sim = run([1, 1, 0, 1, 1], cash=1000.0, take_profit=0.04)  # bar 1's high 12.0 > 11.44 target
    assert EXIT_REASONS[sim.exit_reason[0]] == "take_profit"
    assert (sim.exit_bar[0], sim.exit_price[0]) == (1, pytest.approx(11.44))
    assert sim.num_trades == 2 and sim.entry_bar[1] == 4


def test_whole_lots_round_units_down_when_lot_size_is_set():
    sim = run([1, 1, 0, 0, 0], cash=1000.0, lot_size=10)
    assert sim.size[0] == 90.0  # 1000 / 11 = 90.9 units, rounded down to lots of 10


def test_fraction_scales_the_position_when_below_one():
    sim = run([1, 1, 0, 0, 0], cash=1000.0, fraction=0.25)
    assert sim.size[0] == pytest.approx(250.0 / 11.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("cash", 0.0), ("commission", 0.5), ("fraction", 1.5), ("stop_loss", 1.2), ("lot_size", -1.0)],
)
def test_execution_config_names_the_setting_when_it_is_out_of_range(field, value):
    with pytest.raises(InvalidParameter) as caught:
        ExecutionConfig(**{field: value})
    assert caught.value.name == field


BARS = synthetic_ohlcv(160, seed=5)
OPEN, HIGH, LOW, CLOSE = (BARS[c].to_numpy() for c in ("open", "high", "low", "close"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.lists(st.sampled_from([-1, 0, 1]), min_size=160, max_size=160),
    commission=st.sampled_from([0.0, 0.001, 0.01]),
    slippage_bps=st.sampled_from([0.0, 5.0]),
    fraction=st.sampled_from([1.0, 0.5]),
    lot_size=st.sampled_from([0.0, 1.0]),
    stop_loss=st.sampled_from([None, 0.02, 0.05]),
    take_profit=st.sampled_from([None, 0.03, 0.1]),
)
def test_vectorized_core_matches_a_bar_by_bar_reference_when_targets_are_random(
    target, commission, slippage_bps, fraction, lot_size, stop_loss, take_profit
):
    settings_ = dict(
        cash=10_000.0,
        commission=commission,
        slippage_bps=slippage_bps,
        fraction=fraction,
        lot_size=lot_size,
        stop_loss=stop_loss,
        take_profit=take_profit,
    )
    sim = simulate(OPEN, HIGH, LOW, CLOSE, np.asarray(target, dtype=float), config=ExecutionConfig(**settings_))
    reference = reference_simulate(OPEN, HIGH, LOW, CLOSE, target, **settings_)
    np.testing.assert_allclose(sim.equity, reference.equity, rtol=1e-9)
    assert sim.num_trades == len(reference.trades)
    np.testing.assert_allclose(sim.pnl, [t["pnl"] for t in reference.trades], rtol=1e-9, atol=1e-7)
    np.testing.assert_array_equal(sim.exit_bar, [t["exit_bar"] for t in reference.trades])


@settings(max_examples=40, deadline=None)
@given(
    target=st.lists(st.sampled_from([-1, 0, 1]), min_size=160, max_size=160),
    commission=st.sampled_from([0.0, 0.002]),
    stop_loss=st.sampled_from([None, 0.03]),
)
def test_accounting_identities_hold_when_targets_are_random(target, commission, stop_loss):
    config = ExecutionConfig(cash=10_000.0, commission=commission, slippage_bps=3.0, stop_loss=stop_loss)
    sim = simulate(OPEN, HIGH, LOW, CLOSE, np.asarray(target, dtype=float), config=config)
    # cash + position value = equity, on every bar
    np.testing.assert_allclose(sim.cash + sim.units * CLOSE, sim.equity, rtol=1e-12)
    # the sum of trade pnl (net of fees) is the change in equity
    assert np.sum(sim.pnl) == pytest.approx(sim.equity[-1] - config.cash, abs=1e-6)
    # fees are exactly commission times traded notional on both sides
    notional = np.abs(sim.size) * (sim.entry_price + sim.exit_price)
    np.testing.assert_allclose(sim.fees, notional * commission, rtol=1e-12)
    assert sim.units[-1] == 0, "every position is closed by the end of the data"


def test_short_stop_loss_fills_at_the_open_when_the_price_gaps_up_through_it():
    opens, highs, lows = OPENS.copy(), HIGHS.copy(), LOWS.copy()
    # a 10% stop above the 11.0 short entry is 12.1; bar 1's high (12.0) stays below it, bar 2 opens above
    opens[2], highs[2] = 12.5, 13.5
    sim = run([-1, -1, -1, -1, -1], opens=opens, highs=highs, lows=lows, cash=1000.0, stop_loss=0.10)
    assert EXIT_REASONS[sim.exit_reason[0]] == "stop_loss"
    assert (sim.exit_bar[0], sim.exit_price[0]) == (2, 12.5)
    assert sim.pnl[0] == pytest.approx(-(1000.0 / 11.0) * 1.5)


def test_short_take_profit_fills_at_its_level_when_the_low_reaches_it():
    lows = LOWS.copy()
    lows[3] = 9.5  # a 10% target under the 11.0 short entry is 9.9
    sim = run([-1, -1, -1, -1, -1], lows=lows, cash=1000.0, take_profit=0.10)
    assert EXIT_REASONS[sim.exit_reason[0]] == "take_profit"
    assert (sim.exit_bar[0], sim.exit_price[0]) == (3, pytest.approx(9.9))
