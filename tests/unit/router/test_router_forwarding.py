"""Message rewriting: hop-by-hop headers, forwarding headers, bounded body buffering."""

import pytest

from backtest_engine.router.forwarding import (
    PROXY_TOKEN_HEADER,
    BodyTooLargeError,
    ClientDisconnectedError,
    end_to_end,
    read_body,
    request_target,
    response_headers,
    upstream_request_headers,
)


def test_hop_by_hop_headers_are_dropped_when_forwarding():
    headers = [
        (b"Connection", b"keep-alive, X-Secret"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-Secret", b"1"),
        (b"Upgrade", b"websocket"),
        (b"Accept", b"*/*"),
    ]
    assert end_to_end(headers) == [(b"accept", b"*/*")]


def test_forwarded_for_is_appended_when_client_came_through_a_proxy():
    scope = {
        "headers": [(b"host", b"router:8080"), (b"x-forwarded-for", b"10.0.0.1"), (b"content-length", b"3")],
        "client": ("10.0.0.2", 5555),
        "scheme": "http",
    }
    headers = dict(upstream_request_headers(scope))
    assert headers[b"x-forwarded-for"] == b"10.0.0.1, 10.0.0.2"
    assert headers[b"x-forwarded-host"] == b"router:8080"
    assert b"host" not in headers
    assert b"content-length" not in headers


def test_target_keeps_raw_path_and_query_when_forwarding():
    scope = {"raw_path": b"/a%2Fb", "path": "/a/b", "query_string": b"x=1&y=%20"}
    assert request_target(scope) == b"/a%2Fb?x=1&y=%20"


def test_response_length_is_recomputed_when_body_is_buffered():
    headers = response_headers(
        [(b"Content-Length", b"999"), (b"Transfer-Encoding", b"chunked"), (b"ETag", b"1")], 3, []
    )
    assert headers == [(b"etag", b"1"), (b"content-length", b"3")]


def test_response_length_is_kept_when_answer_has_no_body():
    headers = response_headers([(b"Content-Length", b"999")], None, [(b"x-backtest-track", b"stable")])
    assert headers == [(b"content-length", b"999"), (b"x-backtest-track", b"stable")]


def _receiver(messages):
    it = iter(messages)

    async def receive():
        return next(it)

    return receive


async def test_body_is_joined_when_it_arrives_in_chunks():
    receive = _receiver(
        [
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.request", "body": b"cd", "more_body": False},
        ]
    )
    assert await read_body(receive, limit=4) == b"abcd"


async def test_body_is_refused_when_over_limit():
    receive = _receiver(
        [
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.request", "body": b"de", "more_body": False},
        ]
    )
    with pytest.raises(BodyTooLargeError):
        await read_body(receive, limit=4)


async def test_body_read_stops_when_client_disconnects():
    with pytest.raises(ClientDisconnectedError):
        await read_body(_receiver([{"type": "http.disconnect"}]), limit=4)


def test_router_sends_its_proxy_token_and_drops_the_clients_when_it_has_one():
    scope = {"headers": [(b"x-backtest-proxy-token", b"forged"), (b"host", b"h")], "client": ("10.1.2.3", 5)}
    with_token = upstream_request_headers(scope, b"router-secret")
    assert [v for n, v in with_token if n == PROXY_TOKEN_HEADER] == [b"router-secret"]
    assert (b"x-forwarded-for", b"10.1.2.3") in with_token
    assert not [v for n, v in upstream_request_headers(scope) if n == PROXY_TOKEN_HEADER]
