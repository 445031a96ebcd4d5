"""The engine's Prometheus series (docs/metrics-contract.md, "Engine series"), on a registry of their own.

A dedicated `CollectorRegistry` keeps tests and several apps in one process independent, and leaves out
the process collectors nobody asked for. Every series carries `version` and `track`, so stable and canary
pods are told apart even when scraped through the same job. Route labels are route templates
(`/api/v1/backtests/{backtest_id}`), never raw paths, so ids cannot explode the cardinality.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
BACKTEST_OUTCOMES = ("ok", "error", "cached")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineMetrics:
    """The five engine series, their constant labels bound once."""

    def __init__(self, version: str, track: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.version = version
        self.track = track
        base = ("version", "track")
        self.http_requests = Counter(
            "backtest_engine_http_requests_total",
            "HTTP requests handled, by route template, method and status code",
            [*base, "route", "method", "code"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "backtest_engine_http_request_duration_seconds",
            "Time to handle an HTTP request, by route template",
            [*base, "route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.backtests = Counter(
            "backtest_engine_backtests_total",
            "Backtests requested, by strategy and outcome (ok, error, cached)",
            [*base, "strategy", "outcome"],
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "backtest_engine_cache_requests_total",
            "Result cache lookups, by result (hit, miss)",
            [*base, "result"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "backtest_engine_jobs",
            "Optimization jobs known to this process, by state",
            [*base, "state"],
            registry=self.registry,
        )
        for result in ("hit", "miss"):  # zero series exist from the start, so increase() sees the first event
            self.cache_requests.labels(version, track, result)
        for state in JOB_STATES:
            self.jobs.labels(version, track, state).set(0)

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.http_requests.labels(self.version, self.track, route, method, str(code)).inc()
        self.http_duration.labels(self.version, self.track, route).observe(seconds)

    def backtest(self, strategy: str, outcome: str) -> None:
        self.backtests.labels(self.version, self.track, strategy, outcome).inc()

    def cache(self, hit: bool) -> None:
        self.cache_requests.labels(self.version, self.track, "hit" if hit else "miss").inc()

    def set_jobs(self, counts: dict[str, int]) -> None:
        for state in JOB_STATES:
            self.jobs.labels(self.version, self.track, state).set(counts.get(state, 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
