"""Declared comparison rules for shadowed requests: which requests may be repeated on the canary, and
when the canary's answer counts as the same as stable's.

Backtests are deterministic (same data, same parameters, same engine contract), so a correct release gives
the same result as stable up to floating-point rounding. The rules below say exactly what is compared and
what is ignored, so that a mismatch always names a field and never comes from guesswork:
- every shadowed request: the status (5xx or 429 from the canary is an error, not a mismatch: the canary
  did not produce an answer to compare; its failures are judged by the error-rate checks);
- backtest results (`POST /api/v1/backtests`, `GET /api/v1/backtests/{id}`): the metrics with a relative
  tolerance (wider for a few metrics that amplify rounding), the trade list field by field, a summary of
  the equity curve, and every other field stable sent (strategy, params, config, dataset), numbers within
  the same tolerance. Fields that legitimately differ between versions or runs are ignored:
  `IGNORED_FIELDS`. Fields only the canary sends are additions, not mismatches.
Everything here is pure (bytes in, verdict out) so that the rules are tested without processes.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgspec

BACKTESTS_PATH = "/api/v1/backtests"
_BACKTEST_DETAIL = re.compile(r"/api/v1/backtests/[A-Za-z0-9-]{1,64}")
_READ_METHODS = frozenset({"GET", "HEAD"})

IGNORED_FIELDS = frozenset({"id", "created_at", "engine_version", "duration_seconds", "cached"})
"""Top-level fields of a backtest result that differ legitimately: the stored row's identity and time,
the version that computed it, how long it took, and whether it came from the cache."""

COMPARED_FIELDS = frozenset({"strategy", "params", "config", "dataset"})
"""Top-level fields compared as a whole (label = the field's name); any other field stable sends is
compared too, under the label `other`."""
_TOP_LABELS = COMPARED_FIELDS | {"metrics", "trades", "equity"}  # the whole part missing, or not the usual type

TRADE_COLUMNS = frozenset(
    {
        "entry_time",
        "exit_time",
        "direction",
        "size",
        "entry_price",
        "exit_price",
        "pnl",
        "return",
        "fees",
        "bars_held",
        "exit_reason",
    }
)
"""Columns of the engine's trade list (docs/engine-api.md); a column outside this set is `trades.other`."""

EQUITY_SUMMARY = ("points", "start", "end", "final", "min", "max", "mean")
"""What is compared of the equity curve: length, first and last time, last, lowest, highest and mean value."""

_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])  # top level parsed, every value left as raw bytes
_VALUE = msgspec.json.Decoder()
_ENCODE = msgspec.json.Encoder()
_EQUIVALENT_RESULT_STATUSES = frozenset({200, 201})  # cached result (200) or a new run (201)
_MISSING = "<missing>"


class ShadowKind(enum.StrEnum):
    """How a shadowed request's answers are compared."""

    BACKTEST_RESULT = "backtest_result"
    """Status, then the content of the result."""
    STATUS = "status"
    """Status only (listings change as results are stored, health carries the version, ...)."""


def shadow_kind(method: str, path: str) -> ShadowKind | None:
    """The comparison for a request, or None when it must not be repeated on the canary.

    Safe to repeat: reads (GET, HEAD) and deterministic backtest runs (`POST /api/v1/backtests`: the same
    request computes the same result, and the results store is keyed by content). Never: uploads, job
    control (starting or cancelling optimizations) or any other write.
    """
    if method == "POST":
        return ShadowKind.BACKTEST_RESULT if path == BACKTESTS_PATH else None
    if method not in _READ_METHODS:
        return None
    if method == "GET" and _BACKTEST_DETAIL.fullmatch(path):
        return ShadowKind.BACKTEST_RESULT
    return ShadowKind.STATUS


class ComparisonOutcome(enum.StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    ERROR = "error"
    """No comparison was possible: the canary failed to answer (or stable's answer is no reference)."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Two numbers are the same when they differ by at most `relative` of the larger one, or `absolute`."""

    relative: float
    absolute: float

    def same(self, stable: float, canary: float) -> bool:
        if stable == canary:
            return True
        if math.isnan(stable) or math.isnan(canary):
            return False
        return abs(stable - canary) <= max(self.relative * max(abs(stable), abs(canary)), self.absolute)


NUMBERS = Tolerance(relative=1e-9, absolute=1e-9)
"""Default for every number: far above rounding differences between builds, far below any real change."""

METRIC_TOLERANCES: Mapping[str, Tolerance] = MappingProxyType(
    {
        # Higher moments and the statistics built on them amplify rounding of the per-bar returns.
        "skewness": Tolerance(1e-6, 1e-9),
        "kurtosis": Tolerance(1e-6, 1e-9),
        "modified_var_95": Tolerance(1e-6, 1e-9),
        "probabilistic_sharpe_ratio": Tolerance(1e-6, 1e-9),
    }
)


@dataclass(frozen=True, slots=True)
class Difference:
    """One observed difference: its counter label, where it is, and both values (shortened)."""

    field: str
    path: str
    stable: str
    canary: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "path": self.path, "stable": self.stable, "canary": self.canary}


@dataclass(frozen=True, slots=True)
class Comparison:
    outcome: ComparisonOutcome
    fields: tuple[str, ...] = ()
    """Labels of the mismatching fields, in the order found, each once."""
    differences: tuple[Difference, ...] = ()
    """A bounded sample of the differences (at most `ComparisonRules.max_differences`)."""
    reason: str = ""
    """Why the outcome is an error."""


@dataclass(frozen=True)
class ComparisonRules:
    """The declared rule set; defaults are the product's, tests and benchmarks may narrow them."""

    ignored_fields: frozenset[str] = IGNORED_FIELDS
    numbers: Tolerance = NUMBERS
    metric_tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: METRIC_TOLERANCES)
    max_differences: int = 5
    max_value_chars: int = 80

    def compare(
        self, kind: ShadowKind, stable_status: int, stable_body: bytes, canary_status: int, canary_body: bytes
    ) -> Comparison:
        """Judge the canary's answer against stable's for a request of `kind`."""
        if stable_status >= 500:
            return Comparison(ComparisonOutcome.ERROR, reason=f"stable answered {stable_status}")
        if canary_status >= 500 or canary_status == 429:
            return Comparison(ComparisonOutcome.ERROR, reason=f"canary answered {canary_status}")
        if not self._same_status(kind, stable_status, canary_status):
            diff = Difference("status", "status", str(stable_status), str(canary_status))
            return Comparison(ComparisonOutcome.MISMATCH, ("status",), (diff,))
        if kind is not ShadowKind.BACKTEST_RESULT or not 200 <= stable_status < 300:
            return Comparison(ComparisonOutcome.MATCH)
        try:
            stable = _FIELDS.decode(stable_body)
        except msgspec.DecodeError:
            return Comparison(ComparisonOutcome.ERROR, reason="stable's answer is not a JSON object")
        try:
            canary = _FIELDS.decode(canary_body)
        except msgspec.DecodeError:
            diff = Difference("body", "body", "JSON object", self._show(canary_body[: self.max_value_chars]))
            return Comparison(ComparisonOutcome.MISMATCH, ("body",), (diff,))
        return self._compare_fields(stable, canary)

    def _compare_fields(self, stable: dict[str, msgspec.Raw], canary: dict[str, msgspec.Raw]) -> Comparison:
        """Compare field by field, parsing only fields whose bytes differ.

        Equal bytes are equal JSON values, and both tracks usually serialize alike, so the large parts of
        a result (the equity curve, the trades) are compared without being parsed; a field whose bytes
        differ (a value, or just number formatting or key order) is parsed and judged by the rules.
        """
        differing_stable: dict[str, Any] = {}
        differing_canary: dict[str, Any] = {}
        for name, raw in stable.items():
            if name in self.ignored_fields:
                continue
            other = canary.get(name)
            if other is not None and raw == other:
                continue
            differing_stable[name] = _VALUE.decode(raw)
            if other is not None:
                differing_canary[name] = _VALUE.decode(other)
        return self.compare_results(differing_stable, differing_canary)

    def compare_results(self, stable: dict[str, Any], canary: dict[str, Any]) -> Comparison:
        """Compare two parsed backtest results field by field under this rule set."""
        found = _Findings(self.max_differences, self._show)
        for name, value in stable.items():
            if name in self.ignored_fields:
                continue
            label = name if name in _TOP_LABELS else "other"
            if name not in canary:
                found.add(label, name, value, _MISSING)
            elif name in ("trades", "equity") and value == canary[name]:
                continue  # the long lists are usually equal: one comparison in C before any rule
            elif name == "metrics" and isinstance(value, dict) and isinstance(canary[name], dict):
                self._compare_metrics(value, canary[name], found)
            elif name == "trades" and isinstance(value, list) and isinstance(canary[name], list):
                self._compare_trades(value, canary[name], found)
            elif name == "equity" and isinstance(value, list) and isinstance(canary[name], list):
                self._compare_equity(value, canary[name], found)
            elif not self._same(value, canary[name], self.numbers):
                found.add(label, name, value, canary[name])
        return found.verdict()

    # -- parts of a result --------------------------------------------------------------------------

    def _compare_metrics(self, stable: dict[str, Any], canary: dict[str, Any], found: _Findings) -> None:
        default = self.numbers
        tolerances = self.metric_tolerances
        for name, value in stable.items():
            other = canary.get(name, _MISSING)
            if value == other and type(value) is type(other):
                continue
            if not self._same(value, other, tolerances.get(name, default)):
                label = f"metrics.{name}" if _METRIC_NAME.fullmatch(name) else "metrics.other"
                found.add(label, f"metrics.{name}"[:100], value, other)

    def _compare_trades(self, stable: list[Any], canary: list[Any], found: _Findings) -> None:
        if len(stable) != len(canary):
            found.add("trades.count", "trades.count", len(stable), len(canary))
            return
        numbers = self.numbers
        for index, (mine, theirs) in enumerate(zip(stable, canary, strict=True)):
            if mine == theirs:
                continue
            if not isinstance(mine, dict) or not isinstance(theirs, dict):
                found.add("trades.other", f"trades[{index}]", mine, theirs)
                continue
            for column, value in mine.items():
                other = theirs.get(column, _MISSING)
                if not self._same(value, other, numbers):
                    label = f"trades.{column}" if column in TRADE_COLUMNS else "trades.other"
                    found.add(label, f"trades[{index}].{column}"[:100], value, other)

    def _compare_equity(self, stable: list[Any], canary: list[Any], found: _Findings) -> None:
        mine, theirs = equity_summary(stable), equity_summary(canary)
        for key in EQUITY_SUMMARY:
            if not self._same(mine[key], theirs[key], self.numbers):
                found.add(f"equity.{key}", f"equity.{key}", mine[key], theirs[key])

    # -- values -------------------------------------------------------------------------------------

    def _same_status(self, kind: ShadowKind, stable: int, canary: int) -> bool:
        if stable == canary:
            return True
        return (
            kind is ShadowKind.BACKTEST_RESULT
            and stable in _EQUIVALENT_RESULT_STATUSES
            and canary in _EQUIVALENT_RESULT_STATUSES
        )

    def _same(self, stable: Any, canary: Any, tolerance: Tolerance) -> bool:
        """JSON equality with numbers within `tolerance`; the canary may add keys to an object."""
        if isinstance(stable, float | int) and not isinstance(stable, bool):
            if isinstance(canary, float | int) and not isinstance(canary, bool):
                return tolerance.same(float(stable), float(canary))
            return False
        if isinstance(stable, dict):
            if not isinstance(canary, dict):
                return False
            return all(key in canary and self._same(value, canary[key], tolerance) for key, value in stable.items())
        if isinstance(stable, list):
            if not isinstance(canary, list) or len(stable) != len(canary):
                return False
            return all(self._same(a, b, tolerance) for a, b in zip(stable, canary, strict=True))
        return bool(stable == canary and type(stable) is type(canary))

    def _show(self, value: Any) -> str:
        if isinstance(value, str):
            text = value
        elif isinstance(value, bytes):
            text = value.decode("utf-8", "replace")
        else:
            text = _ENCODE.encode(value).decode()
        limit = self.max_value_chars
        return text if len(text) <= limit else text[: limit - 3] + "..."


def equity_summary(points: list[Any]) -> dict[str, Any]:
    """Length, first and last time, last, lowest, highest and mean equity of `[{"time", "equity"}, ...]`.

    Malformed points (not an object with a number) make the summary's values None, which then only
    matches an equally malformed curve.
    """
    if not points:
        return dict.fromkeys(EQUITY_SUMMARY) | {"points": 0}
    try:
        values = [float(point["equity"]) for point in points]
        start, end = points[0]["time"], points[-1]["time"]
    except (TypeError, KeyError, ValueError):
        return dict.fromkeys(EQUITY_SUMMARY) | {"points": len(points)}
    return {
        "points": len(points),
        "start": start,
        "end": end,
        "final": values[-1],
        "min": min(values),
        "max": max(values),
        "mean": math.fsum(values) / len(values),
    }


class _Findings:
    """Mismatching field labels (each once) and a bounded sample of differences."""

    def __init__(self, max_differences: int, show: Callable[[Any], str]) -> None:
        self.fields: dict[str, None] = {}
        self.differences: list[Difference] = []
        self.max_differences = max_differences
        self.show = show

    def add(self, label: str, path: str, stable: Any, canary: Any) -> None:
        new_field = label not in self.fields
        self.fields[label] = None
        # Prefer one example per field over many of the first field.
        if new_field and len(self.differences) < self.max_differences:
            self.differences.append(Difference(label, path, self.show(stable), self.show(canary)))

    def verdict(self) -> Comparison:
        if not self.fields:
            return Comparison(ComparisonOutcome.MATCH)
        return Comparison(ComparisonOutcome.MISMATCH, tuple(self.fields), tuple(self.differences))
