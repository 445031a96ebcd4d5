"""End-to-end tier: a failing test explains itself.

When a test that uses a rollout lab fails, its report gets the object's status, the events, the router's
state and the last lines of the operator's and router's logs, and the same files (with the full logs) are
kept under test-artifacts/<test>/ (``BACKTEST_TEST_ARTIFACTS`` moves it; CI keeps the folder).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from .lab import Lab, lab


@pytest.fixture
def rollout_lab(cluster, k8s_api, namespace, crd_installed, prometheus, tmp_path) -> Iterator[Lab]:
    with lab(cluster, k8s_api, namespace, prometheus, tmp_path) as built:
        yield built


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    report: pytest.TestReport = yield
    if report.failed and report.when in ("call", "setup"):
        labs = [value for value in getattr(item, "funcargs", {}).values() if isinstance(value, Lab)]
        for found in labs:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name)
            report.sections.append(("e2e diagnostics", found.diagnose(name)))
    return report  # type: ignore[return-value]
