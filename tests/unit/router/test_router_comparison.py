"""The declared comparison rules of shadowed answers (router/comparison.py), on real engine results."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backtest_engine.backtest import run_backtest
from backtest_engine.router.comparison import (
    EQUITY_SUMMARY,
    IGNORED_FIELDS,
    METRIC_TOLERANCES,
    ComparisonOutcome,
    ComparisonRules,
    ShadowKind,
    Tolerance,
    equity_summary,
    shadow_kind,
)
from backtest_engine.service import datasets
from backtest_engine.service.faults import RETURN_METRICS, biased

RULES = ComparisonRules()
RESULT = ShadowKind.BACKTEST_RESULT


def engine_result(bars: int = 600, seed: int = 4) -> dict[str, Any]:
    """A result shaped as the engine's API answers it (BacktestDetail), from a real run."""
    run = run_backtest(datasets.synthetic_frame(bars, seed), "sma_crossover", {"fast": 5, "slow": 20})
    payload = msgspec.json.decode(msgspec.json.encode(run.to_dict(include_equity=True)))
    return {
        "id": "3f1c0d9e-0000-4000-8000-000000000001",
        "strategy": payload["strategy"],
        "params": payload["params"],
        "dataset": {"key": f"synthetic:SYN:{bars}:{seed}", "id": None, "symbol": "SYN", "timeframe": "1d"},
        "engine_version": "abc123",
        "duration_seconds": 0.0123,
        "created_at": "2026-01-02T03:04:05",
        "metrics": payload["metrics"],
        "cached": False,
        "config": payload["config"],
        "trades": payload["trades"],
        "equity": payload["equity"],
    }


BASE = engine_result()


def compare(stable: dict[str, Any], canary: dict[str, Any], stable_status: int = 201, canary_status: int = 201):
    return RULES.compare(RESULT, stable_status, msgspec.json.encode(stable), canary_status, msgspec.json.encode(canary))


def test_results_match_when_only_ignored_fields_differ():
    other = copy.deepcopy(BASE)
    other.update(id="ffff", engine_version="new", duration_seconds=9.9, created_at="2030-01-01T00:00:00", cached=True)
    verdict = compare(BASE, other, 201, 200)  # a new run on stable, the cached one on canary
    assert verdict.outcome is ComparisonOutcome.MATCH
    assert verdict.fields == ()


def test_results_match_when_the_canary_serializes_differently():
    """Spacing, key order and number spelling differ between serializers; the values do not."""
    reordered = {name: BASE[name] for name in reversed(list(BASE))}
    reordered["metrics"] = dict(reversed(list(BASE["metrics"].items())))
    stable_body = json.dumps(BASE, indent=1).encode()
    canary_body = json.dumps(reordered, separators=(",", ":")).replace('"cash":10000.0', '"cash":1e4').encode()
    assert b'"cash":1e4' in canary_body
    verdict = RULES.compare(RESULT, 201, stable_body, 201, canary_body)
    assert verdict.outcome is ComparisonOutcome.MATCH, verdict


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {name: st.one_of(st.text(max_size=20), st.floats(allow_nan=False), st.booleans()) for name in IGNORED_FIELDS}
    )
)
def test_results_match_whatever_the_ignored_fields_hold_when_the_rest_is_equal(ignored):
    other = {**copy.deepcopy(BASE), **ignored}
    assert compare(BASE, other).outcome is ComparisonOutcome.MATCH


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(BASE["metrics"])),
    factor=st.floats(min_value=1e-6, max_value=0.5) | st.floats(min_value=-0.5, max_value=-1e-6),
)
def test_a_metric_changed_beyond_its_tolerance_is_a_mismatch_naming_it_when_compared(name, factor):
    value = BASE["metrics"][name]
    assume(abs(value) > 1e-2)
    tolerance = METRIC_TOLERANCES.get(name, RULES.numbers)
    assume(abs(factor) > 10 * tolerance.relative)
    other = copy.deepcopy(BASE)
    other["metrics"][name] = value * (1 + factor)
    verdict = compare(BASE, other)
    assert verdict.outcome is ComparisonOutcome.MISMATCH
    assert verdict.fields == (f"metrics.{name}",)
    assert verdict.differences[0].path == f"metrics.{name}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ulps=st.integers(min_value=-64, max_value=64))
def test_rounding_noise_in_every_number_matches_when_compared(ulps):
    """A rebuild that rounds differently (a few units in the last place) is not a different result."""

    def nudge(value: Any) -> Any:
        if isinstance(value, float) and value != 0:
            out = value
            for _ in range(abs(ulps)):
                out = math.nextafter(out, math.inf if ulps > 0 else -math.inf)
            return out
        if isinstance(value, dict):
            return {k: nudge(v) for k, v in value.items()}
        if isinstance(value, list):
            return [nudge(v) for v in value]
        return value

    assert compare(BASE, nudge(copy.deepcopy(BASE))).outcome is ComparisonOutcome.MATCH


def test_the_biased_metrics_are_named_when_the_canary_has_the_bias_fault():
    canary = biased(copy.deepcopy(BASE), 0.01)
    verdict = compare(BASE, canary)
    assert verdict.outcome is ComparisonOutcome.MISMATCH
    expected = {f"metrics.{name}" for name in RETURN_METRICS if BASE["metrics"][name] != 0}
    assert set(verdict.fields) == expected
    assert len(verdict.differences) == RULES.max_differences  # one example per field, bounded


def test_a_dropped_trade_is_a_trade_count_mismatch_when_compared():
    canary = copy.deepcopy(BASE)
    del canary["trades"][3]
    verdict = compare(BASE, canary)
    assert verdict.outcome is ComparisonOutcome.MISMATCH
    assert verdict.fields == ("trades.count",)
    assert (verdict.differences[0].stable, verdict.differences[0].canary) == (
        str(len(BASE["trades"])),
        str(len(BASE["trades"]) - 1),
    )


def test_fills_shifted_by_one_bar_name_the_trade_columns_when_compared():
    canary = copy.deepcopy(BASE)
    trade, later = canary["trades"][2], BASE["trades"][2]
    trade["entry_time"] = BASE["equity"][[p["time"] for p in BASE["equity"]].index(later["entry_time"]) + 1]["time"]
    trade["entry_price"] *= 1.003
    verdict = compare(BASE, canary)
    assert verdict.outcome is ComparisonOutcome.MISMATCH
    assert verdict.fields == ("trades.entry_time", "trades.entry_price")
    assert verdict.differences[0].path == "trades[2].entry_time"


def test_a_changed_equity_curve_names_the_summary_fields_when_compared():
    canary = copy.deepcopy(BASE)
    canary["equity"][-1]["equity"] += 25.0
    verdict = compare(BASE, canary)
    assert verdict.outcome is ComparisonOutcome.MISMATCH
    assert set(verdict.fields) <= {f"equity.{key}" for key in EQUITY_SUMMARY}
    assert "equity.final" in verdict.fields
    shorter = copy.deepcopy(BASE)
    shorter["equity"].pop()
    assert "equity.points" in compare(BASE, shorter).fields


def test_a_metric_the_canary_dropped_is_a_mismatch_and_one_it_added_is_not_when_compared():
    canary = copy.deepcopy(BASE)
    canary["metrics"]["brand_new_metric"] = 1.0
    canary["new_top_level_field"] = {"x": 1}
    assert compare(BASE, canary).outcome is ComparisonOutcome.MATCH
    del canary["metrics"]["sharpe_ratio"]
    verdict = compare(BASE, canary)
    assert verdict.fields == ("metrics.sharpe_ratio",)
    assert verdict.differences[0].canary == "<missing>"


def test_params_config_dataset_and_unknown_fields_are_compared_under_bounded_labels():
    canary = copy.deepcopy(BASE)
    canary["params"]["fast"] = 6
    canary["config"]["commission"] = 0.001
    canary["dataset"]["symbol"] = "OTHER"
    stable = {**copy.deepcopy(BASE), "surprise": [1, 2]}
    canary["surprise"] = [1, 3]
    verdict = compare(stable, canary)
    assert verdict.fields == ("params", "dataset", "config", "other")
    assert "surprise" not in verdict.fields  # an unknown field never becomes a label of its own


@pytest.mark.parametrize(
    ("stable", "canary", "outcome", "fields"),
    [
        (201, 200, ComparisonOutcome.MATCH, ()),
        (200, 201, ComparisonOutcome.MATCH, ()),
        (201, 422, ComparisonOutcome.MISMATCH, ("status",)),
        (404, 200, ComparisonOutcome.MISMATCH, ("status",)),
        (422, 422, ComparisonOutcome.MATCH, ()),
        (201, 503, ComparisonOutcome.ERROR, ()),
        (201, 500, ComparisonOutcome.ERROR, ()),
        (201, 429, ComparisonOutcome.ERROR, ()),
    ],
)
def test_statuses_are_judged_by_the_declared_rules_when_compared(stable, canary, outcome, fields):
    body = msgspec.json.encode(BASE)
    verdict = RULES.compare(RESULT, stable, body, canary, b'{"detail": "x"}' if canary >= 300 else body)
    assert verdict.outcome is outcome
    assert verdict.fields == fields


def test_200_and_201_differ_when_the_request_is_not_a_backtest_result():
    verdict = RULES.compare(ShadowKind.STATUS, 200, b"{}", 201, b"{}")
    assert verdict.fields == ("status",)


def test_only_the_status_is_compared_when_the_kind_is_status():
    verdict = RULES.compare(ShadowKind.STATUS, 200, b'{"version": "a"}', 200, b'{"version": "b"}')
    assert verdict.outcome is ComparisonOutcome.MATCH


def test_an_unparsable_canary_body_is_a_mismatch_and_an_unparsable_stable_body_an_error():
    body = msgspec.json.encode(BASE)
    canary_garbage = RULES.compare(RESULT, 201, body, 201, b"<html>oops</html>")
    assert canary_garbage.outcome is ComparisonOutcome.MISMATCH
    assert canary_garbage.fields == ("body",)
    stable_garbage = RULES.compare(RESULT, 201, b"[1, 2]", 201, body)
    assert stable_garbage.outcome is ComparisonOutcome.ERROR


def test_the_sample_of_differences_is_bounded_in_count_and_size_when_everything_differs():
    canary = copy.deepcopy(BASE)
    canary["metrics"] = {name: value + 1.0 for name, value in BASE["metrics"].items()}
    canary["params"] = {"blob": "x" * 10_000}
    verdict = compare(BASE, canary)
    assert len(verdict.fields) == len(BASE["metrics"]) + 1
    assert len(verdict.differences) == RULES.max_differences
    assert all(len(d.stable) <= RULES.max_value_chars for d in verdict.differences)
    assert all(len(d.canary) <= RULES.max_value_chars for d in verdict.differences)


def test_labels_stay_within_the_declared_set_when_names_are_hostile():
    stable = copy.deepcopy(BASE)
    canary = copy.deepcopy(BASE)
    stable["metrics"]['bad name"}'] = 1.0
    canary["metrics"]['bad name"}'] = 2.0
    stable["trades"][0]["weird column"] = 1
    canary["trades"][0]["weird column"] = 2
    assert set(compare(stable, canary).fields) == {"metrics.other", "trades.other"}


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("POST", "/api/v1/backtests", ShadowKind.BACKTEST_RESULT),
        ("GET", "/api/v1/backtests/3f1c0d9e-0000-4000-8000-000000000001", ShadowKind.BACKTEST_RESULT),
        ("GET", "/api/v1/backtests", ShadowKind.STATUS),
        ("GET", "/api/v1/backtests/abc/export", ShadowKind.STATUS),
        ("GET", "/api/v1/strategies", ShadowKind.STATUS),
        ("HEAD", "/api/v1/backtests/abc", ShadowKind.STATUS),
        ("GET", "/api/v1/optimizations/abc", ShadowKind.STATUS),
        ("POST", "/api/v1/datasets", None),  # upload
        ("POST", "/api/v1/optimizations", None),  # job control
        ("DELETE", "/api/v1/optimizations/abc", None),  # job control
        ("PUT", "/api/v1/backtests", None),
        ("PATCH", "/api/v1/backtests/abc", None),
        ("POST", "/api/v1/backtests/abc", None),
        ("OPTIONS", "/api/v1/backtests", None),
    ],
)
def test_only_reads_and_backtest_runs_are_shadowed_when_classified(method, path, kind):
    assert shadow_kind(method, path) is kind


@settings(deadline=None)  # timing on a shared machine is not what this checks
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_a_number_is_the_same_as_itself_and_not_as_one_percent_more_when_judged(value):
    tolerance = Tolerance(1e-9, 1e-9)
    assert tolerance.same(value, value)
    if abs(value) > 1e-6:
        assert not tolerance.same(value, value * 1.01)


def test_nan_is_never_the_same_as_a_number_when_judged():
    assert not Tolerance(1e-9, 1e-9).same(math.nan, 0.0)


def test_equity_summary_holds_length_ends_and_extremes_when_summarised():
    summary = equity_summary(BASE["equity"])
    values = [p["equity"] for p in BASE["equity"]]
    assert summary["points"] == len(values)
    assert (summary["start"], summary["end"]) == (BASE["equity"][0]["time"], BASE["equity"][-1]["time"])
    assert (summary["final"], summary["min"], summary["max"]) == (values[-1], min(values), max(values))
    assert equity_summary([])["points"] == 0
    assert equity_summary([{"no": 1}])["final"] is None
