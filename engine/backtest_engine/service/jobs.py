"""Optimization jobs: the library's `optimize` in background threads, bounded, recoverable and drained.

Admission: a job is a row first (`JobRows.admit_job`), admitted only while the service has fewer than
ENGINE_MAX_QUEUED_JOBS queued or running jobs and the tenant fewer than ENGINE_MAX_JOBS_PER_TENANT;
otherwise 429 with Retry-After. A queued job holds no data in memory: its frame is loaded when a slot
(ENGINE_MAX_JOBS per process) takes it, and a finished job leaves memory (its row keeps the result).

Progress goes to the row at each state change, at most once a second while running, and at every
heartbeat, so any replica answers `GET` for it; a replica that does not hold a job cancels it by flagging
the row. Recovery: a job whose runner died (no heartbeat for `stale_after`, or this container's previous
incarnation at start-up) is claimed by one replica and run again from the start, up to `max_attempts`
times, then failed. On SIGTERM the process stops admitting, lets running jobs finish within the drain
budget, and hands the rest back to the queue, where another replica's next heartbeat claims them.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from backtest_engine.errors import EngineError
from backtest_engine.metrics import MetricValues
from backtest_engine.optimize import optimize
from backtest_engine.service.backtests import DataSlice
from backtest_engine.service.jobrows import JobBounds, QueueFull
from backtest_engine.service.metrics import JOB_STATES, EngineMetrics
from backtest_engine.service.problems import ServiceProblem
from backtest_engine.service.schemas import OptimizationRequest
from backtest_engine.service.store import Store, utcnow

log = logging.getLogger("backtest_engine.service.jobs")

TOP = 10
FINAL_STATES = ("succeeded", "failed", "cancelled")
HEARTBEAT_SECONDS = 10.0
STALE_AFTER = timedelta(seconds=45)
MAX_ATTEMPTS = 3
Loader = Callable[[OptimizationRequest, str], DataSlice]


def process_owner() -> str:
    """This process as a job owner: host name (the pod name in a cluster) and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


@dataclass
class Job:
    id: str
    tenant: str
    request: OptimizationRequest
    state: str = "queued"
    done: int = 0
    total: int = 0
    best: list[tuple[float, int, dict[str, Any], MetricValues]] = field(default_factory=list)
    error: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    cancel: threading.Event = field(default_factory=threading.Event)
    released: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: int = 0
    _persisted: float = 0.0

    def keep(self, params: list[dict[str, Any]], values: list[MetricValues]) -> None:
        """Fold a chunk into the top-N (a bounded heap: the worst kept result sits at the root).

        Sets whose ranking metric is undefined (None) never enter best-of.
        """
        sign = 1.0 if self.request.maximize else -1.0
        with self.lock:
            for p, v in zip(params, values, strict=True):
                value = v.get(self.request.metric)
                if value is None:
                    continue
                self._seq += 1
                item = (sign * float(value), -self._seq, p, v)
                if len(self.best) < TOP:
                    heapq.heappush(self.best, item)
                elif item > self.best[0]:
                    heapq.heapreplace(self.best, item)

    def ranked(self) -> list[dict[str, Any]]:
        with self.lock:
            items = sorted(self.best, reverse=True)
        return [{"params": p, "metrics": v} for _, _, p, v in items]

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "state": self.state,
            "strategy": self.request.strategy,
            "request": self.request.model_dump(mode="json"),
            "done": self.done,
            "total": self.total,
            "best": self.ranked(),
            "error": self.error,
            "created_at": self.created_at,
        }


def status(row: dict[str, Any]) -> dict[str, Any]:
    """A job row (live or stored) as the API's OptimizationStatus shape."""
    request = row["request"]
    total = int(row["total"])
    return {
        "id": row["id"],
        "state": row["state"],
        "strategy": row["strategy"],
        "metric": request.get("metric", "sharpe_ratio"),
        "maximize": request.get("maximize", True),
        "progress": {"done": row["done"], "total": total, "fraction": (row["done"] / total) if total else 0.0},
        "best": row["best"],
        "error": row.get("error"),
        "created_at": row["created_at"],
        "updated_at": row.get("updated_at") or row["created_at"],
    }


class JobRunner:
    """Owns this process's jobs; thread-safe. `start()` recovers orphaned jobs and starts the heartbeat."""

    def __init__(
        self,
        store: Store,
        metrics: EngineMetrics,
        loader: Loader,
        *,
        max_jobs: int,
        workers: int,
        bounds: JobBounds,
        owner: str | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stale_after: timedelta = STALE_AFTER,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.loader = loader
        self.workers = workers
        self.max_jobs = max_jobs
        self.bounds = bounds
        self.owner = owner or process_owner()
        self.stale_after = stale_after
        self.max_attempts = max_attempts
        self._pool = ThreadPoolExecutor(max_jobs, thread_name_prefix="optimize")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._heartbeat_seconds = heartbeat_seconds
        self._heartbeat: threading.Thread | None = None

    def start(self) -> None:
        """Re-queue what a previous incarnation of this process left running, then keep beating."""
        self.recover(at_start=True)
        self._heartbeat = threading.Thread(target=self._beat, name="optimize-heartbeat", daemon=True)
        self._heartbeat.start()

    @property
    def held(self) -> int:
        """Jobs this process holds in memory (queued here or running)."""
        with self._lock:
            return len(self._jobs)

    def submit(self, request: OptimizationRequest, tenant: str, total: int) -> dict[str, Any]:
        """Admit and queue a job; ServiceProblem 429 (Retry-After) when a bound is reached, 503 when draining."""
        if self._stopping.is_set():
            raise ServiceProblem(503, "shutting down: not taking new optimizations", headers={"Retry-After": "5"})
        job = Job(id=str(uuid.uuid4()), tenant=tenant, request=request, total=total)
        try:
            self.store.admit_job({**job.row(), "owner": self.owner}, self.bounds)
        except QueueFull as full:
            raise ServiceProblem(429, full.detail, headers={"Retry-After": str(full.retry_after)}) from None
        self._enqueue(job)
        return {**job.row(), "updated_at": job.updated_at}

    def _enqueue(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
        self._count()
        self._pool.submit(self._run, job)

    def get(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        """A job's row (live state if this process holds it); None for another tenant's job."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None and (tenant is None or job.tenant == tenant):
            return {**job.row(), "updated_at": job.updated_at}
        return self.store.get_job(job_id, tenant)

    def cancel(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        """Ask a job to stop; returns its row (None if unknown to this tenant). Finished jobs stay as they are.

        A job held by another replica is flagged in the store; that replica stops it at its next write.
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            self.store.request_cancel(job_id, tenant)
            return self.get(job_id, tenant)
        job.cancel.set()
        if job.state == "queued":
            self._finish(job, "cancelled")
        return {**job.row(), "updated_at": job.updated_at}

    def shutdown(self, drain_seconds: float = 0.0) -> None:
        """Stop taking work; let running jobs finish for up to `drain_seconds`, then hand the rest back."""
        self._stopping.set()
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline and self._running():
            time.sleep(0.1)
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.released = True
            job.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for job in jobs:
            if job.state not in FINAL_STATES:
                self.store.release_job(job.id, self.owner)
                log.info("event=optimization_released job=%s done=%d total=%d", job.id, job.done, job.total)
        with self._lock:
            self._jobs.clear()

    def _running(self) -> bool:
        with self._lock:
            return any(job.state == "running" for job in self._jobs.values())

    def recover(self, at_start: bool = False) -> None:
        """Claim jobs whose runner is gone (see `JobRows.claim_orphans`) and run them here."""
        free = self.max_jobs - self.held
        if free <= 0 or self._stopping.is_set():
            return
        try:
            claimed = self.store.claim_orphans(self.owner, self.stale_after, free, at_start=at_start)
        except Exception:
            log.exception("event=job_recovery_failed")
            return
        for job_id in claimed:
            row = self.store.get_job(job_id, None)
            if row is None:
                continue
            request = OptimizationRequest.model_validate(row["request"])
            job = Job(id=job_id, tenant=row["tenant"], request=request, total=int(row["total"]))
            job.created_at = row["created_at"]
            if int(row["attempts"]) > self.max_attempts:
                job.error = f"lost: its process stopped {self.max_attempts} times while running it"
                self._finish(job, "failed")
                continue
            log.info("event=optimization_recovered job=%s attempt=%s", job_id, row["attempts"])
            self._enqueue(job)

    def _run(self, job: Job) -> None:
        if job.cancel.is_set():
            return
        self._set_state(job, "running")
        request = job.request

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            job.updated_at = utcnow()
            self._persist(job)
            self._check_cancel_flag(job)

        try:
            data = self.loader(request, job.tenant)
            result = optimize(
                data.frame,
                request.strategy,
                request.space,
                method=request.method,
                samples=request.samples,
                seed=request.seed,
                metric=request.metric,
                maximize=request.maximize,
                workers=self.workers,
                progress=progress,
                cancel=job.cancel,
                on_results=job.keep,
                validate=False,
                **request.execution.model_dump(),
            )
        except (EngineError, ServiceProblem) as error:
            job.error = str(error)
            self._finish(job, "failed")
            return
        except Exception:
            log.exception("event=optimization_failed job=%s", job.id)
            job.error = "internal error"
            self._finish(job, "failed")
            return
        if job.released and result.cancelled:
            return  # shutdown: the row goes back to the queue, another replica runs it again
        job.done = result.evaluated
        self._finish(job, "cancelled" if result.cancelled else "succeeded")

    def _set_state(self, job: Job, state: str) -> None:
        job.state = state
        job.updated_at = utcnow()
        self._persist(job, force=True)
        if state in FINAL_STATES:
            with self._lock:
                self._jobs.pop(job.id, None)  # the row keeps the result; memory does not
        self._count()

    def _finish(self, job: Job, state: str) -> None:
        if job.state in FINAL_STATES:
            return
        self._set_state(job, state)
        log.info("event=optimization_finished job=%s state=%s done=%d total=%d", job.id, state, job.done, job.total)

    def _persist(self, job: Job, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - job._persisted < 1.0:
            return
        job._persisted = now
        try:
            self.store.save_job(job.row())
        except Exception:  # progress is best effort; the live job still answers from memory
            log.exception("event=job_persist_failed job=%s", job.id)

    def _check_cancel_flag(self, job: Job) -> None:
        """Stop a job another replica asked to cancel (the flag lives in the store)."""
        if job.state in FINAL_STATES or job.cancel.is_set():
            return
        try:
            requested = self.store.cancel_requested(job.id)
        except Exception:
            log.exception("event=cancel_flag_unreadable job=%s", job.id)
            return
        if requested:
            log.info("event=optimization_cancel_requested job=%s", job.id)
            job.cancel.set()
            if job.state == "queued":
                self._finish(job, "cancelled")

    def _beat(self) -> None:
        """Keep live rows fresh, pick up cancel flags, and claim jobs whose runner is gone."""
        while not self._stopping.wait(self._heartbeat_seconds):
            with self._lock:
                live = [job for job in self._jobs.values() if job.state not in FINAL_STATES]
            for job in live:
                job.updated_at = utcnow()
                self._persist(job, force=True)
                self._check_cancel_flag(job)
            self.recover()

    def _count(self) -> None:
        with self._lock:
            counts = {state: 0 for state in JOB_STATES}
            for job in self._jobs.values():
                counts[job.state] = counts.get(job.state, 0) + 1
        self.metrics.set_jobs(counts)
