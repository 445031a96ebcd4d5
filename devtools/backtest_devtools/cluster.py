"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and kwok managing fake nodes so that Deployment pods get scheduled and become Ready.

With ``real_node=True`` the cluster also gets a real node (node.py: containerd, kubelet, kube-proxy,
CoreDNS, metrics-server). Pods cannot reach the host's loopback, so then the API server listens on the
node's address (certs.NODE_IP, on an empty bridge of this machine) and advertises it, authorizes kubelets
(Node authorizer, NodeRestriction) and serves aggregated APIs (metrics.k8s.io); the fake kwok nodes get a
NoSchedule taint, so ordinary pods run for real and only pods that tolerate it land on kwok.

Used three ways, always through LocalCluster: `make cluster-up/cluster-down` (state in <repo>/.cluster,
servers outlive the command), the pytest session fixtures (state in a tmp dir, servers die with pytest),
and `make demo`. Every port is picked free at start, so parallel runs never collide.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from backtest_devtools import build, certs, kwok, processes
from backtest_devtools.config import Settings
from backtest_devtools.errors import ClusterError
from backtest_devtools.health import http as _http
from backtest_devtools.health import insecure_tls as _insecure_tls
from backtest_devtools.health import wait_healthy
from backtest_devtools.kubeconfig import write_kubeconfig
from backtest_devtools.node import RealNode
from backtest_devtools.nodeconfig import NODE_NAME

Report = Callable[[str], None]
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
MODE_FILE = "mode.json"
REAL_NODE_APISERVER_PORT = 6443
# As hardened clusters (OpenShift) run it: setting blockOwnerDeletion on an owner reference needs `update`
# on the owner's finalizers, which the operator's role must therefore grant.
ADMISSION_PLUGINS = "OwnerReferencesPermissionEnforcement"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick_free(cls, apiserver_host: str = "127.0.0.1") -> Ports:
        """Ask the kernel for free ports (all held open together, so they differ); the API server's on the
        address it will listen on."""
        sockets = [socket.socket() for _ in range(6)]
        try:
            for index, sock in enumerate(sockets):
                sock.bind((apiserver_host if index == 2 else "127.0.0.1", 0))
            numbers = [sock.getsockname()[1] for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
        return cls(*numbers)


@dataclass(frozen=True)
class ClusterInfo:
    """What a client needs: the admin kubeconfig, the server URL, and where logs and certs are."""

    kubeconfig: Path
    server: str
    state_dir: Path
    log_dir: Path
    pki: certs.ClusterPki
    node_names: tuple[str, ...]
    real_node: str | None = None
    """Name of the real node when the cluster has one (pods run for real there)."""


class LocalCluster:
    """Start, inspect and stop one control plane whose whole state lives in `state_dir`."""

    def __init__(
        self,
        settings: Settings,
        state_dir: Path,
        nodes: int = 2,
        die_with_parent: bool = False,
        report: Report | None = None,
        real_node: bool | None = False,
    ) -> None:
        """real_node: True adds the real node; None takes the mode of a cluster already in state_dir."""
        self.settings = settings
        self.state_dir = state_dir.resolve()
        self.node_names = tuple(f"kwok-node-{index}" for index in range(nodes))
        self.die_with_parent = die_with_parent
        self.say = report or _stderr
        self.log_dir = self.state_dir / "logs"
        self.run_dir = self.state_dir / "run"
        self.kubeconfig = self.state_dir / "kubeconfig"
        if real_node is None:
            real_node = self._recorded_mode()
        self.node = (
            RealNode(settings, self.state_dir, self.run_dir, self.log_dir, die_with_parent, self.say)
            if real_node
            else None
        )
        self.host = certs.NODE_IP if real_node else "127.0.0.1"

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self) -> ClusterInfo:
        """Build what is missing, then start every component and wait until the cluster is usable.

        Safe to call twice: when every component is already running and healthy, nothing restarts.
        """
        build.ensure_built(self.settings, self.say)
        if self.node is not None:
            build.ensure_built(self.settings, self.say, build.NODE_RELEASES)
        same_mode = self._recorded_mode() == (self.node is not None)
        if same_mode and self._ports_file.exists() and all(self.status().values()) and self._apiserver_ready():
            self.say(f"[cluster] already running ({self.state_dir})")
            return self.info()
        self.down(quiet=True)
        try:
            return self._start_all()
        except BaseException:
            self.down(quiet=True)  # nothing half-started is left behind; the logs stay for reading
            raise

    def _start_all(self) -> ClusterInfo:
        started = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / MODE_FILE).write_text(json.dumps({"real_node": self.node is not None}))
        if self.node is not None:
            self.node.prepare()  # host network and containerd start while the control plane comes up
        ports = Ports.pick_free(self.host)
        if self.node is not None:
            # One real node per machine, so its address's API port is ours: fixed, because the `kubernetes`
            # Service endpoint kept in etcd must stay right across restarts (the lease reconciler does not
            # rewrite a changed port).
            ports = replace(ports, apiserver=REAL_NODE_APISERVER_PORT)
        self._ports_file.write_text(json.dumps(asdict(ports)))
        pki = certs.ensure_pki(self.state_dir / "pki")
        server = f"https://{self.host}:{ports.apiserver}"
        kubeconfigs = self.state_dir / "kubeconfigs"
        write_kubeconfig(self.kubeconfig, server, pki.ca.cert, pki.admin, "kubernetes-admin")
        cm_config = write_kubeconfig(
            kubeconfigs / "controller-manager.yaml",
            server,
            pki.ca.cert,
            pki.controller_manager,
            "system:kube-controller-manager",
        )
        scheduler_config = write_kubeconfig(
            kubeconfigs / "scheduler.yaml", server, pki.ca.cert, pki.scheduler, "system:kube-scheduler"
        )
        self._start_etcd(ports)
        self._start_apiserver(ports, pki)
        self._start_controller(
            "kube-controller-manager",
            ports.controller_manager,
            [
                *_kube_client_flags(cm_config, ports.controller_manager),
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                "--use-service-account-credentials=true",
                "--controllers=*",
            ],
        )
        self._start_controller("kube-scheduler", ports.scheduler, _kube_client_flags(scheduler_config, ports.scheduler))
        self._start_kwok(ports)
        self._create_nodes()
        if self.node is not None:
            self.node.start(server, pki, self.api)
        self.say(f"[cluster] ready in {time.monotonic() - started:.1f}s: {server} (logs: {self.log_dir})")
        return self.info()

    def down(self, quiet: bool = False) -> list[str]:
        """Stop, in reverse order, only the processes recorded in this state folder's pid files.

        Returns what the real node left behind (named; empty after a clean stop)."""
        stopped = []
        leftovers: list[str] = []
        if self.node is not None:
            if any(self.node.status().values()):
                stopped.append("real node")
            leftovers = self.node.stop()
        for name in reversed(COMPONENTS):
            managed = self._managed(name)
            if managed.is_running():
                stopped.append(name)
            processes.stop(managed)
        if not quiet:
            self.say(f"[cluster] stopped {', '.join(stopped) or 'nothing (was not running)'}")
        if leftovers:
            self.say(f"[cluster] left behind by the real node: {'; '.join(leftovers)}")
        return leftovers

    def status(self) -> dict[str, bool]:
        running = {name: self._managed(name).is_running() for name in COMPONENTS}
        if self.node is not None:
            running.update(self.node.status())
        return running

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory per component (and the real node's pods), for the issue's closing note."""
        memory = {name: self._managed(name).rss_bytes() for name in COMPONENTS}
        if self.node is not None:
            memory.update(self.node.rss_bytes())
        return memory

    def info(self) -> ClusterInfo:
        ports = Ports(**json.loads(self._ports_file.read_text()))
        return ClusterInfo(
            kubeconfig=self.kubeconfig,
            server=f"https://{self.host}:{ports.apiserver}",
            state_dir=self.state_dir,
            log_dir=self.log_dir,
            pki=certs.ensure_pki(self.state_dir / "pki"),
            node_names=self.node_names,
            real_node=NODE_NAME if self.node is not None else None,
        )

    def _recorded_mode(self) -> bool:
        try:
            return bool(json.loads((self.state_dir / MODE_FILE).read_text())["real_node"])
        except (OSError, ValueError, KeyError):
            return False

    # -- components ------------------------------------------------------------------------------

    def _start_etcd(self, ports: Ports) -> None:
        peer = f"http://127.0.0.1:{ports.etcd_peer}"
        client = f"http://127.0.0.1:{ports.etcd_client}"
        managed = self._start(
            "etcd",
            [
                str(build.binary(self.settings, "etcd")),
                "--name=backtest",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=backtest={peer}",
                "--unsafe-no-fsync=true",  # throwaway data: durability costs seconds per test run
                "--log-level=warn",
            ],
        )
        wait_healthy(managed, f"{client}/health", None, 30.0)

    def _start_apiserver(self, ports: Ports, pki: certs.ClusterPki) -> None:
        flags = [
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-cluster-ip-range={certs.SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={self.state_dir / 'pki' / 'apiserver-generated'}",
        ]
        if self.node is None:
            # Endpoints may not hold loopback addresses, and nothing in-cluster dials the apiserver.
            flags += [
                "--authorization-mode=RBAC",
                "--endpoint-reconciler-type=none",
                f"--enable-admission-plugins={ADMISSION_PLUGINS}",
            ]
        else:
            flags += self._real_node_flags(pki)
        managed = self._start("kube-apiserver", [str(build.binary(self.settings, "kube-apiserver")), *flags])
        wait_healthy(managed, self._server_url("/readyz"), self._admin_tls(), 90.0)

    def _real_node_flags(self, pki: certs.ClusterPki) -> list[str]:
        """Kubelets authorized by the Node authorizer; the API server reaches kubelets (logs, exec) and
        aggregated APIs (metrics-server) with client certificates of its own."""
        folder = self.state_dir / "pki"
        kubelet_client = certs.issue_client_cert(pki, folder, "kube-apiserver-kubelet-client", ("system:masters",))
        front_proxy = certs.issue_client_cert(pki, folder, "front-proxy-client")
        return [
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins=NodeRestriction,{ADMISSION_PLUGINS}",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--proxy-client-cert-file={front_proxy.cert}",
            f"--proxy-client-key-file={front_proxy.key}",
            f"--requestheader-client-ca-file={pki.ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--enable-aggregator-routing=true",
        ]

    def _start_controller(self, name: str, port: int, flags: list[str]) -> None:
        managed = self._start(name, [str(build.binary(self.settings, name)), *flags])
        wait_healthy(managed, f"https://127.0.0.1:{port}/healthz", _insecure_tls(), 60.0)

    def _start_kwok(self, ports: Ports) -> None:
        module = build.module_dir(self.settings, build.KWOK.module, build.KWOK.version)
        config = self.state_dir / "kwok.yaml"
        config.write_text(kwok.stage_config(module))
        managed = self._start(
            "kwok",
            [
                str(build.binary(self.settings, "kwok")),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={kwok.NODE_SELECTOR}",
                f"--node-lease-duration-seconds={kwok.LEASE_SECONDS}",
                f"--server-address=127.0.0.1:{ports.kwok}",
                "--cidr=10.244.0.1/16",
                "--node-ip=10.240.0.1",
            ],
        )
        wait_healthy(managed, f"http://127.0.0.1:{ports.kwok}/healthz", None, 30.0)

    def _create_nodes(self) -> None:
        for name in self.node_names:
            manifest = kwok.node_manifest(name, tainted=self.node is not None)
            status, body = self.api("POST", "/api/v1/nodes", manifest)
            if status not in (201, 409):
                raise ClusterError("kube-apiserver", f"creating node {name} answered {status}: {body}")

        def all_ready() -> bool:
            status, body = self.api("GET", "/api/v1/nodes")
            if status != 200:
                return False
            ready = {
                item["metadata"]["name"]
                for item in json.loads(body)["items"]
                for condition in item.get("status", {}).get("conditions", [])
                if condition["type"] == "Ready" and condition["status"] == "True"
            }
            return set(self.node_names) <= ready

        if not processes.wait_until(all_ready, 60.0, 0.5):
            raise ClusterError("kwok", "fake nodes did not become Ready within 60s", self.log_dir / "kwok.log")

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def _ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    def _managed(self, name: str) -> processes.Managed:
        return processes.Managed(name, self.run_dir / f"{name}.pid", self.log_dir / f"{name}.log", str(self.state_dir))

    def _start(self, name: str, command: list[str]) -> processes.Managed:
        self.say(f"[cluster] starting {name}")
        return processes.start(
            name,
            command,
            run_dir=self.run_dir,
            log_dir=self.log_dir,
            owner_mark=str(self.state_dir),
            die_with_parent=self.die_with_parent,
        )

    def _apiserver_ready(self) -> bool:
        try:
            return _http("GET", self._server_url("/readyz"), self._admin_tls())[0] == 200
        except (OSError, ValueError):
            return False

    def _server_url(self, path: str) -> str:
        ports = Ports(**json.loads(self._ports_file.read_text()))
        return f"https://{self.host}:{ports.apiserver}{path}"

    def _admin_tls(self) -> ssl.SSLContext:
        pki = certs.ensure_pki(self.state_dir / "pki")
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        return context

    def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, content_type: str = "application/json"
    ) -> tuple[int, str]:
        return _http(method, self._server_url(path), self._admin_tls(), body, content_type)


def _kube_client_flags(kubeconfig: Path, port: int) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
    ]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    from backtest_devtools.cli import main

    sys.exit(main())
