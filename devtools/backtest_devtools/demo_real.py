"""`make demo` on real pods: the same story as demo.py, with nothing standing in for the cluster.

The images are built from the Dockerfiles (cached), the chart is installed with helm (the operator runs as a
pod), the engines and the router are pods the operator creates, a host Prometheus discovers the routers
through the chart's PodMonitor, and the client traffic goes through the entry Service (kube-proxy).
The faulty release's errors come from its spec (``faultInjection``), which the operator hands to its pods.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from backtest_devtools import build, images
from backtest_devtools.certs import NODE_IP
from backtest_devtools.chart import helm_install, helm_uninstall, router_scrape_configs
from backtest_devtools.cluster import LocalCluster
from backtest_devtools.config import load_settings
from backtest_devtools.errors import DevtoolsError
from backtest_devtools.prometheus import PrometheusServer
from backtest_devtools.realpods import (
    GROUP,
    PLURAL,
    VERSION,
    api_keys_secret,
    backtest_service,
    entry_url,
    real_spec,
    wait_answering,
)
from backtest_devtools.stack import Traffic, backtest_request

RELEASE, RELEASE_NAMESPACE = "backtest", "backtest-system"
SCRAPE_INTERVAL = "1s"


def run(workdir: Path, rate: float, borrowed: Path | None) -> dict[str, Any]:
    """The demo on real pods; `borrowed` is the state folder of an already running real-node cluster."""
    from backtest_devtools import demo  # noqa: PLC0415 (demo imports this module)

    settings = load_settings()
    with ExitStack() as cleanup:
        if borrowed is None:
            print("[demo] starting the local control plane and a real node (containerd, kubelet, CoreDNS)")
            local = LocalCluster(settings, workdir / "cluster", nodes=0, die_with_parent=True, report=print,
                                 real_node=True)  # fmt: skip
            cleanup.callback(local.down, quiet=True)
        else:
            print(f"[demo] using the running cluster in {borrowed} (it keeps running afterwards)")
            local = LocalCluster(settings, borrowed, real_node=None, report=print)
        info = local.up()
        print("[demo] building the engine and operator images from their Dockerfiles (cached by content)")
        images.build_project_images(settings, print)
        images.import_into_node(settings, print)
        releases = [("backtest-engine:1.0.0", 0.0, 0.0), *demo.RELEASES]
        images.tag_in_node("backtest-engine:0.1.0", [image for image, _, _ in releases])
        print("[demo] installing the chart with helm (the operator runs as a pod)")
        installed = helm_install(settings, info.kubeconfig, RELEASE, RELEASE_NAMESPACE, ["--wait", "--timeout", "3m"])
        if installed.returncode != 0:
            raise DevtoolsError(f"helm install failed: {installed.stderr.strip()[-800:]}")
        if borrowed is not None:
            cleanup.callback(helm_uninstall, settings, info.kubeconfig, RELEASE, RELEASE_NAMESPACE)
        api = k8s_config.new_client_from_config(config_file=str(info.kubeconfig))  # type: ignore[no-untyped-call]
        cleanup.callback(api.close)
        core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        demo.fresh_namespace(core)
        api_keys_secret(core, demo.NAMESPACE)
        prometheus = PrometheusServer(
            settings, workdir / "prometheus", [], interval=SCRAPE_INTERVAL, host=NODE_IP,
            extra_scrape_configs=router_scrape_configs(settings, info.kubeconfig, interval=SCRAPE_INTERVAL),
            binary=build.binary(settings, "prometheus"),  # Debian's has no Kubernetes discovery
        )  # fmt: skip
        prometheus.start()
        cleanup.callback(prometheus.stop)
        print(f"[demo] Prometheus at {prometheus.url} discovers the router pods through the chart's PodMonitor")
        memory = MemoryPeak(local, prometheus)
        watcher = demo.Watcher(custom, on_poll=memory.sample)
        first = _spec(prometheus.url, *releases[0])
        custom.create_namespaced_custom_object(
            GROUP, VERSION, demo.NAMESPACE, PLURAL, backtest_service(demo.NAME, first)
        )
        print(f"[demo] applied BacktestService {demo.NAME} ({releases[0][0]}); waiting for its pods to become Ready")
        watcher.until(lambda s: s.get("phase") == "Healthy", 300, "the first revision becoming Healthy")
        url = entry_url(core, demo.NAMESPACE, demo.NAME)
        wait_answering(url)
        print(f"[demo] clients call {url} (the entry Service, through kube-proxy)")
        traffic = Traffic(backtest_request(url), rate).start()
        cleanup.callback(traffic.stop)
        outcomes = []
        for image, error_rate, bias in releases[1:]:
            spec = _spec(prometheus.url, image, error_rate, bias)
            fault = f" with {error_rate:.0%} injected errors" if error_rate else ""
            fault += f" answering 200, fast, with return metrics {bias:+.0%} off (resultBias)" if bias else ""
            print(f"\n[demo] releasing {image}{fault}")
            outcomes.append(demo.release(custom, watcher, spec, image))
        traffic.stop()
        summary = demo.summarise(outcomes, traffic, watcher)
        summary["memory_peak_mib"] = memory.peak_mib()
        return summary


def _spec(prometheus_url: str, image: str, error_rate: float, bias: float) -> dict[str, Any]:
    """The real tier's spec with the demo's shadow comparison and the release's faults."""
    from backtest_devtools import demo  # noqa: PLC0415 (demo imports this module)

    shadow = {"shadow": {"fraction": demo.SHADOW_FRACTION, "maxInFlight": 2}}
    spec = real_spec(prometheus_url, image, error_rate, traffic=shadow)
    if bias:
        spec["engine"]["faultInjection"]["resultBias"] = bias
    return spec


class MemoryPeak:
    """Highest resident memory seen of the whole one-node cluster (control plane, node, pods, Prometheus)."""

    def __init__(self, cluster: LocalCluster, prometheus: PrometheusServer) -> None:
        self.cluster, self.prometheus = cluster, prometheus
        self.peak: dict[str, int] = {}
        self.last = 0.0

    def sample(self) -> None:
        if time.monotonic() - self.last < 2.0:
            return
        self.last = time.monotonic()
        memory = self.cluster.rss_bytes()
        memory["prometheus"] = self.prometheus.rss_bytes()
        if sum(memory.values()) > sum(self.peak.values()):
            self.peak = memory

    def peak_mib(self) -> dict[str, float]:
        parts = {name: round(value / 2**20, 1) for name, value in sorted(self.peak.items())}
        return {**parts, "total": round(sum(self.peak.values()) / 2**20, 1)}
