"""The thin kopf layer. Import this module (``kopf run -m backtest_operator.handlers``) to register it.

create/update/resume handlers only record intent: they wake the object's worker. One daemon per
object, the rollout worker, is the single writer of the rollout status; it evaluates at the spec's
analysis interval, or at once when woken. All state lives in the object's status, so a restarted
operator resumes exactly where the last one stopped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client import start_http_server

from backtest_operator.api import GROUP, PLURAL, VERSION
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


def _api_client() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


def _post_event(body: dict[str, Any], event: Event) -> None:
    kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1000])  # type: ignore[arg-type]


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, logger: Logger, **_: Any) -> None:
    """Keep kopf's bookkeeping in annotations (the status schema is ours) and build the reconciler."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.CRITICAL + 1  # no log lines as Events: one Event per transition instead
    config = OperatorSettings()
    cluster = await asyncio.to_thread(lambda: Cluster(_api_client()))  # discovery blocks: keep it off the loop
    memo.reconciler = Reconciler(cluster, WorkloadDefaults(router_image=config.router_image), _post_event)
    memo.analysis_slots = asyncio.Semaphore(config.max_analysis_concurrency)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_host, registry=REGISTRY)
        logger.info("metrics endpoint on %s:%d", config.metrics_host, config.metrics_port)


@kopf.on.cleanup()
async def shutdown(memo: Any, **_: Any) -> None:
    await memo.reconciler.close()


def _wakeup(memo: Any) -> asyncio.Event:
    if "wakeup" not in memo:
        memo.wakeup = asyncio.Event()
    event: asyncio.Event = memo.wakeup
    return event


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
@kopf.on.resume(*RESOURCE)
def record_intent(memo: Any, **_: Any) -> None:
    """A spec or annotation changed (or the operator restarted): wake the worker; it decides."""
    _wakeup(memo).set()


async def _sleep(stopped: Any, wakeup: asyncio.Event, seconds: float) -> None:
    woken = asyncio.ensure_future(wakeup.wait())
    halted = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({woken, halted}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        halted.cancel()
    wakeup.clear()


@kopf.daemon(*RESOURCE, cancellation_timeout=10.0)
async def rollout_worker(
    name: str, namespace: str | None, uid: str, memo: Any, stopped: Any, logger: Logger, **_: Any
) -> None:
    """The single writer of this object's rollout status."""
    owner = Owner(name=name, namespace=namespace or "default", uid=uid)
    reconciler: Reconciler = memo.reconciler
    wakeup = _wakeup(memo)
    try:
        while not stopped:
            delay = RESYNC.total_seconds()
            try:
                async with memo.analysis_slots:
                    result = await reconciler.reconcile(owner, logger)
                if result is None:
                    return
                delay = result.next_in.total_seconds()
            except InvalidSpec as exc:
                RECONCILE_ERRORS.labels("invalid").inc()
                logger.error("cannot reconcile: %s", exc)
            except (k8s.ApiException, OSError) as exc:
                RECONCILE_ERRORS.labels("api").inc()
                logger.warning("reconcile failed, retrying in %gs: %s", ERROR_BACKOFF, exc)
                delay = ERROR_BACKOFF
            await _sleep(stopped, wakeup, delay)
    finally:
        reconciler.forget(owner)
