"""One upstream track: a keep-alive pool of HTTP/1.1 connections and a bounded attempt at it.

Built on httpcore, the connection layer of httpx, with a pool of its own. Measured on the bench, httpx's
client and httpcore's `AsyncConnectionPool` cost too much per request for a proxy: the client decodes
Content-Encoding, keeps a shared cookie jar and follows redirects (a proxy must forward bytes verbatim),
and the pool re-scans every connection for every request (quadratic under load: the router saturated
below 600 requests/s on two cores). Here an idle connection is popped from a LIFO stack in O(1).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field

import httpcore
import httpx

from backtest_engine.router.forwarding import ForwardedRequest, Headers
from backtest_engine.router.routing import Failure, Outcome, Track

log = logging.getLogger("backtest_engine.router.upstream")

# Below uvicorn's default keep-alive timeout (5 s): the router drops an idle connection before the
# upstream does, so a request is rarely written into a connection the upstream is closing.
KEEPALIVE_EXPIRY_SECONDS = 4.0
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class UnforwardableRequestError(Exception):
    """The client's request cannot be written to an upstream (e.g. a header HTTP/1.1 forbids)."""


@dataclass(slots=True)
class Answer:
    """The result of one attempt: its outcome, and headers and body when there was an answer."""

    outcome: Outcome
    duration_seconds: float
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    error: str = ""


class ConnectionPool:
    """Idle keep-alive connections to one origin, reused most-recent first, at most `limit` in use."""

    def __init__(self, url: httpx.URL, limit: int, keepalive_expiry: float) -> None:
        port = url.port or (443 if url.scheme == "https" else 80)
        self._origin = httpcore.Origin(url.scheme.encode(), url.host.encode(), port)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._keepalive_expiry = keepalive_expiry
        self._idle: list[httpcore.AsyncHTTPConnection] = []
        self._slots = asyncio.BoundedSemaphore(limit)

    def checkout(self) -> tuple[httpcore.AsyncHTTPConnection, bool]:
        """An idle live connection (reused=True) or a new, not yet connected one."""
        while self._idle:
            conn = self._idle.pop()
            if conn.is_available() and not conn.has_expired():
                return conn, True
            _close_soon(conn)
        return self.new_connection(), False

    def new_connection(self) -> httpcore.AsyncHTTPConnection:
        return httpcore.AsyncHTTPConnection(
            self._origin, ssl_context=self._ssl, keepalive_expiry=self._keepalive_expiry, http1=True
        )

    def checkin(self, conn: httpcore.AsyncHTTPConnection) -> None:
        if conn.is_available():
            self._idle.append(conn)
        else:
            _close_soon(conn)

    @property
    def slots(self) -> asyncio.BoundedSemaphore:
        return self._slots

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()


_closing: set[asyncio.Task[None]] = set()


def _close_soon(conn: httpcore.AsyncHTTPConnection) -> None:
    task = asyncio.get_running_loop().create_task(conn.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class Upstream:
    """Sends requests to one track with a whole-attempt deadline.

    The deadline covers connecting, sending, waiting and reading the whole body, so a slow trickle counts
    as a timeout like silence does. A connection that cannot be made within `connect_timeout` is a
    transport failure (the upstream is unreachable, not slow). A replayable request that fails on a
    reused keep-alive connection before any answer is retried once on a new connection: the upstream
    may have closed it while idle, which says nothing about the upstream's health.
    """

    def __init__(
        self,
        track: Track,
        url: str,
        *,
        timeout_seconds: float,
        connect_timeout_seconds: float = 1.0,
        max_connections: int = 256,
        keepalive_expiry_seconds: float = KEEPALIVE_EXPIRY_SECONDS,
    ) -> None:
        base = httpx.URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"{track.value} upstream must be an http(s) URL, got {url!r}")
        self.track = track
        self.url = str(base)
        self.timeout_seconds = timeout_seconds
        self._scheme = base.scheme.encode()
        self._host = base.host.encode()
        self._port = base.port
        self._host_header = base.netloc
        self._prefix = base.raw_path.rstrip(b"/")
        self._timeouts = {
            "connect": min(connect_timeout_seconds, timeout_seconds),
            "read": timeout_seconds,
            "write": timeout_seconds,
            "pool": timeout_seconds,
        }
        self._pool = ConnectionPool(base, max_connections, keepalive_expiry_seconds)

    async def attempt(self, forwarded: ForwardedRequest) -> Answer:
        """One try at this track; upstream trouble never raises, it becomes the Answer's outcome."""
        started = time.perf_counter()
        request = self._request(forwarded)
        try:
            async with asyncio.timeout(self.timeout_seconds), self._pool.slots:
                status, raw_headers, content = await self._send(request, retry_stale=forwarded.replayable)
        except (TimeoutError, httpcore.ReadTimeout, httpcore.WriteTimeout, httpcore.PoolTimeout) as exc:
            return Answer(
                Outcome.failed(Failure.TIMEOUT), time.perf_counter() - started, error=type(exc).__name__
            )
        except httpcore.LocalProtocolError as exc:
            raise UnforwardableRequestError(str(exc)) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ConnectTimeout, OSError) as exc:
            return Answer(
                Outcome.failed(Failure.TRANSPORT),
                time.perf_counter() - started,
                error=f"{type(exc).__name__}: {exc}"[:200],
            )
        return Answer(Outcome.answered(status), time.perf_counter() - started, raw_headers, content)

    def _request(self, forwarded: ForwardedRequest) -> httpcore.Request:
        verb = forwarded.method.encode("ascii")
        body = forwarded.body
        headers = [(b"host", self._host_header), *forwarded.headers]
        if body or verb in _BODY_METHODS:
            headers.append((b"content-length", str(len(body)).encode()))
        url = httpcore.URL(
            scheme=self._scheme, host=self._host, port=self._port, target=self._prefix + forwarded.target
        )
        return httpcore.Request(
            verb, url, headers=headers, content=body or None, extensions={"timeout": self._timeouts}
        )

    async def _send(self, request: httpcore.Request, retry_stale: bool) -> tuple[int, Headers, bytes]:
        conn, reused = self._pool.checkout()
        try:
            return await self._exchange(conn, request)
        except (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError):
            if not (reused and retry_stale):
                raise
        log.debug("event=stale_connection_retry track=%s", self.track.value)
        return await self._exchange(self._pool.new_connection(), request)

    async def _exchange(
        self, conn: httpcore.AsyncHTTPConnection, request: httpcore.Request
    ) -> tuple[int, Headers, bytes]:
        try:
            response = await conn.handle_async_request(request)
            try:
                chunks = [chunk async for chunk in response.aiter_stream()]
            finally:
                await response.aclose()
        except BaseException:
            _close_soon(conn)  # no await: this may run while the attempt is being cancelled
            raise
        self._pool.checkin(conn)
        return response.status, response.headers, chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def aclose(self) -> None:
        await self._pool.aclose()
