"""The strategy registry, parameter schemas, signal semantics and the absence of look-ahead."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_engine import list_strategies, run_backtest
from backtest_engine.backtest import bars_from_frame
from backtest_engine.data import synthetic_ohlcv
from backtest_engine.errors import InvalidParameter, UnknownStrategy
from backtest_engine.indicators import Bars
from backtest_engine.strategies import generate_signals, strategy_names, validate_params
from backtest_engine.strategies.structure import swing_points

REQUIRED = {
    "sma_crossover",
    "ema_crossover",
    "macd",
    "rsi_reversion",
    "bollinger_reversion",
    "donchian_breakout",
    "atr_breakout",
    "momentum",
    "zscore_reversion",
    "pivot_bos",
}


def test_registry_lists_at_least_twelve_strategies_with_schemas_and_defaults_when_asked():
    described = list_strategies()
    names = {s["name"] for s in described}
    assert len(names) >= 12
    assert names >= REQUIRED
    for spec in described:
        assert spec["summary"]
        assert set(spec["defaults"]) == set(spec["parameters"].get("properties", {}))
        validate_params(spec["name"], spec["defaults"])  # defaults are themselves valid


def test_unknown_strategy_is_rejected_with_the_known_names_when_looked_up():
    with pytest.raises(UnknownStrategy, match="sma_crossover"):
        validate_params("no_such_strategy", {})


@pytest.mark.parametrize(
    ("strategy", "params", "blamed"),
    [
        ("sma_crossover", {"fast": 0}, "fast"),
        ("sma_crossover", {"fast": 60, "slow": 50}, "fast"),
        ("sma_crossover", {"speed": 3}, "speed"),
        ("rsi_reversion", {"lower": 60}, "exit_level"),
        ("bollinger_reversion", {"num_std": "wide"}, "num_std"),
        ("pivot_bos", {"left": 0}, "left"),
    ],
)
def test_invalid_parameters_name_the_culprit_when_validated(strategy, params, blamed):
    with pytest.raises(InvalidParameter) as caught:
        validate_params(strategy, params)
    assert caught.value.name == blamed


def test_string_parameters_are_coerced_when_they_come_from_a_command_line():
    params = validate_params("sma_crossover", {"fast": "5", "slow": "20", "allow_short": "false"})
    assert params.model_dump() == {"fast": 5, "slow": 20, "allow_short": False}


def _bars(closes: list[float]) -> Bars:
    c = np.asarray(closes, dtype=float)
    return Bars(c, c + 0.5, c - 0.5, c, np.ones(c.size))


def test_sma_crossover_goes_long_on_an_up_cross_and_short_on_a_down_cross_when_shorts_are_allowed():
    closes = [10, 10, 9, 8, 12, 14, 16, 17, 12, 8, 6, 6]
    signals = generate_signals(_bars(closes), "sma_crossover", validate_params("sma_crossover", {"fast": 1, "slow": 3}))
    # close - SMA3: bar 3: 8 - 9 < 0, bar 4: 12 - 9.67 > 0 (cross up);
    # bar 7: 17 - 15.67 > 0, bar 8: 12 - 15 < 0 (cross down).
    expected = [0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1, -1]
    assert signals.target.tolist() == expected


def test_sma_crossover_goes_flat_instead_of_short_when_allow_short_is_false():
    closes = [10, 10, 9, 8, 12, 14, 16, 17, 12, 8, 6, 6]
    params = validate_params("sma_crossover", {"fast": 1, "slow": 3, "allow_short": False})
    assert generate_signals(_bars(closes), "sma_crossover", params).target.tolist() == [0] * 4 + [1] * 4 + [0] * 4


def test_swing_points_find_pivots_only_when_both_windows_are_lower():
    highs = np.array([1, 2, 5, 2, 1, 3, 4, 9, 4, 3, 2, 1], dtype=float)
    assert swing_points(highs, 2, 2, highs=True).tolist() == [2, 7]
    lows = -highs
    assert swing_points(lows, 2, 2, highs=False).tolist() == [2, 7]


def test_pivot_bos_signals_a_bullish_break_only_after_the_swing_high_is_confirmed():
    # Swing high at bar 2 (high 12.5) is confirmed at bar 4 (right=2); the close breaks above it at bar 6.
    closes = [10, 11, 12, 11, 10, 11, 13, 14, 14]
    bars = _bars(closes)
    params = validate_params("pivot_bos", {"left": 2, "right": 2, "allow_short": False})
    signals = generate_signals(bars, "pivot_bos", params)
    assert signals.structure is not None
    assert signals.structure.swing_highs.tolist() == [2]
    assert signals.structure.bullish_bos.tolist() == [6]
    assert signals.target.tolist() == [0] * 6 + [1] * 3


def test_structure_metrics_are_reported_only_when_the_strategy_detects_structure(daily_bars):
    structure = run_backtest(daily_bars, "pivot_bos", {}).metrics
    plain = run_backtest(daily_bars, "sma_crossover", {}).metrics
    assert structure["pivots_detected"] == structure["swing_highs"] + structure["swing_lows"] > 0
    assert structure["bos_signals"] == structure["bullish_bos"] + structure["bearish_bos"] > 0
    assert 0 <= structure["bos_success_rate"] <= 1
    assert "pivots_detected" not in plain


FUTURE_DATA = synthetic_ohlcv(400, seed=17)


@pytest.mark.parametrize("name", strategy_names())
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=60, max_value=380), seed=st.integers(0, 10_000))
def test_changing_future_bars_never_changes_past_signals_or_trades_when_any_strategy_runs(name, cut, seed):
    altered = FUTURE_DATA.copy()
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 0.05, size=len(altered) - cut - 1).cumsum())
    for column in ("open", "high", "low", "close"):
        altered.iloc[cut + 1 :, altered.columns.get_loc(column)] *= scale
    params = validate_params(name, {})
    original_target = generate_signals(bars_from_frame(FUTURE_DATA), name, params).target
    altered_target = generate_signals(bars_from_frame(altered), name, params).target
    np.testing.assert_array_equal(original_target[: cut + 1], altered_target[: cut + 1])

    before, after = run_backtest(FUTURE_DATA, name, {}), run_backtest(altered, name, {})
    # Equity through bar `cut` depends only on bars <= cut; so do the trades closed by then.
    np.testing.assert_allclose(before.equity.iloc[: cut + 1], after.equity.iloc[: cut + 1], rtol=1e-12)
    limit = FUTURE_DATA.index[cut]
    closed_before = before.trades[before.trades["exit_time"] <= limit].reset_index(drop=True)
    closed_after = after.trades[after.trades["exit_time"] <= limit].reset_index(drop=True)
    pd.testing.assert_frame_equal(closed_before, closed_after)


def test_bos_success_rate_judges_each_break_after_the_horizon_when_computed():
    # Lows and highs are close -/+ 0.5. Swing high at bar 2 (12.5, confirmed at bar 4) breaks at bar 6.
    # Swing low at bar 4 (9.5, confirmed at 6) breaks at bar 9; swing low at bar 9 (7.5, confirmed at 11)
    # breaks at bar 13. Horizon 2: bullish 13 -> 15 succeeds; bearish 8 -> 10 and 7 -> 8 both fail.
    closes = [10, 11, 12, 11, 10, 11, 13, 14, 15, 8, 9, 10, 9, 7, 7.5, 8, 8]
    bars = _bars(closes)
    frame = pd.DataFrame(
        {"open": bars.open, "high": bars.high, "low": bars.low, "close": bars.close, "volume": bars.volume},
        index=pd.date_range("2024-01-01", periods=len(closes), freq="D", name="time"),
    )
    params = {"left": 2, "right": 2, "success_horizon": 2}
    structure = generate_signals(bars, "pivot_bos", validate_params("pivot_bos", params)).structure
    assert structure is not None
    assert structure.bullish_bos.tolist() == [6] and structure.bearish_bos.tolist() == [9, 13]
    m = run_backtest(frame, "pivot_bos", params).metrics
    assert m["bos_signals"] == 3 and m["bos_success_rate"] == pytest.approx(1 / 3)
    assert m["average_bos_move"] == pytest.approx(((15 / 13 - 1) - (10 / 8 - 1) - (8 / 7 - 1)) / 3)
