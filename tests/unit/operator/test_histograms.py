"""Latency histograms: the p95 as histogram_quantile computes it, and counts of requests slower than a time."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_operator.histograms import Histogram, count_above, quantile

BOUNDS = (0.1, 0.5, 1.0, 2.0)


def test_quantile_interpolates_inside_the_bucket_holding_the_rank_when_computed():
    # 100 requests: 10 under 0.1 s, 40 more under 0.5 s, 40 under 1 s, 5 under 2 s, 5 above.
    histogram = Histogram(BOUNDS, (10, 50, 90, 95), 100)
    assert histogram.quantile(0.5) == pytest.approx(0.5)
    assert histogram.quantile(0.7) == pytest.approx(0.75)
    assert histogram.quantile(0.95) == pytest.approx(2.0)
    assert histogram.quantile(0.99) == pytest.approx(2.0)  # in the +Inf bucket: the highest finite bound


def test_quantile_is_unknown_when_there_are_no_requests():
    assert Histogram(BOUNDS, (0, 0, 0, 0), 0).quantile() is None


def test_count_above_is_exact_on_a_bucket_bound_and_interpolated_inside_a_bucket():
    histogram = Histogram(BOUNDS, (10, 50, 90, 95), 100)
    assert histogram.count_above(2.0) == 5  # the objective's bucket: exact
    assert histogram.count_above(0.5) == 50
    assert histogram.count_above(0.75) == pytest.approx(30)  # half of the (0.5, 1] bucket
    assert histogram.count_above(0.05) == pytest.approx(95)  # inside the first bucket, which starts at 0
    assert histogram.count_above(3.0) == 0  # beyond the highest bound nothing can be told apart


def test_histogram_minus_another_keeps_counts_cumulative_and_never_negative():
    later, earlier = Histogram(BOUNDS, (10, 50, 90, 95), 100), Histogram(BOUNDS, (12, 20, 30, 40), 40)
    rest = later.minus(earlier)
    assert rest.cumulative == (0, 30, 60, 60)
    assert rest.total == 60
    with pytest.raises(ValueError, match="different buckets"):
        later.minus(Histogram((1.0,), (1,), 1))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=5, max_size=5), st.floats(0.0, 3.0))
def test_a_p95_above_a_time_means_more_than_5_percent_of_requests_above_it_when_interpolated_alike(per_bucket, seconds):
    # The identity the latency checks rely on: p95 > t exactly when the count above t exceeds 5%.
    cumulative = tuple(float(c) for c in np.cumsum(per_bucket[:4]))
    total = float(sum(per_bucket))
    if total == 0:
        return
    histogram = Histogram(BOUNDS, cumulative, total)
    p95 = histogram.quantile(0.95)
    above = histogram.count_above(seconds)
    if seconds < BOUNDS[-1] and p95 is not None and abs(p95 - seconds) > 1e-9:
        assert (p95 > seconds) == (above > 0.05 * total + 1e-9)


def test_vectorized_functions_answer_row_by_row_like_the_single_histogram():
    bounds = np.asarray(BOUNDS)
    rows = np.asarray([[10, 50, 90, 95, 100], [0, 0, 0, 0, 0], [0, 0, 3, 3, 4]], dtype=float)
    assert np.allclose(quantile(bounds, rows, 0.95), [2.0, np.nan, 2.0], equal_nan=True)
    assert np.allclose(count_above(bounds, rows, np.asarray([0.75, 0.75, 0.75])), [30.0, 0.0, 2.5])
