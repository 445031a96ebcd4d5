"""The results store against SQLite and a real PostgreSQL server: migrations, the cache key, filters."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
import sqlalchemy as sa

from backtest_engine.service.jobrows import JobBounds, QueueFull
from backtest_engine.service.schema import MIGRATIONS, MIGRATIONS_TABLE, _migration_1
from backtest_engine.service.store import (
    BacktestQuery,
    MetricFilter,
    Store,
    metric_column,
    normalize_url,
    parse_metric_filter,
    utcnow,
)

T = "tenant-a"
WIDE = JobBounds(max_active=100, max_per_tenant=100)

NAMES = ("sharpe_ratio", "total_return")


def key(**overrides):
    values = {
        "strategy": "sma_crossover",
        "params_hash": "a" * 64,
        "dataset_key": "synthetic:SYN:100:0",
        "timeframe": "1d",
        "start_time": datetime(2020, 1, 1),
        "end_time": datetime(2020, 6, 1),
        "engine_version": "1.0",
    }
    values.update(overrides)
    return values


def row(sharpe: float = 1.0, **overrides):
    values = {
        "dataset_id": None,
        "symbol": "SYN",
        "bars": 100,
        "params": {"fast": 5},
        "config": {"cash": 10000.0},
        "trades": [],
        "equity": [{"time": "2020-01-01T00:00:00", "equity": 10000.0}],
        "metrics": {"sharpe_ratio": sharpe, "total_return": sharpe / 10},
        "duration_seconds": 0.01,
    }
    values.update(overrides)
    return values


@pytest.fixture
def store(database_url: str):
    store = Store(database_url)
    store.migrate()
    yield store
    store.dispose()


def test_migrations_are_recorded_and_idempotent_when_run_twice(store: Store):
    assert store.migrate() == len(MIGRATIONS)
    with store.engine.connect() as connection:
        versions = connection.execute(sa.text("SELECT version FROM schema_migrations")).scalars().all()
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_every_metric_has_a_column_when_migrated(store: Store):
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("backtests")}
    assert {metric_column(name) for name in store.metric_names} <= columns


def test_migration_adds_a_column_when_the_registry_gains_a_metric(store: Store):
    store.metric_names = (*store.metric_names, "brand_new_metric")
    store.migrate()
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("backtests")}
    assert "m_brand_new_metric" in columns


def test_concurrent_migrations_all_succeed_when_pods_start_together(database_url: str):
    stores = [Store(database_url) for _ in range(4)]
    errors: list[BaseException] = []

    def migrate(store: Store) -> None:
        try:
            store.migrate()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for store in stores:
        store.dispose()


def test_same_cache_key_returns_the_first_row_when_stored_twice(store: Store):
    first, created = store.add_backtest(key(), row(1.0), T)
    second, created_again = store.add_backtest(key(), row(2.0), T)
    assert created and not created_again
    assert second["id"] == first["id"] and second["metrics"]["sharpe_ratio"] == 1.0
    assert store.find_backtest(key(), T)["id"] == first["id"]


@pytest.mark.parametrize("field", ["strategy", "params_hash", "dataset_key", "timeframe", "engine_version"])
def test_cache_key_differs_when_any_component_differs(store: Store, field: str):
    store.add_backtest(key(), row(), T)
    other, created = store.add_backtest(key(**{field: "other"}), row(), T)
    assert created
    assert store.find_backtest(key(**{field: "other"}), T)["id"] == other["id"]


def test_cache_key_differs_when_the_date_range_differs(store: Store):
    store.add_backtest(key(), row(), T)
    _, created = store.add_backtest(key(end_time=datetime(2020, 7, 1)), row(), T)
    assert created


def test_list_filters_by_metric_ranges_and_sorts_when_asked(store: Store):
    for i, sharpe in enumerate([0.5, 1.5, 2.5, -1.0]):
        store.add_backtest(key(params_hash=str(i)), row(sharpe), T)
    query = BacktestQuery(metrics=(MetricFilter("sharpe_ratio", ">", 0.0),), sort="-sharpe_ratio")
    items, total = store.list_backtests(query, NAMES, T)
    assert total == 3
    assert [i["metrics"]["sharpe_ratio"] for i in items] == [2.5, 1.5, 0.5]
    ranged = BacktestQuery(
        metrics=(MetricFilter("sharpe_ratio", ">=", 0.5), MetricFilter("total_return", "<", 0.2)), sort="sharpe_ratio"
    )
    items, total = store.list_backtests(ranged, NAMES, T)
    assert [i["metrics"]["sharpe_ratio"] for i in items] == [0.5, 1.5]


def test_list_filters_by_strategy_symbol_and_dates_when_given(store: Store):
    store.add_backtest(key(), row(symbol="AAA"), T)
    store.add_backtest(
        key(strategy="macd", start_time=datetime(2021, 1, 1), end_time=datetime(2021, 5, 1)), row(symbol="BBB"), T
    )
    assert store.list_backtests(BacktestQuery(strategy="macd"), NAMES, T)[1] == 1
    assert store.list_backtests(BacktestQuery(symbol="AAA"), NAMES, T)[1] == 1
    assert store.list_backtests(BacktestQuery(start=datetime(2020, 12, 1)), NAMES, T)[1] == 1
    assert store.list_backtests(BacktestQuery(end=datetime(2020, 12, 1)), NAMES, T)[1] == 1
    page, total = store.list_backtests(BacktestQuery(limit=1, offset=1), NAMES, T)
    assert total == 2 and len(page) == 1


def test_datasets_are_content_addressed_when_added_twice(store: Store):
    values = {
        "id": "abc123",
        "name": "a.csv",
        "symbol": "AAA",
        "timeframe": "1d",
        "bars": 3,
        "start_time": datetime(2020, 1, 1),
        "end_time": datetime(2020, 1, 3),
        "size_bytes": 5,
        "content": b"\x00\x01binary",
        "tenant": T,
    }
    _, created = store.add_dataset(values)
    again, created_again = store.add_dataset({**values, "name": "b.csv"})
    assert created and not created_again and again["name"] == "a.csv"
    assert store.dataset_content("abc123", T) == b"\x00\x01binary"
    assert store.list_datasets(T, symbol="AAA")[1] == 1 and store.list_datasets(T, symbol="ZZZ")[1] == 0
    assert store.get_dataset("abc123", "tenant-b") is None and store.list_datasets("tenant-b")[1] == 0
    assert store.get_dataset("abc123", None) is not None  # an admin's scope


def test_job_rows_are_updated_when_saved_repeatedly(store: Store):
    job = {
        "id": "j1",
        "tenant": T,
        "state": "queued",
        "strategy": "macd",
        "request": {"metric": "sharpe_ratio"},
        "done": 0,
        "total": 4,
        "best": [],
        "error": None,
        "created_at": datetime(2020, 1, 1),
    }
    store.admit_job(job, WIDE)
    store.save_job({**job, "state": "succeeded", "done": 4})
    saved = store.get_job("j1", T)
    assert saved["state"] == "succeeded" and saved["done"] == 4 and saved["request"] == {"metric": "sharpe_ratio"}
    assert store.get_job("j1", "tenant-b") is None


def test_job_admission_refuses_when_the_tenant_or_the_service_is_full(store: Store):
    base = {"state": "queued", "strategy": "macd", "request": {}, "done": 0, "total": 1, "best": [], "error": None}
    bounds = JobBounds(max_active=3, max_per_tenant=2)
    for number, tenant in enumerate(["a", "a", "b"]):
        store.admit_job({**base, "id": f"j{number}", "tenant": tenant, "created_at": utcnow()}, bounds)
    with pytest.raises(QueueFull, match="this tenant"):
        store.admit_job({**base, "id": "j3", "tenant": "a", "created_at": utcnow()}, bounds)
    with pytest.raises(QueueFull, match="the service"):
        store.admit_job({**base, "id": "j4", "tenant": "c", "created_at": utcnow()}, bounds)
    store.save_job({**base, "id": "j0", "tenant": "a", "state": "succeeded", "created_at": utcnow()})
    store.admit_job({**base, "id": "j5", "tenant": "a", "created_at": utcnow()}, bounds)  # a slot came free


def test_postgres_urls_use_psycopg_when_no_driver_is_named():
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert "p@" not in Store("postgresql://u:secret@127.0.0.1:1/db").describe().replace("***@", "")


@pytest.mark.parametrize("text", ["sharpe_ratio>>1", "nope>1", "sharpe_ratio>nan", "sharpe_ratio>1e999", "x"])
def test_metric_filter_is_rejected_when_malformed(text: str):
    with pytest.raises(ValueError):
        parse_metric_filter(text, ["sharpe_ratio"])


def test_metric_filter_parses_when_well_formed():
    assert parse_metric_filter(" sharpe_ratio <= -1.5 ", ["sharpe_ratio"]) == MetricFilter("sharpe_ratio", "<=", -1.5)


def test_later_migrations_apply_when_the_database_is_at_version_one(database_url: str):
    old = Store(database_url)
    with old.engine.begin() as connection:  # a database created by the first release
        MIGRATIONS_TABLE.create(connection)
        _migration_1(connection)
        connection.execute(MIGRATIONS_TABLE.insert().values(version=1, applied_at=utcnow()))
    assert "cancel_requested" not in {c["name"] for c in sa.inspect(old.engine).get_columns("optimizations")}
    old.migrate()
    assert "cancel_requested" in {c["name"] for c in sa.inspect(old.engine).get_columns("optimizations")}
    old.dispose()


def test_cancel_flag_is_set_only_when_the_job_is_still_live(store: Store):
    base = {"strategy": "macd", "request": {}, "done": 0, "total": 1, "best": [], "error": None, "tenant": T}
    store.admit_job({**base, "id": "live", "state": "running", "created_at": datetime(2020, 1, 1)}, WIDE)
    store.admit_job({**base, "id": "done", "state": "succeeded", "created_at": datetime(2020, 1, 1)}, WIDE)
    assert not store.request_cancel("live", "tenant-b") and not store.cancel_requested("live")
    assert store.request_cancel("live", T) and store.cancel_requested("live")
    assert not store.request_cancel("done", T) and not store.cancel_requested("done")
    assert not store.request_cancel("unknown", None)
