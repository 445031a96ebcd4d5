"""A whole rollout on shared storage: results written before it are read after it from the new revision.

Lab version (kwok + processes): the stable and the canary engine are real processes on one real
PostgreSQL, as the operator's pods are on the managed or external database; the operator (under the
chart's ClusterRole) creates the credentials Secret, the database objects and the NetworkPolicies while it
walks the phases. The real-node version of this test needs the engine image and a PostgreSQL image on the
node, pods instead of processes, and a StorageClass for the database's claim (see the report of issue 14).
"""

from __future__ import annotations

import io

import httpx
import pytest

from backtest_devtools.stack import API_KEY, Traffic, strategies_request
from backtest_engine.data import synthetic_ohlcv

from .lab import NAME, Lab, fast_spec, lab

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.postgres]
H = {"X-API-Key": API_KEY}


@pytest.fixture
def rollout_lab(cluster, k8s_api, namespace, crd_installed, prometheus, tmp_path):
    with lab(cluster, k8s_api, namespace, prometheus, tmp_path) as built:
        yield built


def _write(base: str) -> dict[str, str]:
    csv = synthetic_ohlcv(300, seed=7).reset_index().to_csv(index=False).encode()
    files = {"file": ("bars.csv", io.BytesIO(csv), "text/csv")}
    dataset = httpx.post(f"{base}/api/v1/datasets", headers=H, files=files, data={"symbol": "E2E"}, timeout=30)
    assert dataset.status_code == 201, dataset.text
    body = {"strategy": "sma_crossover", "params": {"fast": 5, "slow": 30}, "dataset_id": dataset.json()["id"]}
    backtest = httpx.post(f"{base}/api/v1/backtests", headers=H, json=body, timeout=60)
    assert backtest.status_code == 201, backtest.text
    return {"dataset": dataset.json()["id"], "backtest": backtest.json()["id"], "sharpe": backtest.json()["metrics"]}


def test_results_written_before_a_rollout_are_readable_after_it_from_the_new_revision(
    rollout_lab: Lab, postgres_url: str
):
    shared = {"DATABASE_URL": postgres_url, "ENGINE_RATE_LIMIT": "100000"}  # one key sends all the traffic
    stable = rollout_lab.start_engine("stable", **shared)
    canary = rollout_lab.start_engine("canary", **shared)
    router = rollout_lab.start_router(stable, canary)
    rollout_lab.start_operator()
    rollout_lab.apply(fast_spec(rollout_lab.prometheus.url))
    status = rollout_lab.wait(lambda s: s.get("phase") == "Healthy", 60, "first revision healthy")
    assert status["apiKeysSecret"] == f"{NAME}-credentials" and status["database"].startswith("managed:")
    before = _write(router)  # weight 0: written by the stable revision
    traffic = Traffic(strategies_request(router), 60.0).start()
    rollout_lab.patch({"spec": {"image": "backtest-engine:2.0.0"}})
    rollout_lab.wait(lambda s: s.get("canaryWeight") == 100, 120, "full phase: every request to the new revision")
    read = httpx.get(f"{router}/api/v1/backtests/{before['backtest']}", headers=H, timeout=30)
    assert read.status_code == 200 and read.headers["x-backtest-track"] == "canary"
    assert read.json()["metrics"] == before["sharpe"]
    promoted = rollout_lab.wait(
        lambda s: bool(s.get("history")) and s["history"][0]["outcome"] == "promoted", 120, "promotion"
    )
    traffic.stop()
    assert promoted["stableRevision"] == promoted["history"][0]["revision"]
    for path in (f"/api/v1/datasets/{before['dataset']}", f"/api/v1/backtests/{before['backtest']}"):
        assert httpx.get(f"{canary}{path}", headers=H, timeout=30).status_code == 200, path  # the new revision
    assert traffic.client_errors == 0
