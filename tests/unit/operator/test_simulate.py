"""The policy replay simulator, run as users run it: the console script on shipped examples and bad files."""

import contextlib
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backtest_operator.cli import main

ROOT = Path(__file__).parents[3]
POLICY = ROOT / "examples" / "backtestservice.yaml"
RECORDINGS = ROOT / "examples" / "recordings"
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


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
    ("recording", "phase", "check", "reason", "within"),
    [
        # (recording, phase, check, words of the reason, seconds from the fault's start to the rollback)
        ("rollback-error-rate.csv", "canary", "error_rate_vs_stable", "canary error rate", 90),
        # canary timeouts: slow before the fallbacks are clearly over 25%
        ("rollback-fallback-rate.csv", "canary", "slow_rate_vs_stable", "canary slow share", 120),
        ("rollback-latency.csv", "testing", "latency_trigger", "slower than stable's p95 + 2s", 60),
        ("rollback-unhealthy.csv", "testing", "unhealthy", "1 canary pods unhealthy", 30),
        ("rollback-phase-threshold.csv", "testing", "error_rate_vs_stable", "is above stable's", 90),
        ("rollback-worse-than-stable.csv", "testing", "error_rate_vs_stable", "plus the 0.5% margin", 600),
    ],
)
def test_faulty_recording_rolls_back_naming_check_and_evidence_when_replayed(recording, phase, check, reason, within):
    final, _ = outcome_of(recording)
    fault_starts = {"rollback-error-rate.csv": 180, "rollback-fallback-rate.csv": 300, "rollback-latency.csv": 720,
                    "rollback-unhealthy.csv": 1200, "rollback-phase-threshold.csv": 600,
                    "rollback-worse-than-stable.csv": 600}  # fmt: skip
    assert final["outcome"] == "rolled_back"
    assert (final["phase"], final["check"]) == (phase, check)
    assert final["reason"].startswith(f"rolled back in phase {phase}: ")
    assert reason in final["reason"]
    if check != "unhealthy":
        assert "likelihood ratio" in final["reason"] and "needed" in final["reason"]
    elapsed = (datetime.fromisoformat(final["time"]) - START).total_seconds()
    assert 0 < elapsed - fault_starts[recording] <= within


def test_low_traffic_never_promotes_when_requests_stay_below_minimum():
    final, evaluations = outcome_of("low-traffic.csv")
    assert final["outcome"] == "in_progress"
    assert re.search(r"only \d+ canary requests over 30m, 50 needed", final["reason"])
    assert {line["weight"] for line in evaluations} <= {0, 1}


def test_every_evaluation_line_carries_the_numbers_behind_it_when_json():
    _, evaluations = outcome_of("rollback-phase-threshold.csv")
    line = evaluations[-1]
    assert set(line) >= {"time", "phase", "weight", "verdict", "action", "reason", "canary", "stable", "checks"}
    assert line["canary"]["requests"] > 0
    failing = [c for c in line["checks"] if c["verdict"] == "fail"]
    assert failing[0]["name"] == "error_rate_vs_stable"
    assert 0.005 < failing[0]["threshold"] < 0.01 and failing[0]["p_value"] < 0.01


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


def test_corpus_prints_one_outcome_line_per_recording_then_a_summary_when_given_several():
    names = ["healthy.csv", "rollback-error-rate.csv", "rollback-unhealthy.csv", "low-traffic.csv"]
    result = simulate("--policy", POLICY, *[arg for name in names for arg in ("--metrics", RECORDINGS / name)])
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["recording"]).name for line in lines[:-1]] == names
    outcomes = {Path(line["recording"]).name: line for line in lines[:-1]}
    assert outcomes["healthy.csv"]["outcome"] == "promoted"
    assert outcomes["healthy.csv"]["seconds"] == 115 * 60
    assert (outcomes["rollback-unhealthy.csv"]["outcome"], outcomes["rollback-unhealthy.csv"]["check"]) == (
        "rolled_back", "unhealthy")  # fmt: skip
    assert set(outcomes["low-traffic.csv"]) >= {"recording", "outcome", "phase", "time", "check"}
    summary = lines[-1]["summary"]
    assert summary["recordings"] == 4
    assert summary["outcomes"] == {"promoted": 1, "rolled_back": 2, "in_progress": 1}
    detection = summary["detection_seconds"]
    assert detection["min"] <= detection["median"] <= detection["max"]
    assert summary["checks"]["unhealthy"] == 1


def _corpus_dir(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("rollback-unhealthy.csv", "rollback-error-rate.csv", "low-traffic.csv"):
        (corpus / name).write_text((RECORDINGS / name).read_text())
    (corpus / "notes.txt").write_text("not a recording")
    return corpus


def test_corpus_replays_every_csv_of_a_directory_in_name_order_when_given_a_directory(tmp_path):
    result = simulate("--policy", POLICY, "--metrics", _corpus_dir(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["recording"]).name for line in lines[:-1]] == [
        "low-traffic.csv", "rollback-error-rate.csv", "rollback-unhealthy.csv"]  # fmt: skip
    assert lines[-1]["summary"]["recordings"] == 3


def test_corpus_table_has_a_row_per_recording_and_a_summary_when_asked_for_a_table(tmp_path):
    result = simulate("--policy", POLICY, "--metrics", _corpus_dir(tmp_path), "--format", "table")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["outcome", "phase", "after", "check"]
    assert any(line.startswith("rolled_back") and line.endswith("rollback-unhealthy.csv") for line in lines)
    assert lines[-1].startswith("summary: {")


def test_corpus_exits_2_naming_the_file_line_and_column_when_one_recording_is_bad(tmp_path):
    bad = _csv(
        tmp_path, HEADER + "2026-11-02T09:00:00Z,canary,10,0,0,0,0.2\n2026-11-02T09:00:30Z,canary,ten,0,0,0,0.2\n"
    )
    result = simulate("--policy", POLICY, "--metrics", RECORDINGS / "healthy.csv", "--metrics", bad)
    assert result.returncode == 2
    assert f"{bad}: line 3: column 'requests' is not a number" in result.stderr
    assert result.stdout == ""


def test_corpus_exits_2_when_a_directory_holds_no_recordings(tmp_path):
    result = simulate("--policy", POLICY, "--metrics", tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path}: no *.csv recordings in this directory" in result.stderr


@pytest.mark.parametrize(
    ("columns", "row", "message"),
    [
        (",le=0.5,le=2", ",5,4", "column 'le=2' (4) is below the bucket before it"),
        (",le=0.5,le=2", ",5,20", "column 'le=2' (20) exceeds requests"),
        (",le=soon", ",5", "column 'le=soon' is not le=<seconds>"),
    ],
)
def test_bad_latency_buckets_exit_2_naming_the_column_when_a_recording_has_them(tmp_path, columns, row, message):
    body = HEADER.strip() + columns + "\n" + "2026-11-02T09:00:00Z,canary,10,0,0,0,0.2" + row + "\n"
    result = simulate("--policy", POLICY, "--metrics", _csv(tmp_path, body))
    assert result.returncode == 2
    assert message in result.stderr


def test_bad_recording_names_the_file_when_malformed(tmp_path):
    path = _csv(tmp_path, HEADER + "2026-11-02T09:00:00Z,blue,10,0,0,0,0.2\n")
    result = simulate("--policy", POLICY, "--metrics", path)
    assert f"{path}: line 2: column 'track' must be stable or canary" in result.stderr
