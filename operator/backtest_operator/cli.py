"""``backtest-operator``: the command line. Bad input exits 2 with the line or field named.

Each command imports what it needs when it runs (the simulator pulls in scipy and pandas, ``run`` kopf and
the kubernetes client, the models pydantic), so ``--help`` and the ``kubectl backtest`` plugin start in
tens of milliseconds (bench/cli_startup.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from backtest_operator.errors import BacktestOperatorError, InvalidRecording

if TYPE_CHECKING:
    from backtest_operator.api import BacktestServiceSpec

EXIT_BAD_INPUT = 2


def _label(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _duration(text: str) -> timedelta:
    from backtest_operator.api.durations import parse_duration  # noqa: PLC0415 - see the module docstring

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backtest-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", help="watch only these namespaces (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (default)")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL ('' disables)")
    commands.add_parser("ctl", help="kubectl backtest ... (also installed as kubectl-backtest)", add_help=False)
    sim = commands.add_parser(
        "simulate",
        help="replay a rollout policy against recorded metrics",
        description="Replay the rollout of the BacktestService in --policy against recorded router metrics "
        "and print every decision, then the outcome.",
    )
    sim.add_argument("--policy", type=Path, required=True, help="BacktestService manifest (YAML)")
    source = sim.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--metrics",
        type=Path,
        action="append",
        help="CSV: time,track,requests,errors,fallbacks,slow,... (repeatable, or a directory of *.csv: a corpus)",
    )
    source.add_argument("--prometheus", metavar="URL", help="read the router series from this Prometheus")
    sim.add_argument("--from", dest="start", help="start of the Prometheus range (ISO 8601)")
    sim.add_argument("--to", dest="end", help="end of the Prometheus range (ISO 8601)")
    sim.add_argument("--step", type=_duration, help="Prometheus sampling interval (default: analysis.interval)")
    sim.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="label matcher selecting one router in Prometheus (repeatable)",
    )
    sim.add_argument("--format", choices=("json", "table"), default="json")
    return parser


def _recordings(paths: Sequence[Path]) -> list[Path]:
    """The recordings named, a directory standing for every *.csv in it (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(path.glob("*.csv"))
            if not inside:
                raise InvalidRecording(f"{path}: no *.csv recordings in this directory")
            found.extend(inside)
        else:
            found.append(path)
    return found


def _simulate(args: argparse.Namespace) -> int:
    # Imported here: the kubectl plugin shares this module and must start without numpy or scipy.
    from backtest_operator.recordings import parse_time, read_csv, read_prometheus  # noqa: PLC0415
    from backtest_operator.simulate import load_manifest  # noqa: PLC0415

    manifest = load_manifest(args.policy)
    spec = manifest.spec
    if args.metrics is not None:
        paths = _recordings(args.metrics)
        if len(paths) > 1:
            return _corpus(spec, paths, args.format == "table")
        intervals = read_csv(paths[0])
    else:
        if not args.start or not args.end:
            raise InvalidRecording("--prometheus needs --from and --to")
        try:
            start, end = parse_time(args.start), parse_time(args.end)
        except ValueError as exc:
            raise InvalidRecording(f"--from/--to: {exc}") from None
        if end <= start:
            raise InvalidRecording("--to must be after --from")
        step = args.step or spec.analysis.interval
        intervals = read_prometheus(args.prometheus, start, end, spec.analysis, dict(args.label), step)
    from backtest_operator.simulate import TABLE_HEADER, as_json, as_table_row, replay  # noqa: PLC0415

    table = args.format == "table"
    if table:
        print(TABLE_HEADER)
    for item in replay(spec, intervals):
        print(as_table_row(item) if table else json.dumps(as_json(item)), flush=True)
    return 0


def _corpus(spec: BacktestServiceSpec, paths: Sequence[Path], table: bool) -> int:
    """One outcome line per recording, then a summary line; every file is read before any line is printed,
    so a bad file stops the run (exit 2, naming it) without half a report."""
    from backtest_operator.recordings import read_csv  # noqa: PLC0415
    from backtest_operator.simulate import (  # noqa: PLC0415
        CORPUS_HEADER,
        Outcome,
        corpus_row,
        outcome_line,
        replay,
        summarize,
    )

    recordings = [(path, read_csv(path)) for path in paths]
    outcomes: list[Outcome] = []
    if table:
        print(CORPUS_HEADER)
    for path, intervals in recordings:
        outcome = next(item for item in replay(spec, intervals) if isinstance(item, Outcome))
        outcomes.append(outcome)
        line = outcome_line(str(path), outcome)
        print(corpus_row(line) if table else json.dumps(line), flush=True)
    summary = summarize(outcomes)
    print(f"summary: {json.dumps(summary)}" if table else json.dumps({"summary": summary}), flush=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    import kopf  # noqa: PLC0415 - only the run command needs kopf and the handlers

    import backtest_operator.handlers  # noqa: F401, PLC0415 - registers the handlers
    from backtest_operator.sequential import warm_up  # noqa: PLC0415

    warm_up()  # scipy is imported lazily; the first evaluation must not wait for it

    namespaces = args.namespace or []
    # kopf.run() leaves logging unconfigured and kopf's object logger only feeds Event posting (turned off
    # for log lines), so without this a running operator printed nothing, not even RBAC denials.
    # INFO to stderr, each object's line prefixed with its namespace/name.
    kopf.configure(log_prefix=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # not one line per liveness probe
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per Prometheus query
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        return kubectl_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    try:
        return _simulate(args)
    except BacktestOperatorError as exc:
        print(f"backtest-operator {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kubectl-backtest`` plugin."""
    from backtest_operator.ctl import main as ctl_main  # noqa: PLC0415 - see the module docstring

    return ctl_main(argv)


if __name__ == "__main__":
    sys.exit(main())
