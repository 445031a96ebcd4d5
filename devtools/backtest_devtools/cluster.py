"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and kwok managing fake nodes so that Deployment pods get scheduled and become Ready.

Used three ways, always through LocalCluster: `make cluster-up/cluster-down` (state in <repo>/.cluster,
servers outlive the command), the pytest session fixture (state in a tmp dir, servers die with pytest),
and `make demo`. Every port is picked free at start, so parallel runs never collide.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backtest_devtools import build, certs, kwok, processes
from backtest_devtools.config import Settings
from backtest_devtools.errors import ClusterError
from backtest_devtools.kubeconfig import write_kubeconfig

Report = Callable[[str], None]
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick_free(cls) -> Ports:
        """Ask the kernel for free ports on 127.0.0.1 (all held open together, so they differ)."""
        sockets = [socket.socket() for _ in range(6)]
        try:
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
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


class LocalCluster:
    """Start, inspect and stop one control plane whose whole state lives in `state_dir`."""

    def __init__(
        self,
        settings: Settings,
        state_dir: Path,
        nodes: int = 2,
        die_with_parent: bool = False,
        report: Report | None = None,
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir.resolve()
        self.node_names = tuple(f"kwok-node-{index}" for index in range(nodes))
        self.die_with_parent = die_with_parent
        self.say = report or _stderr
        self.log_dir = self.state_dir / "logs"
        self.run_dir = self.state_dir / "run"
        self.kubeconfig = self.state_dir / "kubeconfig"

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self) -> ClusterInfo:
        """Build what is missing, then start every component and wait until the cluster is usable.

        Safe to call twice: when every component is already running and healthy, nothing restarts.
        """
        build.ensure_built(self.settings, self.say)
        if self._ports_file.exists() and all(self.status().values()) and self._apiserver_ready():
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
        ports = Ports.pick_free()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ports_file.write_text(json.dumps(asdict(ports)))
        pki = certs.ensure_pki(self.state_dir / "pki")
        server = f"https://127.0.0.1:{ports.apiserver}"
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
        self.say(f"[cluster] ready in {time.monotonic() - started:.1f}s: {server} (logs: {self.log_dir})")
        return self.info()

    def down(self, quiet: bool = False) -> None:
        """Stop, in reverse order, only the processes recorded in this state folder's pid files."""
        stopped = []
        for name in reversed(COMPONENTS):
            managed = self._managed(name)
            if managed.is_running():
                stopped.append(name)
            processes.stop(managed)
        if not quiet:
            self.say(f"[cluster] stopped {', '.join(stopped) or 'nothing (was not running)'}")

    def status(self) -> dict[str, bool]:
        return {name: self._managed(name).is_running() for name in COMPONENTS}

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory per component, for the numbers in the issue's closing note."""
        return {name: self._managed(name).rss_bytes() for name in COMPONENTS}

    def info(self) -> ClusterInfo:
        ports = Ports(**json.loads(self._ports_file.read_text()))
        return ClusterInfo(
            kubeconfig=self.kubeconfig,
            server=f"https://127.0.0.1:{ports.apiserver}",
            state_dir=self.state_dir,
            log_dir=self.log_dir,
            pki=certs.ensure_pki(self.state_dir / "pki"),
            node_names=self.node_names,
        )

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
        self._wait_healthy(managed, f"{client}/health", None, 30.0)

    def _start_apiserver(self, ports: Ports, pki: certs.ClusterPki) -> None:
        managed = self._start(
            "kube-apiserver",
            [
                str(build.binary(self.settings, "kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports.apiserver}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=RBAC",
                # As hardened clusters (OpenShift) run it: setting blockOwnerDeletion on an owner reference
                # needs `update` on the owner's finalizers, which the operator's role must therefore grant.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--service-cluster-ip-range={certs.SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                # Endpoints may not hold loopback addresses, and nothing in-cluster dials the apiserver.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={self.state_dir / 'pki' / 'apiserver-generated'}",
            ],
        )
        self._wait_healthy(managed, self._server_url("/readyz"), self._admin_tls(), 90.0)

    def _start_controller(self, name: str, port: int, flags: list[str]) -> None:
        managed = self._start(name, [str(build.binary(self.settings, name)), *flags])
        self._wait_healthy(managed, f"https://127.0.0.1:{port}/healthz", _insecure_tls(), 60.0)

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
        self._wait_healthy(managed, f"http://127.0.0.1:{ports.kwok}/healthz", None, 30.0)

    def _create_nodes(self) -> None:
        for name in self.node_names:
            status, body = self._api("POST", "/api/v1/nodes", kwok.node_manifest(name))
            if status not in (201, 409):
                raise ClusterError("kube-apiserver", f"creating node {name} answered {status}: {body}")

        def all_ready() -> bool:
            status, body = self._api("GET", "/api/v1/nodes")
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

    def _wait_healthy(self, managed: processes.Managed, url: str, tls: ssl.SSLContext | None, timeout: float) -> None:
        started = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - started < timeout:
            if not managed.is_running():
                raise ClusterError(managed.name, "exited before becoming healthy", managed.log)
            status, body = _http("GET", url, tls)
            if status == 200:
                return
            last = f"{status} {body[:300]}"
            time.sleep(0.25)
        raise ClusterError(
            managed.name, f"not healthy after {timeout:.0f}s at {url} (last answer: {last})", managed.log
        )

    def _apiserver_ready(self) -> bool:
        try:
            return _http("GET", self._server_url("/readyz"), self._admin_tls())[0] == 200
        except (OSError, ValueError):
            return False

    def _server_url(self, path: str) -> str:
        ports = Ports(**json.loads(self._ports_file.read_text()))
        return f"https://127.0.0.1:{ports.apiserver}{path}"

    def _admin_tls(self) -> ssl.SSLContext:
        pki = certs.ensure_pki(self.state_dir / "pki")
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        return context

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        return _http(method, self._server_url(path), self._admin_tls(), body)


def _kube_client_flags(kubeconfig: Path, port: int) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
    ]


def _insecure_tls() -> ssl.SSLContext:
    """Controller-manager and scheduler serve /healthz with a self-signed certificate of their own."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _http(method: str, url: str, tls: ssl.SSLContext | None, body: dict[str, Any] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5, context=tls) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    from backtest_devtools.cli import main

    sys.exit(main())
