"""A small open-loop HTTP/1.1 load generator on raw asyncio streams.

Why not httpx or wrk: httpx costs several hundred microseconds of CPU per request, on the same two cores
the router and upstream use, and wrk is closed-loop (it waits for answers, so a slow server lowers the
offered rate and hides its own latency: coordinated omission). Here request i is due at t0 + i/rate and
its latency is measured from that due time, whether or not the generator was late to send it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    statuses: Counter[int] = field(default_factory=Counter)
    headers_seen: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # transport-level failures by type
    elapsed: float = 0.0
    max_send_lag: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values()) + sum(n for code, n in self.statuses.items() if code >= 400)

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q * len(data)))]


# Servers close idle keep-alive connections (uvicorn after 5 s); like any client library, drop them
# sooner so that a request is never written into a connection the server is closing.
KEEPALIVE_EXPIRY = 3.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = time.monotonic()

    async def request(self, payload: bytes, watch_header: bytes | None) -> tuple[int, str | None]:
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        watched = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif watch_header is not None and lname == watch_header:
                watched = value.strip().decode()
        if length:
            await self.reader.readexactly(length)
        return status, watched

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Keep-alive connections, opened on demand, reused LIFO (like a client library's pool)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Connection] = []

    async def acquire(self) -> Connection:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.idle_since < KEEPALIVE_EXPIRY and not conn.reader.at_eof():
                return conn
            conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return Connection(reader, writer)

    def release(self, conn: Connection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def _payload(url: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    payload = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()
    return host, port, payload


async def _one(pool: Pool, payload: bytes, due: float, result: Result, watch: bytes | None) -> None:
    conn = None
    try:
        conn = await pool.acquire()
        status, watched = await conn.request(payload, watch)
        pool.release(conn)
        result.statuses[status] += 1
        if watched is not None:
            result.headers_seen[watched] += 1
        if status < 400:
            result.latencies.append(time.perf_counter() - due)
    except Exception as exc:  # a failed client request, which is what the bench counts
        result.failures[type(exc).__name__] += 1
        if conn is not None:
            conn.close()


async def open_loop(
    url: str, rate: float, seconds: float, watch_header: str | None = None, warmup_seconds: float = 1.0
) -> Result:
    """Offer `rate` requests/s for `seconds` (after an unrecorded warm-up) and measure each one."""
    host, port, payload = _payload(url)
    pool = Pool(host, port)
    watch = watch_header.lower().encode() if watch_header else None
    warm = Result()
    await _schedule(pool, payload, rate, warmup_seconds, warm, watch)
    result = Result()
    started = time.perf_counter()
    await _schedule(pool, payload, rate, seconds, result, watch)
    result.elapsed = time.perf_counter() - started
    pool.close()
    return result


async def _schedule(pool: Pool, payload: bytes, rate: float, seconds: float, result: Result, watch) -> None:
    total = int(rate * seconds)
    interval = 1.0 / rate
    t0 = time.perf_counter()
    tasks = []
    for i in range(total):
        due = t0 + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        result.max_send_lag = max(result.max_send_lag, time.perf_counter() - due)
        tasks.append(asyncio.create_task(_one(pool, payload, due, result, watch)))
    await asyncio.gather(*tasks)


async def closed_loop(url: str, concurrency: int, seconds: float) -> Result:
    """Maximum throughput: `concurrency` workers, each sending its next request as soon as one returns."""
    host, port, payload = _payload(url)
    result = Result()
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        conn = Connection(reader, writer)
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            try:
                status, _ = await conn.request(payload, None)
            except Exception as exc:
                result.failures[type(exc).__name__] += 1
                reader, writer = await asyncio.open_connection(host, port)
                conn = Connection(reader, writer)
                continue
            result.statuses[status] += 1
            result.latencies.append(time.perf_counter() - t)
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


async def paired_open_loop(
    url_a: str, url_b: str, rate: float, seconds: float, warmup_seconds: float = 1.0
) -> tuple[Result, Result, list[float]]:
    """Offer `rate` requests/s to each of two URLs at the same due times (order random per tick).

    On a machine shared with other work, latency spikes come and go within seconds; runs taken one
    after the other see different spikes. Paired requests see the same ones, so the per-pair difference
    b - a isolates what b adds.
    """
    rng = random.Random(0)
    targets = [(_payload(url_a), Result()), (_payload(url_b), Result())]
    pools = [Pool(host, port) for (host, port, _), _ in targets]
    pairs: list[tuple[list[float], list[float]]] = []

    async def tick(due: float, record: bool) -> None:
        done: list[list[float]] = [[], []]
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        tasks = []
        for i in order:
            (_, _, payload), result = targets[i]
            sink = result if record else Result()
            tasks.append(asyncio.create_task(_timed(pools[i], payload, due, sink, done[i])))
        await asyncio.gather(*tasks)
        if record:
            pairs.append((done[0], done[1]))

    for seconds_, record in ((warmup_seconds, False), (seconds, True)):
        total = int(rate * seconds_)
        t0 = time.perf_counter()
        tasks = []
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(tick(due, record)))
        await asyncio.gather(*tasks)
        if record:
            for _, result in targets:
                result.elapsed = time.perf_counter() - t0
    for pool in pools:
        pool.close()
    diffs = [b[0] - a[0] for a, b in pairs if a and b]
    return targets[0][1], targets[1][1], diffs


async def _timed(pool: Pool, payload: bytes, due: float, result: Result, out: list[float]) -> None:
    before = len(result.latencies)
    await _one(pool, payload, due, result, None)
    if len(result.latencies) > before:
        out.append(result.latencies[-1])
