"""`python -m backtest_devtools.cluster build|up|down|status`: the Makefile's cluster targets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backtest_devtools import build
from backtest_devtools.cluster import LocalCluster
from backtest_devtools.config import REPO_ROOT, load_settings
from backtest_devtools.errors import DevtoolsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backtest_devtools.cluster", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down", "status"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=REPO_ROOT / ".cluster",
        help="certificates, etcd data, logs, pid files and the admin kubeconfig (default: <repo>/.cluster)",
    )
    parser.add_argument("--nodes", type=int, default=2, help="number of fake kwok nodes")
    args = parser.parse_args(argv)
    settings = load_settings()
    cluster = LocalCluster(settings, args.state_dir, nodes=args.nodes)
    try:
        if args.command == "build":
            timings = build.ensure_built(settings)
            for label, seconds in timings.items():
                state = f"built in {seconds:.0f}s" if seconds else "cached"
                print(f"{label}: {state}")
            print(f"binaries: {settings.bin_dir}")
        elif args.command == "up":
            info = cluster.up()
            print(f"server: {info.server}")
            print(f"logs: {info.log_dir}")
            print("stop it with: make cluster-down")
            print(f"export KUBECONFIG={info.kubeconfig}")
        elif args.command == "down":
            cluster.down()
        else:
            _print_status(cluster)
    except DevtoolsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _print_status(cluster: LocalCluster) -> None:
    memory = cluster.rss_bytes()
    for name, running in cluster.status().items():
        rss = f"{memory[name] / 2**20:.0f} MiB" if running else "-"
        print(f"{name:<24} {'running' if running else 'stopped':<8} {rss}")
    print(f"{'total':<24} {'':<8} {sum(memory.values()) / 2**20:.0f} MiB")
    if cluster.kubeconfig.exists():
        print(f"export KUBECONFIG={cluster.kubeconfig}")
