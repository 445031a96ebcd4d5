"""``make demo``: the whole story on one machine, a healthy release promoted and two faulty ones rolled back.

Brings up the local control plane (or uses the cluster ``KUBECONFIG`` points at, with ``--use-kubeconfig``),
a real Prometheus, the operator, the router and two engine processes; sends a steady stream of backtest
requests through the router; applies a BacktestService whose phases are shortened *through its spec*; and
shows the rollout live. Release 2.0.0 walks every phase and is promoted; release 2.1.0 carries a fault
(``spec.engine.faultInjection.errorRate``, which the operator hands to the pods as ``ENGINE_FAULT_ERROR_RATE``)
and is rolled back on its own; release 2.2.0 answers 200, fast, with subtly wrong results
(``faultInjection.resultBias``: return metrics 2% off), which only the router's shadow comparison of its
results with stable's sees (``traffic.shadow``, router arguments as the operator derives them), and is
rolled back by it with no error seen by clients. It ends with a summary, also written to
``demo-summary.json`` (naming the mismatching fields), and stops everything it started.

The engine processes stand in for the pods kwok runs: before each release the demo starts the canary
process with the environment the operator's own pod builder gives that release (so the fault comes from
the spec, exactly as in a cluster); the stable process stands in for whichever revision is stable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from backtest_devtools import demo_real, node
from backtest_devtools.cluster import LocalCluster
from backtest_devtools.config import REPO_ROOT, load_settings
from backtest_devtools.crds import install_crds
from backtest_devtools.errors import DevtoolsError
from backtest_devtools.prometheus import PrometheusServer, ScrapeJob
from backtest_devtools.stack import Stack, Traffic, backtest_request, free_port
from backtest_operator.api import BacktestServiceSpec
from backtest_operator.traffic import shadow_args
from backtest_operator.workloads import engine_env

GROUP, VERSION, PLURAL = "backtest.dev", "v1alpha1", "backtestservices"
NAMESPACE = "backtest-demo"
NAME = "quant"
CRD_FILE = REPO_ROOT / "crds" / "backtest.dev_backtestservices.yaml"


SHADOW_FRACTION = 0.5
"""Share of stable-served backtests copied to the canary and compared (at most two at once, so that the
copies never queue in front of the canary's own clients): a bias on every result is caught at the first
look."""


def demo_spec(prometheus_url: str, image: str, error_rate: float = 0.0, result_bias: float = 0.0) -> dict[str, Any]:
    """The default policy with seconds instead of minutes: shortened through the spec, nothing else."""
    faults: dict[str, float] = {"errorRate": error_rate}
    if result_bias:
        faults["resultBias"] = result_bias
    return {
        "image": image,
        "replicas": 2,
        "engine": {"faultInjection": faults},
        "traffic": {"shadow": {"fraction": SHADOW_FRACTION, "maxInFlight": 2}},
        "analysis": {
            "prometheus": {"url": prometheus_url, "timeout": "2s"},
            "interval": "4s",
            "minRequests": 20,
            "latencyObjective": "2s",
        },
        "phases": [
            {"name": "canary", "weight": 10, "duration": "12s", "minSuccessRate": 0.95, "maxErrorRate": 0.02},
            {"name": "testing", "weight": 25, "duration": "12s", "minSuccessRate": 0.95, "maxErrorRate": 0.03},
            {"name": "validation", "weight": 50, "duration": "12s", "minSuccessRate": 0.97, "maxErrorRate": 0.02},
            {"name": "full", "weight": 100, "duration": "12s", "minSuccessRate": 0.98, "maxErrorRate": 0.01},
        ],
        "rollback": {"minRequests": 5, "bakeWindow": "8s"},
    }


CLUSTER_WIRING = ("DATABASE_URL", "DATABASE_PASSWORD", "ENGINE_PROXY_TOKEN", "ENGINE_API_KEYS", "ENGINE_ADMIN_KEYS")
"""Settings that point a pod at in-cluster objects (the managed database, the generated key Secret); the
local processes keep the stack's own (a SQLite file, the demo's key) instead."""


def canary_env(spec: dict[str, Any]) -> dict[str, str]:
    """The engine environment the operator's pod builder gives this spec's revision (faults included),
    without the cluster wiring a local process cannot use."""
    parsed = BacktestServiceSpec.model_validate(spec)
    return {
        item["name"]: item["value"]
        for item in engine_env(parsed.pod(), parsed.revision())
        if "value" in item and not item["name"].startswith(CLUSTER_WIRING)
    }


RELEASES = (
    ("backtest-engine:2.0.0", 0.0, 0.0),
    ("backtest-engine:2.1.0", 0.2, 0.0),
    ("backtest-engine:2.2.0", 0.0, 0.02),
)
"""(image, injected error rate, result bias) of each release after the first."""


def _mismatching_fields(status: dict[str, Any]) -> list[str]:
    """The result fields the shadow comparison found different, most frequent first (from status)."""
    shadow = (status.get("lastAnalysis") or {}).get("shadow") or {}
    return [item["field"] for item in shadow.get("topFields") or []]


def _taking_traffic_or_ended(revision: str) -> Callable[[dict[str, Any]], bool]:
    """The canary takes traffic, or its rollout already ended (a release wrong on every result can be
    rolled back within the canary's first look)."""
    done = ended(revision)
    return lambda status: status.get("canaryWeight", 0) > 0 or done(status)


def ended(revision: str) -> Callable[[dict[str, Any]], bool]:
    """True once the rollout of `revision` is promoted or rolled back."""

    def check(status: dict[str, Any]) -> bool:
        last = (status.get("history") or [{}])[0]
        return bool(last.get("revision") == revision and last.get("outcome") in ("promoted", "rolled_back"))

    return check


def _seconds_between(earlier: str, later: str) -> float:
    """Seconds between two timestamps the operator wrote (its clock, not the demo's polling)."""
    return round((datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds(), 1)


def spec_revision(spec: dict[str, Any]) -> str:
    return BacktestServiceSpec.model_validate(spec).revision()


@dataclass
class Watcher:
    """Prints each change of the rollout as it happens and remembers when phases started and ended."""

    custom: k8s.CustomObjectsApi
    started: float = field(default_factory=time.monotonic)
    last: tuple[Any, ...] = ()
    phases: list[dict[str, Any]] = field(default_factory=list)
    on_poll: Callable[[], None] | None = None
    """Called at every poll (the real-pods demo samples the cluster's memory)."""

    def poll(self) -> dict[str, Any]:
        if self.on_poll is not None:
            self.on_poll()
        body: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
        status: dict[str, Any] = body.get("status") or {}
        verdict = (status.get("lastAnalysis") or {}).get("verdict", "-")
        key = (status.get("phase"), status.get("stepName"), status.get("canaryWeight"), status.get("message"))
        if key != self.last and status:
            self._track_phase(status)
            elapsed = time.monotonic() - self.started
            width = shutil.get_terminal_size((120, 20)).columns
            line = (
                f"[{elapsed:6.1f}s] {status.get('phase', '-'):<12} {status.get('stepName') or '-':<10} "
                f"{status.get('canaryWeight', 0):>3}%  {verdict:<12} {status.get('message', '')}"
            )
            print(line[: max(60, width - 1)], flush=True)
            self.last = key
        return status

    def _track_phase(self, status: dict[str, Any]) -> None:
        now = time.monotonic() - self.started
        current = status.get("stepName") if status.get("phase") == "Progressing" else None
        if self.phases and self.phases[-1]["end"] is None and self.phases[-1]["phase"] != current:
            self.phases[-1]["end"] = round(now, 1)
            self.phases[-1]["seconds"] = round(now - self.phases[-1]["start"], 1)
        weight = status.get("canaryWeight", 0)
        if current and weight and (not self.phases or self.phases[-1]["end"] is not None):
            self.phases.append({"release": status.get("canaryRevision"), "phase": current, "weight": weight,
                                "start": round(now, 1), "end": None, "seconds": None})  # fmt: skip

    def until(self, done: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.poll()
            if done(status):
                return status
            time.sleep(0.5)
        raise DevtoolsError(f"{what} did not happen within {timeout:.0f}s")


def fresh_namespace(core: k8s.CoreV1Api) -> None:
    try:
        core.delete_namespace(NAMESPACE)
        while True:  # a previous demo's namespace must be gone before it is created again
            core.read_namespace(NAMESPACE)
            time.sleep(0.5)
    except ApiException as error:
        if error.status != 404:
            raise
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))


def run(workdir: Path, kubeconfig: Path | None, rate: float) -> dict[str, Any]:
    with ExitStack() as cleanup:
        if kubeconfig is None:
            print("[demo] starting the local control plane (built once from the Go module proxy, then cached)")
            local = LocalCluster(load_settings(), workdir / "cluster", nodes=2, die_with_parent=True, report=print)
            info = local.up()
            cleanup.callback(local.down, quiet=True)
            kubeconfig = info.kubeconfig
        else:
            print(f"[demo] using the cluster of {kubeconfig}")
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        install_crds(api, [CRD_FILE])
        fresh_namespace(core)
        stack = Stack(workdir)
        cleanup.callback(stack.close)
        router_port, stable_port, canary_port = free_port(), free_port(), free_port()
        prometheus = PrometheusServer(
            load_settings(),
            workdir / "prometheus",
            [ScrapeJob("router", (f"127.0.0.1:{router_port}",), labels={"namespace": NAMESPACE, "service": NAME})],
            interval="1s",
        )
        prometheus.start()
        cleanup.callback(prometheus.stop)
        print(f"[demo] Prometheus at {prometheus.url}; starting engines, router and operator")
        stack.engine("stable", stable_port)
        canary = stack.engine("canary", canary_port)
        router = f"http://127.0.0.1:{router_port}"
        shadow = shadow_args(BacktestServiceSpec.model_validate(demo_spec(prometheus.url, "backtest-engine:1.0.0")))
        stack.router(f"http://127.0.0.1:{stable_port}", f"http://127.0.0.1:{canary_port}",
                     f"{NAMESPACE}/{NAME}-weight", router_port, kubeconfig, objective_seconds=2.0,
                     extra=shadow)  # fmt: skip
        prometheus.wait_for_targets()
        stack.operator(NAMESPACE, kubeconfig, free_port())
        watcher = Watcher(custom)
        first = demo_spec(prometheus.url, "backtest-engine:1.0.0")
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService", "metadata": {"name": NAME},
                "spec": first}  # fmt: skip
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        print("[demo] applied BacktestService quant (1.0.0); waiting for it to become Healthy")
        watcher.until(lambda s: s.get("phase") == "Healthy", 120, "the first revision becoming Healthy")
        traffic = Traffic(backtest_request(router), rate).start()
        cleanup.callback(traffic.stop)
        releases = []
        for image, error_rate, bias in RELEASES:
            spec = demo_spec(prometheus.url, image, error_rate, bias)
            stack.stop(canary)  # the new release's "pod": the environment the operator gives it
            canary = stack.engine("canary", canary_port, canary_env(spec))
            fault = f" with {error_rate:.0%} injected errors" if error_rate else ""
            fault += f" answering 200, fast, with return metrics {bias:+.0%} off (resultBias)" if bias else ""
            print(f"\n[demo] releasing {image}{fault}")
            releases.append(release(custom, watcher, spec, image))
        traffic.stop()
        return summarise(releases, traffic, watcher)


def release(custom: k8s.CustomObjectsApi, watcher: Watcher, spec: dict[str, Any], image: str) -> dict[str, Any]:
    """Apply a release and follow it until it is promoted (and baked) or rolled back."""
    started = time.monotonic()
    custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME, {"spec": spec})
    revision = spec_revision(spec)
    taking = watcher.until(_taking_traffic_or_ended(revision), 120, "the canary taking traffic")
    took = time.monotonic()
    status = watcher.until(ended(revision), 300, f"the rollout of {image} ending")
    entry = status["history"][0]
    first_phase = taking.get("phaseStartedAt") if taking.get("canaryRevision") == revision else None
    # From the phase's start (operator's clock); a rollback decided before the phase clock started
    # (a trigger while the weight is being confirmed) is timed from the demo seeing the weight.
    detection = (_seconds_between(first_phase, entry["finishedAt"]) if first_phase
                 else round(time.monotonic() - took, 1))  # fmt: skip
    rolled_back = entry["outcome"] == "rolled_back"
    outcome = {
        "image": image, "outcome": entry["outcome"], "phase": entry.get("phase"), "check": entry.get("check"),
        "reason": entry["reason"], "seconds": round(time.monotonic() - started, 1),
        "detection_latency_seconds": detection if rolled_back else None,
        "mismatching_fields": _mismatching_fields(status) if rolled_back else [],
    }  # fmt: skip
    if entry["outcome"] == "promoted":
        watcher.until(lambda s: s.get("phase") == "Healthy", 60, "the bake window ending")
    return outcome


def summarise(releases: list[dict[str, Any]], traffic: Traffic, watcher: Watcher) -> dict[str, Any]:
    return {
        "promotions": sum(r["outcome"] == "promoted" for r in releases),
        "rollbacks": sum(r["outcome"] == "rolled_back" for r in releases),
        "detection_latency_seconds": next(
            (r["detection_latency_seconds"] for r in releases if r["detection_latency_seconds"] is not None), None
        ),
        "requests": traffic.sent,
        "client_errors": traffic.client_errors,
        "releases": releases,
        "phases": [p for p in watcher.phases if p["seconds"] is not None],
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n[demo] summary ({summary.get('mode', 'kwok fake nodes + local processes')})")
    for release in summary["releases"]:
        print(f"  {release['image']:<24} {release['outcome']:<12} after {release['seconds']:.0f}s: {release['reason']}")
        if release.get("mismatching_fields"):
            print(f"  {'':<24} results differed from stable's in: {', '.join(release['mismatching_fields'])}")
    for phase in summary["phases"]:
        print(f"  phase {phase['phase']:<11} {phase['weight']:>3}%  {phase['seconds']:>5.1f}s")
    print(f"  promotions {summary['promotions']}, rollbacks {summary['rollbacks']}, "
          f"detection latency {summary['detection_latency_seconds']}s")  # fmt: skip
    print(f"  requests served {summary['requests']}, errors seen by clients {summary['client_errors']}")
    if summary.get("memory_peak_mib"):
        print(f"  memory of the whole cluster at its peak: {summary['memory_peak_mib']['total']:.0f} MiB")


def choose_mode(kwok_only: bool, use_kubeconfig: bool) -> tuple[str | None, Path | None]:
    """(why not real pods or None, state folder of a running real-node cluster to use or None)."""
    if use_kubeconfig:
        return "--use-kubeconfig targets an existing cluster", None
    if kwok_only:
        return "asked for with --kwok", None
    reason = node.can_start_here()
    if reason is None and shutil.which("buildah") is None:
        reason = "buildah is missing (`make deps-node` installs it)"
    if reason is not None:
        return reason, None
    probe = node.RealNode(load_settings(), REPO_ROOT / ".demo" / "cluster", Path(), Path(), False, print)
    holder = probe.holder()
    if holder is None:
        return None, None
    running = LocalCluster(load_settings(), Path(holder), real_node=None)
    if running.node is not None and all(running.status().values()):
        return None, Path(holder)
    return f"the real node is in use by the cluster in {holder}", None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, default=Path("demo-summary.json"))
    parser.add_argument("--rate", type=float, default=40.0, help="backtest requests per second (default 40)")
    parser.add_argument("--use-kubeconfig", action="store_true",
                        help="target the cluster KUBECONFIG points at instead of a local control plane")  # fmt: skip
    parser.add_argument(
        "--kwok", action="store_true", help="kwok fake nodes and local processes, even if real pods could run"
    )
    args = parser.parse_args(argv)
    kubeconfig = Path(os.environ["KUBECONFIG"]) if args.use_kubeconfig and os.environ.get("KUBECONFIG") else None
    workdir = REPO_ROOT / ".demo"
    shutil.rmtree(workdir, ignore_errors=True)
    why_not_real, borrowed = choose_mode(args.kwok, args.use_kubeconfig)
    try:
        if why_not_real is None:
            summary = demo_real.run(workdir, args.rate, borrowed)
        else:
            print(f"[demo] not on real pods: {why_not_real}; running on kwok fake nodes with local engine processes")
            summary = run(workdir, kubeconfig, args.rate)
    except DevtoolsError as error:
        print(f"[demo] failed: {error} (logs in {workdir})", file=sys.stderr)
        return 1
    summary["mode"] = "real pods" if why_not_real is None else "kwok fake nodes + local processes"
    summary["why_not_real_pods"] = why_not_real
    print_summary(summary)
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[demo] wrote {args.summary}; everything it started has stopped")
    return 0 if summary["promotions"] == 1 and summary["rollbacks"] == len(RELEASES) - 1 else 1


if __name__ == "__main__":
    sys.exit(main())
