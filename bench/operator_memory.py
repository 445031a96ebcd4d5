"""Operator memory and reconcile load with many BacktestServices (``make bench-operator``).

Starts the local control plane, creates N BacktestServices (default 100, each with 1 replica, and an
unreachable Prometheus so no metrics traffic is involved), runs the operator as a separate process, waits
until every object is Healthy, and reports the operator's resident memory against a baseline measured in
the same run: the same operator with zero objects. Results go to stdout and bench/results/operator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from backtest_devtools import processes
from backtest_devtools.cluster import LocalCluster
from backtest_devtools.config import load_settings
from backtest_devtools.crds import install_crds
from backtest_devtools.stack import free_port

ROOT = Path(__file__).parents[1]
GROUP, VERSION, PLURAL = "backtest.dev", "v1alpha1", "backtestservices"


def rss_mib(managed: processes.Managed) -> float:
    return managed.rss_bytes() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        work = Path(tmp)
        cluster = LocalCluster(load_settings(), work / "cluster", nodes=2, die_with_parent=True, report=print)
        info = cluster.up()
        try:
            api = k8s_config.new_client_from_config(config_file=str(info.kubeconfig))
            install_crds(api, [ROOT / "crds" / "backtest.dev_backtestservices.yaml"])
            core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="bench")))
            env = {"KUBECONFIG": str(info.kubeconfig), "OPERATOR_METRICS_PORT": str(free_port()),
                   "OPERATOR_METRICS_HOST": "127.0.0.1"}  # fmt: skip
            command = [str(Path(sys.executable).parent / "backtest-operator"), "run", "--namespace", "bench",
                       "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]  # fmt: skip
            operator = processes.start("operator", command, run_dir=work / "run", log_dir=work / "logs",
                                       owner_mark=command[0], die_with_parent=True, env=env)  # fmt: skip
            time.sleep(8)
            baseline = rss_mib(operator)
            print(f"operator with 0 objects: {baseline:.1f} MiB")
            started = time.monotonic()
            for index in range(args.objects):
                body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BacktestService",
                        "metadata": {"name": f"svc-{index:03d}"},
                        "spec": {"image": "backtest-engine:1.0.0", "replicas": 1,
                                 "analysis": {"prometheus": {"url": "http://127.0.0.1:9"}}}}  # fmt: skip
                custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, body)
            healthy = 0
            peak = baseline
            while time.monotonic() - started < args.timeout:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL)["items"]
                healthy = sum(1 for i in items if (i.get("status") or {}).get("phase") == "Healthy")
                peak = max(peak, rss_mib(operator))
                if healthy == args.objects:
                    break
                time.sleep(1)
            settle = time.monotonic() - started
            time.sleep(10)
            steady = rss_mib(operator)
            result = {
                "objects": args.objects,
                "healthy": healthy,
                "seconds_to_all_healthy": round(settle, 1),
                "rss_mib_baseline_0_objects": round(baseline, 1),
                "rss_mib_peak": round(max(peak, steady), 1),
                "rss_mib_steady": round(steady, 1),
                "rss_mib_per_object": round((steady - baseline) / max(1, args.objects), 2),
                "ratio_steady_to_baseline": round(steady / baseline, 2) if baseline else None,
                "cpus": os.cpu_count(),
            }
            print(json.dumps(result, indent=2))
            out = ROOT / "bench" / "results" / "operator.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            processes.stop(operator)
        finally:
            cluster.down(quiet=True)


if __name__ == "__main__":
    main()
