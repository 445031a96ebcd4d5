"""The results store: SQLAlchemy 2 Core tables, a small versioned migration runner and a repository.

Why no Alembic: the backtests table carries one float column per registered metric (so results can be
filtered and sorted by any metric in SQL), and the metric registry grows with the engine. Alembic would
need a hand-written revision for every new metric; instead numbered migrations (`MIGRATIONS`, recorded in
`schema_migrations`) create and change the fixed schema, and after them `_sync_metric_columns` adds a
nullable column for any metric the table lacks. Both steps are idempotent and run under a lock
(PostgreSQL advisory lock; SQLite's write lock), so stable and canary pods can start at once on one
database.

The cache key is a composite unique index: (strategy, params_hash, dataset_key, timeframe, start_time,
end_time, engine_version). Two pods racing to store the same result both succeed: the loser's insert
hits the index and it returns the winner's row.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.pool import StaticPool

from backtest_engine.metrics import metric_names

log = logging.getLogger("backtest_engine.service.store")

METRIC_PREFIX = "m_"
CACHE_KEY_COLUMNS = ("strategy", "params_hash", "dataset_key", "timeframe", "start_time", "end_time", "engine_version")
_ADVISORY_LOCK_ID = 7_274_271_305


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


def _fixed_tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    """The schema of migration 1 (metric columns are added by `_sync_metric_columns`)."""
    datasets = sa.Table(
        "datasets",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("timeframe", sa.String(32), nullable=False),
        sa.Column("bars", sa.Integer, nullable=False),
        sa.Column("start_time", sa.DateTime, nullable=False),
        sa.Column("end_time", sa.DateTime, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )
    backtests = sa.Table(
        "backtests",
        metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("strategy", sa.String(64), nullable=False),
        sa.Column("params_hash", sa.String(64), nullable=False),
        sa.Column("dataset_key", sa.String(200), nullable=False),
        sa.Column("dataset_id", sa.String(64), nullable=True),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("timeframe", sa.String(32), nullable=False),
        sa.Column("start_time", sa.DateTime, nullable=False),
        sa.Column("end_time", sa.DateTime, nullable=False),
        sa.Column("engine_version", sa.String(64), nullable=False),
        sa.Column("bars", sa.Integer, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("trades", sa.JSON, nullable=False),
        sa.Column("equity", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("duration_seconds", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Index("ux_backtests_cache_key", *CACHE_KEY_COLUMNS, unique=True),
        sa.Index("ix_backtests_created_at", "created_at"),
        sa.Index("ix_backtests_symbol", "symbol"),
    )
    optimizations = sa.Table(
        "optimizations",
        metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("strategy", sa.String(64), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("best", sa.JSON, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    return {"datasets": datasets, "backtests": backtests, "optimizations": optimizations}


def _migration_1(connection: Connection) -> None:
    metadata = sa.MetaData()
    _fixed_tables(metadata)
    metadata.create_all(connection)


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_migration_1,)

MIGRATIONS_TABLE = sa.Table(
    "schema_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime, nullable=False),
)


def metric_column(name: str) -> str:
    return METRIC_PREFIX + name


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


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


class Store:
    """Repository over one database; every method is synchronous (callers run it in a worker thread)."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.dialect = self.url.get_backend_name()
        self.engine = self._create_engine()
        self.metadata = sa.MetaData()
        tables = _fixed_tables(self.metadata)
        self.metric_names = tuple(metric_names())
        for name in self.metric_names:
            tables["backtests"].append_column(sa.Column(metric_column(name), sa.Float, nullable=True))
        self.datasets = tables["datasets"]
        self.backtests = tables["backtests"]
        self.optimizations = tables["optimizations"]

    def _create_engine(self) -> Engine:
        if self.dialect == "sqlite":
            database = self.url.database or ""
            memory = database in ("", ":memory:")
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
        """Apply pending migrations and add missing metric columns; returns the schema version."""
        for attempt in range(attempts):
            try:
                with self.engine.begin() as connection:
                    if self.dialect == "postgresql":
                        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
                    MIGRATIONS_TABLE.create(connection, checkfirst=True)
                    applied = set(connection.execute(sa.select(MIGRATIONS_TABLE.c.version)).scalars())
                    for version, migration in enumerate(MIGRATIONS, start=1):
                        if version not in applied:
                            migration(connection)
                            connection.execute(MIGRATIONS_TABLE.insert().values(version=version, applied_at=utcnow()))
                            log.info("event=migration_applied version=%d", version)
                    self._sync_metric_columns(connection)
                return len(MIGRATIONS)
            except (OperationalError, IntegrityError, ProgrammingError):  # a concurrent migrator won the race
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return len(MIGRATIONS)

    def _sync_metric_columns(self, connection: Connection) -> None:
        existing = {column["name"] for column in sa.inspect(connection).get_columns("backtests")}
        for name in self.metric_names:
            column = metric_column(name)
            if column not in existing:
                connection.execute(sa.text(f'ALTER TABLE backtests ADD COLUMN "{column}" FLOAT'))

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
        """Insert a dataset (content-addressed id); returns (metadata, created)."""
        existing = self.get_dataset(row["id"])
        if existing is not None:
            return existing, False
        try:
            with self.engine.begin() as connection:
                connection.execute(self.datasets.insert().values(**row, created_at=utcnow()))
        except IntegrityError:
            pass
        found = self.get_dataset(row["id"])
        if found is None:
            raise StoreError("dataset vanished after insert")
        return found, True

    def _dataset_columns(self) -> list[sa.Column[Any]]:
        return [c for c in self.datasets.columns if c.name != "content"]

    def get_dataset(self, dataset_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(*self._dataset_columns()).where(self.datasets.c.id == dataset_id)
            ).first()
        return dict(row._mapping) if row else None

    def dataset_content(self, dataset_id: str) -> bytes | None:
        with self.engine.connect() as connection:
            value = connection.execute(
                sa.select(self.datasets.c.content).where(self.datasets.c.id == dataset_id)
            ).scalar()
        return bytes(value) if value is not None else None

    def list_datasets(
        self, *, symbol: str | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        where = [self.datasets.c.symbol == symbol] if symbol else []
        query = sa.select(*self._dataset_columns()).where(*where)
        with self.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(self.datasets).where(*where)).scalar()
            rows = connection.execute(
                query.order_by(self.datasets.c.created_at.desc(), self.datasets.c.id).limit(limit).offset(offset)
            ).all()
        return [dict(r._mapping) for r in rows], int(total or 0)

    # -- backtests -------------------------------------------------------------------------------------------

    def find_backtest(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored result with this cache key, or None."""
        where = [self.backtests.c[name] == key[name] for name in CACHE_KEY_COLUMNS]
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(self.backtests).where(*where)).first()
        return self._backtest_row(dict(row._mapping)) if row else None

    def add_backtest(self, key: Mapping[str, Any], row: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert a result; if another writer stored the same key first, return theirs. (row, created)."""
        metrics: Mapping[str, float] = row["metrics"]
        values = {
            **key,
            **row,
            "id": str(uuid.uuid4()),
            "created_at": utcnow(),
            **{metric_column(n): float(v) for n, v in metrics.items() if n in self.metric_names},
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(self.backtests.insert().values(**values))
        except IntegrityError:
            existing = self.find_backtest(key)
            if existing is None:
                raise
            return existing, False
        stored = self.get_backtest(values["id"])
        if stored is None:
            raise StoreError("backtest vanished after insert")
        return stored, True

    def get_backtest(self, backtest_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(self.backtests).where(self.backtests.c.id == backtest_id)).first()
        return self._backtest_row(dict(row._mapping)) if row else None

    def _backtest_row(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in mapping.items() if not k.startswith(METRIC_PREFIX)}

    def list_backtests(self, query: BacktestQuery, summary_metrics: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
        table = self.backtests
        where: list[Any] = []
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
        order = [sort_column.desc() if descending else sort_column.asc(), table.c.id]
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

    # -- optimization jobs -----------------------------------------------------------------------------------

    def save_job(self, row: Mapping[str, Any]) -> None:
        """Insert or update a job row (by id)."""
        values = {**row, "updated_at": utcnow()}
        with self.engine.begin() as connection:
            updated = connection.execute(
                self.optimizations.update()
                .where(self.optimizations.c.id == row["id"])
                .values(**{k: v for k, v in values.items() if k not in ("id", "created_at")})
            ).rowcount
            if not updated:
                connection.execute(self.optimizations.insert().values(**values))

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(self.optimizations).where(self.optimizations.c.id == job_id)).first()
        return dict(row._mapping) if row else None


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
