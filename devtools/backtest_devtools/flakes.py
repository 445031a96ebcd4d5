"""Hunt flaky tests: run a pytest selection several times in a row and tally which tests failed in which run.

``make e2e-repeat N=5`` runs the end-to-end tier five times; ``BURN=2`` keeps two CPU burners busy
meanwhile, at the same priority as the tests, to reproduce a loaded CI machine. Each run keeps its own
artifacts (``test-artifacts/repeat-<k>/``: failing tests' status, events, logs and router state) and its
JUnit report, so a failure that happens once in five runs can still be read afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from backtest_devtools.config import REPO_ROOT


@dataclass
class Run:
    number: int
    exit_code: int
    seconds: float
    failed: list[str] = field(default_factory=list)
    passed: int = 0


def _burn() -> None:  # pragma: no cover - runs in a child process until terminated
    while True:
        pass


def failures_from_junit(report: Path) -> tuple[int, list[str]]:
    """(passed, failed test ids) from a JUnit XML report; a missing report counts as nothing passed."""
    if not report.exists():
        return 0, []
    passed, failed = 0, []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is None:
            passed += 1
    return passed, failed


def run_once(number: int, pytest_args: list[str], artifacts: Path) -> Run:
    folder = artifacts / f"repeat-{number}"
    folder.mkdir(parents=True, exist_ok=True)
    junit = folder / "junit.xml"
    env = {**os.environ, "BACKTEST_TEST_ARTIFACTS": str(folder)}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={junit}", *pytest_args]
    started = time.monotonic()
    with (folder / "pytest.log").open("w") as log:
        code = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    passed, failed = failures_from_junit(junit)
    return Run(number, code.returncode, time.monotonic() - started, failed, passed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backtest_devtools.flakes", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="how many times to run the selection (default 5)")
    parser.add_argument("--burn", type=int, default=0, help="CPU burner processes to run meanwhile (default 0)")
    parser.add_argument("--artifacts", type=Path, default=REPO_ROOT / "test-artifacts")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: the pytest selection")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: must be at least 1")
    if args.burn < 0:
        parser.error("--burn: must not be negative")
    pytest_args = [a for a in args.pytest_args if a != "--"] or ["-m", "e2e", "tests/e2e"]
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burn)]
    for burner in burners:
        burner.start()
    runs: list[Run] = []
    try:
        for number in range(1, args.runs + 1):
            print(f"[repeat] run {number}/{args.runs}: pytest {' '.join(pytest_args)}", flush=True)
            run = run_once(number, pytest_args, args.artifacts)
            runs.append(run)
            verdict = "green" if run.exit_code == 0 else f"RED (exit {run.exit_code})"
            print(f"[repeat] run {number}: {verdict}, {run.passed} passed, {len(run.failed)} failed, "
                  f"{run.seconds:.0f}s", flush=True)  # fmt: skip
            for name in run.failed:
                print(f"[repeat]   failed: {name} (artifacts: {args.artifacts / f'repeat-{number}'})", flush=True)
    finally:
        for burner in burners:
            burner.terminate()
    green = sum(1 for run in runs if run.exit_code == 0)
    tally = Counter(name for run in runs for name in run.failed)
    print(f"[repeat] {green} of {len(runs)} runs green" + (f" with {args.burn} CPU burners" if args.burn else ""))
    for name, count in tally.most_common():
        print(f"[repeat] {count}x {name}")
    return 0 if green == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
