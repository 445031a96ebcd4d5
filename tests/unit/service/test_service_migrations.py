"""Durable, shared results: they survive a restart, and two engine versions keep working on one database
while the newer one migrates it (expand/contract), as stable and canary do during a rollout.

The previous release is the engine as it was before tenants and sweeps (commit d23a023 of this repository,
kept as `tests/compat/backtest_engine-schema2.tar.gz` so that a shallow clone has it too), run as a real
process next to the current one. Both run on a SQLite file and on a real PostgreSQL server.
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from backtest_devtools.stack import Stack, free_port, wait_http
from backtest_engine.data import synthetic_ohlcv

ROOT = Path(__file__).parents[3]
PREVIOUS = ROOT / "tests" / "compat" / "backtest_engine-schema2.tar.gz"
"""main before tenants, shared limits and distributed sweeps (schema version 2); see tests/compat/README.md."""
KEY = "shared-key"
H = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's engine package, unpacked."""
    target = tmp_path_factory.mktemp("previous-release")
    with tarfile.open(PREVIOUS) as archive:
        archive.extractall(target, filter="data")
    return target / "previous" / "engine"


def _engine(stack: Stack, name: str, database_url: str, package: Path | None = None, **env: str) -> str:
    """An engine process (the previous release when `package` is given); returns its base URL."""
    port = free_port()
    settings = {"DATABASE_URL": database_url, "ENGINE_API_KEYS": KEY, "ENGINE_TRACK": name, **env}
    if package is None:
        stack.engine(name, port, settings)
    else:
        command = [sys.executable, "-m", "backtest_engine.service", "--host", "127.0.0.1", "--port", str(port)]
        managed = stack.start(name, command, {**settings, "PYTHONPATH": str(package)})
        wait_http(f"http://127.0.0.1:{port}/api/v1/health", name, managed.log)
    return f"http://127.0.0.1:{port}"


def _csv(seed: int) -> bytes:
    return synthetic_ohlcv(200, seed=seed).reset_index().to_csv(index=False).encode()


def _work(base: str, seed: int) -> dict[str, str]:
    """Everything a quant does: upload, backtest on it, list, export; every answer below 500."""
    files = {"file": ("bars.csv", io.BytesIO(_csv(seed)), "text/csv")}
    dataset = httpx.post(f"{base}/api/v1/datasets", headers=H, files=files, data={"symbol": f"S{seed}"}, timeout=30)
    assert dataset.status_code in (200, 201), dataset.text
    body = {"strategy": "sma_crossover", "params": {"fast": 5, "slow": 20}, "dataset_id": dataset.json()["id"]}
    backtest = httpx.post(f"{base}/api/v1/backtests", headers=H, json=body, timeout=60)
    assert backtest.status_code in (200, 201), backtest.text
    listing = httpx.get(f"{base}/api/v1/backtests?sort=-sharpe_ratio", headers=H, timeout=30)
    assert listing.status_code == 200 and listing.json()["total"] >= 1, listing.text
    export = httpx.get(f"{base}/api/v1/backtests/{backtest.json()['id']}/export?format=csv", headers=H, timeout=30)
    assert export.status_code == 200
    return {"dataset": dataset.json()["id"], "backtest": backtest.json()["id"]}


def _reads(base: str, ids: dict[str, str]) -> list[int]:
    return [
        httpx.get(f"{base}/api/v1/datasets/{ids['dataset']}", headers=H, timeout=30).status_code,
        httpx.get(f"{base}/api/v1/backtests/{ids['backtest']}", headers=H, timeout=30).status_code,
    ]


def test_both_versions_keep_working_when_the_new_one_migrates_a_shared_database(
    previous_release: Path, database_url: str, tmp_path: Path
):
    stack = Stack(tmp_path)
    try:
        old = _engine(stack, "stable", database_url, previous_release)
        before = _work(old, seed=1)  # written by the previous release, schema version 2
        new = _engine(stack, "canary", database_url, ENGINE_API_KEYS=f"legacy:{KEY}")  # migrates to the newest
        assert httpx.get(f"{new}/api/v1/ready", timeout=30).status_code == 200
        _work(old, seed=2)  # the stable revision after the canary's migration: still fine
        _work(new, seed=3)
        assert _reads(old, before) == [200, 200]
        assert _reads(new, before) == [200, 200]  # old rows belong to tenant `legacy`, which this key is
        restarted = _engine(stack, "rollback", database_url, previous_release)  # a rollback restarts the old one
        _work(restarted, seed=4)
        assert _reads(restarted, before) == [200, 200]
    finally:
        stack.close()


def test_results_survive_a_restart_of_the_engine(database_url: str, tmp_path: Path):
    stack = Stack(tmp_path)
    try:
        first = _engine(stack, "first", database_url)
        ids = _work(first, seed=5)
        detail = httpx.get(f"{first}/api/v1/backtests/{ids['backtest']}", headers=H, timeout=30).json()
        for managed in list(stack.started):
            stack.stop(managed)  # SIGTERM, then the process is gone
        second = _engine(stack, "second", database_url)
        again = httpx.get(f"{second}/api/v1/backtests/{ids['backtest']}", headers=H, timeout=30)
        assert again.status_code == 200 and again.json()["metrics"] == detail["metrics"]
        assert _reads(second, ids) == [200, 200]
    finally:
        stack.close()


def test_running_job_is_handed_back_on_sigterm_and_finished_by_the_next_process(tmp_path: Path):
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    stack = Stack(tmp_path)
    try:
        first = _engine(stack, "first", database_url, ENGINE_SHUTDOWN_SECONDS="1")
        body = {"strategy": "sma_crossover", "space": {"fast": list(range(2, 40)), "slow": list(range(41, 141, 2))},
                "synthetic": {"bars": 5000, "seed": 1}}  # fmt: skip
        job = httpx.post(f"{first}/api/v1/optimizations", headers=H, json=body, timeout=30).json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{first}/api/v1/optimizations/{job}", headers=H, timeout=10).json()["progress"]["done"] == 0:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        stopped_at = time.monotonic()
        process = stack.started[0]
        stack.stop(process)  # SIGTERM: stop taking work, drain for ~1 s, hand the rest back
        assert time.monotonic() - stopped_at < 5.0  # within the pod's grace period, never killed
        assert f"event=optimization_released job={job}" in process.log.read_text()
        second = _engine(stack, "second", database_url)
        deadline = time.monotonic() + 180
        while (status := httpx.get(f"{second}/api/v1/optimizations/{job}", headers=H, timeout=10).json())[
            "state"
        ] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"the handed-back job never finished: {status}"
            time.sleep(0.2)
        assert status["state"] == "succeeded" and status["progress"]["done"] == status["progress"]["total"]
    finally:
        stack.close()
