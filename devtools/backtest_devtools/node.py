"""A real Kubernetes node on this machine: containerd + runc, CNI bridge, kubelet, kube-proxy, CoreDNS and
metrics-server, started in order with a health check each, and stopped leaving nothing behind.

Only one real node can run on a machine (it owns fixed interfaces, iptables chains and folders), so a node
is claimed through a lock: /run/backtest-node.owner names the state folder of the cluster that runs it. A
second cluster asking for a real node gets NodeBusy naming the holder; a claim whose processes are gone is
stale and is swept away first.

Order at start: host network and containerd (while the API server starts), then kubelet (waits for the
node to be Ready), kube-proxy, CoreDNS (waits until it has read the API), metrics-server. At stop: every
pod through the CRI (so CNI removes its rules and addresses), kubelet, kube-proxy (`--cleanup` removes its
rules), CoreDNS, metrics-server, containerd, then a sweep of mounts, interfaces, iptables chains and
kernel settings; whatever is still there is reported by name.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from backtest_devtools import build, certs, containerd, health, images, netsetup, nodeconfig, processes
from backtest_devtools.config import Settings
from backtest_devtools.errors import ClusterError, NodeBusy
from backtest_devtools.kubeconfig import write_kubeconfig

Report = Callable[[str], None]
Api = Callable[..., tuple[int, str]]
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy", "coredns", "metrics-server")
LOCK = Path("/run/backtest-node.lock")
OWNER = Path("/run/backtest-node.owner")
NODE_READY_SECONDS = 90.0


@dataclass(frozen=True)
class NodePorts:
    kubelet: int
    kubelet_healthz: int
    proxy_healthz: int
    proxy_metrics: int
    dns_health: int
    dns_ready: int
    metrics_server: int

    @classmethod
    def pick_free(cls) -> NodePorts:
        """kubelet and metrics-server listen on the node address, the health endpoints on loopback."""
        hosts = [certs.NODE_IP, "127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1", certs.NODE_IP]
        sockets = [socket.socket() for _ in hosts]
        try:
            for sock, host in zip(sockets, hosts, strict=True):
                sock.bind((host, 0))
            return cls(*[sock.getsockname()[1] for sock in sockets])
        finally:
            for sock in sockets:
                sock.close()


class RealNode:
    """The real node of one LocalCluster; its configuration and logs live in <state_dir>/node and logs/."""

    def __init__(
        self, settings: Settings, state_dir: Path, run_dir: Path, log_dir: Path, die_with_parent: bool, say: Report
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.folder = state_dir / "node"
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.die_with_parent = die_with_parent
        self.say = say

    # -- ownership -------------------------------------------------------------------------------

    def holder(self) -> str | None:
        """State folder of a live real node on this machine that is not ours (None when free or ours)."""
        try:
            owner = OWNER.read_text().strip()
        except OSError:
            return None
        if owner == str(self.state_dir):
            return None
        alive = any(
            processes.Managed(name, Path(owner) / "run" / f"{name}.pid", Path(), owner).is_running()
            for name in NODE_COMPONENTS
        )
        return owner if alive else None

    @contextlib.contextmanager
    def _locked(self) -> Any:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with LOCK.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def claim(self) -> None:
        with self._locked():
            holder = self.holder()
            if holder is not None:
                raise NodeBusy(holder)
            OWNER.write_text(str(self.state_dir) + "\n")

    def owns(self) -> bool:
        try:
            return OWNER.read_text().strip() == str(self.state_dir)
        except OSError:
            return False

    # -- lifecycle -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Before the control plane: claim the node, sweep stale leftovers, set up the host, start containerd."""
        self.claim()
        self._stop_processes()
        netsetup.sweep_host()
        self.folder.mkdir(parents=True, exist_ok=True)
        netsetup.setup_host(self.cni_conf_dir)
        self._ports_file.write_text(json.dumps(asdict(NodePorts.pick_free())))
        config = containerd.write_config(self.settings, self.folder, self.cni_conf_dir)
        self._start("containerd", ["containerd", "--config", str(config)])

    def start(self, server: str, pki: certs.ClusterPki, api: Api) -> None:
        """After the API server is ready: images, identities, kubelet, kube-proxy, CoreDNS, metrics-server."""
        ports = self.ports()
        managed = self._managed("containerd")
        if not processes.wait_until(lambda: containerd.answers() or not managed.is_running(), 30.0, 0.1):
            raise ClusterError("containerd", "did not answer on its socket within 30s", managed.log)
        if not managed.is_running():
            raise ClusterError("containerd", "exited during start", managed.log)
        images.import_into_node(self.settings, self.say)
        configs = self._identities(server, pki, ports)
        for manifest in nodeconfig.dns_objects() + nodeconfig.metrics_server_rbac():
            _apply(api, manifest)
        self._start_kubelet(configs["kubelet"], ports, pki, api)
        self._start_kube_proxy(configs["kube-proxy"], ports)
        self._start_coredns(configs["coredns"], ports)
        self._start_metrics_server(configs["metrics-server"], ports, pki)
        # Registered once it serves, so the aggregator's first availability check already succeeds.
        ca_bundle = base64.b64encode(pki.ca.cert.read_bytes()).decode()
        for manifest in nodeconfig.metrics_server_api(ports.metrics_server, ca_bundle):
            _apply(api, manifest)

    def stop(self) -> list[str]:
        """Tear down in order and sweep; returns what could not be removed (empty after a clean stop)."""
        if not self.owns():
            self._stop_processes()  # our own pid files only; another cluster's node is not touched
            return []
        if self._managed("containerd").is_running():
            remaining = containerd.remove_all_pods(self.settings) if self._crictl_built() else []
            if remaining:
                self.say(f"[node] pods still present after CRI removal: {', '.join(remaining)}")
        self._stop_processes()
        kube_proxy = build.binary(self.settings, "kube-proxy")
        if kube_proxy.exists():
            subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, timeout=60, check=False)
        _kill_leftover_shims()
        netsetup.sweep_host()
        _remove_container_log_links()
        with self._locked():
            if self.owns():
                OWNER.unlink(missing_ok=True)
        return netsetup.leftovers() + [f"process {pid}" for pid in _leftover_shims()]

    def _stop_processes(self) -> None:
        for name in ("metrics-server", "coredns", "kube-proxy", "kubelet"):
            processes.stop(self._managed(name))
        if self._managed("containerd").is_running():
            containerd.kill_leftover_tasks()
        processes.stop(self._managed("containerd"), grace=20.0)

    def status(self) -> dict[str, bool]:
        return {name: self._managed(name).is_running() for name in NODE_COMPONENTS}

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of the node's processes; the shims and containers are counted under 'pods'."""
        memory = {name: self._managed(name).rss_bytes() for name in NODE_COMPONENTS}
        memory["pods"] = pods_rss_bytes()
        return memory

    def summary(self, api: Api) -> str:
        """One line for `make cluster-status`: the node's readiness and its pods."""
        status, body = api("GET", f"/api/v1/nodes/{nodeconfig.NODE_NAME}")
        if status != 200:
            return f"node {nodeconfig.NODE_NAME}: not registered ({status})"
        conditions = json.loads(body).get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        selector = f"spec.nodeName={nodeconfig.NODE_NAME}"
        status, body = api("GET", f"/api/v1/pods?fieldSelector={selector}")
        pods = json.loads(body).get("items", []) if status == 200 else []
        running = sum(pod.get("status", {}).get("phase") == "Running" for pod in pods)
        return f"node {nodeconfig.NODE_NAME}: {'Ready' if ready else 'NotReady'}, {running}/{len(pods)} pods running"

    def ports(self) -> NodePorts:
        return NodePorts(**json.loads(self._ports_file.read_text()))

    @property
    def cni_conf_dir(self) -> Path:
        return self.folder / "cni"

    @property
    def _ports_file(self) -> Path:
        return self.folder / "ports.json"

    # -- components ------------------------------------------------------------------------------

    def _identities(self, server: str, pki: certs.ClusterPki, ports: NodePorts) -> dict[str, Path]:
        folder = self.folder / "pki"
        users = {
            "kubelet": (f"system:node:{nodeconfig.NODE_NAME}", ("system:nodes",)),
            "kube-proxy": ("system:kube-proxy", ()),
            "coredns": ("system:coredns", ()),
            "metrics-server": (nodeconfig.METRICS_USER, ()),
        }
        configs = {}
        for name, (user, groups) in users.items():
            pair = certs.issue_client_cert(pki, folder, user, groups)
            configs[name] = write_kubeconfig(self.folder / f"{name}.kubeconfig", server, pki.ca.cert, pair, user)
        return configs

    def _start_kubelet(self, kubeconfig: Path, ports: NodePorts, pki: certs.ClusterPki, api: Api) -> None:
        serving = certs.issue_server_cert(pki, self.folder / "pki", "kubelet-serving", [nodeconfig.NODE_NAME],
                                          [certs.NODE_IP])  # fmt: skip
        resolv = self.folder / "resolv.conf"
        resolv.write_text("# pods get cluster DNS; nothing outside the cluster is resolved\n")
        config = nodeconfig.kubelet_config(
            ca_file=pki.ca.cert, tls_cert=serving.cert, tls_key=serving.key, port=ports.kubelet,
            healthz_port=ports.kubelet_healthz, runtime_socket=containerd.SOCKET, resolv_conf=resolv,
            pod_logs=netsetup.LIB_ROOT / "pod-logs", volume_plugins=netsetup.LIB_ROOT / "volume-plugins",
        )  # fmt: skip
        path = self.folder / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        managed = self._start(
            "kubelet",
            [
                str(build.binary(self.settings, "kubelet")),
                f"--config={path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={netsetup.LIB_ROOT / 'kubelet'}",
                f"--cert-dir={self.folder / 'pki'}",
                f"--hostname-override={nodeconfig.NODE_NAME}",
                f"--node-ip={certs.NODE_IP}",
                f"--node-labels={nodeconfig.NODE_LABEL}=real",
                "--v=1",
            ],
        )
        health.wait_healthy(managed, f"http://127.0.0.1:{ports.kubelet_healthz}/healthz", None, 60.0)

        def ready() -> bool:
            status, body = api("GET", f"/api/v1/nodes/{nodeconfig.NODE_NAME}")
            if status != 200:
                return False
            conditions = json.loads(body).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        if not processes.wait_until(lambda: ready() or not managed.is_running(), NODE_READY_SECONDS, 0.25):
            raise ClusterError("kubelet", f"node not Ready within {NODE_READY_SECONDS:.0f}s", managed.log)
        if not managed.is_running():
            raise ClusterError("kubelet", "exited before the node became Ready", managed.log)

    def _start_kube_proxy(self, kubeconfig: Path, ports: NodePorts) -> None:
        path = self.folder / "kube-proxy.yaml"
        config = nodeconfig.kube_proxy_config(kubeconfig, ports.proxy_healthz, ports.proxy_metrics)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        managed = self._start("kube-proxy", [str(build.binary(self.settings, "kube-proxy")), f"--config={path}"])
        health.wait_healthy(managed, f"http://127.0.0.1:{ports.proxy_healthz}/healthz", None, 60.0)

    def _start_coredns(self, kubeconfig: Path, ports: NodePorts) -> None:
        path = self.folder / "Corefile"
        path.write_text(nodeconfig.corefile(kubeconfig, ports.dns_health, ports.dns_ready))
        managed = self._start("coredns", [str(build.binary(self.settings, "coredns")), "-conf", str(path)])
        health.wait_healthy(managed, f"http://127.0.0.1:{ports.dns_ready}/ready", None, 60.0)

    def _start_metrics_server(self, kubeconfig: Path, ports: NodePorts, pki: certs.ClusterPki) -> None:
        serving = certs.issue_server_cert(
            pki, self.folder / "pki", "metrics-server-serving",
            ["metrics-server.kube-system.svc", "metrics-server.kube-system.svc.cluster.local"], [certs.NODE_IP],
        )  # fmt: skip
        managed = self._start(
            "metrics-server",
            [
                str(build.binary(self.settings, "metrics-server")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={certs.NODE_IP}",
                f"--secure-port={ports.metrics_server}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--kubelet-certificate-authority={pki.ca.cert}",
                "--kubelet-preferred-address-types=InternalIP",
                "--kubelet-use-node-status-port",
                "--metric-resolution=15s",
                f"--cert-dir={self.folder / 'metrics-server-certs'}",
            ],
        )
        tls = ssl.create_default_context(cafile=str(pki.ca.cert))
        tls.check_hostname = False
        health.wait_healthy(managed, f"https://{certs.NODE_IP}:{ports.metrics_server}/livez", tls, 60.0)

    # -- plumbing --------------------------------------------------------------------------------

    def _crictl_built(self) -> bool:
        return build.binary(self.settings, "crictl").exists()

    def _managed(self, name: str) -> processes.Managed:
        return processes.Managed(name, self.run_dir / f"{name}.pid", self.log_dir / f"{name}.log", str(self.state_dir))

    def _start(self, name: str, command: list[str]) -> processes.Managed:
        self.say(f"[node] starting {name}")
        return processes.start(
            name,
            command,
            run_dir=self.run_dir,
            log_dir=self.log_dir,
            owner_mark=str(self.state_dir),
            die_with_parent=self.die_with_parent,
        )


def _apply(api: Api, manifest: dict[str, Any]) -> None:
    """Server-side apply: creates the object, or brings one left from a previous start up to date (ports)."""
    name = manifest["metadata"]["name"]
    path = f"{nodeconfig.collection_path(manifest)}/{name}?fieldManager=backtest-devtools&force=true"
    status, body = api("PATCH", path, manifest, "application/apply-patch+yaml")
    if status not in (200, 201):
        raise ClusterError(
            "kube-apiserver", f"creating {manifest['kind']} {manifest['metadata']['name']}: {body[:300]}"
        )


def _shim_mark() -> str:
    return f"-address {containerd.SOCKET}"


def _leftover_shims() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "containerd-shim" in cmdline and _shim_mark() in cmdline:
            found.append(int(entry.name))
    return found


def _kill_leftover_shims() -> None:
    """A shim outliving containerd (crash) keeps its container alive: kill the container cgroup's processes."""
    for pid in _leftover_shims():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    processes.wait_until(lambda: not _leftover_shims(), 10.0)


def _remove_container_log_links() -> None:
    """kubelet links /var/log/containers/*.log to pod logs; remove the links into our pod-log folder."""
    folder = Path("/var/log/containers")
    if not folder.is_dir():
        return
    ours = str(netsetup.LIB_ROOT)
    for link in folder.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(ours):
                link.unlink()


def pods_rss_bytes() -> int:
    """Resident memory of every process whose cgroup path is one of the node's containers."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
            if "/k8s.io/" not in cgroups and "kubepods" not in cgroups:
                cmdline = (entry / "cmdline").read_bytes()
                if b"containerd-shim" not in cmdline or _shim_mark().encode() not in cmdline.replace(b"\0", b" "):
                    continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


def can_start_here() -> str | None:
    """Why a real node cannot start on this machine, or None; the fallback prints this in one line."""
    return netsetup.check_prerequisites()
