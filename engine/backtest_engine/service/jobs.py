"""Optimization jobs: the library's `optimize` in background threads, with progress and cancellation.

A job is queued on a bounded thread pool (ENGINE_MAX_JOBS at once, ENGINE_WORKERS processes each), and
reports through the library's callbacks: `progress` moves the done/total counter, `on_results` keeps the
best parameter sets seen so far, and the cancel event stops it between chunks. The row in the store is
written at each state change and at most once a second while running, so another replica (or this one
after a restart) can still answer `GET` for it.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backtest_engine.errors import EngineError
from backtest_engine.optimize import optimize
from backtest_engine.service.backtests import DataSlice
from backtest_engine.service.metrics import JOB_STATES, EngineMetrics
from backtest_engine.service.schemas import OptimizationRequest
from backtest_engine.service.store import Store, utcnow

log = logging.getLogger("backtest_engine.service.jobs")

TOP = 10
FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass
class Job:
    id: str
    request: OptimizationRequest
    state: str = "queued"
    done: int = 0
    total: int = 0
    best: list[tuple[float, int, dict[str, Any], dict[str, float]]] = field(default_factory=list)
    error: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: int = 0
    _persisted: float = 0.0

    def keep(self, params: list[dict[str, Any]], values: list[dict[str, float]]) -> None:
        """Fold a chunk into the top-N (a bounded heap: the worst kept result sits at the root)."""
        sign = 1.0 if self.request.maximize else -1.0
        with self.lock:
            for p, v in zip(params, values, strict=True):
                score = sign * float(v.get(self.request.metric, float("-inf")))
                self._seq += 1
                item = (score, -self._seq, p, v)
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
    """Owns this process's jobs; thread-safe."""

    def __init__(self, store: Store, metrics: EngineMetrics, *, max_jobs: int, workers: int) -> None:
        self.store = store
        self.metrics = metrics
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_jobs, thread_name_prefix="optimize")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, request: OptimizationRequest, data: DataSlice, total: int) -> Job:
        job = Job(id=str(uuid.uuid4()), request=request, total=total)
        with self._lock:
            self._jobs[job.id] = job
        self._persist(job, force=True)
        self._count()
        self._pool.submit(self._run, job, data)
        return job

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            return {**job.row(), "updated_at": job.updated_at}
        return self.store.get_job(job_id)

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Ask a live job to stop; returns its row (None if unknown). Finished jobs are left as they are."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return self.store.get_job(job_id)
        job.cancel.set()
        if job.state == "queued":
            self._finish(job, "cancelled")
        return {**job.row(), "updated_at": job.updated_at}

    def shutdown(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, job: Job, data: DataSlice) -> None:
        if job.cancel.is_set():
            return
        self._set_state(job, "running")
        request = job.request

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            job.updated_at = utcnow()
            self._persist(job)

        try:
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
        except EngineError as error:
            job.error = str(error)
            self._finish(job, "failed")
            return
        except Exception:
            log.exception("event=optimization_failed job=%s", job.id)
            job.error = "internal error"
            self._finish(job, "failed")
            return
        job.done = result.evaluated
        self._finish(job, "cancelled" if result.cancelled else "succeeded")

    def _set_state(self, job: Job, state: str) -> None:
        job.state = state
        job.updated_at = utcnow()
        self._count()
        self._persist(job, force=True)

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

    def _count(self) -> None:
        with self._lock:
            counts = {state: 0 for state in JOB_STATES}
            for job in self._jobs.values():
                counts[job.state] = counts.get(job.state, 0) + 1
        self.metrics.set_jobs(counts)
