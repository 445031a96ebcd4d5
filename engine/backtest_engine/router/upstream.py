"""One upstream track: its connection pool and a bounded attempt at it, turned into an Outcome."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from backtest_engine.router.forwarding import ForwardedRequest, Headers
from backtest_engine.router.http1 import Http1Pool, UpstreamTransportError
from backtest_engine.router.routing import Failure, Outcome, Track

# Below uvicorn's default keep-alive timeout (5 s): the router drops an idle connection before the
# upstream does, so a request is rarely written into a connection the upstream is closing.
KEEPALIVE_EXPIRY_SECONDS = 4.0
# A busy connection is never idle, so without a lifetime it would outlive a Service selector switch and
# keep a track's requests on the pods it selected before (kube-proxy balances connections, not requests).
MAX_CONNECTION_AGE_SECONDS = 10.0
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


class Upstream:
    """Sends requests to one track with a whole-attempt deadline.

    The deadline covers waiting for a free connection, connecting, sending, waiting and reading the whole
    body, so a slow trickle counts as a timeout like silence does. A connection that cannot be made within
    `connect_timeout` is a transport failure (the upstream is unreachable, not slow).
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
        max_connection_age_seconds: float = MAX_CONNECTION_AGE_SECONDS,
    ) -> None:
        base = httpx.URL(url)
        if base.scheme not in ("http", "https") or not base.host or base.query or base.fragment:
            raise ValueError(f"{track.value} upstream must be an http(s) URL without query, got {url!r}")
        self.track = track
        self.url = str(base)
        self.timeout_seconds = timeout_seconds
        tls = base.scheme == "https"
        self._host_header = base.netloc
        self._prefix = base.raw_path.rstrip(b"/")
        self._pool = Http1Pool(
            base.host,
            base.port or (443 if tls else 80),
            tls=tls,
            limit=max_connections,
            keepalive_expiry=keepalive_expiry_seconds,
            connect_timeout=min(connect_timeout_seconds, timeout_seconds),
            max_age=max_connection_age_seconds,
        )

    async def attempt(self, forwarded: ForwardedRequest) -> Answer:
        """One try at this track; upstream trouble never raises, it becomes the Answer's outcome."""
        started = time.perf_counter()
        payload = self.serialize(forwarded)
        try:
            async with asyncio.timeout(self.timeout_seconds):
                response = await self._pool.send(
                    payload, head=forwarded.method == "HEAD", retry_stale=forwarded.replayable
                )
        except TimeoutError:
            return Answer(Outcome.failed(Failure.TIMEOUT), time.perf_counter() - started, error="deadline")
        except UpstreamTransportError as exc:
            return Answer(
                Outcome.failed(Failure.TRANSPORT),
                time.perf_counter() - started,
                error=f"{type(exc).__name__}: {exc}"[:200],
            )
        return Answer(
            Outcome.answered(response.status),
            time.perf_counter() - started,
            response.headers,
            response.body,
        )

    def serialize(self, forwarded: ForwardedRequest) -> bytes:
        """The request as HTTP/1.1 bytes, with this upstream's Host and the buffered body's length."""
        verb = forwarded.method.encode("ascii")
        body = forwarded.body
        parts = [
            verb,
            b" ",
            self._prefix + forwarded.target,
            b" HTTP/1.1\r\nhost: ",
            self._host_header,
            b"\r\n",
        ]
        for name, value in forwarded.headers:
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
                raise UnforwardableRequestError(f"header {name[:40]!r} cannot be forwarded")
            parts += (name, b": ", value, b"\r\n")
        if body or verb in _BODY_METHODS:
            parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        parts += (b"\r\n", body)
        return b"".join(parts)

    async def aclose(self) -> None:
        self._pool.close()
