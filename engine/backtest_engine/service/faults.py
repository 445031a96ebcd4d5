"""Fault injection for rollout rehearsals: a share of API requests fail with 500, and/or every API
request is slowed down. Off by default; `/api/v1/health` shows the settings whenever it is on.

Health, readiness and metrics are never faulted: a rehearsal must exercise the canary analysis (errors and
latency seen by the router), not get the pods restarted by their probes.
"""

from __future__ import annotations

import asyncio
import random

from starlette.types import ASGIApp, Receive, Scope, Send

from backtest_engine.service.problems import PROBLEM_MEDIA_TYPE, problem_bytes

EXEMPT = ("/api/v1/health", "/api/v1/ready")


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
