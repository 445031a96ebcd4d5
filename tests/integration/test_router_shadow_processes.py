"""Shadow comparison with real processes: a stable engine, a canary engine (correct, silently wrong, slow
or absent), and the router in front with `--shadow-fraction 1`. Clients must get stable's answers
untouched; the router's counters and state must say what each shadow copy found.

The weight is 1 (shadowing acts only while a canary takes traffic), so now and then a client request goes
to the canary itself: those are left out of the expected shadow counts, which are computed request by
request from the `X-Backtest-Track` header the client saw.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backtest_engine.router.comparison import ShadowKind, shadow_kind
from backtest_engine.service.faults import RETURN_METRICS
from tests.support.processes import Process, free_port, start_engine, start_router

KEY = "shadow-key"
AUTH = {"X-API-Key": KEY}
SETTLE_DEADLINE_SECONDS = 60.0


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One results store shared by both tracks, as in a cluster during a rollout."""
    return f"sqlite:///{tmp_path_factory.mktemp('shadow') / 'results.db'}"


@pytest.fixture(scope="module")
def stable(database_url: str) -> Iterator[Process]:
    process = start_engine(database_url, ENGINE_API_KEYS=KEY, ENGINE_VERSION="stable-v1", ENGINE_TRACK="stable")
    yield process
    process.stop()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


def canary_engine(database_url: str, processes: list[Process], **env: str) -> Process:
    process = start_engine(database_url, ENGINE_API_KEYS=KEY, ENGINE_VERSION="canary-v2", ENGINE_TRACK="canary", **env)
    processes.append(process)
    return process


def router(stable: Process, canary_url: str, processes: list[Process], tmp_path: Path, *extra: str) -> Process:
    weight = tmp_path / "weight"
    weight.write_text("1\n")
    args = ["--shadow-fraction", "1", "--log-level", "info", *extra]
    process = start_router(stable.url, canary_url, weight, *args, log=tmp_path / "router.log")
    processes.append(process)
    return process


def backtest(seed: int, fast: int = 5) -> dict[str, Any]:
    return {
        "strategy": "sma_crossover",
        "params": {"fast": fast, "slow": 20},
        "synthetic": {"symbol": "SHD", "bars": 400, "seed": seed},
    }


class Clients:
    """Sends client traffic through the router and remembers what each request was and who served it."""

    def __init__(self, router: Process) -> None:
        self.client = httpx.Client(base_url=router.url, headers=AUTH, timeout=30)
        self.seen: list[tuple[str, str, httpx.Response]] = []

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, path, **kwargs)
        self.seen.append((method, path, response))
        return response

    def shadowed(self) -> list[tuple[str, str, httpx.Response]]:
        """Requests stable served on its own (no canary involved) that are safe to repeat."""
        return [
            (method, path, r)
            for method, path, r in self.seen
            if r.headers["x-backtest-track"] == "stable"
            and "x-backtest-fallback" not in r.headers
            and shadow_kind(method, path) is not None
            and r.status_code < 500
        ]

    def canary_attempts(self) -> int:
        return sum(
            1
            for _, _, r in self.seen
            if r.headers["x-backtest-track"] == "canary" or "x-backtest-fallback" in r.headers
        )

    def close(self) -> None:
        self.client.close()


def mixed_traffic(clients: Clients, runs: int = 6) -> list[str]:
    """Backtest runs, reads of each result, listings and a catalogue read; returns the result ids."""
    ids = []
    for seed in range(runs):
        created = clients.call("POST", "/api/v1/backtests", json=backtest(seed))
        assert created.status_code in (200, 201), created.text
        ids.append(created.json()["id"])
    for backtest_id in ids:
        assert clients.call("GET", f"/api/v1/backtests/{backtest_id}").status_code == 200
    assert clients.call("GET", "/api/v1/backtests", params={"limit": 5}).status_code == 200
    assert clients.call("GET", "/api/v1/strategies").status_code == 200
    assert clients.call("GET", "/api/v1/backtests/does-not-exist").status_code == 404
    return ids


def state(router: Process) -> dict[str, Any]:
    shadow: dict[str, Any] = httpx.get(router.url + "/router/state").json()["shadow"]
    return shadow


def settled(router: Process, expected_total: int) -> dict[str, Any]:
    """The shadow state once `expected_total` copies were judged and none runs (deadline 60 s)."""
    deadline = time.monotonic() + SETTLE_DEADLINE_SECONDS
    while True:
        current = state(router)
        judged = sum(current["comparisons"][k] for k in ("match", "mismatch", "error"))
        if judged >= expected_total and current["in_flight"] == 0:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"shadow copies not judged after {SETTLE_DEADLINE_SECONDS}s: {current}")
        time.sleep(0.05)


def scrape(router: Process) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"outcome": {}, "field": {}, "canary_requests": {}}
    for family in text_string_to_metric_families(httpx.get(router.url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "backtest_router_shadow_comparisons_total":
                out["outcome"][sample.labels["outcome"]] = sample.value
            elif sample.name == "backtest_router_shadow_mismatches_total":
                out["field"][sample.labels["field"]] = sample.value
            elif sample.name == "backtest_router_requests_total" and sample.labels["track"] == "canary":
                out["canary_requests"][sample.labels["code"]] = sample.value
    return out


def test_every_shadowed_request_matches_when_the_canary_is_a_correct_release(stable, database_url, processes, tmp_path):
    canary = canary_engine(database_url, processes)
    proxy = router(stable, canary.url, processes, tmp_path)
    clients = Clients(proxy)
    mixed_traffic(clients)
    search = {"strategy": "sma_crossover", "space": {"fast": [3, 5], "slow": [20]}, "synthetic": {"bars": 300}}
    assert clients.call("POST", "/api/v1/optimizations", json=search).status_code == 202
    expected = len(clients.shadowed())
    clients.close()

    shadow = settled(proxy, expected)
    assert shadow["comparisons"] == {"match": expected, "mismatch": 0, "error": 0, "skipped": 0}, shadow
    assert expected >= 10  # runs, reads, listing, catalogue and a 404 were compared
    series = scrape(proxy)
    assert series["outcome"] == {"match": expected, "mismatch": 0, "error": 0, "skipped": 0}
    # shadow copies never count as canary traffic: the canary's checks see client requests only
    assert sum(series["canary_requests"].values()) == clients.canary_attempts()
    # an optimization start is job control: the canary saw it only if the router sent the client there
    canary_metrics = httpx.get(canary.url + "/metrics").text
    job_on_canary = clients.seen[-1][2].headers["x-backtest-track"] == "canary"
    assert ('method="POST",route="/api/v1/optimizations"' in canary_metrics) is job_on_canary


def test_mismatching_fields_are_counted_and_shown_while_clients_get_stable_results_when_the_canary_is_biased(
    stable, database_url, processes, tmp_path
):
    canary = canary_engine(database_url, processes, ENGINE_FAULT_RESULT_BIAS="0.02")
    proxy = router(stable, canary.url, processes, tmp_path)
    clients = Clients(proxy)
    ids = mixed_traffic(clients)
    shadowed = clients.shadowed()
    results = [r for m, p, r in shadowed if shadow_kind(m, p) is ShadowKind.BACKTEST_RESULT and r.status_code < 300]
    clients.close()

    shadow = settled(proxy, len(shadowed))
    assert shadow["comparisons"] == {
        "match": len(shadowed) - len(results),  # status-only reads and the 404 still match
        "mismatch": len(results),
        "error": 0,
        "skipped": 0,
    }
    assert len(results) >= 8
    assert "metrics.total_return" in shadow["mismatched_fields"]
    assert set(shadow["mismatched_fields"]) <= {f"metrics.{name}" for name in RETURN_METRICS}
    assert shadow["mismatched_fields"]["metrics.total_return"] == len(results)
    latest = shadow["recent_mismatches"][-1]
    assert latest["fields"] and latest["differences"]
    assert all(len(d["stable"]) <= 80 and len(d["canary"]) <= 80 for d in latest["differences"])
    series = scrape(proxy)
    assert series["outcome"]["mismatch"] == len(results)
    assert series["field"]["metrics.total_return"] == len(results)
    log = (tmp_path / "router.log").read_text()
    assert "event=shadow_mismatch" in log
    assert "metrics.total_return" in log

    # the clients' answers were stable's own, unbiased results
    with httpx.Client(base_url=stable.url, headers=AUTH) as direct:
        for method, path, response in shadowed:
            if method == "GET" and path.removeprefix("/api/v1/backtests/") in ids:
                assert response.json()["metrics"] == direct.get(path).json()["metrics"]


def test_copies_are_errors_and_never_delay_clients_when_the_canary_times_out(stable, database_url, processes, tmp_path):
    canary = canary_engine(database_url, processes, ENGINE_FAULT_LATENCY_SECONDS="8")
    proxy = router(
        stable, canary.url, processes, tmp_path, "--latency-objective", "2", "--canary-timeout", "5",
        "--shadow-max-in-flight", "2",
    )  # fmt: skip
    clients = Clients(proxy)

    def stable_served(response: httpx.Response) -> bool:
        return response.headers["x-backtest-track"] == "stable" and "x-backtest-fallback" not in response.headers

    # The client has its answer while the copy of its request still waits for the canary (which needs 8 s
    # and is abandoned at 5 s): answers never wait for copies. A request the router sent to the canary
    # itself (weight 1) starts no copy, so the first stable-served one starts the first copy.
    for _ in range(20):
        if stable_served(clients.call("GET", "/api/v1/strategies")):
            break
    during = state(proxy)
    assert during["in_flight"] == 1
    assert sum(during["comparisons"].values()) == 0

    # With the limit (2) reached and no copy finished in between, a sampled request is skipped, not queued.
    skipped_at_the_limit = False
    for _ in range(20):
        before = state(proxy)
        response = clients.call("GET", "/api/v1/strategies")
        after = state(proxy)
        finished = after["comparisons"]["error"] - before["comparisons"]["error"]
        if stable_served(response) and before["in_flight"] == 2 and finished == 0:
            assert after["comparisons"]["skipped"] == before["comparisons"]["skipped"] + 1
            assert after["in_flight"] == 2
            skipped_at_the_limit = True
            break
    assert skipped_at_the_limit, "never found the in-flight limit full in 20 requests"
    clients.close()

    served = len(clients.shadowed())
    started = served - state(proxy)["comparisons"]["skipped"]
    shadow = settled(proxy, started)
    assert shadow["comparisons"] == {"match": 0, "mismatch": 0, "error": started, "skipped": served - started}
    assert shadow["errors"] == {"canary timeout": started}
    assert all(r.status_code == 200 for _, _, r in clients.seen)


def test_copies_are_errors_and_clients_are_served_when_the_canary_is_down(stable, processes, tmp_path):
    proxy = router(stable, f"http://127.0.0.1:{free_port()}", processes, tmp_path)
    clients = Clients(proxy)
    for seed in range(3):
        clients.call("POST", "/api/v1/backtests", json=backtest(seed, fast=7), headers={"Idempotency-Key": f"k{seed}"})
    for _ in range(5):
        clients.call("GET", "/api/v1/strategies")
    expected = len(clients.shadowed())
    clients.close()
    assert all(r.status_code in (200, 201) for _, _, r in clients.seen)  # canary picks fell back to stable

    shadow = settled(proxy, expected)
    assert shadow["comparisons"] == {"match": 0, "mismatch": 0, "error": expected, "skipped": 0}
    assert shadow["errors"] == {"canary transport": expected}
    assert Counter(e["reason"] for e in shadow["recent_errors"]) == Counter({"canary transport": min(expected, 5)})
    assert "event=shadow_error" in (tmp_path / "router.log").read_text()
