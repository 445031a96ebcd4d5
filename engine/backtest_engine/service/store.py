"""The results store: a repository over one database (SQLite for one process, PostgreSQL for many).

Every dataset, backtest and job row carries the tenant that made it, and every read takes a `tenant`
scope: a row of another tenant is simply not found (404, so existence does not leak); scope None is an
admin's view of every tenant. The schema and its expand-only migrations live in `schema`.

The cache key is a composite unique index: (strategy, params_hash, dataset_key, timeframe, start_time,
end_time, engine_version). The parameter hash is salted with the tenant, so dedup is per tenant. Two pods
racing to store the same result both succeed: the loser's insert hits the index and it returns the
winner's row.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from backtest_engine.metrics import metric_names
from backtest_engine.service import schema
from backtest_engine.service.jobrows import JobRows
from backtest_engine.service.schema import CACHE_KEY_COLUMNS, METRIC_PREFIX, metric_column, utcnow

log = logging.getLogger("backtest_engine.service.store")

__all__ = ["CACHE_KEY_COLUMNS", "BacktestQuery", "MetricFilter", "Store", "StoreError", "metric_column", "utcnow"]


class StoreError(Exception):
    """The database cannot be reached or refused an operation (never carries the URL's password)."""


def normalize_url(url: str) -> URL:
    """`postgresql://` and `postgres://` use psycopg 3; anything SQLAlchemy understands is accepted."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


@dataclass(frozen=True)
class MetricFilter:
    """`metric <op> value`, e.g. sharpe_ratio >= 1."""

    metric: str
    op: str
    value: float


@dataclass(frozen=True)
class BacktestQuery:
    strategy: str | None = None
    symbol: str | None = None
    dataset_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    metrics: tuple[MetricFilter, ...] = ()
    sort: str = "-created_at"
    limit: int = 20
    offset: int = 0


_OPS: dict[str, Callable[[Any, float], Any]] = {
    ">=": lambda c, v: c >= v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    "<": lambda c, v: c < v,
    "=": lambda c, v: c == v,
}
SUMMARY_COLUMNS = (
    "id",
    "strategy",
    "params",
    "dataset_key",
    "dataset_id",
    "symbol",
    "timeframe",
    "start_time",
    "end_time",
    "engine_version",
    "bars",
    "duration_seconds",
    "created_at",
)


def _scoped(table: sa.Table, tenant: str | None) -> list[Any]:
    """The WHERE clause limiting `table` to one tenant's rows (none for an admin's scope None)."""
    return [] if tenant is None else [table.c.tenant == tenant]


class Store(JobRows):
    """Repository over one database; every method is synchronous (callers run it in a worker thread)."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.dialect = self.url.get_backend_name()
        self.engine = self._create_engine()
        self.metadata = sa.MetaData()
        self.metric_names = tuple(metric_names())
        tables = schema.current_tables(self.metadata, self.metric_names)
        self.datasets = tables["datasets"]
        self.backtests = tables["backtests"]
        self.optimizations = tables["optimizations"]

    def _create_engine(self) -> Engine:
        if self.dialect == "sqlite":
            database = self.url.database or ""
            memory = database in ("", ":memory:")
            if not memory:  # e.g. /data/results.db on a fresh volume; an unusable path shows up in /ready
                with contextlib.suppress(OSError):
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(
                self.url,
                connect_args={"check_same_thread": False, "timeout": 30},
                poolclass=StaticPool if memory else None,
            )

            @sa.event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                if not memory:
                    cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.close()

            return engine
        return sa.create_engine(self.url, pool_pre_ping=True, pool_size=10, max_overflow=20)

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def migrate(self, attempts: int = 5) -> int:
        """Apply pending expand migrations and add missing metric columns; returns the schema version."""
        return schema.migrate(self.engine, self.dialect, self.metric_names, attempts)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()

    # -- datasets --------------------------------------------------------------------------------------------

    def add_dataset(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert a dataset (id addressed by tenant and content); returns (metadata, created)."""
        tenant = row["tenant"]
        existing = self.get_dataset(row["id"], tenant)
        if existing is not None:
            return existing, False
        try:
            with self.engine.begin() as connection:
                connection.execute(self.datasets.insert().values(**row, created_at=utcnow()))
        except IntegrityError:
            pass
        found = self.get_dataset(row["id"], tenant)
        if found is None:
            raise StoreError("dataset vanished after insert")
        return found, True

    def _dataset_columns(self) -> list[sa.Column[Any]]:
        return [c for c in self.datasets.columns if c.name != "content"]

    def get_dataset(self, dataset_id: str, tenant: str | None) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(*self._dataset_columns()).where(
                    self.datasets.c.id == dataset_id, *_scoped(self.datasets, tenant)
                )
            ).first()
        return dict(row._mapping) if row else None

    def dataset_content(self, dataset_id: str, tenant: str | None) -> bytes | None:
        with self.engine.connect() as connection:
            value = connection.execute(
                sa.select(self.datasets.c.content).where(
                    self.datasets.c.id == dataset_id, *_scoped(self.datasets, tenant)
                )
            ).scalar()
        return bytes(value) if value is not None else None

    def list_datasets(
        self, tenant: str | None, *, symbol: str | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        where = [*_scoped(self.datasets, tenant), *([self.datasets.c.symbol == symbol] if symbol else [])]
        query = sa.select(*self._dataset_columns()).where(*where)
        with self.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(self.datasets).where(*where)).scalar()
            rows = connection.execute(
                query.order_by(self.datasets.c.created_at.desc(), self.datasets.c.id).limit(limit).offset(offset)
            ).all()
        return [dict(r._mapping) for r in rows], int(total or 0)

    # -- backtests -------------------------------------------------------------------------------------------

    def find_backtest(self, key: Mapping[str, Any], tenant: str) -> dict[str, Any] | None:
        """The tenant's stored result with this cache key, or None."""
        where = [self.backtests.c[name] == key[name] for name in CACHE_KEY_COLUMNS]
        where.append(self.backtests.c.tenant == tenant)
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(self.backtests).where(*where)).first()
        return self._backtest_row(dict(row._mapping)) if row else None

    def add_backtest(self, key: Mapping[str, Any], row: Mapping[str, Any], tenant: str) -> tuple[dict[str, Any], bool]:
        """Insert a result; if another writer stored the same key first, return theirs. (row, created)."""
        metrics: Mapping[str, float | None] = row["metrics"]
        values = {
            **key,
            **row,
            "tenant": tenant,
            "id": str(uuid.uuid4()),
            "created_at": utcnow(),
            **{metric_column(n): _sql_metric(v) for n, v in metrics.items() if n in self.metric_names},
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(self.backtests.insert().values(**values))
        except IntegrityError:
            existing = self.find_backtest(key, tenant)
            if existing is None:
                raise
            return existing, False
        stored = self.get_backtest(values["id"], tenant)
        if stored is None:
            raise StoreError("backtest vanished after insert")
        return stored, True

    def get_backtest(self, backtest_id: str, tenant: str | None) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(self.backtests).where(self.backtests.c.id == backtest_id, *_scoped(self.backtests, tenant))
            ).first()
        return self._backtest_row(dict(row._mapping)) if row else None

    def _backtest_row(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in mapping.items() if not k.startswith(METRIC_PREFIX)}

    def list_backtests(
        self, query: BacktestQuery, summary_metrics: Sequence[str], tenant: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        table = self.backtests
        where: list[Any] = _scoped(table, tenant)
        if query.strategy:
            where.append(table.c.strategy == query.strategy)
        if query.symbol:
            where.append(table.c.symbol == query.symbol)
        if query.dataset_id:
            where.append(table.c.dataset_id == query.dataset_id)
        if query.start:
            where.append(table.c.start_time >= query.start)
        if query.end:
            where.append(table.c.end_time <= query.end)
        for item in query.metrics:
            where.append(_OPS[item.op](table.c[metric_column(item.metric)], item.value))
        descending = query.sort.startswith("-")
        sort_name = query.sort.lstrip("-")
        sort_column = table.c.created_at if sort_name == "created_at" else table.c[metric_column(sort_name)]
        # undefined metrics (NULL) last in either direction; PostgreSQL would put them first when descending
        order = [(sort_column.desc() if descending else sort_column.asc()).nulls_last(), table.c.id]
        columns = [table.c[name] for name in SUMMARY_COLUMNS]
        columns += [table.c[metric_column(name)] for name in summary_metrics]
        with self.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar()
            rows = connection.execute(
                sa.select(*columns).where(*where).order_by(*order).limit(query.limit).offset(query.offset)
            ).all()
        items = []
        for row in rows:
            mapping = dict(row._mapping)
            metrics = {name: mapping.pop(metric_column(name)) for name in summary_metrics}
            items.append({**mapping, "metrics": metrics})
        return items, int(total or 0)


def _sql_metric(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def sort_key_valid(sort: str, names: Sequence[str]) -> bool:
    name = sort.lstrip("-")
    return sort.count("-") <= 1 and (name == "created_at" or name in names)


_FILTER = re.compile(r"^\s*([a-z0-9_]+)\s*(>=|<=|>|<|=)\s*(-?[0-9.eE+-]+)\s*$")


def parse_metric_filter(text: str, names: Sequence[str]) -> MetricFilter:
    """`"sharpe_ratio>=1.5"` -> MetricFilter; ValueError with a message for anything else."""
    match = _FILTER.match(text)
    if not match:
        raise ValueError(f"expected NAME>=VALUE (operators >=, <=, >, <, =), got {text!r}")
    name, op, raw = match.groups()
    if name not in names:
        raise ValueError(f"unknown metric {name!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {raw!r}")
    return MetricFilter(name, op, value)
