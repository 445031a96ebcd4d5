"""The host side of the real node: its address, the pod network, the kernel settings it needs, and the sweep
that removes every trace of it.

Traffic rule of this workplace: pods talk to each other, to the node's own address and to Service IPs, and
to nothing else. The CNI bridge does no masquerading and gives pods no default route (only the Service range
and the node address are routed, through the bridge), and a guard in the mangle table drops anything from
the pod range that would leave through another interface. Everything lives in fixed, clearly named places
(one real node per machine, guarded by node.py's lock), so a crashed run can always be swept away:
interfaces ``bt-node0``/``bt-pods0``, iptables chains ``KUBE-*``, ``CNI-*`` and ``BACKTEST-*``, mounts
under ``/run/backtest-node`` and ``/var/lib/backtest-node``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from backtest_devtools.certs import NODE_IP, SERVICE_CIDR
from backtest_devtools.errors import ClusterError

NODE_INTERFACE = "bt-node0"
BRIDGE = "bt-pods0"
POD_CIDR = "10.88.0.0/24"
POD_GATEWAY = "10.88.0.1"
DNS_SERVICE_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
RUN_ROOT = Path("/run/backtest-node")
LIB_ROOT = Path("/var/lib/backtest-node")
GUARD_CHAIN = "BACKTEST-POD-GUARD"
CNI_NETWORK = "backtest-pods"
CNI_DATA_DIR = RUN_ROOT / "cni-ipam"
OUR_CHAIN_PREFIXES = ("KUBE-", "CNI-", "BACKTEST-")
# Kernel settings the node changes: forwarding (a pod reaching a Service backed by another pod is routed
# back into the bridge), and those kubelet sets itself when protectKernelDefaults is false. Their previous
# values are recorded at start and put back at stop.
SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
}
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
SYSCTL_RECORD = RUN_ROOT / "sysctls.json"


def cni_config() -> dict[str, Any]:
    """The pod network: a bridge with the gateway on the host, no masquerading, no default route."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                    # Only what lives on this machine is routed: Service IPs (kube-proxy) and the node.
                    "routes": [{"dst": SERVICE_CIDR}, {"dst": f"{NODE_IP}/32"}],
                    "dataDir": str(CNI_DATA_DIR),
                },
            },
        ],
    }


def guard_rules() -> list[list[str]]:
    """mangle/FORWARD rules: pod traffic may only be forwarded from the bridge back into the bridge."""
    return [
        ["-s", POD_CIDR, "!", "-o", BRIDGE, "-j", "DROP"],
        ["-d", POD_CIDR, "!", "-i", BRIDGE, "-j", "DROP"],
    ]


def setup_host(cni_conf_dir: Path) -> None:
    """Node address, CNI config, kernel settings (previous values recorded) and the traffic guard."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    LIB_ROOT.mkdir(parents=True, exist_ok=True)
    if not interface_exists(NODE_INTERFACE):
        # An empty bridge holds the address: kernels without the dummy driver (like this VM's) have bridges.
        _ip("link", "add", NODE_INTERFACE, "type", "bridge")
    addresses = _run(["ip", "-o", "-4", "addr", "show", "dev", NODE_INTERFACE]).stdout
    if f" {NODE_IP}/" not in addresses:
        _ip("addr", "add", f"{NODE_IP}/32", "dev", NODE_INTERFACE)
    _ip("link", "set", NODE_INTERFACE, "up")
    # Host-side safety net: Service IPs and pod IPs are routed to the node's empty bridge (no port: it discards
    # what it is given) unless kube-proxy rewrites the destination or the pod bridge exists (its own route wins
    # by metric). Nothing for these ranges can ever follow the default route off the machine.
    _ip("route", "replace", SERVICE_CIDR, "dev", NODE_INTERFACE, "src", NODE_IP)
    _ip("route", "replace", POD_CIDR, "dev", NODE_INTERFACE, "metric", "1000")
    cni_conf_dir.mkdir(parents=True, exist_ok=True)
    (cni_conf_dir / f"10-{CNI_NETWORK}.conflist").write_text(json.dumps(cni_config(), indent=2) + "\n")
    record_sysctls()
    for key, value in SYSCTLS.items():
        write_sysctl(key, value)
    _iptables("mangle", "-N", GUARD_CHAIN, check=False)
    _iptables("mangle", "-F", GUARD_CHAIN)
    for rule in guard_rules():
        _iptables("mangle", "-A", GUARD_CHAIN, *rule)
    if _iptables("mangle", "-C", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode != 0:
        _iptables("mangle", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)


def record_sysctls() -> None:
    """Remember the values before the node changes them; kept from the first start until the sweep."""
    if SYSCTL_RECORD.exists():
        return
    values = {key: read_sysctl(key) for key in (*SYSCTLS, *KUBELET_SYSCTLS)}
    SYSCTL_RECORD.write_text(json.dumps({k: v for k, v in values.items() if v is not None}))


def restore_sysctls() -> None:
    try:
        values: dict[str, str] = json.loads(SYSCTL_RECORD.read_text())
    except (OSError, ValueError):
        return
    for key, value in values.items():
        with contextlib.suppress(OSError):
            write_sysctl(key, value)
    SYSCTL_RECORD.unlink(missing_ok=True)


def read_sysctl(key: str) -> str | None:
    try:
        return (Path("/proc/sys") / key).read_text().strip()
    except OSError:
        return None


def write_sysctl(key: str, value: str) -> None:
    (Path("/proc/sys") / key).write_text(value + "\n")


def sweep_host() -> None:
    """Remove everything the node may have left on the host, whatever state a previous run ended in."""
    unmount_under(RUN_ROOT, LIB_ROOT)
    sweep_iptables()
    for name in (BRIDGE, NODE_INTERFACE, *veths_of(BRIDGE)):
        if interface_exists(name):
            _ip("link", "delete", name, check=False)
    shutil.rmtree(CNI_DATA_DIR, ignore_errors=True)
    restore_sysctls()


def unmount_under(*roots: Path) -> None:
    """Unmount every mount point below the roots, deepest first (lazily if a mount is still busy)."""
    for mount in sorted(mounts_under(*roots), key=lambda path: path.count("/"), reverse=True):
        if subprocess.run(["umount", mount], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def mounts_under(*roots: Path) -> list[str]:
    prefixes = [str(root).rstrip("/") + "/" for root in roots]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point.startswith(prefix) or point + "/" == prefix for prefix in prefixes):
            found.append(point)
    return found


def sweep_iptables() -> None:
    """Delete rules jumping to our chains, then the chains (KUBE-*, CNI-*, BACKTEST-*), in IPv4 and IPv6."""
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            rules = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False)
            if rules.returncode != 0:
                continue
            ours = [line.split()[1] for line in rules.stdout.splitlines() if line.startswith("-N ") and _ours(line)]
            for line in rules.stdout.splitlines():
                parts = line.split()
                if parts[:1] == ["-A"] and parts[1] not in ours and _jumps_to_ours(parts):
                    subprocess.run([tool, "-w", "-t", table, "-D", *parts[1:]], capture_output=True, check=False)
            for chain in ours:
                subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True, check=False)
            for chain in ours:
                subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True, check=False)


def _ours(line: str) -> bool:
    return line.split()[1].startswith(OUR_CHAIN_PREFIXES)


def _jumps_to_ours(parts: list[str]) -> bool:
    for flag in ("-j", "-g"):
        if flag in parts:
            target = parts[parts.index(flag) + 1]
            if target.startswith(OUR_CHAIN_PREFIXES):
                return True
    return False


def our_chains() -> list[str]:
    """`table/chain` of every chain of ours still present (empty after a clean stop)."""
    left = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            rules = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False)
            left += [f"{tool}/{table}/{line.split()[1]}" for line in rules.stdout.splitlines()
                     if line.startswith("-N ") and _ours(line)]  # fmt: skip
    return left


def interface_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def veths_of(bridge: str) -> list[str]:
    folder = Path("/sys/class/net", bridge, "brif")
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def leftovers() -> list[str]:
    """What of the node is still on the host: the clean-stop check reports each item by name."""
    found = [f"interface {name}" for name in (NODE_INTERFACE, BRIDGE) if interface_exists(name)]
    found += [f"mount {point}" for point in mounts_under(RUN_ROOT, LIB_ROOT)]
    found += [f"iptables chain {chain}" for chain in our_chains()]
    return found


def check_prerequisites() -> str | None:
    """Why a real node cannot run on this machine (None when it can): the demo prints it in one line."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, mounts, network interfaces)"
    missing = [tool for tool in ("containerd", "runc", "ctr", "iptables", "ip") if shutil.which(tool) is None]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("CNI plugins (/usr/lib/cni)")
    if missing:
        return f"missing {', '.join(missing)}; install them with `make deps-node`"
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "no usable cgroup hierarchy under /sys/fs/cgroup"
    probe = _run(["ip", "link", "add", "bt-probe0", "type", "bridge"])
    if probe.returncode != 0:
        return f"cannot create network interfaces here ({probe.stderr.strip()})"
    subprocess.run(["ip", "link", "delete", "bt-probe0"], capture_output=True, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _iptables(table: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["iptables", "-w", "-t", table, *args], check=check)


def _run(command: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    if check and result.returncode != 0:
        raise ClusterError("node network", f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result
