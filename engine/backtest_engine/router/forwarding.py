"""HTTP message rewriting between client and upstream: hop-by-hop headers, forwarding headers, bodies.

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, not the message, so a proxy must
drop them in both directions, including any header the `Connection` header names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from backtest_engine.limits import DEFAULT_MAX_UPLOAD_BYTES

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Recomputed by whoever sends the message next.
_RECOMPUTED = frozenset({b"host", b"content-length"})
TRACK_HEADER = b"x-backtest-track"
PROXY_TOKEN_HEADER = b"x-backtest-proxy-token"
"""Proves to the engine that X-Forwarded-For came from the router (engine: service/clients.py)."""
FALLBACK_HEADER = b"x-backtest-fallback"
DEFAULT_MAX_BODY_BYTES = DEFAULT_MAX_UPLOAD_BYTES
"""At least what the engine accepts as an upload, or the router would refuse uploads the engine takes."""

Headers = list[tuple[bytes, bytes]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A client request as it is sent to a track, and sent again to stable on fallback."""

    method: str
    target: bytes
    headers: Headers
    body: bytes
    replayable: bool = False


class BodyTooLargeError(Exception):
    """The request body exceeds what the router buffers for a possible replay."""


class ClientDisconnectedError(Exception):
    """The client went away before its request body arrived."""


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def end_to_end(headers: Iterable[tuple[bytes, bytes]], also_drop: frozenset[bytes] = frozenset()) -> Headers:
    """Headers without hop-by-hop ones (and without `also_drop`), names lower-cased."""
    headers = list(headers)
    named = _connection_tokens(headers)
    out: Headers = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in also_drop:
            continue
        out.append((lower, value))
    return out


def upstream_request_headers(scope: MutableMapping[str, Any], proxy_token: bytes = b"") -> Headers:
    """The client's end-to-end headers plus X-Forwarded-For/-Proto/-Host for the upstream, and the router's
    proxy token when it has one (a token sent by the client is always dropped)."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    forwarding = {b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", PROXY_TOKEN_HEADER}
    headers = end_to_end(raw, _RECOMPUTED | forwarding)
    if proxy_token:
        headers.append((PROXY_TOKEN_HEADER, proxy_token))
    prior_for = b", ".join(v for n, v in raw if n.lower() == b"x-forwarded-for")
    client = scope.get("client")
    client_ip = client[0].encode() if client else b"unknown"
    headers.append((b"x-forwarded-for", prior_for + b", " + client_ip if prior_for else client_ip))
    headers.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode()))
    host = next((v for n, v in raw if n.lower() == b"host"), None)
    if host is not None:
        headers.append((b"x-forwarded-host", host))
    return headers


def request_target(scope: MutableMapping[str, Any]) -> bytes:
    """Path and query exactly as the client sent them (no re-encoding)."""
    raw_path: bytes | None = scope.get("raw_path")
    if not raw_path:
        raw_path = str(scope.get("path", "/")).encode("utf-8")
    query: bytes = scope.get("query_string", b"")
    return raw_path + b"?" + query if query else raw_path


def declared_length(scope: MutableMapping[str, Any]) -> int | None:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    """Buffer the whole request body (so it can be replayed on stable), refusing more than `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def response_headers(upstream: Iterable[tuple[bytes, bytes]], body_length: int | None, extra: Headers) -> Headers:
    """The upstream's end-to-end headers for the client, with the buffered body's length and `extra`.

    `body_length` None keeps the upstream's own Content-Length untouched: a HEAD answer announces the
    length of the body a GET would have had, and 204/304 answers carry none.
    """
    if body_length is None:
        headers = end_to_end(upstream, frozenset({b"host"}))
    else:
        headers = end_to_end(upstream, _RECOMPUTED)
        headers.append((b"content-length", str(body_length).encode()))
    headers.extend(extra)
    return headers
