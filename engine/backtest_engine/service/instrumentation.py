"""Request metrics and the last line of defence against unhandled errors, as one ASGI middleware.

It sits outside fault injection so injected 500s are counted like real ones, and resolves the route
template itself (by matching the app's routes) so that 404s and faulted requests still get a bounded
`route` label. An exception that escapes a handler becomes a problem response without internals; the
traceback goes to the log with a correlation id that the response repeats.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backtest_engine.service.metrics import EngineMetrics
from backtest_engine.service.problems import PROBLEM_MEDIA_TYPE, problem_bytes

log = logging.getLogger("backtest_engine.service.http")
UNMATCHED = "unmatched"


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", UNMATCHED))
    for route in routes:  # right path, wrong method: still the same route
        match, _ = route.matches(scope)
        if match is Match.PARTIAL:
            return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


class Instrumentation:
    def __init__(self, app: ASGIApp, *, metrics: EngineMetrics, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = route_template(self.routes(), scope)
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("event=unhandled_error incident=%s method=%s route=%s", incident, scope.get("method"), route)
            status = 500
            if not response_started:
                body = problem_bytes(500, f"internal error (incident {incident})")
                headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe_request(route, str(scope.get("method", "")), status, time.perf_counter() - started)
