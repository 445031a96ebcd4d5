"""The results store's schema: tables, numbered migrations and the runner, in expand/contract style.

During a rollout the stable and the canary revision share one database, so a migration the canary runs
must never break the stable one. Every migration here is therefore an *expand* step: it adds tables,
nullable columns, columns with a server default, or indexes, and never drops, renames or narrows what an
older engine reads or writes. An older engine keeps working because it names every column it writes
(new columns take their server default) and ignores columns it does not know. Contract steps (dropping
what no running version needs any more) are kept out of `migrate`: they would ship as their own release,
once no revision that needs the old shape can still be running. `tests/unit/service/test_service_migrations`
runs the previous release of the engine against a database the current one migrated, and the reverse.

Why no Alembic: the backtests table carries one float column per registered metric (so results can be
filtered and sorted by any metric in SQL), and the metric registry grows with the engine. Alembic would
need a hand-written revision for every new metric; instead numbered migrations (`MIGRATIONS`, recorded in
`schema_migrations`) change the fixed schema, and after them `_sync_metric_columns` adds a nullable
column for any metric the table lacks. Both steps are idempotent and run under a lock (PostgreSQL
advisory lock; SQLite's write lock), so stable and canary pods can start at once on one database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

log = logging.getLogger("backtest_engine.service.store")

METRIC_PREFIX = "m_"
CACHE_KEY_COLUMNS = ("strategy", "params_hash", "dataset_key", "timeframe", "start_time", "end_time", "engine_version")
LEGACY_TENANT = "legacy"
_ADVISORY_LOCK_ID = 7_274_271_305


def metric_column(name: str) -> str:
    return METRIC_PREFIX + name


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _fixed_tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    """The schema as migration 1 created it, frozen; later migrations' columns are added in `Store`.

    Metric columns are added by `_sync_metric_columns`.
    """
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


def _migration_2(connection: Connection) -> None:
    """Cancellation across replicas: any replica can flag a job; the one running it polls the flag."""
    connection.execute(sa.text("ALTER TABLE optimizations ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE"))


def _migration_3(connection: Connection) -> None:
    """Tenants, job recovery and shared rate limits (expand only).

    Rows written before, or by an older engine while a rollout runs, belong to the `legacy` tenant
    (the server default), which only an admin key or a key of tenant `legacy` can read.
    """
    tenant = f"VARCHAR(64) NOT NULL DEFAULT '{LEGACY_TENANT}'"
    for table in ("datasets", "backtests", "optimizations"):
        connection.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN tenant {tenant}"))
    connection.execute(sa.text("ALTER TABLE optimizations ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"))
    connection.execute(sa.text("ALTER TABLE optimizations ADD COLUMN owner VARCHAR(128)"))
    connection.execute(sa.text("CREATE INDEX ix_datasets_tenant_created ON datasets (tenant, created_at)"))
    connection.execute(sa.text("CREATE INDEX ix_backtests_tenant_created ON backtests (tenant, created_at)"))
    connection.execute(sa.text("CREATE INDEX ix_optimizations_state ON optimizations (state, tenant)"))
    RATE_LIMITS.create(connection, checkfirst=True)


def _later_columns(tables: dict[str, sa.Table]) -> None:
    """Columns added by migrations after the first, so queries see the current schema."""
    tables["optimizations"].append_column(
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false())
    )
    for name in ("datasets", "backtests", "optimizations"):
        tables[name].append_column(sa.Column("tenant", sa.String(64), nullable=False, server_default=LEGACY_TENANT))
    tables["optimizations"].append_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
    tables["optimizations"].append_column(sa.Column("owner", sa.String(128), nullable=True))
    tables["optimizations"].append_column(sa.Column("chunks", sa.Integer, nullable=True))


def _migration_4(connection: Connection) -> None:
    """Sweeps shared across replicas (expand only): chunk results, and procrastinate's own schema.

    procrastinate (PostgreSQL) queues one task per chunk of a sweep; every replica's worker takes them.
    Its schema is the pinned release's own SQL, applied once under the migration lock.
    """
    connection.execute(sa.text("ALTER TABLE optimizations ADD COLUMN chunks INTEGER"))
    SWEEP_CHUNKS.create(connection, checkfirst=True)
    if connection.dialect.name == "postgresql":
        from procrastinate.schema import SchemaManager  # noqa: PLC0415 - PostgreSQL only

        if connection.execute(sa.text("SELECT to_regclass('procrastinate_jobs')")).scalar() is None:
            cursor = connection.connection.cursor()  # no parameters: psycopg leaves the SQL's % signs alone
            cursor.execute(SchemaManager.get_schema())


SWEEP_CHUNKS = sa.Table(
    "sweep_chunks",
    sa.MetaData(),
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True),
    sa.Column("evaluated", sa.Integer, nullable=False),
    sa.Column("results", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
"""One row per finished chunk of a distributed sweep; the primary key makes a re-run chunk a no-op."""

RATE_LIMITS = sa.Table(
    "rate_limits",
    sa.MetaData(),
    sa.Column("bucket", sa.String(200), primary_key=True),
    sa.Column("tat", sa.Float, nullable=False),
)
"""GCRA state of every rate-limit bucket: its theoretical arrival time, in epoch seconds."""

MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_migration_1, _migration_2, _migration_3, _migration_4)

MIGRATIONS_TABLE = sa.Table(
    "schema_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime, nullable=False),
)


def current_tables(metadata: sa.MetaData, metric_names: Sequence[str]) -> dict[str, sa.Table]:
    """The tables as the newest migration leaves them, metric columns included."""
    tables = _fixed_tables(metadata)
    for name in metric_names:
        tables["backtests"].append_column(sa.Column(metric_column(name), sa.Float, nullable=True))
    _later_columns(tables)
    return tables


def migrate(engine: Engine, dialect: str, metric_names: Sequence[str], attempts: int = 5) -> int:
    """Apply pending migrations and add missing metric columns; returns the schema version."""
    for attempt in range(attempts):
        try:
            with engine.begin() as connection:
                if dialect == "postgresql":
                    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
                MIGRATIONS_TABLE.create(connection, checkfirst=True)
                applied = set(connection.execute(sa.select(MIGRATIONS_TABLE.c.version)).scalars())
                for version, migration in enumerate(MIGRATIONS, start=1):
                    if version not in applied:
                        migration(connection)
                        connection.execute(MIGRATIONS_TABLE.insert().values(version=version, applied_at=utcnow()))
                        log.info("event=migration_applied version=%d", version)
                _sync_metric_columns(connection, metric_names)
            return len(MIGRATIONS)
        except (OperationalError, IntegrityError, ProgrammingError):  # a concurrent migrator won the race
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    return len(MIGRATIONS)


def _sync_metric_columns(connection: Connection, metric_names: Sequence[str]) -> None:
    existing = {column["name"] for column in sa.inspect(connection).get_columns("backtests")}
    for name in metric_names:
        column = metric_column(name)
        if column not in existing:
            connection.execute(sa.text(f'ALTER TABLE backtests ADD COLUMN "{column}" FLOAT'))
