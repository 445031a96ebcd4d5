"""The router as a raw ASGI application: pick a track per request, fall back to stable, count.

Raw ASGI rather than a framework: every request pays for the framework, and the router's whole job is
to add as little as possible on top of the upstream's latency.
"""

from __future__ import annotations

import gc
import json
import logging
import random
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from backtest_engine.router.forwarding import (
    DEFAULT_MAX_BODY_BYTES,
    FALLBACK_HEADER,
    TRACK_HEADER,
    BodyTooLargeError,
    ClientDisconnectedError,
    ForwardedRequest,
    Headers,
    declared_length,
    read_body,
    request_target,
    response_headers,
    upstream_request_headers,
)
from backtest_engine.router.metrics import DEFAULT_LATENCY_OBJECTIVE_SECONDS, RouterMetrics
from backtest_engine.router.routing import (
    Track,
    choose_track,
    is_replayable,
    plan_after_canary,
    status_without_answer,
)
from backtest_engine.router.shadow import DEFAULT_MAX_IN_FLIGHT, Shadowing
from backtest_engine.router.upstream import MAX_CONNECTION_AGE_SECONDS, Answer, UnforwardableRequestError, Upstream
from backtest_engine.router.weights import WeightSource, WeightState

log = logging.getLogger("backtest_engine.router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_CANARY_TIMEOUT_SECONDS = 5.0
DEFAULT_STABLE_TIMEOUT_SECONDS = 60.0
_JSON = [(b"content-type", b"application/json")]
_PROBLEM = [(b"content-type", b"application/problem+json")]
_NO_BODY_STATUSES = frozenset({204, 304})


class ConfigError(ValueError):
    """The router was asked to run with settings that break the counting rules."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Settings read once at start; `validate` refuses combinations that would miscount."""

    stable_url: str
    canary_url: str
    latency_objective_seconds: float = DEFAULT_LATENCY_OBJECTIVE_SECONDS
    canary_timeout_seconds: float = DEFAULT_CANARY_TIMEOUT_SECONDS
    stable_timeout_seconds: float = DEFAULT_STABLE_TIMEOUT_SECONDS
    connect_timeout_seconds: float = 1.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_connections: int = 256
    max_connection_age_seconds: float = MAX_CONNECTION_AGE_SECONDS
    shadow_fraction: float = 0.0
    shadow_max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    proxy_token: str = ""
    """Sent to the engines with every request (ROUTER_PROXY_TOKEN) so they trust X-Forwarded-For."""

    def validate(self) -> None:
        if self.latency_objective_seconds <= 0:
            raise ConfigError("--latency-objective must be positive")
        # An abandoned canary attempt must count as slow, so it has to outlast the objective.
        if self.canary_timeout_seconds <= self.latency_objective_seconds:
            raise ConfigError(
                f"--canary-timeout ({self.canary_timeout_seconds}s) must exceed --latency-objective "
                f"({self.latency_objective_seconds}s) so that abandoned canary requests count as slow"
            )
        if self.stable_timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            raise ConfigError("timeouts must be positive")
        if self.max_body_bytes < 0:
            raise ConfigError("--max-body-bytes must not be negative")
        if self.max_connection_age_seconds <= 0:
            raise ConfigError("--upstream-max-connection-age must be positive")
        if not 0.0 <= self.shadow_fraction <= 1.0:
            raise ConfigError(f"--shadow-fraction must be within 0 and 1, got {self.shadow_fraction}")
        if self.shadow_max_in_flight < 1:
            raise ConfigError("--shadow-max-in-flight must be at least 1")


class RouterApp:
    """ASGI callable: `/router/state`, `/router/health`, `/metrics`; everything else is proxied."""

    def __init__(
        self,
        config: RouterConfig,
        weight_source: WeightSource,
        metrics: RouterMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self._proxy_token = config.proxy_token.encode()
        self.metrics = metrics or RouterMetrics(config.latency_objective_seconds)
        self.weight = WeightState(initial=0)
        self.weight.subscribe(self.metrics.set_weight)
        self.weight_source = weight_source
        self.stable = Upstream(
            Track.STABLE,
            config.stable_url,
            timeout_seconds=config.stable_timeout_seconds,
            connect_timeout_seconds=config.connect_timeout_seconds,
            max_connections=config.max_connections,
            max_connection_age_seconds=config.max_connection_age_seconds,
        )
        self.canary = Upstream(
            Track.CANARY,
            config.canary_url,
            timeout_seconds=config.canary_timeout_seconds,
            connect_timeout_seconds=config.connect_timeout_seconds,
            max_connections=config.max_connections,
            max_connection_age_seconds=config.max_connection_age_seconds,
        )
        self._draw = (rng or random.Random()).random
        self.shadow = Shadowing(
            self.canary,
            self.metrics.registry,
            fraction=config.shadow_fraction,
            max_in_flight=config.shadow_max_in_flight,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path == "/metrics" or path.startswith("/router/"):
                await self._own_endpoint(path, scope, send)
            else:
                await self._proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not routed: returning without accepting makes the server close them.

    async def startup(self) -> None:
        # Everything allocated so far lives as long as the process: keep the collector from re-scanning
        # it, which shortens the pauses that show up in the router's p99.
        gc.collect()
        gc.freeze()
        await self.weight_source.start(self.weight)
        log.info(
            "event=router_started stable=%s canary=%s weight=%d weight_source=%s",
            self.stable.url,
            self.canary.url,
            self.weight.value,
            self.weight_source.description,
        )

    async def shutdown(self) -> None:
        await self.weight_source.stop()
        await self.shadow.aclose()
        await self.stable.aclose()
        await self.canary.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("event=router_startup_failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- proxying -----------------------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        limit = self.config.max_body_bytes
        declared = declared_length(scope)
        try:
            if declared is not None and declared > limit:
                raise BodyTooLargeError
            body = await read_body(receive, limit)
        except BodyTooLargeError:
            await _send_problem(send, 413, f"request body over {limit} bytes")
            return
        except ClientDisconnectedError:
            return
        forwarded = ForwardedRequest(
            method=method,
            target=request_target(scope),
            headers=upstream_request_headers(scope, self._proxy_token),
            body=body,
            replayable=is_replayable(method, (name for name, _ in scope["headers"])),
        )
        try:
            await self._route(scope, send, forwarded)
        except UnforwardableRequestError as exc:
            # The client's own request is malformed for HTTP/1.1: no track is to blame, none counts it.
            log.info("event=unforwardable_request method=%s error=%r", method, str(exc)[:200])
            await _send_problem(send, 400, "request cannot be forwarded")

    async def _route(self, scope: Scope, send: Send, forwarded: ForwardedRequest) -> None:
        method, replayable = forwarded.method, forwarded.replayable
        weight = self.weight.value
        if choose_track(weight, self._draw()) is Track.STABLE:
            answer = await self.stable.attempt(forwarded)
            self.metrics.record_attempt(Track.STABLE, answer.outcome, answer.duration_seconds)
            await self._respond(send, method, answer, Track.STABLE, b"")
            self.shadow.offer(forwarded, scope["path"], answer, weight)  # after the client has its answer
            return

        answer = await self.canary.attempt(forwarded)
        self.metrics.record_attempt(Track.CANARY, answer.outcome, answer.duration_seconds)
        plan = plan_after_canary(answer.outcome, replayable)
        if plan.fallback is None:
            if answer.outcome.is_error or answer.outcome.failure is not None:
                log.warning(
                    "event=canary_failed method=%s path=%s code=%s replayable=%s error=%r",
                    method,
                    scope["path"][:200],
                    answer.outcome.code_label,
                    str(replayable).lower(),
                    answer.error,
                )
            await self._respond(send, method, answer, Track.CANARY, b"")
            return

        self.metrics.record_fallback(plan.fallback)
        log.warning(
            "event=fallback reason=%s method=%s path=%s canary_code=%s canary_seconds=%.3f error=%r",
            plan.fallback.value,
            method,
            scope["path"][:200],
            answer.outcome.code_label,
            answer.duration_seconds,
            answer.error,
        )
        stable = await self.stable.attempt(forwarded)
        self.metrics.record_attempt(Track.STABLE, stable.outcome, stable.duration_seconds)
        await self._respond(send, method, stable, Track.STABLE, plan.fallback.value.encode())

    async def _respond(self, send: Send, method: str, answer: Answer, track: Track, fallback: bytes) -> None:
        extra: Headers = [(TRACK_HEADER, track.value.encode())]
        if fallback:
            extra.append((FALLBACK_HEADER, fallback))
        failure = answer.outcome.failure
        if failure is not None:
            if track is Track.STABLE:
                log.warning("event=stable_failed code=%s error=%r", answer.outcome.code_label, answer.error)
            await _send_problem(
                send, status_without_answer(failure), f"{track.value} upstream {failure.value}", extra,
                track=track.value,
            )  # fmt: skip
            return
        status = answer.outcome.status
        assert status is not None
        keep_length = method == "HEAD" or status in _NO_BODY_STATUSES or status < 200
        headers = response_headers(answer.headers, None if keep_length else len(answer.body), extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else answer.body})

    # -- own endpoints ------------------------------------------------------------------------------

    async def _own_endpoint(self, path: str, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _send_problem(send, 405, "method not allowed")
        elif path == "/metrics":
            body = self.metrics.exposition()
            headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
            await _send_bytes(send, 200, body, headers)
        elif path == "/router/health":
            await _send_json(send, 200, {"status": "ok"})
        elif path == "/router/state":
            await _send_json(send, 200, self.state())
        else:
            await _send_problem(send, 404, f"no router endpoint {path}")

    def state(self) -> dict[str, Any]:
        """What `/router/state` shows: the weight in force, where it came from, upstreams and counters."""
        return {
            "weight": self.weight.value,
            "weight_source": self.weight.source,
            "weight_updated_at": self.weight.updated_at,
            "weight_rejections": self.weight.rejections,
            "upstreams": {
                Track.STABLE.value: {"url": self.stable.url, "timeout_seconds": self.stable.timeout_seconds},
                Track.CANARY.value: {"url": self.canary.url, "timeout_seconds": self.canary.timeout_seconds},
            },
            "latency_objective_seconds": self.config.latency_objective_seconds,
            "counters": self.metrics.snapshot(),
            "shadow": self.shadow.state(),
        }


async def _send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, payload: object, extra: Headers | None = None) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await _send_bytes(send, status, body, [*_JSON, *(extra or [])])


async def _send_problem(send: Send, status: int, detail: str, extra: Headers | None = None, **members: str) -> None:
    """An RFC 7807 problem, the same shape the engine answers with (docs/engine-api.md)."""
    payload = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    body = json.dumps({**payload, **members}, separators=(",", ":")).encode()
    await _send_bytes(send, status, body, [*_PROBLEM, *(extra or [])])
