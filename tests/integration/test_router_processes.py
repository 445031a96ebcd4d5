"""The router as a real process between two real upstream processes; counters checked against what
clients observed, request by request (docs/metrics-contract.md: one request, one story)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Process, free_port, start_router, start_upstream


@pytest.fixture(scope="module")
def stable() -> Iterator[Process]:
    process = start_upstream("stable")
    yield process
    process.stop()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


def scrape(router: Process) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(router.url + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def counters(router: Process) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    requests: Counter[tuple[str, str]] = Counter()
    fallbacks: Counter[str] = Counter()
    for (name, labels), value in scrape(router).items():
        label = dict(labels)
        if name == "backtest_router_requests_total" and value:
            requests[(label["track"], label["code"])] = int(value)
        elif name == "backtest_router_fallbacks_total" and value:
            fallbacks[label["reason"]] = int(value)
    return requests, fallbacks


def stats(upstream: Process) -> Counter[str]:
    return Counter(httpx.get(upstream.url + "/_stats").json()["seen"])


def test_counters_match_what_clients_saw_when_canary_fails_half_the_time(stable, processes, tmp_path):
    canary = start_upstream("canary", UPSTREAM_ERROR_RATE="0.5", UPSTREAM_SEED="7")
    processes.append(canary)
    weight = tmp_path / "weight"
    weight.write_text("50\n")
    router = start_router(stable.url, canary.url, weight)
    processes.append(router)
    stable_before = stats(stable)

    expected_requests: Counter[tuple[str, str]] = Counter()
    expected_fallbacks: Counter[str] = Counter()
    post_on_stable = 0
    calls = [("GET", "/backtests?page=1", {})] * 300
    calls += [("GET", "/status/404", {})] * 40
    calls += [("POST", "/backtests", {})] * 100
    calls += [("POST", "/backtests", {"Idempotency-Key": "k"})] * 60
    with httpx.Client(base_url=router.url) as client:
        for method, path, headers in calls:
            response = client.request(method, path, headers=headers, content=b'{"x":1}')
            track = response.headers["x-backtest-track"]
            assert response.headers["x-upstream"] == track
            reason = response.headers.get("x-backtest-fallback")
            if reason is not None:
                assert reason == "status"
                assert response.status_code == 200  # re-served by stable
                expected_requests[("canary", "503")] += 1
                expected_fallbacks[reason] += 1
            expected_requests[(track, str(response.status_code))] += 1
            if method == "GET" or "Idempotency-Key" in headers:
                assert response.status_code < 500  # idempotent requests never see the canary's 5xx
            if method == "POST" and track == "stable":
                post_on_stable += 1

    requests, fallbacks = counters(router)
    assert requests == expected_requests
    assert fallbacks == expected_fallbacks
    # both tracks got traffic, the canary failed, fallbacks happened, non-idempotent POSTs kept their 503
    assert expected_requests[("canary", "503")] > 0
    assert expected_fallbacks["status"] > 0
    assert requests[("canary", "404")] + requests[("stable", "404")] == 40
    # a POST without Idempotency-Key was never replayed on stable
    assert stats(stable)["POST"] - stable_before["POST"] == post_on_stable
    state = httpx.get(router.url + "/router/state").json()
    assert state["weight"] == 50
    assert state["counters"]["fallbacks"]["status"] == expected_fallbacks["status"]
    assert state["counters"]["errors"]["canary"] == expected_requests[("canary", "503")]


def test_fallback_reason_is_transport_when_canary_is_unreachable(stable, processes, tmp_path):
    weight = tmp_path / "weight"
    weight.write_text("100")
    router = start_router(stable.url, f"http://127.0.0.1:{free_port()}", weight)
    processes.append(router)
    with httpx.Client(base_url=router.url) as client:
        gets = [client.get("/x") for _ in range(20)]
        post = client.post("/x", content=b"{}")
    assert all(r.status_code == 200 and r.headers["x-backtest-fallback"] == "transport" for r in gets)
    assert post.status_code == 502
    assert post.headers["x-backtest-track"] == "canary"
    requests, fallbacks = counters(router)
    assert requests == Counter({("canary", "transport"): 21, ("stable", "200"): 20})
    assert fallbacks == Counter({"transport": 20})


def test_abandoned_canary_counts_as_slow_fallback_not_error_when_it_times_out(stable, processes, tmp_path):
    canary = start_upstream("canary", UPSTREAM_DELAY_SECONDS="3")
    processes.append(canary)
    weight = tmp_path / "weight"
    weight.write_text("100")
    router = start_router(stable.url, canary.url, weight, "--latency-objective", "0.25", "--canary-timeout", "0.6")
    processes.append(router)

    def call(method: str) -> httpx.Response:
        return httpx.request(method, router.url + "/slow", timeout=10)

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(call, ["GET", "GET", "GET", "POST"]))
    assert time.monotonic() - started < 2.5  # abandoned at 0.6 s, not waited for the 3 s
    gets, post = responses[:3], responses[3]
    assert all(r.status_code == 200 and r.headers["x-backtest-fallback"] == "timeout" for r in gets)
    assert post.status_code == 504
    requests, fallbacks = counters(router)
    assert requests == Counter({("canary", "timeout"): 4, ("stable", "200"): 3})
    assert fallbacks == Counter({"timeout": 3})
    samples = scrape(router)
    canary_le = (("le", "0.25"), ("track", "canary"))
    assert samples[("backtest_router_request_duration_seconds_bucket", canary_le)] == 0  # all slow
    assert samples[("backtest_router_request_duration_seconds_count", (("track", "canary"),))] == 4
    state = httpx.get(router.url + "/router/state").json()
    assert state["counters"]["errors"]["canary"] == 0


def test_new_weight_applies_and_invalid_one_is_ignored_when_weight_file_changes(stable, processes, tmp_path):
    canary = start_upstream("canary")
    processes.append(canary)
    weight = tmp_path / "weight"
    weight.write_text("0")
    router = start_router(stable.url, canary.url, weight)
    processes.append(router)
    with httpx.Client(base_url=router.url) as client:
        assert {client.get("/x").headers["x-backtest-track"] for _ in range(30)} == {"stable"}
        weight.write_text("100")
        deadline = time.monotonic() + 10  # documented: within a second on a quiet machine (file polled 5x/s)
        while client.get("/x").headers["x-backtest-track"] != "canary":
            assert time.monotonic() < deadline, "weight 100 not applied within 10s"
            time.sleep(0.02)
        assert {client.get("/x").headers["x-backtest-track"] for _ in range(30)} == {"canary"}
        rejected_before = client.get("/router/state").json()["weight_rejections"]
        weight.write_text("not a number")
        deadline = time.monotonic() + 10
        while (state := client.get("/router/state").json())["weight_rejections"] <= rejected_before:
            assert time.monotonic() < deadline, "the invalid weight was not read within 10s"
            time.sleep(0.02)
        assert state["weight"] == 100  # last good value kept
    assert scrape(router)[("backtest_router_weight", ())] == 100


def test_request_is_replayed_intact_when_canary_fails_an_idempotent_put(stable, processes, tmp_path):
    canary = start_upstream("canary", UPSTREAM_ERROR_RATE="1", UPSTREAM_ERROR_STATUS="500")
    processes.append(canary)
    weight = tmp_path / "weight"
    weight.write_text("100")
    router = start_router(stable.url, canary.url, weight, "--max-body-bytes", "1000")
    processes.append(router)
    body = b"x" * 1000
    headers = {"Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-Trace": "abc"}
    with httpx.Client(base_url=router.url) as client:
        response = client.put("/echo?a=1&b=%2F", content=body, headers=headers)
        too_large = client.put("/echo", content=body + b"y")
    assert response.status_code == 200
    assert response.headers["x-backtest-fallback"] == "status"
    echo = response.json()
    assert echo["upstream"] == "stable"
    assert echo["method"] == "PUT"
    assert echo["target"] == "/echo?a=1&b=%2F"
    assert echo["body_length"] == 1000
    sent = {name: value for name, value in echo["headers"]}
    assert sent["x-trace"] == "abc"
    assert "x-hop" not in sent
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert too_large.status_code == 413
    requests, fallbacks = counters(router)
    assert requests == Counter({("canary", "500"): 1, ("stable", "200"): 1})
    assert fallbacks == Counter({"status": 1})


def test_own_endpoints_answer_when_called_and_are_not_proxied(stable, processes, tmp_path):
    weight = tmp_path / "weight"
    weight.write_text("0")
    router = start_router(stable.url, stable.url, weight, "--latency-objective", "0.5", "--canary-timeout", "1")
    processes.append(router)
    before = stats(stable)["total"]
    with httpx.Client(base_url=router.url) as client:
        assert client.get("/router/health").json() == {"status": "ok"}
        state = client.get("/router/state").json()
        assert state["upstreams"]["canary"]["timeout_seconds"] == 1.0
        assert state["latency_objective_seconds"] == 0.5
        assert client.get("/router/nothing").status_code == 404
        assert client.post("/metrics").status_code == 405
        metrics = client.get("/metrics").text
    assert 'backtest_router_request_duration_seconds_bucket{le="0.5",track="canary"} 0.0' in metrics
    assert "backtest_router_weight 0.0" in metrics
    assert stats(stable)["total"] == before  # nothing reached an upstream
