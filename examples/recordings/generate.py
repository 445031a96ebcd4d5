"""Regenerate the example recordings (deterministic): ``python examples/recordings/generate.py``.

Each file is what a router would have recorded while the default policy (examples/backtestservice.yaml)
rolled out a new version at 50 requests per second, sampled every 30 s: canary traffic follows the
phase weights, and one fault per file appears at a known time. The requests are drawn from the noise
model of the decision-quality benchmark (``backtest_devtools.rollout_noise``), latency histograms
included (``le=<seconds>`` columns: cumulative counts, as Prometheus keeps them).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from backtest_devtools.rollout_noise import ROUTER_BUCKETS, Behaviour, NoiseModel

HERE = Path(__file__).parent
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
STEP = timedelta(seconds=30)
RATE = 50  # requests per second reaching the router
SCHEDULE = [(1, 10), (10, 30), (50, 60), (100, 15)]  # (weight %, minutes) of the default policy
HEALTHY = Behaviour(error_rate=0.002, slow_rate=0.005)

Fault = Callable[[float], Behaviour]  # minutes since start -> canary behaviour


def weight_at(minute: float) -> int:
    elapsed = 0.0
    for weight, minutes in SCHEDULE:
        elapsed += minutes
        if minute < elapsed:
            return weight
    return 100


def write(
    name: str, minutes: int, canary: Fault, *, rate: float = RATE, seed: int = 7, weight: int | None = None,
    unhealthy_from: float | None = None,
) -> None:  # fmt: skip
    model = NoiseModel(rate, 1, stable=HEALTHY, canary=HEALTHY, seed=seed)
    bounds = [f"le={bound:g}" for bound in ROUTER_BUCKETS]
    with (HERE / name).open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            ["time", "track", "requests", "errors", "fallbacks", "slow", "latency_p95_seconds", "unhealthy_pods",
             *bounds]
        )  # fmt: skip
        for index in range(int(minutes * 60 / STEP.total_seconds())):
            minute = index * STEP.total_seconds() / 60
            time = (START + index * STEP).isoformat().replace("+00:00", "Z")
            share = weight if weight is not None else weight_at(minute)
            model.canary = canary(minute)
            canary_traffic, stable_traffic = model.interval(np.array([float(share)]), 0.0)
            for track, traffic in (("stable", stable_traffic), ("canary", canary_traffic)):
                requests = int(traffic.requests[0])
                p95 = _p95(traffic.buckets[0]) if requests else ""
                unhealthy = "" if track == "stable" else int(unhealthy_from is not None and minute >= unhealthy_from)
                counts = [int(c) for c in traffic.buckets[0][:-1]]
                out.writerow(
                    [time, track, requests, int(traffic.errors[0]), int(traffic.fallbacks[0]), int(traffic.slow[0]),
                     p95, unhealthy, *counts]
                )  # fmt: skip


def _p95(cumulative: np.ndarray) -> float:
    from backtest_operator.histograms import quantile  # noqa: PLC0415

    return round(float(quantile(np.asarray(ROUTER_BUCKETS), cumulative[None, :], 0.95)[0]), 4)


def after(minute: float, faulty: Behaviour) -> Fault:
    return lambda now: faulty if now >= minute else HEALTHY


def main() -> None:
    total = sum(minutes for _, minutes in SCHEDULE)
    write("healthy.csv", total + 5, lambda _: HEALTHY)
    write("rollback-error-rate.csv", 20, after(3, Behaviour(error_rate=0.30, slow_rate=0.005)))
    write("rollback-fallback-rate.csv", 20, after(5, Behaviour(error_rate=0.002, timeout_rate=0.40)))
    write("rollback-latency.csv", 30, after(12, Behaviour(error_rate=0.002, added_seconds=2.5)))
    write("rollback-unhealthy.csv", 30, lambda _: HEALTHY, unhealthy_from=20)
    write("rollback-phase-threshold.csv", 45, after(10, Behaviour(error_rate=0.06, slow_rate=0.005)))
    write("rollback-worse-than-stable.csv", 45, after(10, Behaviour(error_rate=0.015, slow_rate=0.005)))
    write("low-traffic.csv", 30, lambda _: HEALTHY, rate=2, weight=1)


if __name__ == "__main__":
    main()
