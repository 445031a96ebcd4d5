"""The metric registry: every metric has a name, a group, a one-line definition and a degenerate value.

A metric is a function of a `MetricContext`. `compute_metrics` evaluates all of them (or a chosen subset,
which is what optimization uses to stay fast) and replaces any undefined result (NaN or infinity, e.g. a
ratio over zero trades or over a flat equity curve) by that metric's documented degenerate value, so the
output is always a dict of finite floats that serializes to JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from backtest_engine.metrics.context import MetricContext

GROUPS = ("core", "risk", "trading", "advanced", "structure")


@dataclass(frozen=True)
class Metric:
    name: str
    group: str
    definition: str
    degenerate: float
    unit: str
    compute: Callable[[MetricContext], float] = field(repr=False)


_METRICS: dict[str, Metric] = {}


def metric(
    name: str, group: str, definition: str, *, degenerate: float = 0.0, unit: str = "ratio"
) -> Callable[[Callable[[MetricContext], float]], Callable[[MetricContext], float]]:
    """Register a metric function under `name` (decorator)."""
    if group not in GROUPS:
        raise ValueError(f"unknown metric group {group!r}")

    def decorate(function: Callable[[MetricContext], float]) -> Callable[[MetricContext], float]:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        _METRICS[name] = Metric(name, group, definition, degenerate, unit, function)
        return function

    return decorate


def all_metrics() -> list[Metric]:
    """Every registered metric, grouped in GROUPS order, in registration order within a group."""
    return sorted(_METRICS.values(), key=lambda m: GROUPS.index(m.group))


def metric_names() -> list[str]:
    return [m.name for m in all_metrics()]


def get_metric(name: str) -> Metric:
    return _METRICS[name]


def compute_metrics(context: MetricContext, names: Iterable[str] | None = None) -> dict[str, float]:
    """Evaluate metrics on `context`; structure metrics only when the strategy reported structure."""
    selected = all_metrics() if names is None else [_METRICS[name] for name in names]
    out: dict[str, float] = {}
    with np.errstate(all="ignore"):  # undefined values are replaced below, not reported as warnings
        for m in selected:
            if m.group == "structure" and context.structure is None:
                continue
            try:
                value = float(m.compute(context))
            except (ZeroDivisionError, OverflowError):  # a ratio over zero, or beyond float range: undefined
                value = math.nan
            out[m.name] = value if math.isfinite(value) else m.degenerate
    return out
