"""Upstream connections have a maximum age, so a Service selector switch reaches every request (issue 13).

kube-proxy balances connections, not requests: a connection made before a track's Service switched to
another revision keeps reaching the old pods for as long as it lives, and a busy keep-alive connection is
never idle long enough to expire. ``Forwarder`` plays kube-proxy: it picks the backend when a connection
is made and keeps it for the connection's life.
"""

import asyncio
import contextlib

from backtest_engine.router.forwarding import ForwardedRequest
from backtest_engine.router.routing import Track
from backtest_engine.router.upstream import Upstream


async def _backend(name: bytes) -> asyncio.Server:
    body = b'{"backend":"' + name + b'"}'
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


class Forwarder:
    """A Service address: each new connection goes to the backend selected at that moment."""

    def __init__(self) -> None:
        self.target = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def _served_by(max_age: float) -> list[bytes]:
    old, new = await _backend(b"old"), await _backend(b"new")
    forwarder = Forwarder()
    forwarder.target = old.sockets[0].getsockname()[1]
    port = await forwarder.start()
    upstream = Upstream(Track.STABLE, f"http://127.0.0.1:{port}", timeout_seconds=2.0,
                        max_connection_age_seconds=max_age)  # fmt: skip
    request = ForwardedRequest("GET", b"/", [], b"", replayable=True)
    served: list[bytes] = []
    try:
        for _ in range(20):  # busy: never idle long enough for the keep-alive expiry
            await upstream.attempt(request)
        forwarder.target = new.sockets[0].getsockname()[1]  # the Service now selects the new revision
        for _ in range(40):
            answer = await upstream.attempt(request)
            served.append(answer.body)
            await asyncio.sleep(0.01)
    finally:
        await upstream.aclose()
        for server in (old, new, forwarder.server):
            assert server is not None
            server.close()
    return served


async def test_requests_reach_the_new_pods_within_the_connection_age_when_the_service_switches():
    served = await _served_by(max_age=0.1)
    assert served[-1] == b'{"backend":"new"}'
    assert served[-10:] == [b'{"backend":"new"}'] * 10


async def test_a_busy_connection_without_age_limit_keeps_the_old_pods_when_the_service_switches():
    """The defect, shown with the limit effectively off: every request still reaches the old backend."""
    served = await _served_by(max_age=3600)
    assert set(served) == {b'{"backend":"old"}'}
