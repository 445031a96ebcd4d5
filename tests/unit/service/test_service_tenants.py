"""Tenants: every endpoint, two keys of two tenants; nothing of one is visible to, or changeable by, the other.

Each object-bearing endpoint is called by the owner (works) and by the other tenant (404, the same answer
as for an id that never existed, so existence does not leak). Listings and dedup are per tenant; a key
grouped into the owner's tenant sees everything the owner made; an admin key sees every tenant. Runs on
SQLite and on a real PostgreSQL server.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backtest_engine.data import synthetic_ohlcv
from tests.unit.service.conftest import ClientFactory, backtest_body

OWNER = {"X-API-Key": "owner-key"}
OWNER_TEAMMATE = {"X-API-Key": "teammate-key"}
OTHER = {"X-API-Key": "other-key"}
ADMIN = {"X-API-Key": "admin-key"}
KEYS = "desk:owner-key,desk:teammate-key,other-key"


@pytest.fixture
def tenants(make_client: ClientFactory, database_url: str) -> TestClient:
    return make_client(DATABASE_URL=database_url, api_keys=KEYS, admin_keys="ops:admin-key", rate_limit=100_000)


def _csv() -> bytes:
    return synthetic_ohlcv(120, seed=9).reset_index().to_csv(index=False).encode()


def _upload(client: TestClient, headers: dict[str, str], symbol: str = "AAA") -> Any:
    files = {"file": ("bars.csv", io.BytesIO(_csv()), "text/csv")}
    return client.post("/api/v1/datasets", headers=headers, files=files, data={"symbol": symbol})


def _objects(client: TestClient) -> dict[str, str]:
    """One of everything, made by the owner: a dataset, a backtest on it, and an optimization."""
    dataset = _upload(client, OWNER)
    assert dataset.status_code == 201, dataset.text
    dataset_id = dataset.json()["id"]
    backtest = client.post(
        "/api/v1/backtests", headers=OWNER, json=backtest_body(synthetic=None, dataset_id=dataset_id)
    )
    assert backtest.status_code == 201, backtest.text
    space = {"fast": [3, 5], "slow": [20, 30]}
    job = client.post(
        "/api/v1/optimizations",
        headers=OWNER,
        json={"strategy": "sma_crossover", "space": space, "dataset_id": dataset_id},
    )
    assert job.status_code == 202, job.text
    return {"dataset": dataset_id, "backtest": backtest.json()["id"], "job": job.json()["id"]}


def _reads(ids: dict[str, str]) -> list[tuple[str, str]]:
    return [
        ("GET", f"/api/v1/datasets/{ids['dataset']}"),
        ("GET", f"/api/v1/backtests/{ids['backtest']}"),
        ("GET", f"/api/v1/backtests/{ids['backtest']}/export?format=pine"),
        ("GET", f"/api/v1/backtests/{ids['backtest']}/export?format=csv"),
        ("GET", f"/api/v1/backtests/{ids['backtest']}/export?format=html"),
        ("GET", f"/api/v1/optimizations/{ids['job']}"),
    ]


def test_another_tenant_gets_404_for_every_object_exactly_as_for_unknown_ids(tenants: TestClient):
    ids = _objects(tenants)
    for method, path in _reads(ids):
        assert tenants.request(method, path, headers=OWNER).status_code == 200, path
        assert tenants.request(method, path, headers=OWNER_TEAMMATE).status_code == 200, path
        refused = tenants.request(method, path, headers=OTHER)
        assert refused.status_code == 404, path
        fakes = {ids["dataset"]: "f" * 32, ids["backtest"]: "0" * 36, ids["job"]: "1" * 36}
        unknown_path = path
        for real, fake in fakes.items():
            unknown_path = unknown_path.replace(real, fake)
        unknown = tenants.request(method, unknown_path, headers=OTHER)
        assert unknown.status_code == 404
        detail = refused.json()["detail"]
        for real, fake in fakes.items():
            detail = detail.replace(real, fake)
        assert detail == unknown.json()["detail"]  # word for word the answer for an id that never existed


def test_another_tenant_cannot_cancel_a_job_nor_run_on_a_dataset_when_it_is_not_theirs(tenants: TestClient):
    ids = _objects(tenants)
    assert tenants.delete(f"/api/v1/optimizations/{ids['job']}", headers=OTHER).status_code == 404
    assert tenants.get(f"/api/v1/optimizations/{ids['job']}", headers=OWNER).json()["state"] != "cancelled"
    on_theirs = backtest_body(synthetic=None, dataset_id=ids["dataset"])
    assert tenants.post("/api/v1/backtests", headers=OTHER, json=on_theirs).status_code == 404
    sweep = {"strategy": "sma_crossover", "space": {"fast": [3]}, "dataset_id": ids["dataset"]}
    assert tenants.post("/api/v1/optimizations", headers=OTHER, json=sweep).status_code == 404


def test_listings_hold_only_the_callers_tenant_when_several_tenants_have_data(tenants: TestClient):
    _objects(tenants)
    for path in ("/api/v1/datasets", "/api/v1/backtests", "/api/v1/backtests?sort=-sharpe_ratio"):
        assert tenants.get(path, headers=OWNER).json()["total"] == 1, path
        assert tenants.get(path, headers=OWNER_TEAMMATE).json()["total"] == 1, path
        assert tenants.get(path, headers=OTHER).json() | {"items": []} == {
            "items": [], "total": 0, "limit": 20, "offset": 0
        }  # fmt: skip


def test_same_upload_and_same_backtest_are_deduplicated_per_tenant_only(tenants: TestClient):
    mine = _upload(tenants, OWNER)
    again = _upload(tenants, OWNER_TEAMMATE, symbol="OTHER")
    theirs = _upload(tenants, OTHER, symbol="OTHER")
    assert mine.status_code == 201 and again.status_code == 200 and again.json()["id"] == mine.json()["id"]
    assert theirs.status_code == 201 and theirs.json()["id"] != mine.json()["id"]
    assert theirs.json()["symbol"] == "OTHER"  # never the other tenant's dataset
    first = tenants.post("/api/v1/backtests", headers=OWNER, json=backtest_body())
    cached = tenants.post("/api/v1/backtests", headers=OWNER_TEAMMATE, json=backtest_body())
    separate = tenants.post("/api/v1/backtests", headers=OTHER, json=backtest_body())
    assert (first.status_code, cached.status_code, separate.status_code) == (201, 200, 201)
    assert cached.json()["id"] == first.json()["id"] and separate.json()["id"] != first.json()["id"]


def test_admin_reads_lists_and_cancels_across_tenants(tenants: TestClient):
    ids = _objects(tenants)
    _upload(tenants, OTHER, symbol="ZZZ")
    for method, path in _reads(ids):
        assert tenants.request(method, path, headers=ADMIN).status_code == 200, path
    assert tenants.get("/api/v1/datasets", headers=ADMIN).json()["total"] == 2
    assert tenants.delete(f"/api/v1/optimizations/{ids['job']}", headers=ADMIN).status_code in (202, 409)
