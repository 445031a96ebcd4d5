"""Pure routing rules: which track a request goes to, and how each attempt is counted.

Everything here is free of I/O so that the counting rules of docs/metrics-contract.md ("one request, one story") can be
tested exhaustively without processes; `app.py` only wires these decisions to sockets.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Track(enum.StrEnum):
    """The two upstream versions the router splits traffic between."""

    STABLE = "stable"
    CANARY = "canary"


class Failure(enum.StrEnum):
    """Why an attempt produced no HTTP answer; also the `code` label used for it."""

    TRANSPORT = "transport"
    TIMEOUT = "timeout"


class FallbackReason(enum.StrEnum):
    """Label values of `backtest_router_fallbacks_total{reason}`."""

    STATUS = "status"
    TRANSPORT = "transport"
    TIMEOUT = "timeout"


# RFC 9110 idempotent methods: replaying them on stable cannot apply an effect twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
IDEMPOTENCY_KEY_HEADER = b"idempotency-key"


def choose_track(weight: int, draw: float) -> Track:
    """Send to canary with probability weight/100, given a uniform draw in [0, 1).

    Weight 0 never reaches the canary and 100 always does, whatever the draw.
    """
    return Track.CANARY if draw * 100.0 < weight else Track.STABLE


def is_replayable(method: str, header_names: Iterable[bytes]) -> bool:
    """Whether a failed canary attempt may be re-served by stable.

    Idempotent methods are replayable. POST and PATCH are only when the client sent an
    `Idempotency-Key` header, i.e. it promised that the server de-duplicates a repeated request.
    """
    if method.upper() in IDEMPOTENT_METHODS:
        return True
    return any(name.lower() == IDEMPOTENCY_KEY_HEADER for name in header_names)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt at one track produced: a status code, or a failure without an answer."""

    status: int | None
    failure: Failure | None = None

    @classmethod
    def answered(cls, status: int) -> Outcome:
        return cls(status=status)

    @classmethod
    def failed(cls, failure: Failure) -> Outcome:
        return cls(status=None, failure=failure)

    @property
    def code_label(self) -> str:
        """The `code` label of `backtest_router_requests_total`: status, `transport` or `timeout`."""
        if self.failure is not None:
            return self.failure.value
        return str(self.status)

    @property
    def is_error(self) -> bool:
        """A canary error: a 5xx answer or a failed connection. A timeout is slow, not an error."""
        if self.failure is not None:
            return self.failure is Failure.TRANSPORT
        return self.status is not None and self.status >= 500


def fallback_reason(outcome: Outcome) -> FallbackReason | None:
    """Why a canary attempt must be re-served by stable, or None when its answer stands.

    5xx, transport failures and timeouts qualify; 2xx-4xx answers are the canary's to give
    (4xx is the client's fault, not the canary's).
    """
    if outcome.failure is Failure.TRANSPORT:
        return FallbackReason.TRANSPORT
    if outcome.failure is Failure.TIMEOUT:
        return FallbackReason.TIMEOUT
    if outcome.status is not None and outcome.status >= 500:
        return FallbackReason.STATUS
    return None


def status_without_answer(failure: Failure) -> int:
    """Status the router itself returns when an attempt got no answer and cannot be replayed."""
    return 504 if failure is Failure.TIMEOUT else 502


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do after the canary attempt: re-serve from stable (with a reason) or answer as is."""

    fallback: FallbackReason | None

    @property
    def re_serve(self) -> bool:
        return self.fallback is not None


def plan_after_canary(outcome: Outcome, replayable: bool) -> Plan:
    """Decide whether stable re-serves a request after the canary's attempt.

    A non-replayable request keeps the canary's answer (its 5xx, or 502/504 without one): stable must
    not run a possibly already applied POST a second time.
    """
    reason = fallback_reason(outcome)
    if reason is None or not replayable:
        return Plan(fallback=None)
    return Plan(fallback=reason)
