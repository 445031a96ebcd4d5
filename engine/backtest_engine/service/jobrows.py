"""Optimization job rows: admission under a global and a per-tenant bound, heartbeats, claims and recovery.

The rows are the queue's truth, shared by every replica: admission counts the queued and running jobs
of everyone and of the tenant in one transaction (under a PostgreSQL advisory lock, so two replicas
cannot both admit the last slot), and a replica that stops heart-beating loses its jobs to whichever
replica claims them first (an UPDATE that only one writer can win).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from backtest_engine.service.schema import utcnow

ACTIVE_STATES = ("queued", "running")
_ADMISSION_LOCK_ID = 7_274_271_306


class QueueFull(Exception):
    """The global or the tenant's bound on queued and running jobs is reached."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class JobBounds:
    max_active: int
    """Queued plus running jobs across every replica and tenant."""
    max_per_tenant: int
    """Queued plus running jobs of one tenant."""
    retry_after: int = 30


class JobRows:
    """Mixin of `Store`: the `optimizations` table."""

    engine: Engine
    dialect: str
    optimizations: sa.Table

    def admit_job(self, row: Mapping[str, Any], bounds: JobBounds) -> None:
        """Insert a queued job unless a bound is reached (QueueFull); atomic across replicas."""
        table = self.optimizations
        active = table.c.state.in_(ACTIVE_STATES)
        with self.engine.begin() as connection:
            if self.dialect == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADMISSION_LOCK_ID})
            count = sa.select(sa.func.count()).select_from(table)
            everyone = int(connection.execute(count.where(active)).scalar() or 0)
            mine = int(connection.execute(count.where(active, table.c.tenant == row["tenant"])).scalar() or 0)
            if mine >= bounds.max_per_tenant:
                raise QueueFull(
                    f"this tenant already has {mine} optimizations queued or running (limit {bounds.max_per_tenant})",
                    bounds.retry_after,
                )
            if everyone >= bounds.max_active:
                raise QueueFull(
                    f"the service already has {everyone} optimizations queued or running (limit {bounds.max_active})",
                    bounds.retry_after,
                )
            connection.execute(table.insert().values(**row, updated_at=utcnow()))

    def save_job(self, row: Mapping[str, Any]) -> None:
        """Update a job row (by id) from its live state."""
        values = {k: v for k, v in row.items() if k not in ("id", "created_at", "tenant")}
        with self.engine.begin() as connection:
            connection.execute(
                self.optimizations.update()
                .where(self.optimizations.c.id == row["id"])
                .values(**values, updated_at=utcnow())
            )

    def request_cancel(self, job_id: str, tenant: str | None) -> bool:
        """Flag a queued or running job for cancellation; False when it is unknown or finished."""
        table = self.optimizations
        scope = [] if tenant is None else [table.c.tenant == tenant]
        with self.engine.begin() as connection:
            updated = connection.execute(
                table.update()
                .where(table.c.id == job_id, table.c.state.in_(ACTIVE_STATES), *scope)
                .values(cancel_requested=True)
            ).rowcount
        return bool(updated)

    def cancel_requested(self, job_id: str) -> bool:
        with self.engine.connect() as connection:
            flag = connection.execute(
                sa.select(self.optimizations.c.cancel_requested).where(self.optimizations.c.id == job_id)
            ).scalar()
        return bool(flag)

    def get_job(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        table = self.optimizations
        scope = [] if tenant is None else [table.c.tenant == tenant]
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(table).where(table.c.id == job_id, *scope)).first()
        return dict(row._mapping) if row else None

    def claim_orphans(
        self, owner: str, stale_after: timedelta, limit: int, *, at_start: bool = False, now: datetime | None = None
    ) -> list[str]:
        """Take over active jobs whose runner is gone: rows released at shutdown (owner NULL), rows whose
        heartbeat is older than `stale_after`, and at start-up the rows of this process's previous
        incarnation (same owner: same host name and pid, as after a container restart). Each claim is a
        conditional UPDATE, so one replica wins each job. Returns the claimed ids."""
        table = self.optimizations
        now = now or utcnow()
        conditions = [table.c.owner.is_(None), table.c.updated_at < now - stale_after]
        if at_start:
            conditions.append(table.c.owner == owner)
        orphaned = sa.or_(*conditions)
        with self.engine.connect() as connection:
            candidates = list(
                connection.execute(
                    sa.select(table.c.id, table.c.updated_at)
                    .where(table.c.state.in_(ACTIVE_STATES), orphaned)
                    .order_by(table.c.created_at)
                    .limit(limit)
                ).all()
            )
        claimed = []
        for job_id, seen in candidates:
            with self.engine.begin() as connection:
                won = connection.execute(
                    table.update()
                    .where(table.c.id == job_id, table.c.updated_at == seen, table.c.state.in_(ACTIVE_STATES))
                    .values(owner=owner, state="queued", done=0, best=[], attempts=table.c.attempts + 1, updated_at=now)
                ).rowcount
            if won:
                claimed.append(job_id)
        return claimed

    def release_job(self, job_id: str, owner: str) -> None:
        """Hand a job back to the queue (shutdown): any replica's next heartbeat claims it at once."""
        table = self.optimizations
        with self.engine.begin() as connection:
            connection.execute(
                table.update()
                .where(table.c.id == job_id, table.c.owner == owner, table.c.state.in_(ACTIVE_STATES))
                .values(owner=None, state="queued", updated_at=utcnow())
            )
