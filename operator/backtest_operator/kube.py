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
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from backtest_operator.api import GROUP, PLURAL, VERSION
from backtest_operator.podhealth import PodState, classify
from backtest_operator.workloads import LABEL_COMPONENT, LABEL_REVISION, LABEL_SERVICE, MANAGER, Manifest, Owner

REPLICAS_MANAGER = f"{MANAGER}-replicas"
"""The field manager that applies only the engine Deployments' replicas, never by force over anyone else:
so an HPA or `kubectl scale` that took them over keeps them (the operator reports it instead)."""


@dataclass(frozen=True)
class RevisionHealth:
    """The pods of one engine revision, as they bear on the release (see ``podhealth``)."""

    desired: int
    ready: int
    unhealthy: int
    pods: int = 0
    """Pods not terminating."""
    replicas_owner: str | None = None
    """Another field manager that owns the Deployment's spec.replicas (an HPA or `kubectl scale` aimed at
    the Deployment instead of the BacktestService); the operator leaves its value alone."""

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


def replicas_owners(deployment: Any) -> list[str]:
    """Field managers other than the operator's that own ``spec.replicas`` of a Deployment."""
    owners: list[str] = []
    for entry in (deployment.metadata.managed_fields if deployment.metadata else None) or []:
        fields = entry.fields_v1 or {}
        if "f:replicas" in (fields.get("f:spec") or {}) and entry.manager not in (MANAGER, REPLICAS_MANAGER):
            owners.append(str(entry.manager))
    return owners


def _labels(meta: Any) -> dict[str, str]:
    return dict(getattr(meta, "labels", None) or {})


def _is_engine_deployment(manifest: Manifest) -> bool:
    labels = manifest["metadata"].get("labels", {})
    return bool(manifest["kind"] == "Deployment" and labels.get(LABEL_COMPONENT) == "engine")


class Cluster:
    """Async facade over the API calls the operator makes."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api_client = api_client
        self.dynamic = DynamicClient(api_client)  # type: ignore[no-untyped-call]
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)

    async def apply(self, manifests: Iterable[Manifest], current: dict[str, Any] | None = None) -> list[str]:
        """Server-side apply, forcing ownership of the fields the operator manages, except the replicas of
        engine Deployments (``current``: those Deployments as listed, by name). Returns a sentence per
        Deployment whose replicas another manager owns and the operator therefore left alone."""
        yielded: list[str] = []
        for manifest in manifests:
            if _is_engine_deployment(manifest):
                note = await asyncio.to_thread(self._apply_engine_deployment, manifest, (current or {}))
                if note:
                    yielded.append(note)
            else:
                await asyncio.to_thread(self._apply_one, manifest)
        return yielded

    def _apply_engine_deployment(self, manifest: Manifest, current: dict[str, Any]) -> str:
        name = manifest["metadata"]["name"]
        replicas = manifest["spec"]["replicas"]
        existing = current.get(name)
        if existing is None:
            self._apply_one(manifest)  # created with its replicas, never with the default of one
            self._apply_replicas(manifest, replicas)
            return ""
        without = {**manifest, "spec": {k: v for k, v in manifest["spec"].items() if k != "replicas"}}
        owners = replicas_owners(existing)
        now = existing.spec.replicas if existing.spec is not None else None
        note = ""
        if not owners or now == replicas:
            self._apply_replicas(manifest, replicas)
        else:
            note = (
                f"Deployment {name}: replicas are set by {', '.join(sorted(set(owners)))} ({now}, the rollout "
                f"plans {replicas}); the operator leaves them alone: scale the BacktestService instead"
            )
        self._apply_one(without)
        return note

    def _apply_replicas(self, manifest: Manifest, replicas: int) -> None:
        body = {
            "apiVersion": manifest["apiVersion"],
            "kind": manifest["kind"],
            "metadata": {"name": manifest["metadata"]["name"], "namespace": manifest["metadata"]["namespace"]},
            "spec": {"replicas": replicas},
        }
        self._apply_one(body, REPLICAS_MANAGER)

    def _apply_one(self, manifest: Manifest, manager: str = MANAGER) -> None:
        resource = self.dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        self.dynamic.server_side_apply(  # type: ignore[no-untyped-call]
            resource, body=manifest, namespace=manifest["metadata"].get("namespace"),
            field_manager=manager, force_conflicts=True,
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

    async def engine_state(
        self, owner: Owner, now: datetime, since: datetime | None, grace: timedelta
    ) -> tuple[dict[str, RevisionHealth], dict[str, Any]]:
        """Ready, unhealthy and live pods of each engine revision, and the engine Deployments by name."""
        selector = f"{LABEL_SERVICE}={owner.name},{LABEL_COMPONENT}=engine"
        deployments, pods = await asyncio.gather(
            asyncio.to_thread(self.apps.list_namespaced_deployment, owner.namespace, label_selector=selector),
            asyncio.to_thread(self.core.list_namespaced_pod, owner.namespace, label_selector=selector),
        )
        counts: dict[str, dict[PodState, int]] = {}
        for pod in pods.items:
            revision = _labels(pod.metadata).get(LABEL_REVISION, "")
            state = classify(pod, now, since, grace).state
            tally = counts.setdefault(revision, dict.fromkeys(PodState, 0))
            tally[state] += 1
        health: dict[str, RevisionHealth] = {}
        by_name: dict[str, Any] = {}
        for deployment in deployments.items:
            meta, spec = deployment.metadata, deployment.spec
            if meta is None or spec is None:
                continue
            by_name[str(meta.name)] = deployment
            revision = _labels(meta).get(LABEL_REVISION, "")
            tally = counts.get(revision, dict.fromkeys(PodState, 0))
            owners = replicas_owners(deployment)
            health[revision] = RevisionHealth(
                desired=spec.replicas or 0,
                ready=tally[PodState.READY],
                unhealthy=tally[PodState.UNHEALTHY],
                pods=tally[PodState.READY] + tally[PodState.STARTING] + tally[PodState.UNHEALTHY],
                replicas_owner=owners[0] if owners else None,
            )
        return health, by_name

    async def read(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Any object as a dict (the HTTPRoute a gateway reports on), None when it does not exist."""

        def get() -> dict[str, Any] | None:
            try:
                resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
                found = self.dynamic.get(resource, name=name, namespace=namespace)  # type: ignore[no-untyped-call]
            except (NotFoundError, ResourceNotFoundError):
                return None  # the object, or its whole API (no Gateway API CRDs installed), is not there
            body: dict[str, Any] = found.to_dict()
            return body

        return await asyncio.to_thread(get)

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


__all__ = ["REPLICAS_MANAGER", "Cluster", "NotFoundError", "RevisionHealth", "merge_patch", "replicas_owners"]
