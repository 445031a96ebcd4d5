"""`make e2e-repeat`: runs a selection several times and tallies failures per test, with artifacts per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from backtest_devtools import flakes

FLAKY = """
from pathlib import Path

COUNTER = Path(__file__).with_suffix(".runs")


def test_stable():
    pass


def test_fails_every_second_run():
    runs = int(COUNTER.read_text()) if COUNTER.exists() else 0
    COUNTER.write_text(str(runs + 1))
    assert runs % 2 == 0
"""


def test_tally_names_the_flaky_test_and_its_run_when_it_fails_once_in_two(tmp_path: Path, capsys):
    test_file = tmp_path / "test_flaky_example.py"
    test_file.write_text(FLAKY)
    artifacts = tmp_path / "artifacts"
    code = flakes.main(["--runs", "2", "--artifacts", str(artifacts), "--", "-q", str(test_file)])
    out = capsys.readouterr().out
    assert code == 1
    assert "run 1: green, 2 passed, 0 failed" in out
    assert "run 2: RED (exit 1), 1 passed, 1 failed" in out
    assert "1 of 2 runs green" in out
    assert "1x test_flaky_example::test_fails_every_second_run" in out
    assert (artifacts / "repeat-2" / "junit.xml").exists()
    assert "1 failed, 1 passed" in (artifacts / "repeat-2" / "pytest.log").read_text()


@pytest.mark.parametrize(("flag", "value"), [("--runs", "0"), ("--burn", "-1")])
def test_bad_counts_exit_2_naming_the_flag_when_given(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        flakes.main([flag, value])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
