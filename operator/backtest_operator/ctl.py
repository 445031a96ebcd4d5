"""``kubectl backtest``: inspect and steer rollouts. Every command only patches the BacktestService.

Pause and resume set ``spec.paused``; promote, promote --full, abort and retry set a control annotation to
a fresh token (see ``controls.py``), which is exactly what a GitOps pipeline would commit instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from backtest_operator.api import GROUP, PLURAL, VERSION, BacktestServiceStatus
from backtest_operator.controls import ANNOTATIONS

EXIT_BAD_INPUT = 2


def render_status(body: dict[str, Any]) -> str:
    """A screenful for an SRE: where the rollout is, why, the numbers, and the recent history."""
    meta = body["metadata"]
    status = BacktestServiceStatus.model_validate(body.get("status") or {})
    lines = [
        f"{meta['namespace']}/{meta['name']}  image {body['spec']['image']}",
        f"State:    {status.phase.value}" + (f"  (phase {status.step_name})" if status.step_name else ""),
        f"Weight:   {status.canary_weight}% to canary",
        f"Stable:   {status.stable_revision or '-'}    Canary: {status.canary_revision or '-'}"
        + (f"    Previous: {status.previous_revision}" if status.previous_revision else ""),
        f"Message:  {status.message}",
    ]
    analysis = status.last_analysis
    if analysis is not None:
        lines.append(f"Analysis: {analysis.verdict.value} at {analysis.time:%H:%M:%S} (phase {analysis.phase})")
        lines.append(f"  {'check':<24} {'verdict':<13} {'value':>10} {'threshold':>10} {'p-value':>9}")
        for check in analysis.checks:
            value = "-" if check.value is None else f"{check.value:.4g}"
            threshold = "-" if check.threshold is None else f"{check.threshold:.4g}"
            p_value = "-" if check.p_value is None else f"{check.p_value:.3g}"
            lines.append(f"  {check.name:<24} {check.verdict.value:<13} {value:>10} {threshold:>10} {p_value:>9}")
    if status.conditions:
        lines.append("Conditions:")
        lines += [f"  {c.type:<12} {c.status:<7} {c.reason:<18} {c.message[:90]}" for c in status.conditions]
    if status.history:
        lines.append("History:")
        for entry in status.history:
            where = f" in {entry.phase}" if entry.phase else ""
            stamp = f"{entry.finished_at:%Y-%m-%d %H:%M}"
            lines.append(f"  {stamp} {entry.outcome.value:<11} {entry.revision}{where}: {entry.reason}")
    return "\n".join(lines)


def _api(args: argparse.Namespace) -> k8s.CustomObjectsApi:
    k8s_config.load_kube_config(context=args.context)  # type: ignore[no-untyped-call]
    return k8s.CustomObjectsApi()


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    _, active = k8s_config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    return str(active.get("context", {}).get("namespace", "default"))


def _patch(args: argparse.Namespace, body: dict[str, Any]) -> None:
    _api(args).patch_namespaced_custom_object(GROUP, VERSION, _namespace(args), PLURAL, args.name, body)


def _token() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _control(name: str) -> Any:
    def act(args: argparse.Namespace) -> None:
        key = "promote_full" if name == "promote" and args.full else name
        _patch(args, {"metadata": {"annotations": {ANNOTATIONS[key]: _token()}}})
        print(f"{key.replace('_', '-')} requested for {args.name}")

    return act


def _paused(value: bool) -> Any:
    def act(args: argparse.Namespace) -> None:
        _patch(args, {"spec": {"paused": value}})
        print(f"{args.name} {'paused' if value else 'resumed'}")

    return act


def _status(args: argparse.Namespace) -> None:
    api, namespace = _api(args), _namespace(args)
    body: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)  # type: ignore[assignment]
    print(render_status(body), flush=True)
    if not args.watch:
        return
    last = body.get("status")
    stream = k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
        api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
        field_selector=f"metadata.name={args.name}",
    )  # fmt: skip
    for event in stream:
        current = event["object"]
        if event["type"] == "DELETED":
            print(f"\n{args.name} was deleted")
            return
        if current.get("status") != last:
            last = current.get("status")
            print(f"\n--- {time.strftime('%H:%M:%S')}\n{render_status(current)}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl backtest", description=__doc__)
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    parser.add_argument("--context", help="kubeconfig context")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="show the rollout of a BacktestService")
    status.add_argument("--watch", "-w", action="store_true", help="keep printing as it changes")
    status.set_defaults(act=_status)
    promote = commands.add_parser("promote", help="skip the rest of the current phase")
    promote.add_argument("--full", action="store_true", help="promote now, skipping every remaining phase")
    promote.set_defaults(act=_control("promote"))
    for name, text in (("abort", "roll back now"), ("retry", "restart a rolled-back revision")):
        commands.add_parser(name, help=text).set_defaults(act=_control(name))
    commands.add_parser("pause", help="hold the rollout (spec.paused=true)").set_defaults(act=_paused(True))
    commands.add_parser("resume", help="continue the rollout (spec.paused=false)").set_defaults(act=_paused(False))
    for sub in commands.choices.values():
        sub.add_argument("name", help="BacktestService name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.act(args)
    except k8s.ApiException as exc:
        reason = "not found" if exc.status == 404 else f"HTTP {exc.status} {exc.reason}"
        print(f"kubectl backtest {args.command}: {args.name}: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT if exc.status in (400, 404, 422) else 1
    except KeyboardInterrupt:
        return 0
    return 0
