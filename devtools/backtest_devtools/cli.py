"""`python -m backtest_devtools.cluster build|up|down|status|images`: the Makefile's cluster targets."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from backtest_devtools import build, containerd, images, node
from backtest_devtools.cluster import LocalCluster
from backtest_devtools.config import REPO_ROOT, Settings, load_settings
from backtest_devtools.errors import DevtoolsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backtest_devtools.cluster", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down", "status", "images"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=REPO_ROOT / ".cluster",
        help="certificates, etcd data, logs, pid files and the admin kubeconfig (default: <repo>/.cluster)",
    )
    parser.add_argument("--nodes", type=int, default=2, help="number of fake kwok nodes")
    parser.add_argument(
        "--node",
        choices=["auto", "real", "kwok"],
        default="auto",
        help="auto: a real node beside the kwok nodes whenever one can start here; real: insist; kwok: fake only",
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    started = time.monotonic()
    try:
        if args.command == "build":
            releases = build.ALL_RELEASES if args.node == "real" else build.RELEASES
            timings = build.ensure_built(settings, releases=releases)
            for label, seconds in timings.items():
                state = f"built in {seconds:.0f}s" if seconds else "cached"
                print(f"{label}: {state}")
            print(f"binaries: {settings.bin_dir} (total {time.monotonic() - started:.0f}s)")
        elif args.command == "up":
            real = _want_real_node(args.node, args.state_dir)
            cluster = LocalCluster(settings, args.state_dir, nodes=args.nodes, real_node=real)
            info = cluster.up()
            print(f"server: {info.server}")
            if info.real_node:
                print(f"real node: {info.real_node} (pods run for real; kwok nodes are tainted)")
            print(f"logs: {info.log_dir}")
            print("stop it with: make cluster-down")
            print(f"export KUBECONFIG={info.kubeconfig}")
        elif args.command == "down":
            leftovers = LocalCluster(settings, args.state_dir, real_node=None).down()
            if leftovers:
                return 2
        elif args.command == "images":
            _images(settings)
        else:
            _print_status(LocalCluster(settings, args.state_dir, nodes=args.nodes, real_node=None))
    except DevtoolsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _want_real_node(choice: str, state_dir: Path) -> bool:
    """`auto` starts a real node when this machine can run one and no other cluster holds it; one line says
    why not otherwise (the cluster then has kwok nodes only)."""
    if choice == "kwok":
        return False
    reason = node.can_start_here()
    if reason is None:
        probe = node.RealNode(load_settings(), state_dir.resolve(), state_dir, state_dir, False, print)
        holder = probe.holder()
        if holder is not None:
            reason = f"the real node is in use by the cluster in {holder}"
    if reason is None:
        return True
    if choice == "real":
        raise DevtoolsError(f"a real node cannot start here: {reason}")
    print(f"[cluster] no real node: {reason}; fake kwok nodes only", flush=True)
    return False


def _images(settings: Settings) -> None:
    started = time.monotonic()
    say = print
    built = images.build_project_images(settings, say)
    for item in built:
        state = f"built in {item.seconds:.0f}s" if item.seconds else "unchanged"
        print(f"{item.image.name}: {state} ({item.content_hash[:16]}) -> {', '.join(item.image.references)}")
    if containerd.answers():
        imported = images.import_into_node(settings, say)
        print(f"node: {'imported ' + str(len(imported)) + ' references' if imported else 'already up to date'}")
    else:
        print("node: not running; `make cluster-up` imports the images when it starts the real node")
    print(f"images: done in {time.monotonic() - started:.1f}s")


def _print_status(cluster: LocalCluster) -> None:
    memory = cluster.rss_bytes()
    for name, running in cluster.status().items():
        rss = f"{memory[name] / 2**20:.0f} MiB" if running else "-"
        print(f"{name:<24} {'running' if running else 'stopped':<8} {rss}")
    if "pods" in memory:
        print(f"{'pods (real node)':<24} {'':<8} {memory['pods'] / 2**20:.0f} MiB")
    print(f"{'total':<24} {'':<8} {sum(memory.values()) / 2**20:.0f} MiB")
    if cluster.node is not None and cluster.kubeconfig.exists() and cluster.status().get("kubelet"):
        print(cluster.node.summary(cluster.api))
    if cluster.kubeconfig.exists():
        print(f"export KUBECONFIG={cluster.kubeconfig}")
