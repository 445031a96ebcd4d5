"""One upstream track: a pooled HTTP/1.1 connection set and a bounded attempt at it.

Built on httpx's pooled transport rather than `AsyncClient.send`: a proxy must forward bytes verbatim,
and the client layer would decode Content-Encoding, keep a cookie jar shared by all users and follow
redirects. The transport is the client's own keep-alive pool without those behaviours.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from backtest_engine.router.forwarding import Headers
from backtest_engine.router.routing import Failure, Outcome, Track


@dataclass(slots=True)
class Answer:
    """The result of one attempt: its outcome, and headers and body when there was an answer."""

    outcome: Outcome
    duration_seconds: float
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    error: str = ""


class Upstream:
    """Sends requests to one track with a whole-attempt deadline.

    The deadline covers connecting, sending, waiting and reading the whole body, so a slow trickle counts
    as a timeout like silence does. A connection that cannot be made within `connect_timeout` is a
    transport failure (the upstream is unreachable, not slow).
    """

    def __init__(
        self,
        track: Track,
        url: str,
        timeout_seconds: float,
        connect_timeout_seconds: float = 1.0,
        max_connections: int = 256,
    ) -> None:
        base = httpx.URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"{track.value} upstream must be an http(s) URL, got {url!r}")
        self.track = track
        self.url = str(base)
        self.timeout_seconds = timeout_seconds
        self._base = base
        self._prefix = base.raw_path.rstrip(b"/")
        self._timeouts = {
            "connect": min(connect_timeout_seconds, timeout_seconds),
            "read": timeout_seconds,
            "write": timeout_seconds,
            "pool": timeout_seconds,
        }
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            http1=True,
            http2=False,
            retries=0,
        )

    async def attempt(self, method: str, target: bytes, headers: Headers, body: bytes) -> Answer:
        """One try at this track; never raises for upstream trouble, it becomes the Answer's outcome."""
        started = time.perf_counter()
        request = httpx.Request(
            method,
            self._base.copy_with(raw_path=self._prefix + target),
            headers=headers,
            content=body or None,
            extensions={"timeout": self._timeouts},
        )
        try:
            async with asyncio.timeout(self.timeout_seconds):
                response = await self._transport.handle_async_request(request)
                try:
                    chunks = [chunk async for chunk in response.aiter_raw()]
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
            return Answer(
                Outcome.failed(Failure.TIMEOUT), time.perf_counter() - started, error=type(exc).__name__
            )
        except httpx.TransportError as exc:  # refused, reset, connect timeout, protocol error
            return Answer(
                Outcome.failed(Failure.TRANSPORT),
                time.perf_counter() - started,
                error=f"{type(exc).__name__}: {exc}"[:200],
            )
        return Answer(
            Outcome.answered(response.status_code),
            time.perf_counter() - started,
            headers=response.headers.raw,
            body=chunks[0] if len(chunks) == 1 else b"".join(chunks),
        )

    async def aclose(self) -> None:
        await self._transport.aclose()
