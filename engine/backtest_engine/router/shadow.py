"""Shadowing: a sample of stable-served requests is sent again to the canary in the background and the two
answers are compared (rules: comparison.py), which catches a release that answers 200, fast, and wrong.

The client's answer is never delayed or changed: a copy is only started after stable's answer has been
sent, runs as its own task, and is bounded by `max_in_flight` (a sampled request finding the limit full is
counted as `skipped`, never queued), so shadowing cannot pile load on a slow canary. Shadow attempts are
not counted in `backtest_router_requests_total`: the canary's error and latency checks see client traffic
only (docs/metrics-contract.md), and the shadow series say what the comparisons found.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import random
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter

from backtest_engine.router.comparison import (
    Comparison,
    ComparisonOutcome,
    ComparisonRules,
    ShadowKind,
    shadow_kind,
)
from backtest_engine.router.forwarding import ForwardedRequest, Headers
from backtest_engine.router.upstream import Answer, Upstream

log = logging.getLogger("backtest_engine.router.shadow")

DEFAULT_MAX_IN_FLIGHT = 16
SHADOW_HEADER = b"x-backtest-shadow"
MAX_FIELD_LABELS = 256
"""Distinct `field` label values ever exported; later new ones are counted as `other`. The engine has about
100 metrics and 11 trade columns, so real results never reach it; it bounds a misbehaving canary."""
RECENT = 5
LOG_INTERVAL_SECONDS = 1.0
_MAX_PATH_CHARS = 200
_MAX_LOGGED_FIELDS = 20
MAX_DECODED_BYTES = 64 * 1024 * 1024  # a decompressed answer beyond this is not compared (zip bombs)


class ShadowOutcome(enum.StrEnum):
    """Label values of `backtest_router_shadow_comparisons_total{outcome}`."""

    MATCH = "match"
    MISMATCH = "mismatch"
    ERROR = "error"
    SKIPPED = "skipped"


class ShadowMetrics:
    """The two shadow series of docs/metrics-contract.md, on the router's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.comparisons = Counter(
            "backtest_router_shadow_comparisons",
            "Shadowed requests: canary answer compared with stable's (match, mismatch, error), or not sent "
            "because the in-flight limit was full (skipped).",
            ["outcome"],
            registry=registry,
        )
        self.mismatches = Counter(
            "backtest_router_shadow_mismatches",
            "Mismatching comparisons by result field (one count per field per comparison; bounded label set).",
            ["field"],
            registry=registry,
        )
        # Zeros from the start, so that increase() sees the first mismatch (see metrics.py).
        self._outcomes = {outcome: self.comparisons.labels(outcome=outcome.value) for outcome in ShadowOutcome}
        self._fields: dict[str, Any] = {}

    def count(self, outcome: ShadowOutcome) -> None:
        self._outcomes[outcome].inc()

    def mismatched(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        """Count each field once; returns the labels used (`other` once the label budget is spent)."""
        used = []
        for name in fields:
            label = name if name in self._fields or len(self._fields) < MAX_FIELD_LABELS else "other"
            child = self._fields.get(label)
            if child is None:
                child = self._fields[label] = self.mismatches.labels(field=label)
            child.inc()
            used.append(label)
        return tuple(used)


class Throttle:
    """At most one log line per interval and event kind; says how many were held back in between."""

    def __init__(self, interval_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval_seconds
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def admit(self, kind: str) -> int | None:
        """None to hold this line back, else the number of lines held back since the last one."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] += 1
            return None
        self._last[kind] = now
        return self._held.pop(kind, 0)


class Shadowing:
    """Samples stable-served, repeatable requests, copies them to the canary and records the comparison."""

    def __init__(
        self,
        canary: Upstream,
        registry: CollectorRegistry,
        *,
        fraction: float,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        rules: ComparisonRules | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"shadow fraction must be within 0..1, got {fraction}")
        if max_in_flight < 1:
            raise ValueError(f"shadow in-flight limit must be at least 1, got {max_in_flight}")
        self.canary = canary
        self.fraction = fraction
        self.max_in_flight = max_in_flight
        self.rules = rules or ComparisonRules()
        self.metrics = ShadowMetrics(registry)
        self.clock = clock
        self.in_flight = 0
        self._draw = (rng or random.Random()).random
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts: collections.Counter[str] = collections.Counter({o.value: 0 for o in ShadowOutcome})
        self._fields: collections.Counter[str] = collections.Counter()
        self._errors: collections.Counter[str] = collections.Counter()
        self._recent_mismatches: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self._recent_errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self._throttle = Throttle(LOG_INTERVAL_SECONDS)

    def offer(self, forwarded: ForwardedRequest, path: str, stable: Answer, weight: int) -> None:
        """Called once stable's answer has been sent: maybe start a shadow copy of the request.

        Only while a canary takes traffic (weight > 0: between rollouts the canary Service has no pods),
        only for requests safe to repeat, and only when stable gave an answer to compare with (< 500).
        """
        if self.fraction <= 0.0 or weight <= 0:
            return
        kind = shadow_kind(forwarded.method, path)
        status = stable.outcome.status
        if kind is None or status is None or status >= 500:
            return
        if self._draw() >= self.fraction:
            return
        if self.in_flight >= self.max_in_flight:
            self._record_outcome(ShadowOutcome.SKIPPED)
            return
        self.in_flight += 1
        # The copy asks for an uncompressed answer (nothing to inflate, and nobody reads it but us); it is
        # safe to repeat by construction, so a stale keep-alive connection may be retried.
        headers = [(name, value) for name, value in forwarded.headers if name != b"accept-encoding"]
        copy = dataclasses.replace(forwarded, headers=[*headers, (SHADOW_HEADER, b"1")], replayable=True)
        task = asyncio.get_running_loop().create_task(self._shadow(copy, path, kind, status, stable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, copy: ForwardedRequest, path: str, kind: ShadowKind, status: int, stable: Answer) -> None:
        try:
            answer = await self.canary.attempt(copy)
            comparison = self.judge(kind, status, stable, answer)
            self._record(comparison, copy.method, path, status, answer)
        except Exception:  # a bug here must never take the router down; it is an error outcome
            log.exception("event=shadow_failed method=%s path=%s", copy.method, path[:_MAX_PATH_CHARS])
            self._record(Comparison(ComparisonOutcome.ERROR, reason="internal"), copy.method, path, status, None)
        finally:
            self.in_flight -= 1

    def judge(self, kind: ShadowKind, stable_status: int, stable: Answer, canary: Answer) -> Comparison:
        """The comparison of one shadow attempt: an error when the canary gave no answer, or when an
        answer's content encoding cannot be undone (the bodies would be compared as compressed bytes)."""
        if canary.outcome.failure is not None or canary.outcome.status is None:
            failure = canary.outcome.failure.value if canary.outcome.failure else "no answer"
            return Comparison(ComparisonOutcome.ERROR, reason=f"canary {failure}")
        if kind is ShadowKind.STATUS:  # bodies are not compared: nothing to decode
            return self.rules.compare(kind, stable_status, b"", canary.outcome.status, b"")
        stable_body, stable_coding = content(stable.headers, stable.body)
        if stable_body is None:
            return Comparison(ComparisonOutcome.ERROR, reason=f"stable answer in {stable_coding} encoding")
        canary_body, canary_coding = content(canary.headers, canary.body)
        if canary_body is None:
            return Comparison(ComparisonOutcome.ERROR, reason=f"canary answer in {canary_coding} encoding")
        return self.rules.compare(kind, stable_status, stable_body, canary.outcome.status, canary_body)

    # -- recording ----------------------------------------------------------------------------------

    def _record_outcome(self, outcome: ShadowOutcome) -> None:
        self.metrics.count(outcome)
        self._counts[outcome.value] += 1

    def _record(
        self, comparison: Comparison, method: str, path: str, stable_status: int, canary: Answer | None
    ) -> None:
        self._record_outcome(ShadowOutcome(comparison.outcome.value))
        where = {
            "at": round(self.clock(), 3),
            "method": method,
            "path": path[:_MAX_PATH_CHARS],
            "stable_status": stable_status,
            "canary_status": canary.outcome.code_label if canary is not None else None,
        }
        if comparison.outcome is ComparisonOutcome.MISMATCH:
            labels = self.metrics.mismatched(comparison.fields)
            self._fields.update(labels)
            differences = [d.as_dict() for d in comparison.differences]
            self._recent_mismatches.append({**where, "fields": list(labels), "differences": differences})
            held = self._throttle.admit("mismatch")
            if held is not None:
                log.warning(
                    "event=shadow_mismatch method=%s path=%s stable_status=%d canary_status=%s fields=%s "
                    "differences=%s held_back=%d",
                    method,
                    where["path"],
                    stable_status,
                    where["canary_status"],
                    _field_list(labels),
                    msgspec.json.encode(differences).decode(),
                    held,
                )
        elif comparison.outcome is ComparisonOutcome.ERROR:
            self._errors[comparison.reason] += 1
            self._recent_errors.append({**where, "reason": comparison.reason})
            held = self._throttle.admit("error")
            if held is not None:
                log.info(
                    "event=shadow_error method=%s path=%s reason=%r held_back=%d",
                    method,
                    where["path"],
                    comparison.reason,
                    held,
                )

    # -- state and shutdown -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The `shadow` part of `/router/state`."""
        return {
            "fraction": self.fraction,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "comparisons": dict(self._counts),
            "mismatched_fields": dict(self._fields.most_common(20)),
            "errors": dict(self._errors.most_common(10)),
            "recent_mismatches": list(self._recent_mismatches),
            "recent_errors": list(self._recent_errors),
        }

    async def wait_idle(self) -> None:
        """Return once every shadow copy started so far has been judged (for tests and benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Drop shadow copies still running: they have no client waiting for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _field_list(labels: tuple[str, ...]) -> str:
    """Comma-separated labels for a log line, the first `_MAX_LOGGED_FIELDS` of them and a count of the rest."""
    shown = ",".join(labels[:_MAX_LOGGED_FIELDS])
    rest = len(labels) - _MAX_LOGGED_FIELDS
    return f"{shown},+{rest} more" if rest > 0 else shown


def content(headers: Headers, body: bytes) -> tuple[bytes | None, str]:
    """The body with its Content-Encoding undone (gzip, deflate, identity), and the encoding's name.

    None when the encoding is another one (br, zstd, ...) or the data is corrupt or inflates beyond
    `MAX_DECODED_BYTES`: such an answer cannot be compared.
    """
    coding = b""
    for name, value in headers:
        if name.lower() == b"content-encoding":
            coding = value.strip().lower()
    label = coding.decode("latin-1")[:20] or "identity"
    if coding in (b"", b"identity"):
        return body, label
    if coding not in (b"gzip", b"x-gzip", b"deflate"):
        return None, label
    # wbits: 16 + MAX_WBITS reads a gzip wrapper, MAX_WBITS a zlib wrapper (deflate as sent in practice)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if coding != b"deflate" else zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(body, MAX_DECODED_BYTES)
    except zlib.error:
        return None, label
    if inflater.unconsumed_tail:
        return None, label
    return plain, label
