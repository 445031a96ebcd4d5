"""The router's command line: mountable as a subcommand, same arguments under `python -m`."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from backtest_engine.router.cli import (
    add_router_parser,
    build_parser,
    config_from_args,
    run_router,
    weight_source_from_args,
)
from backtest_engine.router.weights import ConfigMapWeightSource, FileWeightSource


def mounted(argv):
    parser = argparse.ArgumentParser(prog="backtest-engine")
    add_router_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_subcommand_dispatches_to_run_router_when_mounted():
    args = mounted(["router", "--stable", "http://s", "--canary", "http://c", "--weight-file", "/w", "--port", "9"])
    assert args.func is run_router
    assert (args.stable, args.canary, args.weight_file, args.port) == ("http://s", "http://c", Path("/w"), 9)
    assert args.latency_objective == 2.0
    assert args.canary_timeout == 5.0


def test_weight_source_is_required_and_exclusive_when_parsing():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--stable", "http://s", "--canary", "http://c"])
    with pytest.raises(SystemExit):
        parser.parse_args(
            [
                "--stable",
                "http://s",
                "--canary",
                "http://c",
                "--weight-file",
                "w",
                "--weight-configmap",
                "a/b",
            ]
        )


def test_weight_source_matches_flag_when_built(tmp_path):
    base = ["--stable", "http://s", "--canary", "http://c"]
    file_args = build_parser().parse_args([*base, "--weight-file", str(tmp_path / "w")])
    cm_args = build_parser().parse_args([*base, "--weight-configmap", "prod/router-weight"])
    assert isinstance(weight_source_from_args(file_args), FileWeightSource)
    source = weight_source_from_args(cm_args)
    assert isinstance(source, ConfigMapWeightSource)
    assert (source.namespace, source.name) == ("prod", "router-weight")


@pytest.mark.parametrize(
    "extra",
    [
        ["--canary-timeout", "1", "--latency-objective", "2"],
        ["--weight-configmap", "no-namespace"],
        ["--stable", "ftp://s"],
    ],
)
def test_router_exits_2_when_settings_break_the_rules(extra, tmp_path, capsys):
    argv = ["--stable", "http://s", "--canary", "http://c"]
    argv += extra if "--weight-configmap" in extra else [*extra, "--weight-file", str(tmp_path / "w")]
    assert run_router(build_parser().parse_args(argv)) == 2
    assert "error:" in capsys.readouterr().err


def test_module_entry_point_prints_usage_when_asked():
    result = subprocess.run(
        [sys.executable, "-m", "backtest_engine.router", "--help"], capture_output=True, text=True, check=True
    )
    assert "--weight-configmap" in result.stdout


def test_shadowing_is_off_by_default_and_configurable_when_parsed():
    base = ["--stable", "http://s", "--canary", "http://c", "--weight-file", "w"]
    default = config_from_args(build_parser().parse_args(base))
    assert (default.shadow_fraction, default.shadow_max_in_flight) == (0.0, 16)
    chosen = config_from_args(
        build_parser().parse_args([*base, "--shadow-fraction", "0.1", "--shadow-max-in-flight", "4"])
    )
    assert (chosen.shadow_fraction, chosen.shadow_max_in_flight) == (0.1, 4)


@pytest.mark.parametrize("value", ["1.5", "-0.1", "many"])
def test_shadow_fraction_outside_zero_to_one_exits_2_with_the_flag_named_when_parsed(value, capsys):
    base = ["--stable", "http://s", "--canary", "http://c", "--weight-file", "w"]
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*base, "--shadow-fraction", value])
    assert exit_info.value.code == 2
    assert "--shadow-fraction" in capsys.readouterr().err
