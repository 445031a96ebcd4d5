"""containerd for the real node: its configuration, its images, and tearing pods down through the CRI.

Debian's containerd 1.6 and runc run the pods (containerd's support matrix stops 1.6 before Kubernetes 1.36,
but kubelet 1.36 still works with it: it falls back to its own cgroup driver when the runtime reports none).
Two settings are forced by this machine kind: `restrict_oom_score_adj` (the VM refuses a negative
oom_score_adj even to root, and kubelet asks -998 for every sandbox) and runc rather than crun (crun
refuses hybrid cgroup hosts). Images live in a root under the build cache, so they survive cluster restarts;
every registry is redirected to a closed loopback port, so a missing image fails at once instead of sending
traffic off the machine.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from backtest_devtools import build
from backtest_devtools.config import Settings
from backtest_devtools.errors import ClusterError
from backtest_devtools.netsetup import RUN_ROOT

STATE = RUN_ROOT / "containerd"
SOCKET = STATE / "containerd.sock"
NAMESPACE = "k8s.io"
PAUSE_IMAGE = "localhost/backtest/pause:3.10"
CLOSED_REGISTRY = "http://127.0.0.1:9"
"""Every pull goes here (the discard port on loopback, closed): nothing is fetched from outside."""


def root_dir(settings: Settings) -> Path:
    """Content store and snapshots: kept across cluster restarts so images are imported once."""
    return settings.cache_dir / "containerd"


def config_toml(root: Path, cni_conf_dir: Path, registry_dir: Path) -> str:
    """containerd's config (format version 2, read by containerd 1.6 and 1.7)."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root}"
state = "{STATE}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{SOCKET}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{STATE}/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM forbids negative oom_score_adj even for root; kubelet asks -998 for sandboxes.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "/usr/sbin/runc"

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni_conf_dir}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{registry_dir}"
"""


def registry_hosts() -> str:
    """hosts.toml of the `_default` folder: applies to every registry without its own folder."""
    return f'server = "{CLOSED_REGISTRY}"\n\n[host."{CLOSED_REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'


def write_config(settings: Settings, folder: Path, cni_conf_dir: Path) -> Path:
    registry_dir = folder / "registry"
    (registry_dir / "_default").mkdir(parents=True, exist_ok=True)
    (registry_dir / "_default" / "hosts.toml").write_text(registry_hosts())
    root = root_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    config = folder / "containerd.toml"
    config.write_text(config_toml(root, cni_conf_dir, registry_dir))
    return config


def ctr(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `ctr` client of Debian's containerd, on the node's socket and the CRI namespace."""
    command = ["ctr", "--address", str(SOCKET), "--namespace", NAMESPACE, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise ClusterError("containerd", f"`ctr {' '.join(args)}` failed: {result.stderr.strip()[-500:]}")
    return result


def crictl(settings: Settings, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    endpoint = f"unix://{SOCKET}"
    command = [
        str(build.binary(settings, "crictl")),
        "--runtime-endpoint",
        endpoint,
        "--image-endpoint",
        endpoint,
        "--timeout",
        "60s",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def answers() -> bool:
    """containerd is up when its socket serves `ctr version` (the server half of the answer)."""
    if not SOCKET.exists():
        return False
    try:
        result = ctr("version", timeout=5.0, check=False)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and "Server:" in result.stdout


def image_names() -> set[str]:
    """Every image reference in the CRI namespace."""
    return {line.strip() for line in ctr("images", "list", "--quiet").stdout.splitlines() if line.strip()}


def image_digest(reference: str) -> str | None:
    """The manifest digest of one image reference, or None when absent."""
    for line in ctr("images", "list").stdout.splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == reference:
            return next((part for part in parts if part.startswith("sha256:")), None)
    return None


def import_archive(archive: Path, references: list[str]) -> None:
    """Import a docker-archive and give it every reference pods may ask for (normalised names)."""
    result = ctr("images", "import", "--snapshotter", "overlayfs", str(archive), timeout=600.0)
    imported = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("unpacking ")]
    if not imported:
        imported = [_first_reference(result.stdout, archive)]
    source = imported[0]
    for reference in references:
        if reference != source:
            ctr("images", "tag", "--force", source, reference)
    # Earlier builds of the same image (about 1 GB each) go, or a session of edits fills the disk; containerd's
    # garbage collector frees their content once no reference names it.
    repository = source.rsplit(":", 1)[0]
    older = [name for name in image_names() if name.rsplit(":", 1)[0] == repository and name != source]
    if older:
        ctr("images", "remove", *older, check=False)


def _first_reference(output: str, archive: Path) -> str:
    for line in output.splitlines():
        for part in line.split():
            if ":" in part and "/" in part and not part.startswith("sha256:"):
                return part
    raise ClusterError("containerd", f"importing {archive} named no image: {output.strip()[-300:]}")


def remove_untagged_images(settings: Settings) -> None:
    """Images no reference names any more (earlier builds) are removed through the CRI, which drops its
    own id references with them; images a container still uses are refused by containerd and stay."""
    listed = crictl(settings, "images", "--output", "json")
    if listed.returncode != 0:
        return
    for image in json.loads(listed.stdout or "{}").get("images", []):
        if not image.get("repoTags"):
            crictl(settings, "rmi", image["id"])


def tag(source: str, reference: str) -> None:
    ctr("images", "tag", "--force", source, reference)


def remove_all_pods(settings: Settings, timeout: float = 90.0) -> list[str]:
    """Stop and remove every pod sandbox through the CRI (runs each pod's CNI DEL); returns what is left."""
    if not answers():
        return []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = crictl(settings, "pods", "--quiet")
        pods = listed.stdout.split()
        if listed.returncode == 0 and not pods:
            return []
        for pod in pods:
            crictl(settings, "stopp", pod)
            crictl(settings, "rmp", "--force", pod)
        time.sleep(0.5)
    return crictl(settings, "pods", "--quiet").stdout.split()


def kill_leftover_tasks() -> None:
    """Tasks the CRI did not remove (a crash between create and start): killed and deleted via ctr."""
    if not answers():
        return
    for line in ctr("tasks", "list", check=False).stdout.splitlines()[1:]:
        task = line.split()[0]
        ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        ctr("tasks", "delete", "--force", task, check=False)
    for line in ctr("containers", "list", "--quiet", check=False).stdout.splitlines():
        ctr("containers", "delete", line.strip(), check=False)
