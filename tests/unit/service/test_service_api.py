"""The HTTP API, endpoint by endpoint, in-process against a real SQLite file (and PostgreSQL where marked)."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from backtest_engine.data import synthetic_ohlcv
from backtest_engine.service.jobrows import JobBounds
from tests.unit.service.conftest import AUTH, KEY, SYNTHETIC, ClientFactory, backtest_body

PROBLEM_KEYS = {"type", "title", "status", "detail"}


def csv_bytes(bars: int = 300, seed: int = 1) -> bytes:
    return synthetic_ohlcv(bars, seed=seed).reset_index().to_csv(index=False).encode()


def assert_problem(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status
    assert "Traceback" not in response.text
    if field is not None:
        assert field in [error["field"] for error in body["errors"]], body
    return body


# -- operations ------------------------------------------------------------------------------------------------


def test_health_answers_without_a_key_when_auth_is_enabled(client: TestClient):
    body = client.get("/api/v1/health").json()
    assert body["status"] == "ok"
    assert body["auth"] == "enabled"
    assert body["faults"] == {"enabled": False, "error_rate": 0.0, "latency_seconds": 0.0, "result_bias": 0.0}


def test_ready_reports_the_database_when_it_is_reachable(client: TestClient):
    assert client.get("/api/v1/ready").json() == {"status": "ready", "database": "sqlite"}


def test_ready_is_503_without_internals_when_the_database_is_unreachable(make_client: ClientFactory, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    client = make_client(DATABASE_URL=f"sqlite:///{tmp_path}/a-file/results.db")
    body = assert_problem(client.get("/api/v1/ready"), 503)
    assert "a-file" not in body["detail"]
    assert_problem(client.get("/api/v1/backtests", headers=AUTH), 503)


def test_sqlite_folder_is_created_when_it_does_not_exist_yet(make_client: ClientFactory, tmp_path):
    client = make_client(DATABASE_URL=f"sqlite:///{tmp_path}/fresh-volume/deeper/results.db")
    assert client.get("/api/v1/ready").status_code == 200
    assert (tmp_path / "fresh-volume" / "deeper" / "results.db").exists()


def test_metrics_carry_version_and_track_labels_when_set(make_client: ClientFactory):
    client = make_client(version="v42", track="canary")
    client.get("/api/v1/strategies", headers=AUTH)
    text = client.get("/metrics").text
    line = next(row for row in text.splitlines() if row.startswith("backtest_engine_http_requests_total{"))
    assert 'version="v42"' in line and 'track="canary"' in line
    assert 'route="/api/v1/strategies"' in text
    for series in (
        "backtest_engine_http_request_duration_seconds_bucket",
        "backtest_engine_cache_requests_total",
        "backtest_engine_jobs",
    ):
        assert series in text


def test_openapi_document_lists_every_endpoint_when_fetched(client: TestClient):
    paths = client.get("/openapi.json", headers=AUTH).json()["paths"]
    for path in (
        "/api/v1/health",
        "/api/v1/ready",
        "/api/v1/strategies",
        "/api/v1/datasets",
        "/api/v1/backtests",
        "/api/v1/backtests/{backtest_id}",
        "/api/v1/backtests/{backtest_id}/export",
        "/api/v1/optimizations",
        "/api/v1/optimizations/{job_id}",
    ):
        assert path in paths


# -- auth and rate limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_api_refuses_with_401_when_the_key_is_missing_or_wrong(client: TestClient, headers):
    response = client.get("/api/v1/strategies", headers=headers)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == "ApiKey"


def test_every_api_route_requires_a_key_when_auth_is_enabled(client: TestClient):
    for method, path in [
        ("GET", "/api/v1/strategies"),
        ("GET", "/api/v1/datasets"),
        ("POST", "/api/v1/datasets"),
        ("GET", "/api/v1/backtests"),
        ("POST", "/api/v1/backtests"),
        ("GET", "/api/v1/backtests/abc"),
        ("GET", "/api/v1/backtests/abc/export"),
        ("POST", "/api/v1/optimizations"),
        ("GET", "/api/v1/optimizations/abc"),
        ("DELETE", "/api/v1/optimizations/abc"),
    ]:
        assert client.request(method, path).status_code == 401, (method, path)


def test_api_description_requires_a_key_when_auth_is_enabled(client: TestClient):
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/openapi.json", headers=AUTH).status_code == 200
    assert client.get("/docs").status_code == 404  # no page describing the API to callers without a key


def test_second_key_is_accepted_when_several_are_configured(client: TestClient):
    assert client.get("/api/v1/strategies", headers={"X-API-Key": "test-key-2"}).status_code == 200


def test_api_answers_429_with_retry_after_when_a_key_exceeds_its_rate(make_client: ClientFactory):
    client = make_client(rate_limit=3)
    codes = [client.get("/api/v1/strategies", headers=AUTH).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = client.get("/api/v1/strategies", headers=AUTH)
    assert_problem(refused, 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert client.get("/api/v1/strategies", headers={"X-API-Key": "test-key-2"}).status_code == 200  # per key
    assert client.get("/api/v1/health").status_code == 200  # never limited


def test_api_refuses_every_api_request_but_probes_when_no_key_is_configured(make_client: ClientFactory):
    client = make_client(api_keys="")
    refused = client.get("/api/v1/strategies", headers=AUTH)
    assert_problem(refused, 401)
    assert "ENGINE_AUTH=disabled" in refused.json()["detail"]
    assert client.get("/openapi.json", headers=AUTH).status_code == 401
    assert client.get("/api/v1/health").json()["auth"] == "enabled"
    assert client.get("/api/v1/ready").status_code == 200 and client.get("/metrics").status_code == 200


def test_api_accepts_any_caller_only_when_auth_is_explicitly_disabled(make_client: ClientFactory):
    client = make_client(api_keys="", auth="disabled")
    assert client.get("/api/v1/strategies").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/api/v1/health").json()["auth"] == "disabled"


# -- strategies and datasets -----------------------------------------------------------------------------------


def test_strategies_list_parameter_schemas_when_requested(client: TestClient):
    strategies = {s["name"]: s for s in client.get("/api/v1/strategies", headers=AUTH).json()}
    assert "sma_crossover" in strategies
    schema = strategies["sma_crossover"]["parameters"]
    assert {"fast", "slow"} <= set(schema["properties"])
    assert strategies["sma_crossover"]["defaults"]["fast"] == 10


def test_dataset_upload_is_stored_once_when_the_same_csv_is_sent_twice(client: TestClient):
    first = client.post(
        "/api/v1/datasets", headers=AUTH, files={"file": ("a.csv", csv_bytes())}, data={"symbol": "AAA"}
    )
    assert first.status_code == 201, first.text
    again = client.post(
        "/api/v1/datasets", headers=AUTH, files={"file": ("b.csv", csv_bytes())}, data={"symbol": "AAA"}
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    info = first.json()
    assert info["bars"] == 300 and info["timeframe"] == "1d" and info["symbol"] == "AAA"
    listing = client.get("/api/v1/datasets", headers=AUTH, params={"symbol": "AAA"}).json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == info["id"]
    assert client.get(f"/api/v1/datasets/{info['id']}", headers=AUTH).json()["name"] == "a.csv"


def test_dataset_upload_accepts_parquet_when_the_file_is_parquet(client: TestClient):
    buffer = io.BytesIO()
    synthetic_ohlcv(100, seed=2).reset_index().to_parquet(buffer, index=False)
    response = client.post(
        "/api/v1/datasets", headers=AUTH, files={"file": ("x.parquet", buffer.getvalue())}, data={"symbol": "PQ"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["bars"] == 100


def test_dataset_upload_is_422_naming_the_row_when_the_csv_is_invalid(client: TestClient):
    frame = synthetic_ohlcv(20, seed=1).reset_index()
    frame.loc[7, "high"] = frame.loc[7, "low"] / 2
    response = client.post(
        "/api/v1/datasets", headers=AUTH, files={"file": ("bad.csv", frame.to_csv(index=False))}, data={"symbol": "B"}
    )
    body = assert_problem(response, 422, field="file")
    assert "row 7" in body["detail"]


@pytest.mark.parametrize("content", [b"", b"not,a,csv\n1,2", b"PAR1garbage"])
def test_dataset_upload_is_422_when_the_file_is_unreadable(client: TestClient, content: bytes):
    response = client.post("/api/v1/datasets", headers=AUTH, files={"file": ("f.csv", content)}, data={"symbol": "B"})
    assert_problem(response, 422, field="file")


def test_dataset_upload_is_422_naming_symbol_when_it_is_missing(client: TestClient):
    response = client.post("/api/v1/datasets", headers=AUTH, files={"file": ("a.csv", csv_bytes())})
    assert_problem(response, 422, field="symbol")


def test_dataset_upload_is_413_when_larger_than_the_limit(make_client: ClientFactory):
    client = make_client(max_upload_bytes=2048)
    response = client.post(
        "/api/v1/datasets", headers=AUTH, files={"file": ("a.csv", csv_bytes(300))}, data={"symbol": "A"}
    )
    assert_problem(response, 413)


def test_json_body_is_413_when_larger_than_a_megabyte(client: TestClient):
    body = backtest_body(params={"fast": 5, "slow": 20, "padding": "x" * (1024 * 1024)})
    assert_problem(client.post("/api/v1/backtests", headers=AUTH, json=body), 413)


def test_unknown_dataset_is_404_when_fetched_or_backtested(client: TestClient):
    assert_problem(client.get("/api/v1/datasets/abcdef", headers=AUTH), 404)
    body = backtest_body(synthetic=None, dataset_id="abcdef")
    assert_problem(client.post("/api/v1/backtests", headers=AUTH, json=body), 404)


# -- backtests -------------------------------------------------------------------------------------------------


def test_backtest_runs_then_hits_the_cache_when_repeated(client: TestClient):
    first = client.post("/api/v1/backtests", headers=AUTH, json=backtest_body())
    assert first.status_code == 201, first.text
    result = first.json()
    assert result["cached"] is False
    assert result["params"] == {"fast": 5, "slow": 20, "allow_short": True}
    assert len(result["equity"]) == SYNTHETIC["bars"]
    assert "sharpe_ratio" in result["metrics"] and len(result["metrics"]) > 50
    again = client.post("/api/v1/backtests", headers=AUTH, json=backtest_body(params={"fast": "5", "slow": 20}))
    assert again.status_code == 200
    assert again.json()["cached"] is True and again.json()["id"] == result["id"]
    metrics = client.get("/metrics").text
    assert 'backtest_engine_cache_requests_total{result="hit",track="",version="0.1.0"} 1.0' in metrics
    assert 'outcome="cached",strategy="sma_crossover"' in metrics


def test_backtest_is_not_shared_when_execution_settings_differ(client: TestClient):
    first = client.post("/api/v1/backtests", headers=AUTH, json=backtest_body()).json()
    other = client.post("/api/v1/backtests", headers=AUTH, json=backtest_body(execution={"commission": 0.001}))
    assert other.status_code == 201
    assert other.json()["id"] != first["id"]


def test_backtest_runs_on_the_requested_slice_when_given_a_dataset_and_dates(client: TestClient):
    dataset = client.post(
        "/api/v1/datasets", headers=AUTH, files={"file": ("a.csv", csv_bytes())}, data={"symbol": "AAA"}
    )
    body = backtest_body(synthetic=None, dataset_id=dataset.json()["id"], start="2015-03-01", end="2015-09-30")
    response = client.post("/api/v1/backtests", headers=AUTH, json=body)
    assert response.status_code == 201, response.text
    ref = response.json()["dataset"]
    assert ref["symbol"] == "AAA" and ref["start"] >= "2015-03-01" and ref["end"] <= "2015-09-30T23:59:59"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (backtest_body(strategy="no_such_strategy"), "strategy"),
        (backtest_body(params={"fast": 50, "slow": 20}), "params.fast"),
        (backtest_body(params={"fast": 0}), "params.fast"),
        (backtest_body(params={"nope": 1}), "params.nope"),
        (backtest_body(execution={"commission": 0.5}), "execution.commission"),
        (backtest_body(execution={"cash": -1}), "execution.cash"),
        (backtest_body(synthetic={"bars": 1}), "synthetic.bars"),
        (backtest_body(start="2030-01-01"), "start"),
        (backtest_body(start="0001-01-01"), "start"),
        (backtest_body(unknown=1), "unknown"),
        ({"params": {}}, "strategy"),
    ],
)
def test_backtest_is_422_naming_the_field_when_input_is_bad(client: TestClient, body, field):
    assert_problem(client.post("/api/v1/backtests", headers=AUTH, json=body), 422, field=field)


def test_backtest_is_422_when_the_body_is_not_json(client: TestClient):
    response = client.post("/api/v1/backtests", headers={**AUTH, "Content-Type": "application/json"}, content=b"{nope")
    assert_problem(response, 422)


def test_backtest_detail_returns_metrics_trades_and_equity_when_it_exists(client: TestClient):
    created = client.post("/api/v1/backtests", headers=AUTH, json=backtest_body()).json()
    fetched = client.get(f"/api/v1/backtests/{created['id']}", headers=AUTH).json()
    assert fetched["metrics"] == created["metrics"]
    assert fetched["trades"] == created["trades"]
    assert fetched["equity"] == created["equity"]
    assert_problem(client.get("/api/v1/backtests/00000000-0000-0000-0000-000000000000", headers=AUTH), 404)


def test_backtest_list_filters_and_paginates_when_asked(client: TestClient):
    ids = {}
    for fast in (3, 5, 8, 13):
        ids[fast] = client.post(
            "/api/v1/backtests", headers=AUTH, json=backtest_body(params={"fast": fast, "slow": 30})
        ).json()
    client.post("/api/v1/backtests", headers=AUTH, json=backtest_body(strategy="buy_and_hold", params={}))
    listing = client.get("/api/v1/backtests", headers=AUTH, params={"strategy": "sma_crossover", "limit": 3}).json()
    assert listing["total"] == 4 and len(listing["items"]) == 3
    page2 = client.get(
        "/api/v1/backtests", headers=AUTH, params={"strategy": "sma_crossover", "limit": 3, "offset": 3}
    ).json()
    assert len(page2["items"]) == 1
    assert {i["id"] for i in listing["items"] + page2["items"]} == {r["id"] for r in ids.values()}
    sharpes = sorted(r["metrics"]["sharpe_ratio"] for r in ids.values())
    threshold = sharpes[1]
    filtered = client.get(
        "/api/v1/backtests",
        headers=AUTH,
        params={"strategy": "sma_crossover", "metric": f"sharpe_ratio>={threshold}", "sort": "-sharpe_ratio"},
    ).json()
    values = [i["metrics"]["sharpe_ratio"] for i in filtered["items"]]
    assert values == sorted(sharpes[1:], reverse=True)
    by_symbol = client.get("/api/v1/backtests", headers=AUTH, params={"symbol": "NOPE"}).json()
    assert by_symbol["total"] == 0
    dated = client.get("/api/v1/backtests", headers=AUTH, params={"start": "2015-01-01", "end": "2100-01-01"}).json()
    assert dated["total"] == 5


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"metric": "sharpe_ratio>>1"}, "metric"),
        ({"metric": "no_metric>1"}, "metric"),
        ({"sort": "nonsense"}, "sort"),
        ({"limit": 0}, "limit"),
        ({"limit": 1000}, "limit"),
        ({"offset": -1}, "offset"),
        ({"start": "yesterday"}, "start"),
    ],
)
def test_backtest_list_is_422_naming_the_field_when_a_filter_is_bad(client: TestClient, params, field):
    assert_problem(client.get("/api/v1/backtests", headers=AUTH, params=params), 422, field=field)


def test_exports_render_pine_csv_and_html_when_the_backtest_exists(client: TestClient):
    created = client.post(
        "/api/v1/backtests", headers=AUTH, json=backtest_body(execution={"commission": 0.001, "stop_loss": 0.05})
    ).json()
    url = f"/api/v1/backtests/{created['id']}/export"
    pine = client.get(url, headers=AUTH, params={"format": "pine"})
    assert pine.status_code == 200
    assert pine.text.startswith("//@version=5")
    assert 'fast = input.int(5, "fast")' in pine.text and "ta.crossover" in pine.text
    assert "commission_value=0.1" in pine.text and "strategy.exit" in pine.text
    trades = client.get(url, headers=AUTH, params={"format": "csv"})
    assert trades.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(trades.text))
    assert len(frame) == len(created["trades"]) and "pnl" in frame.columns
    report = client.get(url, headers=AUTH, params={"format": "html"})
    assert report.headers["content-type"].startswith("text/html")
    assert report.text.count("<svg") == 2 and "<script" not in report.text and "sharpe_ratio" in report.text


def test_export_is_422_when_the_format_is_unknown(client: TestClient):
    created = client.post("/api/v1/backtests", headers=AUTH, json=backtest_body()).json()
    response = client.get(f"/api/v1/backtests/{created['id']}/export", headers=AUTH, params={"format": "pdf"})
    assert_problem(response, 422, field="format")
    assert_problem(client.get("/api/v1/backtests/nope/export", headers=AUTH), 404)


# -- optimizations ---------------------------------------------------------------------------------------------


def wait_for_state(client: TestClient, job_id: str, states: set[str], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/api/v1/optimizations/{job_id}", headers=AUTH).json()
        if status["state"] in states or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_optimization_reports_progress_and_best_results_when_it_finishes(client: TestClient):
    body = {"strategy": "sma_crossover", "space": {"fast": [3, 5, 8], "slow": [20, 30]}, "synthetic": SYNTHETIC}
    started = client.post("/api/v1/optimizations", headers=AUTH, json=body)
    assert started.status_code == 202, started.text
    assert started.json()["progress"]["total"] == 6
    status = wait_for_state(client, started.json()["id"], {"succeeded", "failed"})
    assert status["state"] == "succeeded", status
    assert status["progress"] == {"done": 6, "total": 6, "fraction": 1.0}
    sharpes = [row["metrics"]["sharpe_ratio"] for row in status["best"]]
    assert len(sharpes) == 6 and sharpes == sorted(sharpes, reverse=True)
    assert_problem(client.delete(f"/api/v1/optimizations/{status['id']}", headers=AUTH), 409)
    assert client.app.state.jobs.held == 0  # a finished job leaves memory; its row keeps the result
    assert 'backtest_engine_jobs{state="running",track="",version="0.1.0"} 0.0' in client.get("/metrics").text


def test_optimization_stops_with_partial_results_when_cancelled(client: TestClient):
    body = {
        "strategy": "sma_crossover",
        "space": {"fast": list(range(2, 60)), "slow": list(range(61, 161, 5))},
        "synthetic": {"bars": 3000, "seed": 1},
    }
    started = client.post("/api/v1/optimizations", headers=AUTH, json=body).json()
    wait_for_state(client, started["id"], {"running"})
    cancelled = client.delete(f"/api/v1/optimizations/{started['id']}", headers=AUTH)
    assert cancelled.status_code == 202
    status = wait_for_state(client, started["id"], {"cancelled", "succeeded", "failed"})
    assert status["state"] == "cancelled"
    assert status["progress"]["done"] < status["progress"]["total"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"strategy": "sma_crossover", "space": {"fast": []}, "synthetic": SYNTHETIC}, "space.fast"),
        ({"strategy": "sma_crossover", "space": {"bogus": [1]}, "synthetic": SYNTHETIC}, "space.bogus"),
        ({"strategy": "sma_crossover", "space": {"fast": [1]}, "metric": "nope", "synthetic": SYNTHETIC}, "metric"),
        ({"strategy": "nope", "space": {"fast": [1]}, "synthetic": SYNTHETIC}, "strategy"),
        ({"strategy": "sma_crossover", "space": {"fast": [1]}}, "body"),
        ({"strategy": "sma_crossover", "space": {"fast": [1]}, "method": "anneal", "synthetic": SYNTHETIC}, "method"),
    ],
)
def test_optimization_is_422_naming_the_field_when_input_is_bad(client: TestClient, body, field):
    assert_problem(client.post("/api/v1/optimizations", headers=AUTH, json=body), 422, field=field)


def test_optimization_uses_worker_processes_when_configured(make_client: ClientFactory):
    client = make_client(workers=2)
    body = {"strategy": "ema_crossover", "space": {"fast": [3, 5, 8, 13], "slow": [20, 30, 40]}, "synthetic": SYNTHETIC}
    started = client.post("/api/v1/optimizations", headers=AUTH, json=body).json()
    status = wait_for_state(client, started["id"], {"succeeded", "failed"})
    assert status["state"] == "succeeded", status
    assert status["progress"]["done"] == 12 and len(status["best"]) == 10


def test_unknown_optimization_is_404_when_fetched_or_cancelled(client: TestClient):
    assert_problem(client.get("/api/v1/optimizations/nope", headers=AUTH), 404)
    assert_problem(client.delete("/api/v1/optimizations/nope", headers=AUTH), 404)


# -- errors ----------------------------------------------------------------------------------------------------


def test_unknown_route_is_a_problem_404_when_requested(client: TestClient):
    assert_problem(client.get("/api/v1/nothing-here", headers=AUTH), 404)
    assert_problem(client.put("/api/v1/strategies", headers=AUTH), 405)


def test_backtest_cache_and_listing_work_when_the_store_is_each_database(make_client: ClientFactory, database_url: str):
    client = make_client(DATABASE_URL=database_url)
    first = client.post("/api/v1/backtests", headers=AUTH, json=backtest_body())
    again = client.post("/api/v1/backtests", headers=AUTH, json=backtest_body())
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    listing = client.get("/api/v1/backtests", headers=AUTH, params={"metric": "num_trades>=0"}).json()
    assert listing["total"] == 1
    assert client.get("/api/v1/ready").json()["database"] in ("sqlite", "postgresql")


LONG_SWEEP = {
    "strategy": "sma_crossover",
    "space": {"fast": list(range(2, 60)), "slow": list(range(61, 161, 5))},
    "synthetic": {"bars": 3000, "seed": 1},
}


def test_optimization_is_cancelled_when_another_replica_receives_the_delete(make_client: ClientFactory):
    holder, other = make_client(), make_client()  # two replicas on one database
    started = holder.post("/api/v1/optimizations", headers=AUTH, json=LONG_SWEEP).json()
    wait_for_state(holder, started["id"], {"running"})
    assert other.get(f"/api/v1/optimizations/{started['id']}", headers=AUTH).json()["state"] == "running"
    assert other.delete(f"/api/v1/optimizations/{started['id']}", headers=AUTH).status_code == 202
    final = wait_for_state(holder, started["id"], {"cancelled", "succeeded", "failed"})
    assert final["state"] == "cancelled"
    assert wait_for_state(other, started["id"], {"cancelled"}, timeout=5)["state"] == "cancelled"


def _orphan(client: TestClient, *, attempts: int = 0, owner: str = "gone-host:1") -> str:
    """A job row left `running` by a process that died five minutes ago (no heartbeat since)."""
    store = client.app.state.store
    stale = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    request = {"strategy": "sma_crossover", "space": {"fast": [3, 5], "slow": [20]}, "synthetic": SYNTHETIC}
    tenant = _tenant_of(client)
    store.admit_job(
        {
            "id": "orphan", "tenant": tenant, "state": "running", "strategy": "sma_crossover", "request": request,
            "done": 1, "total": 2, "best": [], "error": None, "created_at": stale, "owner": owner,
            "attempts": attempts,
        },
        JobBounds(100, 100),
    )  # fmt: skip
    with store.engine.begin() as connection:
        connection.execute(store.optimizations.update().values(updated_at=stale))
    return "orphan"


def _tenant_of(client: TestClient) -> str:
    return client.app.state.access.keyring.authenticate(KEY).tenant


def test_optimization_is_requeued_and_finished_when_its_process_stopped_heartbeating(client: TestClient):
    job_id = _orphan(client)
    assert client.get(f"/api/v1/optimizations/{job_id}", headers=AUTH).json()["state"] == "running"
    client.app.state.jobs.recover()  # what every replica's heartbeat does
    status = wait_for_state(client, job_id, {"succeeded", "failed"})
    assert status["state"] == "succeeded" and status["progress"]["done"] == 2, status


def test_optimization_is_failed_not_left_running_when_its_runner_died_too_often(client: TestClient):
    job_id = _orphan(client, attempts=3)
    client.app.state.jobs.recover()
    status = client.get(f"/api/v1/optimizations/{job_id}", headers=AUTH).json()
    assert status["state"] == "failed" and status["error"].startswith("lost"), status
    assert_problem(client.delete(f"/api/v1/optimizations/{job_id}", headers=AUTH), 409)


def test_optimization_of_this_process_previous_incarnation_is_requeued_when_it_starts(make_client: ClientFactory):
    first = make_client()
    owner = first.app.state.jobs.owner
    job_id = _orphan(first, owner=owner)
    with first.app.state.store.engine.begin() as connection:  # heart-beat a second ago: not stale yet
        connection.execute(
            first.app.state.store.optimizations.update().values(updated_at=datetime.now(UTC).replace(tzinfo=None))
        )
    second = make_client()  # the same container restarted: same host name and pid
    status = wait_for_state(second, job_id, {"succeeded", "failed"})
    assert status["state"] == "succeeded", status
