"""Fault injection for rollout rehearsals: a share of API requests fail with 500, and/or every API
request is slowed down, and/or results are silently wrong (return-based metrics biased while the answer
stays a fast 200). Off by default; `/api/v1/health` shows the settings whenever it is on.

Health, readiness and metrics are never faulted: a rehearsal must exercise the canary analysis (errors and
latency seen by the router), not get the pods restarted by their probes.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from backtest_engine.service.problems import PROBLEM_MEDIA_TYPE, problem_bytes

EXEMPT = ("/api/v1/health", "/api/v1/ready")

RETURN_METRICS = frozenset(
    {
        "total_return",
        "cagr",
        "annualized_return",
        "excess_return",
        "alpha",
        "best_period_return",
        "worst_period_return",
        "average_trade_return",
        "average_winning_trade",
        "average_losing_trade",
        "best_trade_return",
        "worst_trade_return",
    }
)
"""The strategy's return-based metrics (docs/metrics.md) that ENGINE_FAULT_RESULT_BIAS distorts; the
benchmark's own return and every other metric stay correct, as a subtle bug would leave them."""


def biased(payload: dict[str, Any], bias: float) -> dict[str, Any]:
    """`payload` (anything with a `metrics` object) with each return-based metric times (1 + bias).

    Applied to answers only, never to stored rows: stable and canary share the results store, and a
    rehearsal must not corrupt what the other track reads.
    """
    metrics = payload.get("metrics")
    if not bias or not isinstance(metrics, dict):
        return payload
    skewed = {
        name: value * (1.0 + bias) if name in RETURN_METRICS and isinstance(value, float | int) else value
        for name, value in metrics.items()
    }
    return {**payload, "metrics": skewed}


class FaultInjection:
    """ASGI middleware; `rng` is injectable so tests can pin the outcome."""

    def __init__(
        self, app: ASGIApp, *, error_rate: float, latency_seconds: float, rng: random.Random | None = None
    ) -> None:
        self.app = app
        self.error_rate = error_rate
        self.latency_seconds = latency_seconds
        self.rng = rng or random.Random()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/v1/") or path in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.latency_seconds > 0:
            await asyncio.sleep(self.latency_seconds)
        if self.error_rate > 0 and self.rng.random() < self.error_rate:
            body = problem_bytes(500, "injected fault (ENGINE_FAULT_ERROR_RATE)")
            headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
            await send(
                {"type": "http.response.start", "status": 500, "headers": [*headers, (b"x-fault-injected", b"1")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
