"""``kubectl backtest``: inspect and steer rollouts. Every command only patches the BacktestService.

Pause and resume set ``spec.paused``; promote, promote --full, abort and retry set a control annotation to
a fresh token (see ``controls.py``), which is exactly what a GitOps pipeline would commit instead.

Start-up time is part of the interface (a plugin an SRE types during an incident): this module imports the
standard library, ``names`` and ``kubeapi`` only, and ``kubeapi`` loads PyYAML only to read a kubeconfig.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from backtest_operator.kubeapi import ApiError, Client, KubeconfigError, connect
from backtest_operator.names import CONTROL_ANNOTATIONS, GROUP, PLURAL, VERSION

EXIT_BAD_INPUT = 2
WATCH_SECONDS = 300
"""Length of one watch request; the server ends it then (or earlier) and the plugin reconnects."""
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)


def _number(value: Any, spec: str) -> str:
    return "-" if value is None else format(float(value), spec)


def _clock(stamp: str | None, pattern: str) -> str:
    if not stamp:
        return "-"
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).strftime(pattern)


def render_status(body: dict[str, Any]) -> str:
    """A screenful for an SRE: where the rollout is, why, the numbers, and the recent history."""
    meta = body["metadata"]
    status: dict[str, Any] = body.get("status") or {}
    step = status.get("stepName")
    weight = status.get("canaryWeight", 0)
    effective = status.get("effectiveWeight")
    lines = [
        f"{meta['namespace']}/{meta['name']}  image {body['spec']['image']}",
        f"State:    {status.get('phase', 'Initializing')}" + (f"  (phase {step})" if step else ""),
        f"Weight:   {weight}% to canary"
        + ("" if effective is None or effective == weight else f"  (data plane applies {effective}%)"),
        f"Stable:   {status.get('stableRevision') or '-'}    Canary: {status.get('canaryRevision') or '-'}"
        + (f"    Previous: {status['previousRevision']}" if status.get("previousRevision") else ""),
        f"Message:  {status.get('message', '')}",
    ]
    analysis = status.get("lastAnalysis")
    if analysis:
        lines.append(
            f"Analysis: {analysis['verdict']} at {_clock(analysis.get('time'), '%H:%M:%S')} "
            f"(phase {analysis.get('phase')})"
        )
        lines.append(f"  {'check':<24} {'verdict':<13} {'value':>10} {'threshold':>10} {'p-value':>9}")
        for check in analysis.get("checks") or []:
            value, threshold = _number(check.get("value"), ".4g"), _number(check.get("threshold"), ".4g")
            p_value = _number(check.get("pValue"), ".3g")
            lines.append(f"  {check['name']:<24} {check['verdict']:<13} {value:>10} {threshold:>10} {p_value:>9}")
        if analysis.get("shadow"):
            lines += _shadow_lines(analysis["shadow"])
    if status.get("conditions"):
        lines.append("Conditions:")
        lines += [
            f"  {c['type']:<13} {c['status']:<7} {c['reason']:<18} {c.get('message', '')[:90]}"
            for c in status["conditions"]
        ]
    if status.get("history"):
        lines.append("History:")
        for entry in status["history"]:
            where = f" in {entry['phase']}" if entry.get("phase") else ""
            stamp = _clock(entry.get("finishedAt"), "%Y-%m-%d %H:%M")
            lines.append(f"  {stamp} {entry['outcome']:<11} {entry['revision']}{where}: {entry.get('reason', '')}")
    return "\n".join(lines)


def _shadow_lines(shadow: dict[str, Any]) -> list[str]:
    """What the router's shadow comparisons found over the phase: counts, then the top mismatching fields."""
    compared, mismatched = float(shadow.get("comparisons", 0)), float(shadow.get("mismatches", 0))
    share = f" ({mismatched / compared:.1%})" if compared else ""
    lines = [
        f"Shadow:   {compared:.0f} comparisons, {mismatched:.0f} mismatches{share}, "
        f"{float(shadow.get('errors', 0)):.0f} errors, {float(shadow.get('skipped', 0)):.0f} skipped"
    ]
    fields = shadow.get("topFields") or []
    if fields:
        lines.append("  mismatching fields: " + ", ".join(f"{f['field']} ({float(f['count']):.0f})" for f in fields))
    return lines


def _client(args: argparse.Namespace) -> Client:
    connection = connect(args.kubeconfig, args.context, args.namespace)
    args.namespace = connection.namespace
    return Client(connection)


def _collection(args: argparse.Namespace) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{args.namespace}/{PLURAL}"


def _patch(args: argparse.Namespace, body: dict[str, Any]) -> None:
    client = _client(args)
    client.merge_patch(f"{_collection(args)}/{args.name}", body)


def _token() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _control(name: str) -> Callable[[argparse.Namespace], None]:
    def act(args: argparse.Namespace) -> None:
        key = "promote_full" if name == "promote" and args.full else name
        _patch(args, {"metadata": {"annotations": {CONTROL_ANNOTATIONS[key]: _token()}}})
        print(f"{key.replace('_', '-')} requested for {args.name}")

    return act


def _paused(value: bool) -> Callable[[argparse.Namespace], None]:
    def act(args: argparse.Namespace) -> None:
        _patch(args, {"spec": {"paused": value}})
        print(f"{args.name} {'paused' if value else 'resumed'}")

    return act


def _status(args: argparse.Namespace) -> None:
    client = _client(args)
    path = f"{_collection(args)}/{args.name}"
    body = client.get(path)
    print(render_status(body), flush=True)
    if args.watch:
        follow(client, _collection(args), args.name, body, sleep=time.sleep)


def follow(client: Client, collection: str, name: str, body: dict[str, Any], sleep: Callable[[float], None]) -> None:
    """Print the object each time its status changes, until it is deleted or the user interrupts.

    A watch ends whenever the API server closes it (its timeout, a restart, a load balancer's idle limit);
    the plugin then watches again from the last resourceVersion it saw, and after 410 Gone (that version
    was compacted away) from a fresh read. Dropped connections are retried with a growing delay.
    """
    last_status, version = body.get("status"), body["metadata"]["resourceVersion"]
    failures = 0
    while True:
        params = {"fieldSelector": f"metadata.name={name}", "resourceVersion": version, "allowWatchBookmarks": "true"}
        try:
            for event in client.watch(collection, params, WATCH_SECONDS):
                failures = 0
                kind, current = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if current.get("code") == 410:
                        raise _Expired
                    raise ApiError(int(current.get("code", 500)), str(current.get("message", "watch error")))
                version = current.get("metadata", {}).get("resourceVersion", version)
                if kind == "DELETED":
                    print(f"\n{name} was deleted", flush=True)
                    return
                if kind in ("ADDED", "MODIFIED") and current.get("status") != last_status:
                    last_status = current.get("status")
                    print(f"\n--- {time.strftime('%H:%M:%S')}\n{render_status(current)}", flush=True)
        except _Expired:
            fresh = client.get(f"{collection}/{name}")
            version = fresh["metadata"]["resourceVersion"]
            if fresh.get("status") != last_status:
                last_status = fresh.get("status")
                print(f"\n--- {time.strftime('%H:%M:%S')}\n{render_status(fresh)}", flush=True)
        except ApiError as exc:
            if exc.status == 404:
                print(f"\n{name} was deleted", flush=True)
                return
            if exc.status in (401, 403):
                raise
            failures += 1
        except OSError as exc:  # connection refused or reset, TLS failure, timeout: reconnect
            failures += 1
            if failures == 1:
                print(f"(watch interrupted: {exc}; reconnecting)", file=sys.stderr, flush=True)
        if failures:
            sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1])


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone)."""


def _connection_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's)")
    parser.add_argument("--context", default=default, help="kubeconfig context (its cluster, user and namespace)")
    parser.add_argument(
        "--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The flags are accepted before the command (kubectl's way) and after it alike."""
    parser = argparse.ArgumentParser(prog="kubectl backtest", description=(__doc__ or "").split("\n\n")[0])
    _connection_flags(parser, None)
    after = argparse.ArgumentParser(add_help=False)
    _connection_flags(after, argparse.SUPPRESS)  # after the command: override only when given
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="show the rollout of a BacktestService", parents=[after])
    status.add_argument("--watch", "-w", action="store_true", help="keep printing as it changes (reconnects)")
    status.set_defaults(act=_status)
    promote = commands.add_parser("promote", help="skip the rest of the current phase", parents=[after])
    promote.add_argument("--full", action="store_true", help="promote now, skipping every remaining phase")
    promote.set_defaults(act=_control("promote"))
    controls = (
        ("abort", "roll back now", _control("abort")),
        ("retry", "restart a rolled-back revision", _control("retry")),
        ("pause", "hold the rollout (spec.paused=true)", _paused(True)),
        ("resume", "continue the rollout (spec.paused=false)", _paused(False)),
    )
    for name, text, act in controls:
        commands.add_parser(name, help=text, parents=[after]).set_defaults(act=act)
    for sub in commands.choices.values():
        sub.add_argument("name", help="BacktestService name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.act(args)
    except KubeconfigError as exc:
        print(f"kubectl backtest {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ApiError as exc:
        reason = "not found" if exc.status == 404 else f"HTTP {exc.status} {exc.reason}"
        print(f"kubectl backtest {args.command}: {args.name}: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT if exc.status in (400, 404, 422) else 1
    except OSError as exc:
        print(f"kubectl backtest {args.command}: cannot reach the API server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
