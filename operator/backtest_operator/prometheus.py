"""Ask Prometheus for the numbers the policy needs, asynchronously (never blocking kopf's event loop).

``measure`` runs every query of one evaluation concurrently and returns an ``Observation``. A failed
query (unreachable server, timeout, rejected PromQL, a histogram without the objective's bucket) makes
the whole observation an error, which the policy counts towards ``rollback.maxAnalysisErrors``; an empty
answer means "no data", which the policy treats as inconclusive, never as zero traffic that passed.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx

from backtest_operator.analysis import Observation
from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus, TrackNumbers
from backtest_operator.errors import AnalysisError
from backtest_operator.queries import QuerySet, build_queries, promql_range

TRACKS = ("canary", "stable")
NO_REVISION = "none"


class PrometheusClient:
    """Instant and range queries over the HTTP API, with a per-request timeout."""

    def __init__(self, base_url: str, timeout: timedelta, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout.total_seconds()
        self._client = client or httpx.AsyncClient(timeout=self.timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        url = f"{self.base_url}{path}"
        try:
            response = await self._client.get(url, params=params, timeout=self.timeout)
        except httpx.TimeoutException:
            raise AnalysisError(f"Prometheus at {self.base_url} did not answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise AnalysisError(f"Prometheus at {self.base_url} unreachable: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise AnalysisError(f"Prometheus answered HTTP {response.status_code} without JSON") from None
        if response.status_code != 200 or body.get("status") != "success":
            raise AnalysisError(
                f"Prometheus rejected {params.get('query')!r}: {body.get('error', response.status_code)}"
            )
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def instant(self, query: str, at: datetime) -> float | None:
        """The sum of an instant vector's values; None when the answer is empty or NaN."""
        result = await self._get("/api/v1/query", {"query": query, "time": f"{at.timestamp():.3f}"})
        values = [float(item["value"][1]) for item in result]
        finite = [v for v in values if math.isfinite(v)]
        return sum(finite) if finite else None

    async def vector(self, query: str, at: datetime) -> list[float]:
        """The finite values of an instant vector, one per series (e.g. the weight of each router pod)."""
        result = await self._get("/api/v1/query", {"query": query, "time": f"{at.timestamp():.3f}"})
        values = [float(item["value"][1]) for item in result]
        return [v for v in values if math.isfinite(v)]

    async def series(self, query: str, start: datetime, end: datetime, step: timedelta) -> list[float]:
        """The finite values of a range query, in time order (one series expected)."""
        params = {
            "query": query,
            "start": f"{start.timestamp():.3f}",
            "end": f"{end.timestamp():.3f}",
            "step": f"{max(1.0, step.total_seconds()):g}s",
        }
        result = await self._get("/api/v1/query_range", params)
        values = [float(value) for item in result for _, value in item["values"]]
        return [v for v in values if math.isfinite(v)]


async def _track(client: PrometheusClient, queries: QuerySet, at: datetime, with_fallbacks: bool) -> TrackNumbers:
    requests, errors, fast, p95, fallbacks = await asyncio.gather(
        client.instant(queries.requests, at),
        client.instant(queries.errors, at),
        client.instant(queries.fast, at),
        client.instant(queries.latency_p95, at),
        client.instant(queries.fallbacks, at) if with_fallbacks else _none(),
    )
    if requests is None or requests <= 0:
        return TrackNumbers(latency_p95_seconds=None)
    if fast is None:
        raise AnalysisError(
            "the router's latency histogram has no bucket at the latency objective; "
            "set analysis.latencyObjective to one of its bucket bounds"
        )
    return TrackNumbers(
        requests=requests,
        errors=min(requests, errors or 0.0),
        fallbacks=min(requests, fallbacks or 0.0),
        slow=max(0.0, requests - fast),
        latency_p95_seconds=p95,
    )


async def _none() -> None:
    return None


def _revisions(spec: BacktestServiceSpec, status: BacktestServiceStatus) -> dict[str, str | None]:
    """Without the router, a track's numbers are those of the revision it runs (the engine's own series)."""
    if spec.traffic.provider == "router":
        return {track: None for track in TRACKS}
    return {"canary": status.canary_revision or NO_REVISION, "stable": status.stable_revision or NO_REVISION}


async def measure(
    client: PrometheusClient,
    spec: BacktestServiceSpec,
    status: BacktestServiceStatus,
    labels: dict[str, str],
    now: datetime,
) -> Observation:
    """Everything the policy reads for one evaluation, except pod health (that comes from Kubernetes)."""
    interval = spec.analysis.interval
    since = status.phase_started_at
    phase_window = (now - since) if since is not None and now > since else interval
    revisions = _revisions(spec, status)
    recent = {t: build_queries(spec.analysis, labels, t, interval, revision=revisions[t]) for t in TRACKS}
    phase = {t: build_queries(spec.analysis, labels, t, phase_window, revision=revisions[t]) for t in TRACKS}
    # At a phase's first evaluation both windows render to the same PromQL range: ask once, use it twice.
    same_window = promql_range(phase_window) == promql_range(interval)
    try:
        canary_recent, stable_recent, canary_phase, stable_phase, canary_samples, stable_samples = await asyncio.gather(
            _track(client, recent["canary"], now, True),
            _track(client, recent["stable"], now, False),
            _none() if same_window else _track(client, phase["canary"], now, True),
            _none() if same_window else _track(client, phase["stable"], now, False),
            client.series(recent["canary"].latency_p95, now - phase_window, now, interval),
            client.series(recent["stable"].latency_p95, now - phase_window, now, interval),
        )
    except AnalysisError as exc:
        return Observation(time=now, error=str(exc))
    canary_phase = canary_phase or canary_recent
    stable_phase = stable_phase or stable_recent
    return Observation(
        time=now,
        canary_recent=canary_recent,
        stable_recent=stable_recent,
        canary_phase=canary_phase,
        stable_phase=stable_phase,
        recent_window=interval,
        phase_window=phase_window,
        canary_p95_samples=tuple(canary_samples),
        stable_p95_samples=tuple(stable_samples),
    )


def with_pod_health(
    obs: Observation, *, canary_ready: bool, stable_ready: bool, canary_unhealthy: int, stable_unhealthy: int
) -> Observation:
    """Add what the Kubernetes API says about the pods to what Prometheus said about the traffic."""
    return replace(
        obs,
        canary_ready=canary_ready,
        stable_ready=stable_ready,
        canary_unhealthy_pods=canary_unhealthy,
        stable_unhealthy_pods=stable_unhealthy,
    )
