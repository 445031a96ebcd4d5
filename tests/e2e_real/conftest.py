"""The real tier: tests on real pods (marker `real`). Fixtures: backtest_devtools.realfixtures.

The node lifecycle test stops and restarts the session's real node, so it runs after every other test.
"""

from __future__ import annotations

import pytest

LAST = "test_real_node_lifecycle.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0].endswith(LAST))
