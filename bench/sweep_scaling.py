"""Sweep scaling: one 600-combination optimization on 1 replica, then on 3, sharing one real PostgreSQL.

Each replica is a real `backtest-engine serve` process whose CPU is capped like a pod's (a cgroup v1 CPU
quota, `--cpu` cores each), so the comparison is "replicas with a CPU limit each", as in a cluster, and
not "processes fighting over this machine's two cores". The default, 0.25 core, keeps three replicas
(0.75 core) within what a 2-core machine shared with other work can give; with 0.5 core each the three
need 1.5 cores and the run measures the machine's contention instead (bench/results/sweep_scaling_cpu0.5.json,
measured at a load average around 10: 1.71x). A third run kills one of the three
replicas (SIGKILL) once a third of the sweep is done and checks that every combination still arrives.
Prints one JSON document (bench/results/sweep_scaling.json) with the wall times and the speed-up.

    .venv/bin/python bench/sweep_scaling.py --json bench/results/sweep_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

from backtest_devtools.postgres import PostgresServer
from backtest_devtools.stack import Stack, free_port
from backtest_engine.data import synthetic_ohlcv

KEY = "bench-key"
CGROUP = Path("/sys/fs/cgroup/cpu")
BARS = 200_000  # hourly bars (about 23 years): enough work per set that the sweep, not its set-up, is measured
SWEEP = {
    "strategy": "sma_crossover",
    "space": {"fast": list(range(2, 32)), "slow": list(range(40, 240, 10))},  # 30 x 20 = 600
    "execution": {"commission": 0.001},
}


def dataset_csv() -> bytes:
    frame = synthetic_ohlcv(BARS, seed=1, freq="h")
    return frame.reset_index().to_csv(index=False).encode()


def cap_cpu(pid: int, name: str, cores: float) -> bool:
    """Put a process (and the children it forks later) under a CPU quota; False when cgroups are not writable."""
    group = CGROUP / name
    try:
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(int(cores * 100_000)))
        (group / "cgroup.procs").write_text(str(pid))
    except OSError:
        return False
    return True


def run(replicas: int, cores: float, server: PostgresServer, workdir: Path, kill_one: bool = False) -> dict:
    url = server.create_database(f"sweep_{replicas}_{int(kill_one)}_{os.getpid()}")
    env = {"DATABASE_URL": url, "ENGINE_API_KEYS": KEY, "ENGINE_WORKERS": "1", "ENGINE_SWEEP_CHUNK_SIZE": "10",
           "ENGINE_RATE_LIMIT": "100000"}  # fmt: skip
    stack = Stack(workdir / f"r{replicas}-{int(kill_one)}")
    capped = True
    try:
        ports = [free_port() for _ in range(replicas)]
        processes = [stack.engine(f"replica{i}", port, env) for i, port in enumerate(ports)]
        for i, managed in enumerate(processes):
            pid = managed.pid()
            capped = capped and pid is not None and cap_cpu(pid, f"bench-sweep-{replicas}-{i}", cores)
        base = f"http://127.0.0.1:{ports[0]}"
        headers = {"X-API-Key": KEY}
        files = {"file": ("bars.csv", dataset_csv(), "text/csv")}
        dataset = httpx.post(f"{base}/api/v1/datasets", headers=headers, files=files, data={"symbol": "BENCH"},
                             timeout=300).json()["id"]  # fmt: skip
        started = time.perf_counter()
        body = {**SWEEP, "dataset_id": dataset}
        job = httpx.post(f"{base}/api/v1/optimizations", headers=headers, json=body, timeout=60).json()
        killed_at = None
        while True:
            status = httpx.get(f"{base}/api/v1/optimizations/{job['id']}", headers=headers, timeout=30).json()
            if kill_one and killed_at is None and status["progress"]["done"] >= 200:
                os.kill(processes[-1].pid() or 0, signal.SIGKILL)
                killed_at = status["progress"]["done"]
            if status["state"] in ("succeeded", "failed", "cancelled"):
                break
            if time.perf_counter() - started > 1800:
                raise RuntimeError(f"sweep did not finish within 30 minutes: {status}")
            time.sleep(0.25)
        seconds = time.perf_counter() - started
    finally:
        stack.close()
    return {
        "replicas": replicas, "cpu_per_replica": cores, "cpu_capped": capped, "seconds": round(seconds, 2),
        "state": status["state"], "done": status["progress"]["done"], "total": status["progress"]["total"],
        "killed_one_at_done": killed_at,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=float, default=0.25, help="CPU cores per replica (cgroup quota)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    server = PostgresServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        one = run(1, args.cpu, server, workdir)
        three = run(3, args.cpu, server, workdir)
        killed = run(3, args.cpu, server, workdir, kill_one=True)
    finally:
        server.stop()
    result = {
        "benchmark": f"600-combination sweep (sma_crossover, {BARS} bars) spread by procrastinate over replicas",
        "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0], "python": platform.python_version()},
        "one_replica": one,
        "three_replicas": three,
        "speedup_three_over_one": round(one["seconds"] / three["seconds"], 2),
        "three_replicas_one_killed": killed,
        "command": "python bench/sweep_scaling.py --json bench/results/sweep_scaling.json",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if killed["done"] == killed["total"] and killed["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
