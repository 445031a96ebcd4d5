"""The thin kopf layer. Import this module (``kopf run -m backtest_operator.handlers``) to register it.

One watch-event handler starts a rollout worker per object and wakes it whenever something the worker
must act on changes: the spec (its generation) or a control annotation (promote, abort, retry). The
worker is the single writer of the rollout status; it evaluates at the spec's analysis interval, or at
once when woken. All state lives in the object's status, so a restarted operator resumes exactly where
the last one stopped.

Why not kopf's change handlers and daemons: kopf keeps its diff base under the storage prefix and drops
annotations under that prefix from what it diffs, so with the ``backtest.dev`` prefix a control annotation
never reached an update handler and a manual abort waited for the next resync; and a kopf daemon needs a
finalizer on the object, so a BacktestService could not be deleted while no operator ran. A raw watch
handler needs neither: nothing of kopf's is written to the object, and deletion is left to Kubernetes'
garbage collector (everything the operator creates carries an owner reference).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client import start_http_server

from backtest_operator.api import GROUP, PLURAL, VERSION
from backtest_operator.controls import ANNOTATIONS
from backtest_operator.errors import InvalidSpec
from backtest_operator.kube import Cluster
from backtest_operator.metrics import RECONCILE_ERRORS, REGISTRY
from backtest_operator.policy import Event
from backtest_operator.reconcile import RESYNC, Reconciler
from backtest_operator.settings import OperatorSettings
from backtest_operator.workloads import Owner, WorkloadDefaults

RESOURCE = (GROUP, VERSION, PLURAL)
Logger = logging.Logger | logging.LoggerAdapter[Any]
ERROR_BACKOFF = 10.0
LEGACY_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
"""The finalizer earlier versions' kopf daemon put on every object; removed when seen."""
LEGACY_ANNOTATIONS = (f"{GROUP}/last-handled-configuration", f"{GROUP}/kopf-managed")
"""kopf bookkeeping earlier versions left on the object; removed with the finalizer."""


def _api_client() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


def _post_event(body: dict[str, Any], event: Event) -> None:
    kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1000])  # type: ignore[arg-type]


def intent(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the worker must act on at once when it changes: the spec's generation and the controls."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return (meta.get("generation"), *(annotations.get(key) for key in sorted(ANNOTATIONS.values())))


@dataclass
class Worker:
    task: asyncio.Task[None]
    wakeup: asyncio.Event
    intent: tuple[Any, ...]


@dataclass
class Workers:
    """One rollout worker per object, started on the first watch event that shows the object."""

    reconciler: Reconciler
    slots: asyncio.Semaphore
    running: dict[str, Worker] = field(default_factory=dict)

    def observe(self, body: Mapping[str, Any], logger: Logger) -> None:
        meta = body["metadata"]
        owner = Owner(name=meta["name"], namespace=meta.get("namespace") or "default", uid=meta["uid"])
        worker = self.running.get(owner.uid)
        if worker is not None and not worker.task.done():
            seen = intent(body)
            if seen != worker.intent:
                worker.intent = seen
                worker.wakeup.set()
            return
        wakeup = asyncio.Event()
        task = asyncio.create_task(self._run(owner, wakeup, logger), name=f"rollout-{owner.namespace}/{owner.name}")
        self.running[owner.uid] = Worker(task, wakeup, intent(body))

    async def stop(self, uid: str) -> None:
        worker = self.running.pop(uid, None)
        if worker is not None:
            worker.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker.task

    async def stop_all(self) -> None:
        for uid in list(self.running):
            await self.stop(uid)

    async def _run(self, owner: Owner, wakeup: asyncio.Event, logger: Logger) -> None:
        """The single writer of this object's rollout status."""
        try:
            while True:
                delay = RESYNC.total_seconds()
                try:
                    async with self.slots:
                        result = await self.reconciler.reconcile(owner, logger)
                    if result is None:
                        return  # deleted, or being deleted: the garbage collector does the rest
                    delay = result.next_in.total_seconds()
                except InvalidSpec as exc:
                    RECONCILE_ERRORS.labels("invalid").inc()
                    logger.error("cannot reconcile: %s", exc)
                except (k8s.ApiException, OSError) as exc:
                    RECONCILE_ERRORS.labels("api").inc()
                    logger.warning("reconcile failed, retrying in %gs: %s", ERROR_BACKOFF, exc)
                    delay = ERROR_BACKOFF
                except Exception:  # a bug must not end this object's worker: say so loudly, and try again
                    RECONCILE_ERRORS.labels("unexpected").inc()
                    logger.exception("reconcile raised; retrying in %gs", ERROR_BACKOFF)
                    delay = ERROR_BACKOFF
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=delay)
                wakeup.clear()
        finally:
            self.reconciler.forget(owner)


class _QuietWatchHandler(logging.Filter):
    """kopf logs every handler run at INFO; for a handler that runs on every watch event that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Handler 'on_watch_event'")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, logger: Logger, **_: Any) -> None:
    """Build the reconciler and the worker registry; no kopf bookkeeping is ever written to objects."""
    settings.posting.level = logging.CRITICAL + 1  # no log lines as Events: one Event per transition instead
    logging.getLogger("kopf.objects").addFilter(_QuietWatchHandler())
    config = OperatorSettings()
    cluster = await asyncio.to_thread(lambda: Cluster(_api_client()))  # discovery blocks: keep it off the loop
    reconciler = Reconciler(cluster, WorkloadDefaults(router_image=config.router_image), _post_event)
    memo.workers = Workers(reconciler, asyncio.Semaphore(config.max_analysis_concurrency))
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_host, registry=REGISTRY)
        logger.info("metrics endpoint on %s:%d", config.metrics_host, config.metrics_port)


@kopf.on.cleanup()
async def shutdown(memo: Any, **_: Any) -> None:
    await memo.workers.stop_all()
    await memo.workers.reconciler.close()


@kopf.on.event(*RESOURCE)
async def on_watch_event(
    event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, logger: Logger, **_: Any
) -> None:
    """Every watch event (and the initial listing): start the object's worker, or wake it on new intent."""
    workers: Workers = memo.workers
    meta = body.get("metadata") or {}
    if event.get("type") == "DELETED":
        await workers.stop(meta.get("uid", ""))
        return
    if LEGACY_FINALIZER in (meta.get("finalizers") or []):
        await _drop_legacy_bookkeeping(workers.reconciler.cluster, body)
    workers.observe(body, logger)


async def _drop_legacy_bookkeeping(cluster: Cluster, body: Mapping[str, Any]) -> None:
    """Remove the finalizer (and annotations) an earlier version's kopf daemon left, so deletion never
    waits for an operator again."""
    meta = body["metadata"]
    finalizers = [f for f in meta.get("finalizers") or [] if f != LEGACY_FINALIZER]
    annotations = {key: None for key in LEGACY_ANNOTATIONS if key in (meta.get("annotations") or {})}
    patch: dict[str, Any] = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
    if annotations:
        patch["metadata"]["annotations"] = annotations
    try:
        await asyncio.to_thread(
            cluster.custom.patch_namespaced_custom_object,
            GROUP, VERSION, meta.get("namespace"), PLURAL, meta["name"], patch,
        )  # fmt: skip
    except k8s.ApiException as exc:
        if exc.status not in (404, 409):  # gone, or changed meanwhile: the next event tries again
            raise
