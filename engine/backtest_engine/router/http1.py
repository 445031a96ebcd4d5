"""A minimal HTTP/1.1 client for the router: keep-alive connections on asyncio, responses parsed by
httptools (llhttp, the parser uvicorn uses on the server side).

Why not httpx: measured on the bench (bench/results/router.md), httpx's client layer plus httpcore, h11
and anyio cost about 0.5 ms of CPU per proxied request, which on two shared cores put the router's p99
several milliseconds above the upstream's at 500 requests/s. A proxy that buffers whole messages needs
little of a general client: write one request, parse one response, keep the connection if both sides
allow it. Everything else (retries, redirects, cookies, decoding) would be wrong for a proxy anyway.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import cast

import httptools

Headers = list[tuple[bytes, bytes]]


class UpstreamTransportError(Exception):
    """No usable answer from the upstream: refused, reset, closed early, or an unparsable response."""


class ConnectFailedError(UpstreamTransportError):
    """The connection could not be established (never sent anything: always safe to report)."""


class DisconnectedError(UpstreamTransportError):
    """The upstream closed the connection before its answer was complete."""


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: Headers
    body: bytes


class ResponseProtocol(asyncio.Protocol):
    """One connection: at most one request in flight, its response gathered into a RawResponse."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self.idle_since = time.monotonic()
        self.created_at = self.idle_since
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._head = False
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._framed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection can no longer be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamTransportError(f"unparsable response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed and not self._head:
            self._complete()  # no Content-Length, not chunked: the body ends with the connection
        else:
            self._fail(DisconnectedError(f"upstream closed the connection: {exc or 'EOF'}"))

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # a second answer to one request: the stream is out of step, never reuse it

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._head and self._parser.get_status_code() >= 200:
            # llhttp would wait for the body Content-Length announces; a HEAD answer has none.
            self.keep_alive = False
            self._complete()
            self.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # interim answer (103 Early Hints): the real one follows
            self._start_message()
            return
        self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
        self._complete()

    # -- request/response ---------------------------------------------------------------------------

    async def exchange(self, payload: bytes, head: bool) -> RawResponse:
        """Write one serialized request and wait for its whole response."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._head = head
        self._start_message()
        self.transport.write(payload)
        try:
            return await self._waiter
        finally:
            self._waiter = None
            self.idle_since = time.monotonic()

    def reusable(self, now: float, keepalive_expiry: float, max_age: float = float("inf")) -> bool:
        return (
            not self.closed
            and self.keep_alive
            and self._waiter is None
            and now - self.idle_since < keepalive_expiry
            and now - self.created_at < max_age
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _start_message(self) -> None:
        self._headers = []
        self._body = []
        self._headers_done = False
        self._framed = False

    def _complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._waiter.set_result(RawResponse(self._parser.get_status_code(), self._headers, body))
            self._headers, self._body = [], []  # the answer owns these lists now

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class Http1Pool:
    """Keep-alive connections to one origin, reused most-recent first in O(1), at most `limit` busy."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool,
        limit: int,
        keepalive_expiry: float,
        connect_timeout: float,
        max_age: float = float("inf"),
    ) -> None:
        self.host, self.port = host, port
        self._max_age = max_age
        self._ssl = ssl.create_default_context() if tls else None
        self._keepalive_expiry = keepalive_expiry
        self._connect_timeout = connect_timeout
        self._idle: list[ResponseProtocol] = []
        self._slots = asyncio.BoundedSemaphore(limit)

    async def send(self, payload: bytes, *, head: bool, retry_stale: bool) -> RawResponse:
        """Send on an idle connection or a new one. A replayable request that a reused connection lost
        before any answer is sent once more on a new one: an upstream closing an idle keep-alive
        connection says nothing about its health."""
        async with self._slots:
            conn = self._checkout()
            if conn is not None:
                try:
                    return await self._exchange(conn, payload, head)
                except DisconnectedError:
                    if not retry_stale:
                        raise
            return await self._exchange(await self._connect(), payload, head)

    async def _exchange(self, conn: ResponseProtocol, payload: bytes, head: bool) -> RawResponse:
        try:
            response = await conn.exchange(payload, head)
        except BaseException:
            conn.close()  # cancelled or failed mid-message: the connection's state is unknown
            raise
        if conn.keep_alive and not conn.closed and time.monotonic() - conn.created_at < self._max_age:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    def _checkout(self) -> ResponseProtocol | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable(now, self._keepalive_expiry, self._max_age):
                return conn
            conn.close()
        return None

    async def _connect(self) -> ResponseProtocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    ResponseProtocol,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise ConnectFailedError(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise ConnectFailedError(f"connect to {self.host}:{self.port}: {exc}") from exc
        return protocol

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
