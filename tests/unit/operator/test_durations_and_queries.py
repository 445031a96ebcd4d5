"""Durations as users write them, and PromQL built from the docs/metrics-contract.md contract."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtest_operator.api import AnalysisSettings, format_duration, parse_duration
from backtest_operator.queries import (
    MAX_POINTS,
    bucket_matcher,
    build_queries,
    grid_stride,
    quote_label_value,
    selector,
)
from backtest_operator.recordings import range_chunks


@given(st.integers(min_value=0, max_value=10_000_000))
def test_duration_round_trips_through_its_text_form_when_whole_milliseconds(millis):
    value = timedelta(milliseconds=millis)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("1h30m", 5400), ("250ms", 0.25), ("1.5s", 1.5)]
)
def test_duration_text_parses_to_seconds_when_well_formed(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "-5s", "5d", "1h 30m"])
def test_duration_text_is_refused_when_malformed(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_label_values_are_escaped_when_they_contain_quotes_or_backslashes():
    assert quote_label_value('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert selector({"service": 'x"}) or vector(1', "namespace": "prod"}) == (
        'namespace="prod",service="x\\"}) or vector(1"'
    )


def test_bucket_matcher_accepts_both_float_spellings_when_objective_is_whole_seconds():
    assert bucket_matcher(timedelta(seconds=2)) == "2|2\\\\.0"
    assert bucket_matcher(timedelta(milliseconds=500)) == "0\\\\.5"


def test_default_queries_follow_metrics_contract_when_built():
    queries = build_queries(AnalysisSettings(), {"namespace": "prod"}, "canary", timedelta(seconds=30))
    assert queries.requests == 'sum(increase(backtest_router_requests_total{namespace="prod",track="canary"}[30s]))'
    assert 'code=~"5..|transport"' in queries.errors
    assert queries.fallbacks == 'sum(increase(backtest_router_fallbacks_total{namespace="prod"}[30s]))'
    assert 'le=~"2|2\\\\.0"' in queries.fast
    assert queries.latency_p95.startswith("histogram_quantile(0.95, sum by (le) (rate(")


def test_spec_overrides_replace_default_templates_when_given():
    analysis = AnalysisSettings.model_validate({"queries": {"requests": "sum(my_requests{{{selector}}}[{window}])"}})
    queries = build_queries(analysis, {"job": "r"}, "stable", timedelta(minutes=10))
    assert queries.requests == 'sum(my_requests{job="r",}[600s])'


def test_grid_stride_keeps_every_range_query_under_prometheus_point_limit_when_a_phase_is_long():
    assert MAX_POINTS < 11_000
    for intervals in (0, 1, 119, MAX_POINTS, MAX_POINTS + 1, 14_400, 1_000_000):
        stride = grid_stride(intervals)
        assert intervals // stride <= MAX_POINTS
        assert stride == 1 or intervals // (stride - 1) > MAX_POINTS  # no coarser than needed


def test_range_chunks_cover_a_long_range_back_to_back_under_the_point_limit_when_replaying_prometheus():
    start, step = datetime(2026, 11, 1, tzinfo=UTC), timedelta(seconds=30)
    end = start + timedelta(days=5)
    chunks = range_chunks(start, end, step)
    assert chunks[0][0] == start and chunks[-1][1] == end
    for (_, first_end), (second_start, _) in itertools.pairwise(chunks):
        assert second_start - first_end == step
    assert all((b - a) / step + 1 <= MAX_POINTS for a, b in chunks)
