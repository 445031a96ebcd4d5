"""Start-up cost of the command lines, against the bare interpreter measured in the same run.

`kubectl backtest` is typed during incidents, so each command must start in well under 0.3 s. Every
command runs as a whole process, N times, alternating with the baseline (`python -c pass`) so machine
load drifts apply to both; the CPU seconds come from the kernel's accounting of the finished child
(getrusage), the wall seconds from a monotonic clock. Reported: medians, and each command's median CPU
as a multiple of the baseline's. `old-import-set` imports what `kubectl backtest --help` imported before
the plugin was made lazy (the kubernetes client, and the simulator with scipy and pandas): the cost the
change removed, measured here rather than remembered.

    python bench/cli_startup.py [--runs 7] [--status NAMESPACE/NAME --kubeconfig PATH] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
BASELINE = [sys.executable, "-c", "pass"]
COMMANDS: dict[str, list[str]] = {
    "kubectl-backtest --help": [str(BIN / "kubectl-backtest"), "--help"],
    "kubectl-backtest status --help": [str(BIN / "kubectl-backtest"), "status", "--help"],
    "kubectl-backtest promote --help": [str(BIN / "kubectl-backtest"), "promote", "--help"],
    "backtest-operator --help": [str(BIN / "backtest-operator"), "--help"],
    "backtest-operator simulate --help": [str(BIN / "backtest-operator"), "simulate", "--help"],
    "old-import-set": [sys.executable, "-c", "import kubernetes.client, backtest_operator.simulate"],
}


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of `command` as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--status", metavar="NAMESPACE/NAME", help="also time `status` against a live cluster")
    parser.add_argument("--kubeconfig", help="kubeconfig for --status")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    commands = dict(COMMANDS)
    if args.status:
        namespace, name = args.status.split("/", 1)
        commands["kubectl-backtest status (live API server)"] = [
            str(BIN / "kubectl-backtest"), "status", name, "-n", namespace, "--kubeconfig", args.kubeconfig,
        ]  # fmt: skip
    env = dict(os.environ)
    for command in [BASELINE, *commands.values()]:
        measure(command, env)  # warm-up: page cache, .pyc files
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ["baseline", *commands]}
    for _ in range(args.runs):
        for name, command in commands.items():
            samples["baseline"].append(measure(BASELINE, env))
            samples[name].append(measure(command, env))
    base_cpu = statistics.median(cpu for cpu, _ in samples["baseline"])
    results = {}
    print(f"{'command':<45} {'cpu s':>7} {'wall s':>7} {'cpu / bare python':>18}")
    for name, runs in samples.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        ratio = cpu / base_cpu if base_cpu else float("nan")
        results[name] = {"cpu_seconds": round(cpu, 4), "wall_seconds": round(wall, 4), "cpu_ratio": round(ratio, 2)}
        print(f"{name:<45} {cpu:>7.3f} {wall:>7.3f} {ratio:>18.2f}")
    load = os.getloadavg()
    print(f"runs per command: {args.runs}; load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "load": load, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
