"""Durations as Kubernetes users write them ("30s", "10m", "1h30m"), held as ``timedelta``.

The CRD stores the string form; the models hold a ``timedelta`` so policy code never parses strings. The
pattern below is shared by the pydantic validator and the CRD schema, so the API server and the operator
agree on what a well-formed duration is.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> timedelta:
    """Parse "1h30m", "45s" or "250ms"; a ``timedelta`` or a number of seconds passes through."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=float(value))
    if not isinstance(value, str) or not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{value!r} is not a duration such as 30s, 10m or 1h30m")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(value))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Shortest canonical form: 5400 s -> "1h30m", 0.25 s -> "250ms"."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if millis and not (hours or minutes or seconds):
        parts.append(f"{millis}ms")
    elif millis:
        parts.append(f"{seconds + millis / 1000:g}s")
    elif seconds:
        parts.append(f"{seconds}s")
    return "".join(parts)


def _schema(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": DURATION_PATTERN, "description": description}


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(_schema("A duration such as 30s, 10m or 1h30m.")),
]


def brief_duration(value: timedelta) -> str:
    """For messages: whole seconds once a second has passed ("4s", not "4.119s"), milliseconds below."""
    seconds = value.total_seconds()
    return format_duration(timedelta(seconds=round(seconds)) if seconds >= 1 else value)
