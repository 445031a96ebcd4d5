"""The router as the operator starts it, as a real process (issue 13): settings derived from the spec,
a body limit that lets the engine's uploads through, and RFC 7807 problems for its own errors."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from backtest_engine.limits import DEFAULT_MAX_UPLOAD_BYTES
from backtest_operator.api import BacktestServiceSpec
from backtest_operator.traffic import router_settings
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


def test_router_serves_with_the_operators_flags_when_the_latency_objective_is_5s(stable, processes, tmp_path):
    # The review's defect: latencyObjective 5s (accepted by the CRD) made the router exit 2 on start,
    # its canary timeout being fixed at 5 s.
    spec = BacktestServiceSpec.model_validate({"image": "engine:1", "analysis": {"latencyObjective": "5s"}})
    weight = tmp_path / "weight"
    weight.write_text("0")
    router = start_router(stable.url, stable.url, weight, *router_settings(spec))
    processes.append(router)
    state = httpx.get(router.url + "/router/state").json()
    assert state["latency_objective_seconds"] == 5.0
    assert state["upstreams"]["canary"]["timeout_seconds"] == 12.5
    assert httpx.get(router.url + "/anything").status_code == 200


def test_upload_the_engine_accepts_passes_the_router_when_over_the_old_10_mib_limit(stable, processes, tmp_path):
    weight = tmp_path / "weight"
    weight.write_text("0")
    router = start_router(stable.url, stable.url, weight)
    processes.append(router)
    body = b"x" * (20 * 1024 * 1024)
    answer = httpx.post(router.url + "/echo", content=body, timeout=30)
    assert answer.status_code == 200, answer.text
    too_big = httpx.post(router.url + "/echo", content=b"x" * (DEFAULT_MAX_UPLOAD_BYTES + 1), timeout=60)
    assert too_big.status_code == 413


def test_router_errors_are_rfc7807_problems_when_it_answers_itself(stable, processes, tmp_path):
    weight = tmp_path / "weight"
    weight.write_text("100")
    nowhere = f"http://127.0.0.1:{free_port()}"
    router = start_router(stable.url, nowhere, weight, "--max-body-bytes", "10")
    processes.append(router)
    answers = {
        502: httpx.post(router.url + "/api/v1/backtests", content=b"{}"),  # canary unreachable, not replayable
        413: httpx.post(router.url + "/api/v1/backtests", content=b"x" * 11),
        404: httpx.get(router.url + "/router/nothing"),
        405: httpx.post(router.url + "/router/state"),
    }
    for status, answer in answers.items():
        assert answer.status_code == status
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["status"] == status and problem["type"] == "about:blank"
        assert problem["title"] and problem["detail"]
    assert answers[502].json()["track"] == "canary"
