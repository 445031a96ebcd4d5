"""Sweeps shared by the replicas through procrastinate on a real PostgreSQL: same results as the library,
and no combination lost when a replica is killed in the middle (real engine processes, SIGKILL)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from backtest_devtools.stack import Stack, free_port
from backtest_engine import optimize
from backtest_engine.data import synthetic_ohlcv
from tests.unit.service.conftest import AUTH, KEY, ClientFactory

pytestmark = pytest.mark.postgres

SPACE = {"fast": [3, 5, 8, 13], "slow": [20, 30, 50, 400]}  # slow=400 never trades on 300 bars: undefined


def _wait(read, done, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:.0f}s: {value}"
        time.sleep(0.2)


def test_sweep_over_postgres_finds_what_the_library_finds_and_ranks_undefined_last(
    make_client: ClientFactory, postgres_url: str
):
    client: TestClient = make_client(DATABASE_URL=postgres_url, sweep_chunk_size=3)
    body = {"strategy": "sma_crossover", "space": SPACE, "synthetic": {"bars": 300, "seed": 4}}
    started = client.post("/api/v1/optimizations", headers=AUTH, json=body)
    assert started.status_code == 202, started.text
    job = started.json()["id"]
    status = _wait(
        lambda: client.get(f"/api/v1/optimizations/{job}", headers=AUTH).json(),
        lambda s: s["state"] in ("succeeded", "failed"),
        60,
        "sweep finished",
    )
    assert status["state"] == "succeeded" and status["progress"]["done"] == 16, status
    library = optimize(synthetic_ohlcv(300, seed=4), "sma_crossover", SPACE, workers=1)
    expected = [
        row["params"] for row in library.to_dict(top=10)["results"] if row["metrics"]["sharpe_ratio"] is not None
    ]
    assert [row["params"] for row in status["best"]] == expected[:10]
    assert all(row["metrics"]["sharpe_ratio"] is not None for row in status["best"])


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "terminated"])
def test_no_combination_is_lost_when_a_replica_is_stopped_mid_sweep(postgres_url: str, tmp_path: Path, stop):
    stack = Stack(tmp_path)
    env = {"DATABASE_URL": postgres_url, "ENGINE_API_KEYS": KEY, "ENGINE_SWEEP_CHUNK_SIZE": "4", "ENGINE_WORKERS": "1",
           "ENGINE_SHUTDOWN_SECONDS": "2"}  # fmt: skip
    ports = [free_port(), free_port()]
    try:
        replicas = [stack.engine(f"replica{i}", port, env) for i, port in enumerate(ports)]
        body = {
            "strategy": "sma_crossover",
            "space": {"fast": list(range(2, 22)), "slow": list(range(30, 90, 5))},
            "synthetic": {"bars": 6000, "seed": 2},
        }
        base = f"http://127.0.0.1:{ports[0]}"
        started = httpx.post(f"{base}/api/v1/optimizations", headers=AUTH, json=body, timeout=30)
        assert started.status_code == 202, started.text
        job, total = started.json()["id"], started.json()["progress"]["total"]

        def progress():
            return httpx.get(f"{base}/api/v1/optimizations/{job}", headers=AUTH, timeout=10).json()

        _wait(progress, lambda s: s["progress"]["done"] >= 8, 120, "some chunks done")
        database = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
        doing = sa.text("SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'")

        def busy() -> int:
            with database.connect() as connection:
                return int(connection.execute(doing).scalar() or 0)

        _wait(busy, lambda n: n >= 2, 60, "both replicas holding a chunk")  # one worker slot each
        pid = replicas[1].pid()
        assert pid is not None
        os.kill(pid, stop)  # the other replica must pick up whatever this one held (or handed back)
        final = _wait(progress, lambda s: s["state"] != "running" and s["state"] != "queued", 240, "sweep finished")
        assert final["state"] == "succeeded" and final["progress"]["done"] == total, final
        database.dispose()
    finally:
        stack.close()
