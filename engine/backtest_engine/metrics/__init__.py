"""The metric set. Importing this package registers every metric (see docs/metrics.md for the list)."""

from backtest_engine.metrics import advanced, core, risk, structure, trading
from backtest_engine.metrics.context import MetricContext
from backtest_engine.metrics.registry import (
    GROUPS,
    Metric,
    MetricValues,
    all_metrics,
    compute_metrics,
    get_metric,
    metric_names,
    rank_value,
)

__all__ = [
    "GROUPS",
    "Metric",
    "MetricContext",
    "MetricValues",
    "advanced",
    "all_metrics",
    "compute_metrics",
    "core",
    "get_metric",
    "metric_names",
    "rank_value",
    "risk",
    "structure",
    "trading",
]
