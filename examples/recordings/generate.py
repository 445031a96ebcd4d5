"""Regenerate the example recordings (deterministic): ``python examples/recordings/generate.py``.

Each file is what a router would have recorded while the default policy (examples/backtestservice.yaml)
rolled out a new version at 50 requests per second, sampled every 30 s: canary traffic follows the
phase weights, and one fault per file appears at a known time.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
STEP = timedelta(seconds=30)
RATE = 50  # requests per second reaching the router
SCHEDULE = [(1, 10), (10, 30), (50, 60), (100, 15)]  # (weight %, minutes) of the default policy


@dataclass
class Behaviour:
    """How a track behaves during one interval."""

    error_rate: float = 0.002
    fallback_rate: float = 0.0
    slow_rate: float = 0.005
    p95: float = 0.25
    unhealthy: int = 0


Fault = Callable[[float], Behaviour]  # minutes since start -> canary behaviour


def weight_at(minute: float) -> int:
    elapsed = 0.0
    for weight, minutes in SCHEDULE:
        elapsed += minutes
        if minute < elapsed:
            return weight
    return 100


def write(
    name: str, minutes: int, canary: Fault, *, rate: float = RATE, seed: int = 7, weight: int | None = None
) -> None:
    rng = np.random.default_rng(seed)
    per_interval = rate * STEP.total_seconds()
    with (HERE / name).open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            ["time", "track", "requests", "errors", "fallbacks", "slow", "latency_p95_seconds", "unhealthy_pods"]
        )
        for index in range(int(minutes * 60 / STEP.total_seconds())):
            minute = index * STEP.total_seconds() / 60
            time = (START + index * STEP).isoformat().replace("+00:00", "Z")
            share_now = weight if weight is not None else weight_at(minute)
            for track, share, behaviour in (
                ("stable", 100 - share_now, Behaviour()),
                ("canary", share_now, canary(minute)),
            ):
                requests = int(rng.poisson(per_interval * share / 100))
                errors = int(rng.binomial(requests, behaviour.error_rate))
                fallbacks = int(rng.binomial(requests - errors, behaviour.fallback_rate))
                slow = min(requests, fallbacks + int(rng.binomial(requests, behaviour.slow_rate)))
                p95 = round(behaviour.p95 * float(rng.uniform(0.95, 1.05)), 4) if requests else ""
                unhealthy = behaviour.unhealthy if track == "canary" else ""
                out.writerow([time, track, requests, errors, fallbacks, slow, p95, unhealthy])


def after(minute: float, faulty: Behaviour) -> Fault:
    return lambda now: faulty if now >= minute else Behaviour()


def main() -> None:
    total = sum(minutes for _, minutes in SCHEDULE)
    write("healthy.csv", total + 5, lambda _: Behaviour())
    write("rollback-error-rate.csv", 20, after(3, Behaviour(error_rate=0.15)))
    write("rollback-fallback-rate.csv", 20, after(5, Behaviour(fallback_rate=0.30)))
    write("rollback-latency.csv", 30, after(12, Behaviour(p95=2.6, slow_rate=0.06)))
    write("rollback-unhealthy.csv", 30, after(20, Behaviour(unhealthy=1)))
    write("rollback-phase-threshold.csv", 45, after(10, Behaviour(error_rate=0.04)))
    write("rollback-worse-than-stable.csv", 45, after(10, Behaviour(error_rate=0.012)))
    write("low-traffic.csv", 30, lambda _: Behaviour(), rate=2, weight=1)


if __name__ == "__main__":
    main()
