"""Stopping the real node leaves nothing on the machine, and it starts again from its warm state.

Runs after every other real test (tests/e2e_real/conftest.py): it stops and restarts the session's node.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backtest_devtools import containerd, netsetup, node

pytestmark = pytest.mark.real


def node_processes() -> list[str]:
    """Command lines of every process that belongs to a real node (ours or a leftover of any run)."""
    marks = (str(containerd.SOCKET), str(netsetup.LIB_ROOT), "backtest-node")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(mark in line for mark in marks) and "pytest" not in line:
                found.append(line)
    return found


def test_stopping_the_node_leaves_no_process_mount_interface_or_rule_and_it_starts_again(real_cluster):
    if not real_cluster.owned:
        pytest.fail("this test stops the node: run it without BACKTEST_REAL_CLUSTER (it borrowed a cluster)")
    before_the_node = json.loads(netsetup.SYSCTL_RECORD.read_text())  # recorded when the node started

    leftovers = real_cluster.local.down(quiet=True)

    assert leftovers == []
    assert netsetup.leftovers() == []
    assert node_processes() == []
    assert not netsetup.interface_exists(netsetup.BRIDGE)
    assert not node.OWNER.exists()
    assert {key: netsetup.read_sysctl(key) for key in before_the_node} == before_the_node

    info = real_cluster.local.up()

    assert info.real_node == "backtest-node"
    assert all(real_cluster.local.status().values())
