"""Shadowing's own rules (router/shadow.py): what is sampled, the in-flight bound, bounded labels, logs.

The canary here is a real Upstream pointed at a loopback port nobody listens on (every copy fails to
connect: an `error` outcome), or at a real local server where an answer is needed.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import zlib

import pytest
from prometheus_client import CollectorRegistry

from backtest_devtools.stack import free_port
from backtest_engine.router.forwarding import ForwardedRequest
from backtest_engine.router.routing import Failure, Outcome, Track
from backtest_engine.router.shadow import (
    MAX_DECODED_BYTES,
    MAX_FIELD_LABELS,
    SHADOW_HEADER,
    Shadowing,
    ShadowMetrics,
    Throttle,
    content,
)
from backtest_engine.router.upstream import Answer, Upstream


def request(method: str = "GET", target: bytes = b"/api/v1/strategies") -> ForwardedRequest:
    return ForwardedRequest(method=method, target=target, headers=[(b"x-api-key", b"k")], body=b"")


def ok(status: int = 200, body: bytes = b"{}") -> Answer:
    return Answer(Outcome.answered(status), 0.001, [], body)


def unreachable_canary() -> Upstream:
    return Upstream(Track.CANARY, f"http://127.0.0.1:{free_port()}", timeout_seconds=2.0, connect_timeout_seconds=0.5)


def shadowing(fraction: float = 1.0, max_in_flight: int = 4, canary: Upstream | None = None) -> Shadowing:
    return Shadowing(
        canary or unreachable_canary(),
        CollectorRegistry(),
        fraction=fraction,
        max_in_flight=max_in_flight,
        rng=random.Random(1),
    )


async def settle(shadow: Shadowing) -> None:
    """Wait (deadline 10 s) until every shadow copy has been judged."""
    async with asyncio.timeout(10):
        await shadow.wait_idle()
    assert shadow.in_flight == 0


async def test_nothing_is_shadowed_when_the_canary_takes_no_traffic():
    shadow = shadowing()
    shadow.offer(request(), "/api/v1/strategies", ok(), weight=0)
    assert shadow.in_flight == 0
    assert sum(shadow.state()["comparisons"].values()) == 0


@pytest.mark.parametrize(
    ("method", "path", "answer"),
    [
        ("POST", "/api/v1/datasets", ok(201)),
        ("POST", "/api/v1/optimizations", ok(202)),
        ("DELETE", "/api/v1/optimizations/x", ok(202)),
        ("GET", "/api/v1/strategies", ok(503)),  # stable's own failure is no reference
        ("GET", "/api/v1/strategies", Answer(Outcome.failed(Failure.TIMEOUT), 1.0)),
    ],
)
async def test_nothing_is_shadowed_when_the_request_is_unsafe_or_stable_gave_no_reference(method, path, answer):
    shadow = shadowing()
    shadow.offer(request(method, path.encode()), path, answer, weight=10)
    assert shadow.in_flight == 0


async def test_nothing_is_shadowed_when_the_fraction_is_zero():
    shadow = shadowing(fraction=0.0)
    for _ in range(50):
        shadow.offer(request(), "/api/v1/strategies", ok(), weight=10)
    assert shadow.in_flight == 0


async def test_roughly_the_fraction_is_sampled_when_partial():
    shadow = shadowing(fraction=0.25, max_in_flight=10_000)
    for _ in range(800):
        shadow.offer(request(), "/api/v1/strategies", ok(), weight=10)
    sampled = shadow.in_flight
    await settle(shadow)
    assert 140 < sampled < 260  # binomial(800, 0.25): about 5 standard deviations either side
    assert shadow.state()["comparisons"]["error"] == sampled


async def test_sampled_requests_beyond_the_limit_are_skipped_not_queued_when_the_canary_is_slow():
    shadow = shadowing(max_in_flight=3)
    for _ in range(10):
        shadow.offer(request(), "/api/v1/strategies", ok(), weight=10)
    assert shadow.in_flight == 3
    assert shadow.state()["comparisons"]["skipped"] == 7
    await settle(shadow)
    state = shadow.state()
    assert state["comparisons"] == {"match": 0, "mismatch": 0, "error": 3, "skipped": 7}
    assert state["errors"] == {"canary transport": 3}
    assert state["recent_errors"][-1]["path"] == "/api/v1/strategies"


async def test_copies_carry_the_shadow_header_and_are_replayable_when_sent():
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        canary = Upstream(Track.CANARY, f"http://127.0.0.1:{port}", timeout_seconds=2.0)
        shadow = shadowing(canary=canary)
        original = request()
        shadow.offer(original, "/api/v1/strategies", ok(), weight=5)
        await settle(shadow)
        await canary.aclose()
    assert SHADOW_HEADER + b": 1" in seen[0]
    assert (SHADOW_HEADER, b"1") not in original.headers  # the client's request is left alone
    assert shadow.state()["comparisons"]["match"] == 1


async def test_running_copies_are_cancelled_when_the_router_shuts_down():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        canary = Upstream(Track.CANARY, f"http://127.0.0.1:{port}", timeout_seconds=20.0)
        shadow = shadowing(canary=canary)
        shadow.offer(request(), "/api/v1/strategies", ok(), weight=5)
        await asyncio.sleep(0.05)
        assert shadow.in_flight == 1
        async with asyncio.timeout(5):
            await shadow.aclose()
        assert shadow.in_flight == 0
        await canary.aclose()


def test_field_labels_are_bounded_when_a_canary_invents_names():
    registry = CollectorRegistry()
    metrics = ShadowMetrics(registry)
    for index in range(MAX_FIELD_LABELS + 50):
        metrics.mismatched((f"metrics.m{index}",))
    labels = {s.labels["field"] for m in registry.collect() for s in m.samples if s.name.endswith("mismatches_total")}
    assert len(labels) == MAX_FIELD_LABELS + 1
    assert "other" in labels
    assert registry.get_sample_value("backtest_router_shadow_mismatches_total", {"field": "other"}) == 50


def test_every_outcome_series_exists_from_the_start():
    registry = CollectorRegistry()
    ShadowMetrics(registry)
    for outcome in ("match", "mismatch", "error", "skipped"):
        assert registry.get_sample_value("backtest_router_shadow_comparisons_total", {"outcome": outcome}) == 0


def test_log_lines_are_throttled_and_count_what_was_held_back():
    now = [0.0]
    throttle = Throttle(1.0, clock=lambda: now[0])
    assert throttle.admit("mismatch") == 0
    assert throttle.admit("mismatch") is None
    assert throttle.admit("error") == 0  # kinds are throttled separately
    now[0] = 0.5
    assert throttle.admit("mismatch") is None
    now[0] = 1.2
    assert throttle.admit("mismatch") == 2


def test_settings_out_of_range_are_refused_when_constructed():
    with pytest.raises(ValueError, match="fraction"):
        shadowing(fraction=1.5)
    with pytest.raises(ValueError, match="in-flight"):
        shadowing(max_in_flight=0)


def test_bodies_are_inflated_when_the_answer_is_gzip_or_deflate_encoded():
    body = b'{"metrics": {"total_return": 0.1}}'
    assert content([(b"Content-Encoding", b"gzip")], gzip.compress(body)) == (body, "gzip")
    assert content([(b"content-encoding", b"deflate")], zlib.compress(body)) == (body, "deflate")
    assert content([], body) == (body, "identity")


def test_bodies_cannot_be_compared_when_the_encoding_is_unknown_corrupt_or_too_large():
    assert content([(b"content-encoding", b"br")], b"\x00\x01") == (None, "br")
    assert content([(b"content-encoding", b"gzip")], b"not gzip") == (None, "gzip")
    bomb = gzip.compress(b"0" * (MAX_DECODED_BYTES + 1))
    assert content([(b"content-encoding", b"gzip")], bomb)[0] is None


async def test_copies_ask_for_an_uncompressed_answer_when_the_client_accepts_gzip():
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        canary = Upstream(Track.CANARY, f"http://127.0.0.1:{port}", timeout_seconds=2.0)
        shadow = shadowing(canary=canary)
        gzipped = ForwardedRequest("GET", b"/api/v1/backtests/abc", [(b"accept-encoding", b"gzip")], b"")
        stable = Answer(Outcome.answered(200), 0.001, [(b"content-encoding", b"gzip")], gzip.compress(b"{}"))
        shadow.offer(gzipped, "/api/v1/backtests/abc", stable, weight=5)
        await settle(shadow)
        await canary.aclose()
    assert b"accept-encoding" not in seen[0].lower()
    assert shadow.state()["comparisons"]["match"] == 1  # stable's gzip answer was inflated and compared
