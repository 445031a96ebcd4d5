"""Fixtures for the service tests: settings, an in-process client, and a store URL per database kind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backtest_engine.service.app import create_app
from backtest_engine.service.settings import ServiceSettings

KEY = "test-key-1"
OTHER_KEY = "test-key-2"
AUTH = {"X-API-Key": KEY}
SYNTHETIC = {"symbol": "SYN", "bars": 400, "seed": 3}


def backtest_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"strategy": "sma_crossover", "params": {"fast": 5, "slow": 20}, "synthetic": SYNTHETIC}
    body.update(overrides)
    return body


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind: a SQLite file, and a database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., ServiceSettings]:
    def build(**values: Any) -> ServiceSettings:
        values.setdefault("DATABASE_URL", f"sqlite:///{tmp_path / 'results.db'}")
        values.setdefault("api_keys", f"{KEY},{OTHER_KEY}")
        return ServiceSettings(**values)

    return build


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(settings_for: Callable[..., ServiceSettings]) -> Iterator[ClientFactory]:
    """Start an app with settings overrides; each client is closed (lifespan shut down) after the test."""
    clients: list[TestClient] = []

    def start(**values: Any) -> TestClient:
        client = TestClient(create_app(settings_for(**values)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()
