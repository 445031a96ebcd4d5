"""Latency histograms as Prometheus keeps them: cumulative counts per bucket upper bound (``le``).

Two questions are asked of them, both with the rule ``histogram_quantile`` uses (observations spread
evenly inside a bucket), so that a canary identical to stable gives the same answer on both sides:

* ``quantile``: stable's p95 over one interval;
* ``count_above``: how many canary requests were slower than a given time. "The canary's p95 is above
  stable's p95 plus X" is the same statement as "more than 5% of canary requests are slower than stable's
  p95 plus X", and a count can be tested at any sample size, where a p95 of a dozen requests cannot.

Bounds are finite and increasing; the ``+Inf`` bucket is the total. Functions accept numpy arrays with
any leading dimensions (one histogram per row), for the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
ArrayOrFloat = float | Array

P95 = 0.95
MIN_REFERENCE_REQUESTS = 20
"""Stable requests a stretch needs for its p95 to be the reference of the canary's latency checks."""


@dataclass(frozen=True)
class Histogram:
    """One track's latency over one stretch: cumulative counts at ``bounds``, plus the total (+Inf)."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.cumulative):
            raise ValueError("a histogram needs one cumulative count per bound")

    def quantile(self, q: float = P95) -> float | None:
        value = float(quantile(np.asarray(self.bounds), np.asarray([*self.cumulative, self.total]), q))
        return None if math.isnan(value) else value

    def count_above(self, seconds: float) -> float:
        return float(count_above(np.asarray(self.bounds), np.asarray([*self.cumulative, self.total]), seconds))

    def minus(self, other: Histogram) -> Histogram:
        """The observations in this histogram but not in ``other`` (same bounds), never negative."""
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets cannot be subtracted")
        counts = tuple(max(0.0, a - b) for a, b in zip(self.cumulative, other.cumulative, strict=True))
        return Histogram(self.bounds, _monotone(counts), max(0.0, self.total - other.total))


def _monotone(counts: Sequence[float]) -> tuple[float, ...]:
    result, highest = [], 0.0
    for value in counts:
        highest = max(highest, value)
        result.append(highest)
    return tuple(result)


def quantile(bounds: Array, cumulative: Array, q: float) -> Array:
    """Prometheus' ``histogram_quantile`` over the last axis (``cumulative`` ends with the +Inf total).

    NaN where there are no observations; the highest finite bound when the rank falls in the +Inf bucket.
    """
    counts = np.asarray(cumulative, dtype=np.float64)
    edges = np.asarray(bounds, dtype=np.float64)
    total = counts[..., -1]
    rank = q * total
    # First bucket whose cumulative count reaches the rank.
    index = np.minimum((counts < rank[..., None]).sum(axis=-1), counts.shape[-1] - 1)
    lower_edges = np.concatenate([[0.0 if edges[0] > 0 else edges[0]], edges])
    upper = np.take(np.concatenate([edges, [edges[-1]]]), index)
    lower = np.take(lower_edges, index)
    below = np.where(index > 0, np.take_along_axis(counts, np.maximum(index - 1, 0)[..., None], -1)[..., 0], 0.0)
    inside = np.take_along_axis(counts, index[..., None], -1)[..., 0] - below
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(inside > 0, lower + (upper - lower) * (rank - below) / inside, upper)
    in_inf_bucket = index == counts.shape[-1] - 1
    value = np.where(in_inf_bucket, edges[-1], value)
    return np.asarray(np.where(total > 0, value, np.nan), dtype=np.float64)


def count_above(bounds: Array, cumulative: Array, seconds: ArrayOrFloat) -> Array:
    """Observations slower than ``seconds``, interpolated inside its bucket (exact on a bound).

    Beyond the highest finite bound nothing can be told apart, so nothing is counted (a conservative
    answer: an undercount can only delay a rollback, never cause one).
    """
    counts = np.asarray(cumulative, dtype=np.float64)
    edges = np.asarray(bounds, dtype=np.float64)
    limit = np.asarray(seconds, dtype=np.float64)
    total = counts[..., -1]
    finite = counts[..., :-1]
    index = np.searchsorted(edges, limit, side="left")  # first bound >= limit
    clipped = np.minimum(index, len(edges) - 1)
    upper = edges[clipped]
    lower = np.where(clipped > 0, edges[np.maximum(clipped - 1, 0)], 0.0 if edges[0] > 0 else edges[0])
    at_upper = np.take_along_axis(finite, np.broadcast_to(clipped, total.shape)[..., None], -1)[..., 0]
    at_lower = np.where(
        clipped > 0,
        np.take_along_axis(finite, np.broadcast_to(np.maximum(clipped - 1, 0), total.shape)[..., None], -1)[..., 0],
        0.0,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(upper > lower, (upper - limit) / (upper - lower), 0.0)
    above = (total - at_upper) + (at_upper - at_lower) * np.clip(share, 0.0, 1.0)
    above = np.where(index >= len(edges), 0.0, above)
    return np.asarray(np.clip(above, 0.0, total), dtype=np.float64)
