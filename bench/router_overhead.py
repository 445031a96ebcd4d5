"""Router overhead against calling the upstream directly, at a fixed request rate, plus throughput and
weight flips under load. Not a test: it prints and writes numbers (`make bench-router`).

Processes: one upstream (tests/support/upstream.py, healthy) playing both stable and canary on two
ports, the router (`python -m backtest_engine.router`) in front, and this load generator, all on the
same machine. Baseline = the same load generator against the upstream directly, in the same run.

Shadowing: a second router runs with `--shadow-fraction` (default 0.1) at weight 1 (shadowing acts only
while a canary takes traffic; the canary is the same healthy upstream, so the 1 % it serves costs what
stable does). It is measured in the same interleaved rounds, on the small JSON answer (status compared)
and, in a section of its own, on a full engine result (every metric, trades, equity curve: compared
field by field), where direct, plain routed and shadowing routed runs again alternate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_result import engine_json, engine_result
from loadgen import Result, closed_loop, open_loop, paired_open_loop

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ROOT / "tests" / "support" / "upstream.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env={**os.environ, **(env or {})}, stderr=subprocess.DEVNULL)


def start_upstream(name: str, result_file: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    env = {"UPSTREAM_NAME": name, "UPSTREAM_RESULT_FILE": str(result_file)}
    proc = start([sys.executable, str(UPSTREAM), "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/_stats")
    return url, proc


def start_router(stable: str, canary: str, weight_file: Path, *extra: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = start(
        [
            sys.executable,
            "-m",
            "backtest_engine.router",
            "--stable",
            stable,
            "--canary",
            canary,
            "--weight-file",
            str(weight_file),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--log-level",
            "warning",
            *extra,
        ]
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/router/health")
    return url, proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_pressure() -> str:
    """Linux PSI: share of time some runnable task waited for a CPU (other load on a shared machine)."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "unavailable"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def summary(result: Result) -> dict[str, object]:
    return {
        "completed": result.completed,
        "failed": result.failed,
        "rps": round(result.completed / result.elapsed, 1) if result.elapsed else 0,
        "p50_ms": ms(result.percentile(0.50)),
        "p90_ms": ms(result.percentile(0.90)),
        "p99_ms": ms(result.percentile(0.99)),
        "max_ms": ms(max(result.latencies, default=float("nan"))),
        "max_send_lag_ms": ms(result.max_send_lag),
    }


def merge(results: list[Result]) -> Result:
    merged = Result()
    for r in results:
        merged.latencies += r.latencies
        merged.statuses.update(r.statuses)
        merged.failures.update(r.failures)
        merged.headers_seen.update(r.headers_seen)
        merged.elapsed += r.elapsed
        merged.max_send_lag = max(merged.max_send_lag, r.max_send_lag)
    return merged


def write_engine_result(path: Path, bars: int) -> int:
    """A real engine answer as the engine serializes it, in `path`; returns its size in bytes."""
    body = engine_json(engine_result(bars))
    path.write_bytes(body)
    return len(body)


async def shadow_counts(router: str) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        state = (await client.get(router + "/router/state")).json()
    counts: dict[str, int] = state["shadow"]["comparisons"]
    return counts


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after}


async def flip_weights(path: Path, stop: asyncio.Event, every: float, applied: list[int]) -> None:
    rng = random.Random(1)
    while not stop.is_set():
        value = rng.choice([0, 100, rng.randint(0, 100)])
        # in place, not atomic: the router must cope with torn reads
        await asyncio.to_thread(path.write_text, f"{value}\n")
        applied.append(value)
        await asyncio.sleep(every)


async def main_async(opts: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rate_rps": opts.rate,
        "seconds_per_run": opts.seconds,
        "rounds": opts.rounds,
        "loadavg_at_start": os.getloadavg(),
        "cpu_pressure_at_start": cpu_pressure(),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    weight = tmp / "weight"
    weight.write_text("0")
    shadow_weight = tmp / "shadow-weight"
    shadow_weight.write_text("1")
    result_file = tmp / "result.json"
    out["engine_result_bytes"] = write_engine_result(result_file, opts.result_bars)
    try:
        stable, p = start_upstream("stable", result_file)
        procs.append(p)
        canary, p = start_upstream("canary", result_file)
        procs.append(p)
        stable_pid = procs[0].pid
        routers = {}
        router_pids = {}
        for variant, extra in opts.variants.items():
            shadowing = "--shadow-fraction" in extra
            url, p = start_router(stable, canary, shadow_weight if shadowing else weight, *extra)
            procs.append(p)
            routers[variant] = url
            router_pids[variant] = p.pid
        cpu: dict[str, float] = {}

        shadow_router = routers[opts.shadow_variant]
        shadow_before = await shadow_counts(shadow_router)

        # 1. fixed rate: direct vs routed, interleaved rounds so drift hits both alike
        runs: dict[str, list[Result]] = {"direct": [], **{f"routed[{v}]": [] for v in routers}}
        for _ in range(opts.rounds):
            before = cpu_seconds(stable_pid)
            runs["direct"].append(await open_loop(stable + "/x", opts.rate, opts.seconds))
            cpu["upstream"] = cpu.get("upstream", 0.0) + cpu_seconds(stable_pid) - before
            for variant, url in routers.items():
                before = cpu_seconds(router_pids[variant])
                runs[f"routed[{variant}]"].append(await open_loop(url + "/x", opts.rate, opts.seconds))
                cpu[variant] = cpu.get(variant, 0.0) + cpu_seconds(router_pids[variant]) - before
        fixed = {name: summary(merge(results)) for name, results in runs.items()}
        base = fixed["direct"]
        for name, row in fixed.items():
            if name != "direct":
                row["overhead_p50_ms"] = round(row["p50_ms"] - base["p50_ms"], 3)
                row["overhead_p99_ms"] = round(row["p99_ms"] - base["p99_ms"], 3)
                # each round pairs a direct and a routed run taken seconds apart: less exposed to
                # other load on the machine than the pooled numbers
                per_round = [
                    (
                        ms(r.percentile(0.99)) - ms(d.percentile(0.99)),
                        ms(r.percentile(0.5)) - ms(d.percentile(0.5)),
                    )
                    for d, r in zip(runs["direct"], runs[name], strict=True)
                ]
                row["overhead_p99_ms_per_round"] = [round(p99, 3) for p99, _ in per_round]
                row["overhead_p50_ms_per_round"] = [round(p50, 3) for _, p50 in per_round]
                row["overhead_p99_ms_median_of_rounds"] = round(statistics.median(p for p, _ in per_round), 3)
        out["fixed_rate"] = fixed
        out["fixed_rate_shadow_comparisons"] = delta(await shadow_counts(shadow_router), shadow_before)
        # CPU time per request barely depends on other load, unlike latency percentiles
        n_requests = opts.rate * opts.seconds * opts.rounds
        out["cpu_us_per_request"] = {
            "upstream (direct runs)": round(cpu["upstream"] / n_requests * 1e6, 1),
            **{f"router[{v}] (routed runs)": round(cpu[v] / n_requests * 1e6, 1) for v in routers},
        }
        out["fixed_rate_rounds"] = {
            name: [{k: summary(r)[k] for k in ("p50_ms", "p99_ms", "failed")} for r in results]
            for name, results in runs.items()
        }

        # 1a. the same on a full engine result: direct, plain router, shadowing router (compares results)
        result_runs: dict[str, list[Result]] = {"direct": [], "routed": [], "routed+shadow": []}
        targets = {"direct": stable, "routed": routers[next(iter(routers))], "routed+shadow": shadow_router}
        path = "/api/v1/backtests/bench-result"
        shadow_before = await shadow_counts(shadow_router)
        for _ in range(opts.result_rounds):
            for name, url in targets.items():
                result_runs[name].append(await open_loop(url + path, opts.rate, opts.seconds))
        on_results = {name: summary(merge(results)) for name, results in result_runs.items()}
        for name in ("routed", "routed+shadow"):
            row = on_results[name]
            row["overhead_p50_ms"] = round(row["p50_ms"] - on_results["direct"]["p50_ms"], 3)
            row["overhead_p99_ms"] = round(row["p99_ms"] - on_results["direct"]["p99_ms"], 3)
            row["overhead_p99_ms_per_round"] = [
                round(ms(r.percentile(0.99)) - ms(d.percentile(0.99)), 3)
                for d, r in zip(result_runs["direct"], result_runs[name], strict=True)
            ]
        on_results["shadow_comparisons"] = delta(await shadow_counts(shadow_router), shadow_before)
        out["fixed_rate_engine_result"] = on_results

        # 1b. paired: direct and routed requests due at the same instants, so both see the same
        # background load; per-pair differences give the overhead distribution directly
        main_router = routers[next(iter(routers))]
        shadow_before = await shadow_counts(shadow_router)
        for key, router_url in (("paired", main_router), ("paired_shadow", shadow_router)):
            direct_r, routed_r, diffs = await paired_open_loop(
                stable + "/x", router_url + "/x", opts.rate, opts.seconds * opts.rounds
            )
            diffs.sort()
            out[key] = {
                "direct": summary(direct_r),
                "routed": summary(routed_r),
                "overhead_p50_ms": round(summary(routed_r)["p50_ms"] - summary(direct_r)["p50_ms"], 3),
                "overhead_p99_ms": round(summary(routed_r)["p99_ms"] - summary(direct_r)["p99_ms"], 3),
                "pair_difference_p50_ms": ms(diffs[len(diffs) // 2]),
                "pair_difference_p99_ms": ms(diffs[int(len(diffs) * 0.99)]),
                "pairs": len(diffs),
            }
        out["paired_shadow"]["shadow_comparisons"] = delta(await shadow_counts(shadow_router), shadow_before)
        # the shadowing router against the plain one at the same instants: what shadowing itself adds
        plain_r, shadow_r, diffs = await paired_open_loop(
            main_router + "/x", shadow_router + "/x", opts.rate, opts.seconds * opts.rounds
        )
        diffs.sort()
        out["paired_plain_vs_shadow"] = {
            "plain": summary(plain_r),
            "shadow": summary(shadow_r),
            "shadow_minus_plain_p50_ms": round(summary(shadow_r)["p50_ms"] - summary(plain_r)["p50_ms"], 3),
            "shadow_minus_plain_p99_ms": round(summary(shadow_r)["p99_ms"] - summary(plain_r)["p99_ms"], 3),
            "pair_difference_p50_ms": ms(diffs[len(diffs) // 2]),
            "pair_difference_p99_ms": ms(diffs[int(len(diffs) * 0.99)]),
            "pairs": len(diffs),
        }

        # 2. same rate with a 50/50 split (both healthy): the canary path costs what the stable path does
        weight.write_text("50")
        await asyncio.sleep(0.5)
        split = await open_loop(main_router + "/x", opts.rate, opts.seconds, watch_header="x-backtest-track")
        out["fixed_rate_weight_50"] = {**summary(split), "tracks": dict(split.headers_seen)}

        # 3. maximum throughput, closed loop
        throughput = {}
        for name, url in [("direct", stable), *((f"routed[{v}]", u) for v, u in routers.items())]:
            r = await closed_loop(url + "/x", opts.concurrency, opts.seconds)
            throughput[name] = {**summary(r), "concurrency": opts.concurrency}
        out["max_throughput"] = throughput

        # 4. weight flips every 100 ms under load: zero failed client requests allowed
        stop = asyncio.Event()
        applied: list[int] = []
        flipper = asyncio.create_task(flip_weights(weight, stop, opts.flip_every, applied))
        flips = await open_loop(main_router + "/x", opts.rate, opts.flip_seconds, watch_header="x-backtest-track")
        stop.set()
        await flipper
        async with httpx.AsyncClient() as client:
            state = (await client.get(main_router + "/router/state")).json()
        out["weight_flips"] = {
            **summary(flips),
            "flip_every_s": opts.flip_every,
            "weights_written": len(applied),
            "tracks": dict(flips.headers_seen),
            "status_codes": {str(k): v for k, v in flips.statuses.items()},
            "transport_failures": dict(flips.failures),
            "router_fallbacks": state["counters"]["fallbacks"],
        }
        out["loadavg_at_end"] = os.getloadavg()
        out["cpu_pressure_at_end"] = cpu_pressure()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--flip-seconds", type=float, default=30)
    parser.add_argument("--flip-every", type=float, default=0.1)
    parser.add_argument("--compare-servers", action="store_true", help="also run the router on h11+asyncio")
    parser.add_argument("--shadow-fraction", type=float, default=0.1, help="of the shadowing router (default 0.1)")
    parser.add_argument("--result-bars", type=int, default=1000, help="bars of the engine result served (1000)")
    parser.add_argument("--result-rounds", type=int, default=3, help="rounds on the engine result (default 3)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority for the generator, upstreams and router alike (negative needs root): "
        "shields all measured processes equally from other load on a shared machine",
    )
    opts = parser.parse_args()
    if opts.nice:
        os.setpriority(os.PRIO_PROCESS, 0, opts.nice)  # inherited by every process started below
    fast = ["--http", "httptools", "--loop", "uvloop"]
    opts.variants = {"httptools+uvloop": fast}
    if opts.compare_servers:
        opts.variants["h11+asyncio"] = ["--http", "h11", "--loop", "asyncio"]
    opts.shadow_variant = f"httptools+uvloop+shadow{opts.shadow_fraction:g}"
    opts.variants[opts.shadow_variant] = [*fast, "--shadow-fraction", str(opts.shadow_fraction)]
    results = uvloop.run(main_async(opts))
    text = json.dumps(results, indent=2)
    print(text)
    if opts.json:
        opts.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
