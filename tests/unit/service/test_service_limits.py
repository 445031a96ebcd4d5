"""Bounded resources and shared limits: failed authentication, forwarded addresses, uploads, the job queue,
a rate limit shared by several replicas on one database, CORS and gzip."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from backtest_engine.service.app import create_app
from backtest_engine.service.clients import PROXY_TOKEN_HEADER
from backtest_engine.service.settings import ServiceSettings
from tests.unit.service.conftest import AUTH, KEY, OTHER_KEY, ClientFactory, backtest_body

WRONG = {"X-API-Key": "not-a-key"}


def test_failed_authentications_are_limited_per_client_when_keys_are_guessed(make_client: ClientFactory):
    client = make_client(auth_failure_limit=10)
    codes = [client.get("/api/v1/strategies", headers=WRONG).status_code for _ in range(50)]
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}
    refused = client.get("/api/v1/strategies", headers=WRONG)
    assert int(refused.headers["Retry-After"]) >= 1 and "failed authentications" in refused.json()["detail"]


def test_forwarded_address_counts_only_when_the_router_token_comes_with_it(make_client: ClientFactory):
    client = make_client(auth_failure_limit=2, proxy_token="router-secret")
    via_router = {**WRONG, PROXY_TOKEN_HEADER: "router-secret"}
    for address in ("10.0.0.1", "10.0.0.2"):  # two clients behind the router: separate limits
        codes = [
            client.get("/api/v1/strategies", headers={**via_router, "X-Forwarded-For": f"1.2.3.4, {address}"})
            .status_code for _ in range(3)
        ]  # fmt: skip
        assert codes == [401, 401, 429], address
    spoofed = {**WRONG, PROXY_TOKEN_HEADER: "guess", "X-Forwarded-For": "10.9.9.9"}
    codes = [client.get("/api/v1/strategies", headers=spoofed).status_code for _ in range(3)]
    assert codes == [401, 401, 429]  # counted against the real peer, whatever the client claims
    assert client.get("/api/v1/strategies", headers={**spoofed, "X-Forwarded-For": "10.8.8.8"}).status_code == 429


def _parquet(rows: int, extra_columns: int = 0, *, repeated_time: bool = False) -> bytes:
    times = pd.Series(pd.Timestamp("2000-01-01"), index=range(rows)) if repeated_time else None
    frame = pd.DataFrame(
        {
            "time": times if repeated_time else pd.date_range("2000-01-01", periods=rows, freq="min"),
            "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0,
            **{f"x{i}": 0.0 for i in range(extra_columns)},
        }
    )  # fmt: skip
    out = io.BytesIO()
    frame.to_parquet(out, index=False, compression="zstd")
    return out.getvalue()


def _upload(client: TestClient, content: bytes, name: str) -> object:
    files = {"file": (name, io.BytesIO(content), "application/octet-stream")}
    return client.post("/api/v1/datasets", headers=AUTH, files=files, data={"symbol": "BOMB"})


def test_small_parquet_expanding_to_millions_of_rows_is_refused_before_it_is_loaded(make_client: ClientFactory):
    client = make_client(max_upload_rows=100_000)
    bomb = _parquet(2_000_000, repeated_time=True)  # repeated values compress to almost nothing
    assert len(bomb) < 200_000  # a few dozen KB on the wire
    refused = _upload(client, bomb, "bars.parquet")
    assert refused.status_code == 413 and "2000000 rows" in refused.json()["detail"]
    assert _upload(client, _parquet(1_000), "bars.parquet").status_code == 201


def test_uploads_over_the_uncompressed_size_or_column_limit_are_refused(make_client: ClientFactory):
    client = make_client(max_upload_uncompressed_bytes=64 * 1024)
    assert _upload(client, _parquet(20_000), "bars.parquet").status_code == 413
    assert _upload(make_client(), _parquet(100, extra_columns=100), "bars.parquet").status_code == 413
    csv = ("time,open,high,low,close,volume\n" + "2020-01-01,1,1,1,1,1\n" * 5_000).encode()
    assert _upload(make_client(max_upload_rows=1_000), csv, "bars.csv").status_code == 413


SLOW_SWEEP = {
    "strategy": "sma_crossover",
    "space": {"fast": list(range(2, 40)), "slow": list(range(41, 141, 2))},
    "synthetic": {"bars": 3000, "seed": 1},
}


def test_job_queue_answers_429_with_retry_after_when_the_tenant_or_service_is_full(make_client: ClientFactory):
    client = make_client(max_jobs=1, max_jobs_per_tenant=2, max_queued_jobs=3)
    codes = [client.post("/api/v1/optimizations", headers=AUTH, json=SLOW_SWEEP).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    full = client.post("/api/v1/optimizations", headers=AUTH, json=SLOW_SWEEP)
    assert int(full.headers["Retry-After"]) >= 1 and "this tenant" in full.json()["detail"]
    other = {"X-API-Key": OTHER_KEY}
    assert client.post("/api/v1/optimizations", headers=other, json=SLOW_SWEEP).status_code == 202
    assert "the service" in client.post("/api/v1/optimizations", headers=other, json=SLOW_SWEEP).json()["detail"]
    assert client.app.state.jobs.held <= 3  # the refused never reached memory


@pytest.mark.parametrize("replicas", [3])
def test_rate_limit_holds_for_the_service_when_replicas_share_the_database(database_url: str, replicas: int):
    settings = ServiceSettings(api_keys=KEY, rate_limit=30, DATABASE_URL=database_url)
    clients = [TestClient(create_app(settings)) for _ in range(replicas)]
    for client in clients:
        client.__enter__()
    try:
        codes = [clients[i % replicas].get("/api/v1/strategies", headers=AUTH).status_code for i in range(90)]
    finally:
        for client in clients:
            client.__exit__(None, None, None)
    accepted = codes.count(200)
    assert 30 <= accepted <= 33, codes  # the burst of 30, plus at most a few refilled over the run (0.5/s)
    assert codes.count(429) == 90 - accepted


def test_cors_preflight_is_answered_for_configured_origins_only(make_client: ClientFactory):
    client = make_client(cors_origins="https://quant.example")
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-API-Key"}
    allowed = client.options("/api/v1/backtests", headers={"Origin": "https://quant.example", **ask})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://quant.example"
    other = client.options("/api/v1/backtests", headers={"Origin": "https://evil.example", **ask})
    assert "access-control-allow-origin" not in other.headers


def test_large_answers_are_gzipped_when_the_client_accepts_it(client: TestClient):
    body = backtest_body(synthetic={"symbol": "BIG", "bars": 20_000, "seed": 1})
    created = client.post("/api/v1/backtests", headers=AUTH, json=body)
    zipped = client.get(f"/api/v1/backtests/{created.json()['id']}", headers={**AUTH, "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < len(zipped.content) / 3  # decoded by the client
    assert np.isclose(zipped.json()["equity"][0]["equity"], 10_000.0)
    plain = client.get(f"/api/v1/backtests/{created.json()['id']}", headers={**AUTH, "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
