"""Recorded router metrics for the policy simulator: from a CSV file or from a Prometheus range.

A recording is a list of sampling intervals, each holding what the stable and the canary track did in it
(requests, errors, fallbacks, slow requests, p95 latency, unhealthy canary pods). Both sources produce
the same structure, so the replay does not care where the numbers came from. Bad input raises
``InvalidRecording`` naming the line and the column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backtest_operator.api import AnalysisSettings, TrackNumbers
from backtest_operator.errors import InvalidRecording
from backtest_operator.queries import build_queries

REQUIRED_COLUMNS = ("time", "track", "requests", "errors", "fallbacks", "slow", "latency_p95_seconds")
COUNT_COLUMNS = ("requests", "errors", "fallbacks", "slow")
TRACKS = ("stable", "canary")


@dataclass
class Interval:
    """One sampling interval, starting at ``time``."""

    time: datetime
    tracks: dict[str, TrackNumbers] = field(default_factory=dict)
    unhealthy_pods: int = 0

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
        return _intervals(reader, path)


def _intervals(rows: Iterable[dict[str, str]], path: Path) -> list[Interval]:
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
        if track == "canary":
            current.unhealthy_pods = int(_number(row, "unhealthy_pods", line, optional=True) or 0)
    if not intervals:
        raise InvalidRecording(f"{path}: no data rows")
    return intervals


def read_prometheus(
    url: str,
    start: datetime,
    end: datetime,
    analysis: AnalysisSettings,
    labels: dict[str, str],
    step: timedelta,
) -> list[Interval]:
    """The same recording from a live Prometheus: one range query per series and track.

    prometheus-api-client is synchronous, which suits this offline path (the operator uses httpx).
    """
    from prometheus_api_client import PrometheusConnect  # noqa: PLC0415
    from prometheus_api_client.exceptions import PrometheusApiClientException  # noqa: PLC0415

    client = PrometheusConnect(url=url, disable_ssl=True)
    grid: dict[datetime, Interval] = {}
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
            values: dict[str, dict[datetime, float]] = {}
            for name, query in series.items():
                answer = client.custom_query_range(
                    query, start_time=start, end_time=end, step=str(step.total_seconds())
                )
                values[name] = _points(answer)
            _merge_track(grid, track, values, step)
    except (PrometheusApiClientException, OSError, ValueError) as exc:
        raise InvalidRecording(f"Prometheus at {url}: {exc}") from None
    if not grid:
        raise InvalidRecording(f"Prometheus at {url}: no router data between {start} and {end}")
    return [grid[t] for t in sorted(grid)]


def _points(answer: list[dict[str, object]]) -> dict[datetime, float]:
    points: dict[datetime, float] = {}
    for result in answer:
        for stamp, text in result.get("values", []):  # type: ignore[attr-defined]
            value = float(text)
            if math.isfinite(value):
                moment = datetime.fromtimestamp(float(stamp), tz=UTC)
                points[moment] = points.get(moment, 0.0) + value
    return points


def _merge_track(
    grid: dict[datetime, Interval], track: str, values: dict[str, dict[datetime, float]], step: timedelta
) -> None:
    """A sample at time t covers (t - step, t]; the interval is keyed by its start."""
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
