"""A rate limit shared by 3 replicas: one client hammers three real engine processes in turn.

Shared: the three replicas use one real PostgreSQL, whose `rate_limits` table holds the key's bucket
(GCRA, one upsert per request). Baseline, measured in the same run: the same three replicas with a
SQLite file each, i.e. a limit kept by every replica on its own. With a limit of N per minute and a
fresh bucket, at most N (the burst) + N * seconds / 60 requests may pass; the report gives accepted over
that allowance for both. Also the median latency of accepted requests, shared against per-replica.

    .venv/bin/python bench/ratelimit_shared.py --json bench/results/ratelimit_shared.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from backtest_devtools.postgres import PostgresServer
from backtest_devtools.stack import Stack, free_port

KEY = "bench-key"


def hammer(urls: list[str], seconds: float, rate: float) -> dict:
    """Requests at `rate` per second, round robin over `urls`, for `seconds`; counts what passed."""
    codes: dict[int, int] = {}
    accepted_latency: list[float] = []
    with httpx.Client(timeout=10.0, headers={"X-API-Key": KEY}) as client:
        started = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - started < seconds:
            url = urls[sent % len(urls)]
            before = time.perf_counter()
            code = client.get(f"{url}/api/v1/strategies").status_code
            if code == 200:
                accepted_latency.append(time.perf_counter() - before)
            codes[code] = codes.get(code, 0) + 1
            sent += 1
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))
        elapsed = now - started
    return {"codes": codes, "elapsed": elapsed, "median_ms": 1000 * statistics.median(accepted_latency or [0.0])}


def run(label: str, urls_for: list[str], limit: int, seconds: float, rate: float) -> dict:
    measured = hammer(urls_for, seconds, rate)
    accepted = measured["codes"].get(200, 0)
    allowance = limit + limit * measured["elapsed"] / 60.0
    return {
        "setup": label, "replicas": len(urls_for), "limit_per_minute": limit, "seconds": round(measured["elapsed"], 1),
        "requests": sum(measured["codes"].values()), "accepted": accepted, "refused_429": measured["codes"].get(429, 0),
        "allowance": round(allowance, 1), "accepted_over_allowance": round(accepted / allowance, 3),
        "median_accepted_ms": round(measured["median_ms"], 2), "other_codes": {
            str(k): v for k, v in measured["codes"].items() if k not in (200, 429)
        },
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=120, help="ENGINE_RATE_LIMIT, requests per minute")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="client requests per second (all replicas)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ratelimit-"))
    server = PostgresServer().start()
    results = []
    try:
        for label in ("shared (one PostgreSQL)", "per replica (a SQLite file each)"):
            stack = Stack(workdir / str(len(results)))
            shared_url = server.create_database(f"limits_{len(results)}_{os.getpid()}")
            urls = []
            try:
                for i in range(3):
                    port = free_port()
                    database = shared_url if label.startswith("shared") else f"sqlite:///{workdir}/r{i}.db"
                    stack.engine(f"replica{i}", port, {"DATABASE_URL": database, "ENGINE_API_KEYS": KEY,
                                                        "ENGINE_RATE_LIMIT": str(args.limit)})  # fmt: skip
                    urls.append(f"http://127.0.0.1:{port}")
                results.append(run(label, urls, args.limit, args.seconds, args.rate))
            finally:
                stack.close()
    finally:
        server.stop()
    shared, alone = results
    report = {
        "benchmark": "one API key, 3 engine replicas, requests spread round robin",
        "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
        "shared": shared,
        "baseline_per_replica": alone,
        "within_10_percent": abs(shared["accepted_over_allowance"] - 1.0) <= 0.10,
        "command": "python bench/ratelimit_shared.py --json bench/results/ratelimit_shared.json",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
