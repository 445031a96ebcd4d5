"""Optimizations spread over every replica, through procrastinate (a PostgreSQL task queue).

With PostgreSQL the service does not run a sweep in the process that received it: the job becomes a row
(admitted under the same global and per-tenant bounds as local jobs) plus one procrastinate task per
chunk of parameter sets. Every replica runs a procrastinate worker inside its process, so each chunk is
taken by whichever replica is free, and more replicas finish a sweep sooner (bench/sweep_scaling.py).

Nothing is lost when a replica dies: a chunk's results are written in one row keyed by (job, chunk), so
a chunk that runs twice is written once, and procrastinate's heartbeats let the other replicas find the
chunks a dead worker held (`get_stalled_jobs`) and queue them again. On SIGTERM the worker stops
fetching, lets running chunks finish within the drain budget, and what it aborts is retried.
Progress and best-of are read from the chunk rows, so any replica answers GET for any sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anyio.from_thread
import procrastinate
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from backtest_engine.metrics import rank_value
from backtest_engine.optimize import SetEvaluator, parameter_grid, random_parameters
from backtest_engine.service.jobrows import ACTIVE_STATES, JobBounds, QueueFull
from backtest_engine.service.jobs import FINAL_STATES, TOP, Loader
from backtest_engine.service.problems import ServiceProblem
from backtest_engine.service.schema import SWEEP_CHUNKS, utcnow
from backtest_engine.service.schemas import OptimizationRequest
from backtest_engine.service.store import Store

log = logging.getLogger("backtest_engine.service.sweeps")

QUEUE = "sweeps"
TASK = "backtest_engine.sweep_chunk"
HEARTBEAT_SECONDS = 5.0
STALLED_AFTER_SECONDS = 20.0


def candidates(request: OptimizationRequest) -> list[dict[str, Any]]:
    """The sweep's parameter sets, in a fixed order every replica computes identically."""
    if request.method == "grid":
        return parameter_grid(request.strategy, request.space)
    return random_parameters(request.strategy, request.space, request.samples, seed=request.seed)


def ranked_best(results: list[dict[str, Any]], metric: str, maximize: bool) -> list[dict[str, Any]]:
    """Top sets by `metric`; sets where it is undefined never enter best-of."""
    defined = [r for r in results if r["metrics"].get(metric) is not None]
    return sorted(defined, key=lambda r: rank_value(r["metrics"][metric], maximize), reverse=True)[:TOP]


class Sweeps:
    """The job interface of `JobRunner` (submit, get, cancel), run by every replica's procrastinate worker."""

    def __init__(
        self,
        store: Store,
        loader: Loader,
        *,
        bounds: JobBounds,
        chunk_size: int,
        concurrency: int,
        shutdown_seconds: float,
        ready: Callable[[], bool],
    ) -> None:
        self.store = store
        self.loader = loader
        self.bounds = bounds
        self.chunk_size = chunk_size
        self.concurrency = concurrency
        self.shutdown_seconds = shutdown_seconds
        self.ready = ready
        conninfo = store.url.set(drivername="postgresql").render_as_string(hide_password=False)
        connector = procrastinate.PsycopgConnector(conninfo=conninfo, min_size=1, max_size=4)
        self.app = procrastinate.App(connector=connector)
        retry = procrastinate.RetryStrategy(max_attempts=10, wait=1)
        self.task = self.app.task(name=TASK, queue=QUEUE, retry=retry)(self.run_chunk)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._prepared: OrderedDict[str, tuple[list[dict[str, Any]], SetEvaluator]] = OrderedDict()
        self._prepared_lock = threading.Lock()

    # -- lifecycle (on the event loop) -----------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name="sweeps-worker")]
        self._tasks.append(asyncio.create_task(self._rescue(), name="sweeps-rescue"))

    async def _work(self) -> None:
        while not self.ready():  # noqa: ASYNC110 - the schema (procrastinate's too) comes with the migrations
            await asyncio.sleep(2)
        await self.app.open_async()
        await self.app.run_worker_async(
            queues=[QUEUE],
            concurrency=self.concurrency,
            install_signal_handlers=False,
            shutdown_graceful_timeout=self.shutdown_seconds,
            update_heartbeat_interval=HEARTBEAT_SECONDS,
            stalled_worker_timeout=STALLED_AFTER_SECONDS,
            listen_notify=True,
            fetch_job_polling_interval=1.0,
        )

    async def _rescue(self) -> None:
        """Queue again the chunks whose worker stopped heart-beating (a replica killed mid-sweep)."""
        while True:
            await asyncio.sleep(STALLED_AFTER_SECONDS / 2)
            if not self.ready():
                continue
            try:
                stalled = await self.app.job_manager.get_stalled_jobs(
                    queue=QUEUE, seconds_since_heartbeat=STALLED_AFTER_SECONDS
                )
                for job in stalled:
                    log.info("event=sweep_chunk_rescued job=%s kwargs=%s", job.id, job.task_kwargs)
                    await self.app.job_manager.retry_job_by_id_async(job.id or 0, retry_at=utcnow())
            except Exception:
                log.warning("event=sweep_rescue_failed", exc_info=True)

    async def stop(self) -> None:
        """SIGTERM: stop fetching, let running chunks finish (up to the budget); aborted ones are retried."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.app.close_async()

    # -- the API's job interface (in worker threads) ---------------------------------------------------------

    def submit(self, request: OptimizationRequest, tenant: str, total: int) -> dict[str, Any]:
        if self._stopping:
            raise ServiceProblem(503, "shutting down: not taking new optimizations", headers={"Retry-After": "5"})
        chunks = max(1, math.ceil(total / self.chunk_size))
        now = utcnow()
        row = {
            "id": str(uuid.uuid4()), "tenant": tenant, "state": "queued", "strategy": request.strategy,
            "request": request.model_dump(mode="json"), "done": 0, "total": total, "best": [], "error": None,
            "created_at": now, "chunks": chunks,
        }  # fmt: skip
        try:
            self.store.admit_job(row, self.bounds)
        except QueueFull as full:
            raise ServiceProblem(429, full.detail, headers={"Retry-After": str(full.retry_after)}) from None
        kwargs: list[dict[str, Any]] = [{"job_id": row["id"], "chunk": index} for index in range(chunks)]
        anyio.from_thread.run(lambda: self.task.batch_defer_async(*kwargs))
        return {**row, "updated_at": now}

    def get(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        row = self.store.get_job(job_id, tenant)
        if row is None or not row.get("chunks"):
            return row
        request = row["request"]
        done, results = self._results(job_id)
        return {**row, "done": done, "best": ranked_best(results, request["metric"], request["maximize"])}

    def cancel(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        """Queued chunks of a cancelled sweep are skipped; chunks already done keep their results."""
        table = self.store.optimizations
        scope = [] if tenant is None else [table.c.tenant == tenant]
        with self.store.engine.begin() as connection:
            connection.execute(
                table.update()
                .where(table.c.id == job_id, table.c.state.in_(ACTIVE_STATES), *scope)
                .values(state="cancelled", cancel_requested=True, updated_at=utcnow())
            )
        return self.get(job_id, tenant)

    def _results(self, job_id: str) -> tuple[int, list[dict[str, Any]]]:
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                sa.select(SWEEP_CHUNKS.c.evaluated, SWEEP_CHUNKS.c.results).where(SWEEP_CHUNKS.c.job_id == job_id)
            ).all()
        return sum(r.evaluated for r in rows), [item for r in rows for item in r.results]

    # -- one chunk (a procrastinate task, in the worker's thread) --------------------------------------------

    def run_chunk(self, job_id: str, chunk: int) -> None:
        row = self.store.get_job(job_id, None)
        if row is None or row["state"] in FINAL_STATES or row["cancel_requested"]:
            return
        self._set_state(job_id, "queued", "running")
        try:
            sets, evaluate = self._prepare(job_id, row)
        except ServiceProblem as problem:  # the dataset went away: the sweep cannot finish
            self._fail(job_id, problem.detail)
            return
        size = math.ceil(len(sets) / int(row["chunks"]))
        mine = sets[chunk * size : (chunk + 1) * size]
        values = evaluate(mine)
        results = [{"params": p, "metrics": v} for p, v in zip(mine, values, strict=True)]
        self._record(job_id, chunk, results, int(row["chunks"]))

    def _prepare(self, job_id: str, row: dict[str, Any]) -> tuple[list[dict[str, Any]], SetEvaluator]:
        """The sweep's sets and an evaluator on its data, kept for the next chunks this process takes."""
        with self._prepared_lock:
            found = self._prepared.get(job_id)
        if found is not None:
            return found
        request = OptimizationRequest.model_validate(row["request"])
        data = self.loader(request, row["tenant"])
        execution = request.execution.model_dump()
        prepared = (candidates(request), SetEvaluator(data.frame, request.strategy, metric=request.metric, **execution))
        with self._prepared_lock:
            self._prepared[job_id] = prepared
            while len(self._prepared) > 4:  # a few sweeps at once; each holds one data frame
                self._prepared.popitem(last=False)
        return prepared

    def _record(self, job_id: str, chunk: int, results: list[dict[str, Any]], chunks: int) -> None:
        insert = (
            postgresql.insert(SWEEP_CHUNKS)
            .values(job_id=job_id, chunk=chunk, evaluated=len(results), results=results, created_at=utcnow())
            .on_conflict_do_nothing()
        )
        table = self.store.optimizations
        with self.store.engine.begin() as connection:
            connection.execute(insert)
            finished = connection.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(SWEEP_CHUNKS.c.evaluated), 0)).where(
                    SWEEP_CHUNKS.c.job_id == job_id
                )
            ).one()
            values: dict[str, Any] = {"done": int(finished[1]), "updated_at": utcnow()}
            if int(finished[0]) >= chunks:
                values["state"] = "succeeded"
                log.info("event=optimization_finished job=%s state=succeeded done=%d", job_id, finished[1])
            connection.execute(
                table.update().where(table.c.id == job_id, table.c.state.in_(ACTIVE_STATES)).values(**values)
            )

    def _set_state(self, job_id: str, old: str, new: str) -> None:
        table = self.store.optimizations
        with self.store.engine.begin() as connection:
            connection.execute(
                table.update().where(table.c.id == job_id, table.c.state == old).values(state=new, updated_at=utcnow())
            )

    def _fail(self, job_id: str, error: str) -> None:
        table = self.store.optimizations
        with self.store.engine.begin() as connection:
            connection.execute(
                table.update()
                .where(table.c.id == job_id, table.c.state.in_(ACTIVE_STATES))
                .values(state="failed", error=error, updated_at=utcnow())
            )


__all__ = ["Sweeps", "candidates", "ranked_best"]
