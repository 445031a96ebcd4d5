"""Property-based run of the whole OpenAPI document with two tenants: generated requests (valid and invalid)
never get a 5xx from either tenant, and no generated request reaches tenant A's objects with B's key.

Tenant A owns a dataset, a backtest and an optimization before the run. Every generated case is sent with
A's key and with B's; cases with path ids are sent once more by B with A's real ids substituted, and must
not succeed (404 or a 4xx from validation), whatever the generated query. The app runs in-process (ASGI)
on a throwaway SQLite file with fault injection off; examples per operation are bounded.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from backtest_engine.data import synthetic_ohlcv
from backtest_engine.service.app import create_app
from backtest_engine.service.settings import ServiceSettings

A = {"X-API-Key": "tenant-a-key"}
B = {"X-API-Key": "tenant-b-key"}
_DB = Path(tempfile.mkdtemp(prefix="schemathesis-")) / "results.db"
APP = create_app(
    ServiceSettings(
        api_keys="a:tenant-a-key,b:tenant-b-key",
        rate_limit=1_000_000,
        auth_failure_limit=1_000_000,
        DATABASE_URL=f"sqlite:///{_DB}",
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers=A)


def _seed() -> dict[str, str]:
    client = TestClient(APP)
    csv = synthetic_ohlcv(100, seed=1).reset_index().to_csv(index=False).encode()
    files = {"file": ("a.csv", io.BytesIO(csv), "text/csv")}
    dataset = client.post("/api/v1/datasets", headers=A, files=files, data={"symbol": "AAA"}).json()["id"]
    body = {"strategy": "sma_crossover", "params": {"fast": 3, "slow": 10}, "dataset_id": dataset}
    backtest = client.post("/api/v1/backtests", headers=A, json=body).json()["id"]
    sweep = {"strategy": "sma_crossover", "space": {"fast": [3]}, "dataset_id": dataset}
    job = client.post("/api/v1/optimizations", headers=A, json=sweep).json()["id"]
    return {"dataset_id": dataset, "backtest_id": backtest, "job_id": job}


OWNED_BY_A = _seed()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_answers_5xx_nor_leaks_across_tenants_when_given_generated_requests(case):
    for headers in (A, B):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])
    if case.method in ("GET", "DELETE") and case.path_parameters and set(case.path_parameters) & set(OWNED_BY_A):
        case.path_parameters = {name: OWNED_BY_A.get(name, value) for name, value in case.path_parameters.items()}
        stolen = case.call(headers=B)
        # a refusal of any kind (401: the case carries its own key; 405: an undocumented method), never a success
        assert stolen.status_code in (401, 404, 405, 422), (case.method, case.formatted_path, stolen.status_code)
