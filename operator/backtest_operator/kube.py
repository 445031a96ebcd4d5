"""The Kubernetes edge: server-side apply, pruning, pod health and status patches.

The ``kubernetes`` client is synchronous, so every call runs in a worker thread and the kopf event loop
never blocks. Nothing here decides anything; it reads and writes what ``reconcile`` tells it to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from backtest_operator.api import GROUP, PLURAL, VERSION
from backtest_operator.workloads import LABEL_COMPONENT, LABEL_REVISION, LABEL_SERVICE, MANAGER, Manifest, Owner

READINESS_GRACE = timedelta(minutes=2)
"""A pod not ready this long after it started counts as unhealthy (a starting pod does not)."""


@dataclass(frozen=True)
class RevisionHealth:
    desired: int
    ready: int
    unhealthy: int

    @property
    def is_ready(self) -> bool:
        return self.ready >= self.desired


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch turning ``old`` into ``new`` (null deletes a key)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def _pod_unhealthy(pod: Any, now: datetime) -> bool:
    """Restarting, failed, or not ready well after it started."""
    status = pod.status
    if status is None:
        return False
    if status.phase == "Failed" or any((c.restart_count or 0) > 0 for c in status.container_statuses or []):
        return True
    ready = next((c for c in status.conditions or [] if c.type == "Ready"), None)
    started = status.start_time
    return bool(ready is not None and ready.status != "True" and started and now - started > READINESS_GRACE)


def _labels(meta: Any) -> dict[str, str]:
    return dict(getattr(meta, "labels", None) or {})


class Cluster:
    """Async facade over the API calls the operator makes."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api_client = api_client
        self.dynamic = DynamicClient(api_client)  # type: ignore[no-untyped-call]
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)

    async def apply(self, manifests: Iterable[Manifest]) -> None:
        """Server-side apply, forcing ownership of the fields the operator manages."""
        for manifest in manifests:
            await asyncio.to_thread(self._apply_one, manifest)

    def _apply_one(self, manifest: Manifest) -> None:
        resource = self.dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        self.dynamic.server_side_apply(  # type: ignore[no-untyped-call]
            resource, body=manifest, namespace=manifest["metadata"].get("namespace"),
            field_manager=MANAGER, force_conflicts=True,
        )  # fmt: skip

    async def prune_engine_deployments(self, owner: Owner, keep: set[str]) -> list[str]:
        """Delete engine Deployments of revisions no longer wanted; returns their names."""
        found = await asyncio.to_thread(
            self.apps.list_namespaced_deployment,
            owner.namespace,
            label_selector=f"{LABEL_SERVICE}={owner.name},{LABEL_COMPONENT}=engine",
        )
        names = [d.metadata.name for d in found.items if d.metadata is not None and d.metadata.name]
        removed = [name for name in names if name not in keep]
        for name in removed:
            try:
                await asyncio.to_thread(self.apps.delete_namespaced_deployment, name, owner.namespace)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise
        return removed

    async def engine_health(self, owner: Owner, now: datetime) -> dict[str, RevisionHealth]:
        """Ready and unhealthy pods of each engine revision."""
        selector = f"{LABEL_SERVICE}={owner.name},{LABEL_COMPONENT}=engine"
        deployments, pods = await asyncio.gather(
            asyncio.to_thread(self.apps.list_namespaced_deployment, owner.namespace, label_selector=selector),
            asyncio.to_thread(self.core.list_namespaced_pod, owner.namespace, label_selector=selector),
        )
        unhealthy: dict[str, int] = {}
        for pod in pods.items:
            revision = _labels(pod.metadata).get(LABEL_REVISION, "")
            unhealthy[revision] = unhealthy.get(revision, 0) + int(_pod_unhealthy(pod, now))
        health: dict[str, RevisionHealth] = {}
        for deployment in deployments.items:
            meta, status, spec = deployment.metadata, deployment.status, deployment.spec
            if meta is None or spec is None:
                continue
            revision = _labels(meta).get(LABEL_REVISION, "")
            if status is None:
                health[revision] = RevisionHealth(spec.replicas or 0, 0, unhealthy.get(revision, 0))
                continue
            current = (status.observed_generation or 0) >= (meta.generation or 0)
            ready = min(status.ready_replicas or 0, status.updated_replicas or 0) if current else 0
            health[revision] = RevisionHealth(spec.replicas or 0, ready, unhealthy.get(revision, 0))
        return health

    async def get(self, owner: Owner) -> dict[str, Any] | None:
        try:
            body = await asyncio.to_thread(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, owner.namespace, PLURAL, owner.name
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return body if isinstance(body, dict) else None

    async def patch_status(self, owner: Owner, patch: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, owner.namespace, PLURAL, owner.name, {"status": patch},
        )  # fmt: skip


__all__ = ["Cluster", "NotFoundError", "RevisionHealth", "merge_patch"]
