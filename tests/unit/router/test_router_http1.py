"""The router's HTTP/1.1 client against a scripted TCP server (real sockets, canned answers)."""

import asyncio
import contextlib

import pytest

from backtest_engine.router.http1 import (
    ConnectFailedError,
    DisconnectedError,
    Http1Pool,
    UpstreamTransportError,
)

ANSWERS = {
    b"/plain": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"/eof": b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-the-end",
    b"/head": b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
    b"/nocontent": b"HTTP/1.1 204 No Content\r\n\r\n",
    b"/early": (b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    b"/garbage": b"NOT HTTP AT ALL\r\n\r\n",
    b"/hangup": b"",
}


class ScriptedServer:
    """Answers each request with ANSWERS[path]; closes after /eof, /hangup, or when told to."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                path = head.split(b" ")[1]
                writer.write(ANSWERS[path])
                await writer.drain()
                if path in (b"/eof", b"/hangup"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def drop_idle_connections(self) -> None:
        for writer in self.writers:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.drop_idle_connections()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def server():
    srv = ScriptedServer()
    await srv.start()
    yield srv
    await srv.stop()


def pool_for(server: ScriptedServer) -> Http1Pool:
    return Http1Pool("127.0.0.1", server.port, tls=False, limit=8, keepalive_expiry=4.0, connect_timeout=1.0)


def get(path: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nhost: test\r\n\r\n"


async def test_connection_is_reused_when_upstream_keeps_it_alive(server):
    pool = pool_for(server)
    first = await pool.send(get(b"/plain"), head=False, retry_stale=False)
    second = await pool.send(get(b"/chunked"), head=False, retry_stale=False)
    assert (first.status, first.body) == (200, b"hello")
    assert (b"x-a", b"1") in first.headers
    assert (second.status, second.body) == (200, b"abcde")
    assert server.connections == 1
    pool.close()


async def test_body_runs_to_connection_close_when_response_has_no_length(server):
    pool = pool_for(server)
    response = await pool.send(get(b"/eof"), head=False, retry_stale=False)
    assert response.body == b"until-the-end"
    await pool.send(get(b"/plain"), head=False, retry_stale=False)
    assert server.connections == 2
    pool.close()


async def test_head_answer_completes_when_content_length_announces_a_body(server):
    pool = pool_for(server)
    response = await asyncio.wait_for(pool.send(get(b"/head", b"HEAD"), head=True, retry_stale=False), 2)
    assert (response.status, response.body) == (200, b"")
    assert (b"content-length", b"1234") in response.headers
    pool.close()


async def test_bodiless_and_interim_answers_are_handled_when_upstream_sends_them(server):
    pool = pool_for(server)
    no_content = await asyncio.wait_for(pool.send(get(b"/nocontent"), head=False, retry_stale=False), 2)
    early = await asyncio.wait_for(pool.send(get(b"/early"), head=False, retry_stale=False), 2)
    assert no_content.status == 204
    assert (early.status, early.body) == (200, b"ok")
    assert server.connections == 1
    pool.close()


async def test_replayable_request_is_retried_when_idle_connection_was_closed_by_upstream(server):
    pool = pool_for(server)
    await pool.send(get(b"/plain"), head=False, retry_stale=False)
    server.drop_idle_connections()
    await asyncio.sleep(0.05)
    response = await pool.send(get(b"/plain"), head=False, retry_stale=True)
    assert response.status == 200
    assert server.connections == 2
    pool.close()


async def test_request_fails_when_upstream_hangs_up_without_answer(server):
    pool = pool_for(server)
    with pytest.raises(DisconnectedError):
        await pool.send(get(b"/hangup"), head=False, retry_stale=True)
    pool.close()


async def test_request_fails_when_upstream_answers_garbage(server):
    pool = pool_for(server)
    with pytest.raises(UpstreamTransportError):
        await pool.send(get(b"/garbage"), head=False, retry_stale=False)
    pool.close()


async def test_connect_fails_when_nothing_listens():
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    pool = Http1Pool("127.0.0.1", port, tls=False, limit=1, keepalive_expiry=4.0, connect_timeout=1.0)
    with pytest.raises(ConnectFailedError):
        await pool.send(get(b"/plain"), head=False, retry_stale=True)


async def test_connection_is_discarded_when_attempt_is_cancelled():
    slow = asyncio.Event()

    async def never_answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(asyncio.CancelledError):
            await slow.wait()
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    pool = Http1Pool(
        "127.0.0.1",
        silent.sockets[0].getsockname()[1],
        tls=False,
        limit=1,
        keepalive_expiry=4,
        connect_timeout=1,
    )
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await pool.send(get(b"/plain"), head=False, retry_stale=False)
    assert pool._idle == []  # a connection with a half-finished exchange is never reused
    slow.set()
    silent.close()
    await silent.wait_closed()


async def test_connection_is_not_reused_when_upstream_sends_an_extra_answer():
    async def two_answers(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ANSWERS[b"/plain"] + ANSWERS[b"/plain"])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    srv = await asyncio.start_server(two_answers, "127.0.0.1", 0)
    pool = Http1Pool(
        "127.0.0.1", srv.sockets[0].getsockname()[1], tls=False, limit=1, keepalive_expiry=4, connect_timeout=1
    )
    response = await pool.send(get(b"/plain"), head=False, retry_stale=False)
    assert (response.status, response.body, len(response.headers)) == (200, b"hello", 2)
    await asyncio.sleep(0.05)
    assert pool._checkout() is None  # the out-of-step connection was closed, not pooled
    srv.close()
    await srv.wait_closed()
