"""Ask Prometheus what the router's shadow comparisons found, on the same grid as the other stretches.

``prometheus.measure`` calls ``measure_shadow`` while shadowing is on (``budget.shadowing``): the phase's
comparisons by outcome and its mismatching fields (for status), and the judged comparisons and mismatches
interval by interval (for the sequential test of ``mismatches``). The grid is the one of
``prometheus._stretches``: points at ``since + k * step``, then the partial stretch ending now, computed
as the phase total minus the grid. Queries: ``queries.shadow_queries`` (docs/metrics-contract.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from backtest_operator.api import SHADOW_TOP_FIELDS, FieldCount, ShadowNumbers
from backtest_operator.queries import grid_stride, shadow_queries

if TYPE_CHECKING:
    from backtest_operator.prometheus import PrometheusClient


@dataclass(frozen=True)
class ShadowGrid:
    """The phase's shadow numbers, and (comparisons, mismatches) per stretch, oldest first."""

    numbers: ShadowNumbers
    stretches: tuple[tuple[float, float], ...]


def grid_points(since: datetime, now: datetime, interval: timedelta) -> tuple[int, timedelta]:
    """How many whole grid stretches lie between ``since`` and ``now``, and their length (as
    ``prometheus._stretches`` lays them out: no grid for a phase shorter than two intervals)."""
    intervals = int((now - since) / interval)
    stride = grid_stride(intervals)
    return (intervals // stride if intervals >= 2 else 0), interval * stride


def top_fields(by_field: dict[str, float]) -> list[FieldCount]:
    """The most frequently mismatching fields, most frequent first (ties by name), at most five."""
    ranked = sorted(((-count, name) for name, count in by_field.items() if name and count > 0))
    return [FieldCount(field=name, count=-negative) for negative, name in ranked[:SHADOW_TOP_FIELDS]]


def shadow_numbers(by_outcome: dict[str, float], by_field: dict[str, float]) -> ShadowNumbers:
    """Counts by outcome as status shows them; counts are never negative (a counter reset)."""
    match, mismatch = max(0.0, by_outcome.get("match", 0.0)), max(0.0, by_outcome.get("mismatch", 0.0))
    return ShadowNumbers(
        comparisons=match + mismatch,
        mismatches=mismatch,
        errors=max(0.0, by_outcome.get("error", 0.0)),
        skipped=max(0.0, by_outcome.get("skipped", 0.0)),
        top_fields=top_fields(by_field),
    )


async def measure_shadow(
    client: PrometheusClient, labels: dict[str, str], interval: timedelta, since: datetime, now: datetime
) -> ShadowGrid:
    """The shadow comparisons of one BacktestService's routers since ``since``."""
    points, step = grid_points(since, now, interval)
    per_step, _ = shadow_queries(labels, step)
    total_outcomes, total_fields = shadow_queries(labels, now - since)
    first, last = since + step, since + step * points

    async def no_grid() -> dict[str, dict[float, float]]:
        return {}

    grid, by_outcome, by_field = await asyncio.gather(
        client.range_by(per_step, first, last, step, "outcome") if points else no_grid(),
        client.instant_by(total_outcomes, now, "outcome"),
        client.instant_by(total_fields, now, "field"),
    )
    stretches: list[tuple[float, float]] = []
    for k in range(1, points + 1):
        stamp = round((since + step * k).timestamp(), 3)
        match = max(0.0, grid.get("match", {}).get(stamp, 0.0))
        mismatch = max(0.0, grid.get("mismatch", {}).get(stamp, 0.0))
        stretches.append((match + mismatch, mismatch))
    numbers = shadow_numbers(by_outcome, by_field)
    comparisons = max(0.0, numbers.comparisons - sum(c for c, _ in stretches))
    mismatches = min(comparisons, max(0.0, numbers.mismatches - sum(m for _, m in stretches)))
    stretches.append((comparisons, mismatches))
    return ShadowGrid(numbers, tuple(stretches))
