"""The metric registry: every metric has a name, a group, a one-line definition and when it is undefined.

A metric is a function of a `MetricContext`. `compute_metrics` evaluates all of them (or a chosen subset,
which is what optimization uses to stay fast) and reports any undefined result (NaN or infinity, e.g. a
ratio over zero trades or over a flat equity curve) as None, which is JSON null: never 0, because a 0
would rank a run that never traded above every run with a negative ratio. The condition under which each
metric is undefined is documented in `undefined.UNDEFINED_WHEN` (and docs/metrics.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from backtest_engine.metrics.context import MetricContext
from backtest_engine.metrics.undefined import UNDEFINED_WHEN

GROUPS = ("core", "risk", "trading", "advanced", "structure")


@dataclass(frozen=True)
class Metric:
    name: str
    group: str
    definition: str
    unit: str
    compute: Callable[[MetricContext], float] = field(repr=False)

    @property
    def undefined_when(self) -> str | None:
        """The condition under which this metric is None, or None when it is always defined."""
        return UNDEFINED_WHEN.get(self.name)


_METRICS: dict[str, Metric] = {}


def metric(
    name: str, group: str, definition: str, *, unit: str = "ratio"
) -> Callable[[Callable[[MetricContext], float]], Callable[[MetricContext], float]]:
    """Register a metric function under `name` (decorator)."""
    if group not in GROUPS:
        raise ValueError(f"unknown metric group {group!r}")

    def decorate(function: Callable[[MetricContext], float]) -> Callable[[MetricContext], float]:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        _METRICS[name] = Metric(name, group, definition, unit, function)
        return function

    return decorate


def all_metrics() -> list[Metric]:
    """Every registered metric, grouped in GROUPS order, in registration order within a group."""
    return sorted(_METRICS.values(), key=lambda m: GROUPS.index(m.group))


def metric_names() -> list[str]:
    return [m.name for m in all_metrics()]


def get_metric(name: str) -> Metric:
    return _METRICS[name]


MetricValues = dict[str, float | None]
"""Metric name -> value; None where the metric is undefined for the run."""


def compute_metrics(context: MetricContext, names: Iterable[str] | None = None) -> MetricValues:
    """Evaluate metrics on `context`; structure metrics only when the strategy reported structure."""
    selected = all_metrics() if names is None else [_METRICS[name] for name in names]
    out: MetricValues = {}
    with np.errstate(all="ignore"):  # undefined values become None below, not warnings
        for m in selected:
            if m.group == "structure" and context.structure is None:
                continue
            try:
                value = float(m.compute(context))
            except (ZeroDivisionError, OverflowError):  # a ratio over zero, or beyond float range: undefined
                value = math.nan
            out[m.name] = value if math.isfinite(value) else None
    return out


def rank_value(value: float | None, maximize: bool) -> float:
    """A sort key where larger is better and undefined values come last whatever the direction."""
    if value is None or not math.isfinite(value):
        return -math.inf
    return value if maximize else -value
