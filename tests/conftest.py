"""Shared fixtures: the real control plane, namespaces, the CRD and Prometheus (see backtest_devtools).

Tests run tier by tier: unit first (seconds, no cluster), then integration (real API server, Prometheus,
PostgreSQL), then end-to-end rollouts, then the tier on real pods, so the fastest feedback comes first and
one pytest run still gives one summary and one list of the slowest tests.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["backtest_devtools.fixtures", "backtest_devtools.realfixtures"]

TIERS = ("unit", "integration", "e2e", "e2e_real")


def _tier(item: pytest.Item) -> int:
    parts = item.path.parts
    for index, tier in enumerate(TIERS):
        if tier in parts:
            return index
    return len(TIERS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_tier)  # stable: keeps each file's own order within its tier
