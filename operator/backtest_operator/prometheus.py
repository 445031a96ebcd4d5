"""Ask Prometheus for the numbers the policy needs, asynchronously (never blocking kopf's event loop).

``measure`` runs every query of one evaluation concurrently and returns an ``Observation``: the last
interval and the phase so far per track (instant queries), and the phase interval by interval for the
sequential tests (range queries on a grid anchored at the phase start, so each interval boundary is the
same point in time at every look; docs/rollout-policy.md). A failed query (unreachable server, timeout,
rejected PromQL, a histogram without the objective's bucket) makes the whole observation an error, which
the policy counts towards ``rollback.maxAnalysisErrors``; an empty answer means "no data", which the
policy treats as inconclusive, never as zero traffic that passed. Queries: docs/metrics-contract.md.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import httpx

from backtest_operator.analysis import Observation, Stretch
from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus, RolloutPhase, TrackNumbers
from backtest_operator.budget import shadowing
from backtest_operator.errors import AnalysisError
from backtest_operator.histograms import MIN_REFERENCE_REQUESTS, P95, Histogram
from backtest_operator.queries import MAX_POINTS, QuerySet, build_queries, grid_stride, promql_range
from backtest_operator.shadow_measure import ShadowGrid, measure_shadow

TRACKS = ("canary", "stable")
NO_REVISION = "none"
Revisions = dict[str, str | None]
"""The revision whose engine series stand for each track (None: the router's series, keyed by track)."""

Series = dict[float, float]
"""Values of one range-query series by timestamp (seconds)."""


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

    async def instant_by(self, query: str, at: datetime, label: str) -> dict[str, float]:
        """An instant vector's finite values keyed by one label (e.g. ``le`` of histogram buckets)."""
        result = await self._get("/api/v1/query", {"query": query, "time": f"{at.timestamp():.3f}"})
        values: dict[str, float] = {}
        for item in result:
            value = float(item["value"][1])
            if math.isfinite(value):
                key = item["metric"].get(label, "")
                values[key] = values.get(key, 0.0) + value
        return values

    async def range_by(
        self, query: str, start: datetime, end: datetime, step: timedelta, label: str | None = None
    ) -> dict[str, Series]:
        """A range query's finite values per series (keyed by ``label``, or "" summed), by timestamp.

        Refuses to ask for more than ``MAX_POINTS`` points per series (Prometheus' limit is 11,000).
        """
        seconds = max(1.0, step.total_seconds())
        if (end - start).total_seconds() / seconds + 1 > MAX_POINTS + 1:
            raise AnalysisError(f"a range query of {end - start} at {seconds:g}s steps exceeds {MAX_POINTS} points")
        params = {
            "query": query,
            "start": f"{start.timestamp():.3f}",
            "end": f"{end.timestamp():.3f}",
            "step": f"{seconds:g}s",
        }
        result = await self._get("/api/v1/query_range", params)
        series: dict[str, Series] = {}
        for item in result:
            key = item["metric"].get(label, "") if label else ""
            points = series.setdefault(key, {})
            for stamp, text in item["values"]:
                value = float(text)
                if math.isfinite(value):
                    points[round(float(stamp), 3)] = points.get(round(float(stamp), 3), 0.0) + value
        return series


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
        raise AnalysisError(_NO_OBJECTIVE_BUCKET)
    return TrackNumbers(
        requests=requests,
        errors=min(requests, errors or 0.0),
        fallbacks=min(requests, fallbacks or 0.0),
        slow=max(0.0, requests - fast),
        latency_p95_seconds=p95,
    )


_NO_OBJECTIVE_BUCKET = (
    "the router's latency histogram has no bucket at the latency objective; "
    "set analysis.latencyObjective to one of its bucket bounds"
)


async def _none() -> None:
    return None


def track_revisions(spec: BacktestServiceSpec, status: BacktestServiceStatus) -> Revisions:
    """Without the router, a track's numbers are those of the revision it runs (the engine's own series)."""
    if spec.traffic.provider == "router":
        return {track: None for track in TRACKS}
    return {"canary": status.canary_revision or NO_REVISION, "stable": status.stable_revision or NO_REVISION}


def stage_start(spec: BacktestServiceSpec, status: BacktestServiceStatus) -> datetime | None:
    """When the judged stretch began: the current phase, or the promotion for the bake window."""
    if status.phase == RolloutPhase.BAKING and status.bake_until is not None:
        return status.bake_until - spec.rollback.bake_window
    return status.phase_started_at


async def measure(
    client: PrometheusClient,
    spec: BacktestServiceSpec,
    status: BacktestServiceStatus,
    labels: dict[str, str],
    now: datetime,
) -> Observation:
    """Everything the policy reads for one evaluation, except pod health (that comes from Kubernetes)."""
    interval = spec.analysis.interval
    since = stage_start(spec, status)
    phase_window = (now - since) if since is not None and now > since else interval
    revisions = track_revisions(spec, status)
    recent = {t: build_queries(spec.analysis, labels, t, interval, revision=revisions[t]) for t in TRACKS}
    phase = {t: build_queries(spec.analysis, labels, t, phase_window, revision=revisions[t]) for t in TRACKS}
    judged = "stable" if status.phase == RolloutPhase.BAKING else "canary"
    # At a phase's first evaluation both windows render to the same PromQL range: ask once, use it twice.
    same_window = promql_range(phase_window) == promql_range(interval)
    compared = shadowing(spec) and judged == "canary"  # shadow copies go to a canary; none while baking
    try:
        canary_recent, stable_recent, canary_phase, stable_phase, stretches, shadow = await asyncio.gather(
            _track(client, recent["canary"], now, True),
            _track(client, recent["stable"], now, False),
            _none() if same_window else _track(client, phase["canary"], now, True),
            _none() if same_window else _track(client, phase["stable"], now, False),
            _stretches(client, spec, labels, judged, now - phase_window, now, revisions),
            measure_shadow(client, labels, interval, now - phase_window, now) if compared else _none(),
        )
    except AnalysisError as exc:
        return Observation(time=now, error=str(exc))
    canary_phase = canary_phase or canary_recent
    stable_phase = stable_phase or stable_recent
    if shadow is not None:
        stretches = _with_shadow(stretches, shadow)
    return Observation(
        time=now,
        canary_recent=canary_recent,
        stable_recent=stable_recent,
        canary_phase=canary_phase,
        stable_phase=stable_phase,
        recent_window=interval,
        phase_window=phase_window,
        stretches=stretches.items,
        stretch_intervals=stretches.stride,
        shadow=shadow.numbers if shadow is not None else None,
    )


@dataclass(frozen=True)
class _Grid:
    items: tuple[Stretch, ...]
    stride: int


async def _stretches(
    client: PrometheusClient, spec: BacktestServiceSpec, labels: dict[str, str], judged: str,
    since: datetime, now: datetime, revisions: Revisions,
) -> _Grid:  # fmt: skip
    """The judged track interval by interval since ``since``, plus the partial interval ending now.

    Grid points sit at ``since + k * step`` (``step`` = the analysis interval, coarser only when the phase
    is longer than ``MAX_POINTS`` intervals), so a boundary is the same instant at every look. The last,
    partial stretch is the phase total minus the grid.
    """
    interval = spec.analysis.interval
    intervals = int((now - since) / interval)
    stride = grid_stride(intervals)
    step = interval * stride
    # One grid point adds nothing the total does not say: the first look of a phase asks less.
    points = intervals // stride if intervals >= 2 else 0
    analysis = spec.analysis
    reference = judged != "stable"  # during the bake window there is no other track to compare with
    grid_queries = build_queries(analysis, labels, judged, step, revision=revisions[judged])
    stable_queries = build_queries(analysis, labels, "stable", step, revision=revisions["stable"])
    total_queries = build_queries(analysis, labels, judged, now - since, revision=revisions[judged])
    stable_total = build_queries(analysis, labels, "stable", now - since, revision=revisions["stable"])
    first, last = since + step, since + step * points
    with_fallbacks = judged == "canary"

    async def grid(query: str, label: str | None = None) -> dict[str, Series]:
        return await client.range_by(query, first, last, step, label) if points else {}

    grids = asyncio.gather(
        grid(grid_queries.requests),
        grid(grid_queries.errors),
        grid(grid_queries.fallbacks) if with_fallbacks else _empty(),
        grid(grid_queries.latency_buckets, "le"),
        grid(stable_queries.latency_buckets, "le") if reference else _empty(),
    )
    sums = asyncio.gather(
        _track(client, total_queries, now, with_fallbacks),
        client.instant_by(total_queries.latency_buckets, now, "le"),
        client.instant_by(stable_total.latency_buckets, now, "le") if reference else _empty_values(),
    )
    (
        (requests, errors, fallbacks, buckets, stable_buckets),
        (totals, bucket_total, stable_bucket_total),
    ) = await asyncio.gather(grids, sums)
    objective = analysis.latency_objective.total_seconds()
    items: list[Stretch] = []
    for k in range(1, points + 1):
        stamp = round((since + step * k).timestamp(), 3)
        latency = _histogram({le: series.get(stamp, 0.0) for le, series in buckets.items()})
        stable = _histogram({le: series.get(stamp, 0.0) for le, series in stable_buckets.items()})
        items.append(
            _stretch(
                requests.get("", {}).get(stamp, 0.0), errors.get("", {}).get(stamp, 0.0),
                fallbacks.get("", {}).get(stamp, 0.0), latency, stable, objective,
            )
        )  # fmt: skip
    items.append(_remainder(items, totals, _histogram(bucket_total), _histogram(stable_bucket_total), objective))
    return _Grid(tuple(items), stride)


def _with_shadow(grid: _Grid, shadow: ShadowGrid) -> _Grid:
    """The shadow comparisons of each stretch (both grids are laid out alike, see ``shadow_measure``)."""
    items = tuple(
        replace(stretch, comparisons=comparisons, mismatches=mismatches)
        for stretch, (comparisons, mismatches) in zip(grid.items, shadow.stretches, strict=True)
    )
    return _Grid(items, grid.stride)


async def _empty() -> dict[str, Series]:
    return {}


async def _empty_values() -> dict[str, float]:
    return {}


def _histogram(by_le: Mapping[str, float]) -> Histogram | None:
    """Bucket increases keyed by ``le`` as one histogram (None without any bucket)."""
    finite = sorted((float(le), value) for le, value in by_le.items() if le not in ("+Inf", "Inf", ""))
    if not finite:
        return None
    total = by_le.get("+Inf", finite[-1][1])
    bounds = tuple(bound for bound, _ in finite)
    counts: list[float] = []
    for _, value in finite:
        counts.append(max(value, counts[-1] if counts else 0.0))
    return Histogram(bounds, tuple(counts), max(total, counts[-1]))


def _slow(latency: Histogram | None, requests: float, objective: float) -> float:
    if latency is None or latency.total <= 0:
        return 0.0
    if not any(math.isclose(bound, objective) for bound in latency.bounds):
        raise AnalysisError(_NO_OBJECTIVE_BUCKET)
    fast = next(c for b, c in zip(latency.bounds, latency.cumulative, strict=True) if math.isclose(b, objective))
    return min(requests, max(0.0, latency.total - fast))


def _reference(stable: Histogram | None) -> float | None:
    if stable is None or stable.total < MIN_REFERENCE_REQUESTS:
        return None
    return stable.quantile(P95)


def _stretch(
    requests: float, errors: float, fallbacks: float, latency: Histogram | None, stable: Histogram | None,
    objective: float,
) -> Stretch:  # fmt: skip
    requests = max(0.0, requests)
    return Stretch(
        requests=requests,
        errors=min(requests, max(0.0, errors)),
        fallbacks=min(requests, max(0.0, fallbacks)),
        slow=_slow(latency, requests, objective),
        latency=latency,
        stable_p95_seconds=_reference(stable),
    )


def _remainder(
    grid: list[Stretch], total: TrackNumbers, latency: Histogram | None, stable: Histogram | None, objective: float
) -> Stretch:
    """The partial stretch since the last grid point: the phase total minus the grid, never negative.

    Its stable reference is stable's p95 over the whole phase (the partial stretch may be too short for
    one of its own, and stable is the steady side).
    """
    requests = total.requests - sum(s.requests for s in grid)
    errors = total.errors - sum(s.errors for s in grid)
    fallbacks = total.fallbacks - sum(s.fallbacks for s in grid)
    if latency is not None:
        for stretch in grid:
            if stretch.latency is not None and stretch.latency.bounds == latency.bounds:
                latency = latency.minus(stretch.latency)
    return _stretch(requests, errors, fallbacks, latency, stable, objective)


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
