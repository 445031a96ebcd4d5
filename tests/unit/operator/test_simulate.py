"""The policy replay simulator, run as users run it: the console script on shipped examples and bad files."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backtest_operator.cli import main

ROOT = Path(__file__).parents[3]
POLICY = ROOT / "examples" / "backtestservice.yaml"
RECORDINGS = ROOT / "examples" / "recordings"


def simulate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in-process (fast); the console script itself is exercised once below."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["simulate", *map(str, args)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def test_console_script_replays_a_recording_when_installed():
    script = Path(sys.executable).parent / "backtest-operator"
    command = [
        str(script),
        "simulate",
        "--policy",
        str(POLICY),
        "--metrics",
        str(RECORDINGS / "rollback-error-rate.csv"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["outcome"] == "rolled_back"


def outcome_of(recording: str, policy: Path = POLICY) -> tuple[dict, list[dict]]:
    result = simulate("--policy", policy, "--metrics", RECORDINGS / recording)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return lines[-1], lines[:-1]


def test_healthy_recording_promotes_after_total_phase_duration_when_replayed():
    final, evaluations = outcome_of("healthy.csv")
    assert final["outcome"] == "promoted"
    assert final["phase"] == "full"
    assert final["time"] == "2026-11-02T10:55:00+00:00"  # 09:00 + 10m + 30m + 1h + 15m
    weights = []
    for line in evaluations:
        if not weights or weights[-1] != line["weight"]:
            weights.append(line["weight"])
    assert weights == [0, 1, 10, 50, 100, 0]


@pytest.mark.parametrize(
    ("recording", "phase", "reason"),
    [
        ("rollback-error-rate.csv", "canary", "canary error rate 30.0% > 10.0% over the last 30s"),
        ("rollback-fallback-rate.csv", "canary", "canary fallback rate 40.0% > 25.0% over the last 30s"),
        ("rollback-latency.csv", "testing", "against stable 0.243s (> 2s) over the last 30s"),
        ("rollback-unhealthy.csv", "testing", "1 canary pods unhealthy"),
        ("rollback-phase-threshold.csv", "testing", "canary error rate 4.0% >= 3.0% over 30m"),
        ("rollback-worse-than-stable.csv", "testing", "(significantly worse, alpha=0.05)"),
    ],
)
def test_faulty_recording_rolls_back_with_its_reason_when_replayed(recording, phase, reason):
    final, _ = outcome_of(recording)
    assert final["outcome"] == "rolled_back"
    assert final["phase"] == phase
    assert final["reason"].startswith(f"rolled back in phase {phase}: ")
    assert reason in final["reason"]


def test_low_traffic_never_promotes_when_requests_stay_below_minimum():
    final, evaluations = outcome_of("low-traffic.csv")
    assert final["outcome"] == "in_progress"
    assert "only 39 canary requests over 30m, 50 needed" in final["reason"]
    assert {line["weight"] for line in evaluations} <= {0, 1}


def test_every_evaluation_line_carries_the_numbers_behind_it_when_json():
    _, evaluations = outcome_of("rollback-phase-threshold.csv")
    line = evaluations[-1]
    assert set(line) >= {"time", "phase", "weight", "verdict", "action", "reason", "canary", "stable", "checks"}
    assert line["canary"]["requests"] > 0
    failing = [c for c in line["checks"] if c["verdict"] == "fail"]
    assert failing[0]["name"] == "error_rate" and failing[0]["threshold"] == 0.03


def test_table_format_prints_header_rows_and_outcome_when_asked():
    result = simulate("--policy", POLICY, "--metrics", RECORDINGS / "rollback-error-rate.csv", "--format", "table")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["time", "phase", "weight", "verdict", "action"]
    assert lines[-1].startswith("==> ROLLED_BACK in phase canary")


def _csv(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(body)
    return path


HEADER = "time,track,requests,errors,fallbacks,slow,latency_p95_seconds\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("time,track,requests,errors,fallbacks,latency_p95_seconds\n", "missing column(s) slow"),
        (HEADER + "2026-11-02T09:00:00Z,canary,-3,0,0,0,0.2\n", "line 2: column 'requests' must be a non-negative"),
        (
            HEADER + "2026-11-02T09:00:30Z,canary,10,0,0,0,0.2\n2026-11-02T09:00:00Z,canary,10,0,0,0,0.2\n",
            "line 3: time 2026-11-02T09:00:00Z is earlier than the line before",
        ),
        (HEADER + "2026-11-02T09:00:00Z,blue,10,0,0,0,0.2\n", "line 2: column 'track' must be stable or canary"),
        (HEADER + "yesterday,canary,10,0,0,0,0.2\n", "line 2: column 'time' is not an ISO 8601 time"),
        (HEADER + "2026-11-02T09:00:00Z,canary,10,11,0,0,0.2\n", "line 2: column 'errors' (11) exceeds requests"),
        (HEADER + "2026-11-02T09:00:00Z,canary,ten,0,0,0,0.2\n", "line 2: column 'requests' is not a number"),
        (HEADER, "no data rows"),
    ],
)
def test_bad_recording_exits_2_naming_line_and_column_when_malformed(tmp_path, body, message):
    result = simulate("--policy", POLICY, "--metrics", _csv(tmp_path, body))
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("weight: 10,", "weight: 0,", "spec.phases.1.weight"),
        ("duration: 30m", "duration: half an hour", "spec.phases.1.duration"),
        ("maxFallbackRate: 0.25", "maxFallbackRate: 2.5", "spec.rollback.maxFallbackRate"),
        ("{name: full,       weight: 100", "{name: full,       weight: 90", "phases: the last phase must have"),
        ("{name: testing,", "{name: canary,", "phases: phase names must be unique"),
        ("weight: 50,", "weight: 5,", "phases: phase weights must be strictly increasing"),
        ("  image: registry.example/backtest-engine:1.4.0", "  imag: x", "spec.image: Field required"),
    ],
)
def test_invalid_manifest_exits_2_naming_the_field_when_policy_is_bad(tmp_path, old, new, message):
    text = POLICY.read_text()
    assert old in text
    policy = tmp_path / "policy.yaml"
    policy.write_text(text.replace(old, new, 1))
    result = simulate("--policy", policy, "--metrics", RECORDINGS / "healthy.csv")
    assert result.returncode == 2, result.stdout[-500:]
    assert message in result.stderr


def test_missing_source_exits_2_when_neither_metrics_nor_prometheus_given():
    result = simulate("--policy", POLICY)
    assert result.returncode == 2
    assert "--metrics" in result.stderr
