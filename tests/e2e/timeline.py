"""What the cluster held when: pods' readiness, track Service selectors and the router's weight, ordered by
resourceVersion.

The API server stamps every write with the etcd revision that committed it; on one etcd (the local
control plane) those are totally ordered, so "which pods were ready when the weight changed" has an exact
answer that does not depend on when watch events reached the test. Watches run in background threads from
the start of a test to its end; ``capacity_violations`` replays them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from backtest_operator.capacity import share_replicas

REVISION = "backtest.dev/revision"


@dataclass(frozen=True)
class Change:
    version: int
    kind: str  # "pod", "service", "weight"
    event: str  # ADDED, MODIFIED, DELETED
    obj: Any


def _pod_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


@dataclass
class Timeline:
    core: k8s.CoreV1Api
    namespace: str
    service: str = "quant"
    changes: list[Change] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Timeline:
        selector = {"label_selector": f"backtest.dev/service={self.service}"}
        self._watch("pod", self.core.list_namespaced_pod, selector)
        self._watch("service", self.core.list_namespaced_service, selector)
        self._watch("weight", self.core.list_namespaced_config_map,
                    {"field_selector": f"metadata.name={self.service}-weight"})  # fmt: skip
        return self

    def _watch(self, kind: str, lister: Callable[..., Any], filters: dict[str, str]) -> None:
        # The lister itself (not a wrapper): the client reads its docstring to deserialize watch events.
        listed = lister(self.namespace, **filters)
        with self._lock:  # the state when the test began, replayed before any change
            self.changes += [Change(0, kind, "ADDED", item) for item in listed.items]

        def run() -> None:
            version = listed.metadata.resource_version
            while not self._stop.is_set():
                try:
                    stream = k8s_watch.Watch().stream(
                        lister, self.namespace, resource_version=version, timeout_seconds=5, **filters
                    )
                    for event in stream:
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise AssertionError(f"the {kind} watch failed: {obj}")
                        version = obj.metadata.resource_version
                        with self._lock:
                            self.changes.append(Change(int(version), kind, event["type"], obj))
                        if self._stop.is_set():
                            return
                except (ProtocolError, ReadTimeoutError, k8s.ApiException):
                    continue

        thread = threading.Thread(target=run, name=f"timeline-{kind}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> list[Change]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        with self._lock:
            unique = {(c.version, c.kind, c.obj.metadata.name): c for c in self.changes}
        return sorted(unique.values(), key=lambda c: c.version)  # version 0: the initial state, first


@dataclass
class Check:
    version: int
    what: str
    weight: int
    canary_ready: int
    stable_ready: int
    canary_needed: int
    stable_needed: int

    @property
    def ok(self) -> bool:
        return self.canary_ready >= self.canary_needed and self.stable_ready >= self.stable_needed


def capacity_checks(changes: list[Change], total: int) -> list[Check]:
    """At every moment traffic moved (a weight change, a track Service switching revision), the ready pods
    of the revision each track selects, against the share of traffic that track received."""
    ready: dict[str, tuple[str, bool]] = {}
    selects: dict[str, str] = {}
    weight = 0
    checks: list[Check] = []

    def check(version: int, what: str) -> None:
        canary = sum(1 for revision, up in ready.values() if up and revision == selects.get("canary"))
        stable = sum(1 for revision, up in ready.values() if up and revision == selects.get("stable"))
        checks.append(
            Check(
                version,
                what,
                weight,
                canary,
                stable,
                share_replicas(weight, total),
                share_replicas(100 - weight, total),
            )
        )

    for change in changes:
        obj = change.obj
        if change.kind == "pod":
            if change.event == "DELETED":
                ready.pop(obj.metadata.name, None)
            else:
                ready[obj.metadata.name] = ((obj.metadata.labels or {}).get(REVISION, ""), _pod_ready(obj))
        elif change.kind == "service":
            track = (obj.metadata.labels or {}).get("backtest.dev/track")
            if track in ("stable", "canary"):
                revision = (obj.spec.selector or {}).get(REVISION, "")
                if selects.get(track) != revision:
                    selects[track] = revision
                    if change.version and (track == "stable" or weight > 0):
                        check(change.version, f"{track} Service selects {revision}")
        elif change.kind == "weight" and change.event != "DELETED":
            new = int((obj.data or {}).get("weight", "0"))
            if new != weight:
                weight = new
                if change.version:
                    check(change.version, f"weight {new}%")
    return checks
