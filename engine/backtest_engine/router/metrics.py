"""The router's Prometheus series, named exactly as in docs/metrics-contract.md, on a registry of their own.

A dedicated CollectorRegistry keeps the router's exposition free of process/platform collectors and of
anything else imported into the same interpreter (the engine service registers its own series).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from backtest_engine.router.routing import FallbackReason, Outcome, Track

DEFAULT_LATENCY_OBJECTIVE_SECONDS = 2.0
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Fine below 100 ms (router overhead, cached answers), coarse up to long backtests.
_BASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


BASELINE_CODES = ("200", "500", "502", "503", "504", "transport", "timeout")
"""Status codes whose series exist from the start for every track."""


def latency_buckets(objective_seconds: float, extra: Iterable[float] = ()) -> tuple[float, ...]:
    """Histogram bounds that contain the latency objective, so `le="<objective>"` counts slow exactly.

    Without the objective as a bound, "requests slower than 2 s" could only be interpolated.
    """
    if objective_seconds <= 0:
        raise ValueError(f"latency objective must be positive, got {objective_seconds}")
    return tuple(sorted({*_BASE_BUCKETS, float(objective_seconds), *(float(b) for b in extra)}))


class RouterMetrics:
    """Owns the series and the counting calls `app.py` makes, one per attempt or fallback."""

    def __init__(self, latency_objective_seconds: float = DEFAULT_LATENCY_OBJECTIVE_SECONDS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency_objective_seconds = latency_objective_seconds
        self.requests = Counter(
            "backtest_router_requests",
            "Requests the router sent to a track, by final status code of that track's attempt "
            "(code=transport or timeout when there was no answer).",
            ["track", "code"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "backtest_router_fallbacks",
            "Canary requests re-served by stable, by reason (status, transport, timeout).",
            ["reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "backtest_router_request_duration_seconds",
            "Time of each track's attempt, including abandoned canary attempts.",
            ["track"],
            buckets=latency_buckets(latency_objective_seconds),
            registry=self.registry,
        )
        self.weight = Gauge(
            "backtest_router_weight",
            "Canary weight currently applied (0-100).",
            registry=self.registry,
        )
        # Children resolved once: `.labels()` takes a lock and hashes on every call.
        self._duration_children = {track: self.duration.labels(track=track.value) for track in Track}
        self._request_children: dict[tuple[Track, str], Any] = {}
        # Expose zeros from the start, failures included: increase() cannot count a series' first sample,
        # so a 5xx series born with its first error would hide that error from the operator's queries.
        for track in Track:
            for code in BASELINE_CODES:
                self._request_children[(track, code)] = self.requests.labels(track=track.value, code=code)
        for reason in FallbackReason:
            self.fallbacks.labels(reason=reason.value)

    def record_attempt(self, track: Track, outcome: Outcome, duration_seconds: float) -> None:
        """Count one attempt at one track under its final code and observe how long it took."""
        key = (track, outcome.code_label)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(track=track.value, code=key[1])
        child.inc()
        self._duration_children[track].observe(duration_seconds)

    def record_fallback(self, reason: FallbackReason) -> None:
        self.fallbacks.labels(reason=reason.value).inc()

    def set_weight(self, weight: int) -> None:
        self.weight.set(weight)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, object]:
        """Counter values for `/router/state`: requests by track and code, fallbacks by reason."""
        requests: dict[str, dict[str, int]] = {track.value: {} for track in Track}
        fallbacks: dict[str, int] = {}
        errors = {track.value: 0 for track in Track}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "backtest_router_requests_total":
                    track, code = sample.labels["track"], sample.labels["code"]
                    requests[track][code] = int(sample.value)
                    if code == "transport" or code.startswith("5"):
                        errors[track] += int(sample.value)
                elif sample.name == "backtest_router_fallbacks_total":
                    fallbacks[sample.labels["reason"]] = int(sample.value)
        totals = {track: sum(codes.values()) for track, codes in requests.items()}
        return {"requests": requests, "totals": totals, "errors": errors, "fallbacks": fallbacks}
