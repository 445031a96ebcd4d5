"""`make demo` runs end to end: one promotion, two automatic rollbacks (errors, then silently wrong results
caught by the shadow comparison), a summary file, nothing left running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.prometheus]


def test_demo_promotes_one_release_and_rolls_back_the_faulty_ones_when_run(tmp_path):
    summary_file = tmp_path / "demo-summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "backtest_devtools.demo", "--summary", str(summary_file)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    assert (summary["promotions"], summary["rollbacks"]) == (1, 2)
    assert summary["detection_latency_seconds"] is not None
    assert summary["requests"] > 0
    assert summary["client_errors"] == 0  # failed canary requests are re-served by stable
    rolled_back = summary["releases"][1]
    assert rolled_back["outcome"] == "rolled_back" and rolled_back["phase"] == "canary"
    wrong = summary["releases"][2]  # 200, fast, wrong: only the comparison with stable's results sees it
    assert wrong["outcome"] == "rolled_back", wrong
    assert wrong["check"] in ("result_mismatch_trigger", "result_mismatch_rate"), wrong
    assert any(field.startswith("metrics.") for field in wrong["mismatching_fields"]), wrong
    assert "results differed from stable's in: metrics." in result.stdout
    assert "promotions 1, rollbacks 2" in result.stdout
    assert not [cmd for cmd in _command_lines() if "backtest-demo/quant-weight" in cmd], "the demo left its router"


def _command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return lines
