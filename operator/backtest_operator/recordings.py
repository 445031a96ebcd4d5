"""Recorded router metrics for the policy simulator: from a CSV file or from a Prometheus range.

A recording is a list of sampling intervals, each holding what the stable and the canary track did in it
(requests, errors, fallbacks, slow requests, p95 latency, unhealthy canary pods, and optionally the
latency histogram: cumulative counts in columns named ``le=<seconds>``, as Prometheus keeps them). Both
sources produce the same structure, so the replay does not care where the numbers came from. Bad input
raises ``InvalidRecording`` naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backtest_operator.api import AnalysisSettings, ShadowNumbers, TrackNumbers
from backtest_operator.errors import InvalidRecording
from backtest_operator.histograms import Histogram
from backtest_operator.queries import MAX_POINTS, build_queries

REQUIRED_COLUMNS = ("time", "track", "requests", "errors", "fallbacks", "slow", "latency_p95_seconds")
COUNT_COLUMNS = ("requests", "errors", "fallbacks", "slow")
TRACKS = ("stable", "canary")
BUCKET_PREFIX = "le="


@dataclass
class Interval:
    """One sampling interval, starting at ``time``."""

    time: datetime
    tracks: dict[str, TrackNumbers] = field(default_factory=dict)
    unhealthy_pods: int = 0
    latency: dict[str, Histogram] = field(default_factory=dict)
    """Latency histogram per track, when the recording has one."""
    shadow: ShadowNumbers | None = None
    """What the shadow comparisons found in the interval, when shadowing was on (the benchmark's recordings;
    CSV recordings have no columns for it yet)."""

    def track(self, name: str) -> TrackNumbers:
        return self.tracks.get(name, TrackNumbers(latency_p95_seconds=None))


def parse_time(text: str) -> datetime:
    """ISO 8601, "Z" accepted; naive times are taken as UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _number(row: dict[str, str], column: str, line: int, *, optional: bool = False) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        if optional:
            return None
        raise InvalidRecording(f"line {line}: column {column!r} is empty")
    try:
        value = float(text)
    except ValueError:
        raise InvalidRecording(f"line {line}: column {column!r} is not a number: {text!r}") from None
    if math.isnan(value) and optional:
        return None
    if not math.isfinite(value) or value < 0:
        raise InvalidRecording(f"line {line}: column {column!r} must be a non-negative number, got {text!r}")
    return value


def _row_to_track(row: dict[str, str], line: int) -> TrackNumbers:
    counts = {column: _number(row, column, line) or 0.0 for column in COUNT_COLUMNS}
    for column in ("errors", "fallbacks", "slow"):
        if counts[column] > counts["requests"]:
            raise InvalidRecording(f"line {line}: column {column!r} ({counts[column]:g}) exceeds requests")
    return TrackNumbers(
        requests=counts["requests"],
        errors=counts["errors"],
        fallbacks=counts["fallbacks"],
        slow=counts["slow"],
        latency_p95_seconds=_number(row, "latency_p95_seconds", line, optional=True),
    )


def read_csv(path: Path) -> list[Interval]:
    """Load and validate a recording; rows must be sorted by time, one per track and time."""
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise InvalidRecording(f"{path}: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidRecording(f"{path}: missing column(s) {', '.join(missing)} in the header")
        bounds = _bucket_bounds(reader.fieldnames or [], path)
        try:
            return _intervals(reader, path, bounds)
        except InvalidRecording as exc:
            raise InvalidRecording(f"{path}: {exc}") from None


def _bucket_bounds(columns: Iterable[str], path: Path) -> list[tuple[float, str]]:
    """The ``le=<seconds>`` columns, by bound (``le=+Inf`` is the request count and is not needed)."""
    bounds: list[tuple[float, str]] = []
    for column in columns:
        if not column.startswith(BUCKET_PREFIX) or column == f"{BUCKET_PREFIX}+Inf":
            continue
        try:
            bound = float(column[len(BUCKET_PREFIX) :])
        except ValueError:
            raise InvalidRecording(f"{path}: column {column!r} is not le=<seconds>") from None
        if not math.isfinite(bound) or bound <= 0:
            raise InvalidRecording(f"{path}: column {column!r} needs a positive number of seconds")
        bounds.append((bound, column))
    return sorted(bounds)


def _row_histogram(
    row: dict[str, str], line: int, bounds: list[tuple[float, str]], requests: float
) -> Histogram | None:
    if not bounds or not any((row.get(column) or "").strip() for _, column in bounds):
        return None
    counts = [_number(row, column, line) or 0.0 for _, column in bounds]
    for (_, column), before, value in zip(bounds[1:], counts, counts[1:], strict=False):
        if value < before:
            raise InvalidRecording(f"line {line}: column {column!r} ({value:g}) is below the bucket before it")
    if counts[-1] > requests:
        raise InvalidRecording(f"line {line}: column {bounds[-1][1]!r} ({counts[-1]:g}) exceeds requests")
    return Histogram(tuple(bound for bound, _ in bounds), tuple(counts), requests)


def _intervals(rows: Iterable[dict[str, str]], path: Path, bounds: list[tuple[float, str]]) -> list[Interval]:
    intervals: list[Interval] = []
    for line, row in enumerate(rows, start=2):
        try:
            time = parse_time(row["time"])
        except ValueError:
            raise InvalidRecording(f"line {line}: column 'time' is not an ISO 8601 time: {row['time']!r}") from None
        track = (row["track"] or "").strip()
        if track not in TRACKS:
            raise InvalidRecording(f"line {line}: column 'track' must be stable or canary, got {track!r}")
        if intervals and time < intervals[-1].time:
            raise InvalidRecording(f"line {line}: time {row['time']} is earlier than the line before (unsorted)")
        if not intervals or time > intervals[-1].time:
            intervals.append(Interval(time=time))
        current = intervals[-1]
        if track in current.tracks:
            raise InvalidRecording(f"line {line}: a second {track} row for time {row['time']}")
        current.tracks[track] = _row_to_track(row, line)
        histogram = _row_histogram(row, line, bounds, current.tracks[track].requests)
        if histogram is not None:
            current.latency[track] = histogram
        if track == "canary":
            current.unhealthy_pods = int(_number(row, "unhealthy_pods", line, optional=True) or 0)
    if not intervals:
        raise InvalidRecording("no data rows")
    return intervals


def read_prometheus(
    url: str,
    start: datetime,
    end: datetime,
    analysis: AnalysisSettings,
    labels: dict[str, str],
    step: timedelta,
) -> list[Interval]:
    """The same recording from a live Prometheus: range queries per series and track, latency buckets
    included, in chunks of at most ``MAX_POINTS`` points (Prometheus refuses more than 11,000).

    prometheus-api-client is synchronous, which suits this offline path (the operator uses httpx).
    """
    from prometheus_api_client import PrometheusConnect  # noqa: PLC0415
    from prometheus_api_client.exceptions import PrometheusApiClientException  # noqa: PLC0415

    client = PrometheusConnect(url=url, disable_ssl=True)
    grid: dict[datetime, Interval] = {}

    def ask(query: str, label: str | None = None) -> dict[str, dict[datetime, float]]:
        found: dict[str, dict[datetime, float]] = {}
        for chunk_start, chunk_end in range_chunks(start, end, step):
            answer = client.custom_query_range(
                query, start_time=chunk_start, end_time=chunk_end, step=str(step.total_seconds())
            )
            for key, points in _points(answer, label).items():
                found.setdefault(key, {}).update(points)
        return found

    try:
        for track in TRACKS:
            queries = build_queries(analysis, labels, track, step)
            series = {
                "requests": queries.requests,
                "errors": queries.errors,
                "fast": queries.fast,
                "latency_p95_seconds": queries.latency_p95,
            }
            if track == "canary":
                series["fallbacks"] = queries.fallbacks
            values = {name: ask(query).get("", {}) for name, query in series.items()}
            _merge_track(grid, track, values, ask(queries.latency_buckets, "le"), step)
    except (PrometheusApiClientException, OSError, ValueError) as exc:
        raise InvalidRecording(f"Prometheus at {url}: {exc}") from None
    if not grid:
        raise InvalidRecording(f"Prometheus at {url}: no router data between {start} and {end}")
    return [grid[t] for t in sorted(grid)]


def range_chunks(start: datetime, end: datetime, step: timedelta) -> list[tuple[datetime, datetime]]:
    """[start, end] cut into ranges of at most ``MAX_POINTS`` points at ``step``, back to back."""
    span = step * (MAX_POINTS - 1)
    chunks: list[tuple[datetime, datetime]] = []
    begin = start
    while begin <= end:
        finish = min(end, begin + span)
        chunks.append((begin, finish))
        begin = finish + step
    return chunks


def _points(answer: list[dict[str, object]], label: str | None = None) -> dict[str, dict[datetime, float]]:
    points: dict[str, dict[datetime, float]] = {}
    for result in answer:
        metric = result.get("metric", {})
        key = str(metric.get(label, "")) if label and isinstance(metric, dict) else ""
        series = points.setdefault(key, {})
        for stamp, text in result.get("values", []):  # type: ignore[attr-defined]
            value = float(text)
            if math.isfinite(value):
                moment = datetime.fromtimestamp(float(stamp), tz=UTC)
                series[moment] = series.get(moment, 0.0) + value
    return points


def _merge_track(
    grid: dict[datetime, Interval],
    track: str,
    values: dict[str, dict[datetime, float]],
    buckets: dict[str, dict[datetime, float]],
    step: timedelta,
) -> None:
    """A sample at time t covers (t - step, t]; the interval is keyed by its start."""
    finite = sorted((float(le), series) for le, series in buckets.items() if le not in ("+Inf", ""))
    for stamp, requests in values["requests"].items():
        start = stamp - step
        interval = grid.setdefault(start, Interval(time=start))
        fast = min(requests, values["fast"].get(stamp, requests))
        interval.tracks[track] = TrackNumbers(
            requests=requests,
            errors=min(requests, values["errors"].get(stamp, 0.0)),
            fallbacks=min(requests, values.get("fallbacks", {}).get(stamp, 0.0)),
            slow=max(0.0, requests - fast),
            latency_p95_seconds=values["latency_p95_seconds"].get(stamp),
        )
        if finite:
            counts: list[float] = []
            for _, series in finite:
                counts.append(min(requests, max(series.get(stamp, 0.0), counts[-1] if counts else 0.0)))
            interval.latency[track] = Histogram(tuple(bound for bound, _ in finite), tuple(counts), requests)
