"""Where the canary weight comes from: a local file, or a ConfigMap the operator owns.

The router reads `WeightState.value` once per request, so a new weight applies to the next request and
never disturbs one in flight. Sources only ever replace it with a validated value: bad input is logged
and the last good weight stays (a typo in a ConfigMap must not shift traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("backtest_engine.router.weights")

CONFIGMAP_KEY = "weight"
FILE_POLL_SECONDS = 0.2


class InvalidWeightError(ValueError):
    """A weight source held something other than one integer 0-100."""


def parse_weight(raw: str | bytes | None) -> int:
    """One integer 0-100, whitespace around it allowed; anything else raises InvalidWeightError."""
    if raw is None:
        raise InvalidWeightError("no weight value")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    if not text:
        raise InvalidWeightError("empty weight value")
    if not text.isascii() or not text.lstrip("+-").isdigit():
        raise InvalidWeightError(f"weight is not an integer: {text[:40]!r}")
    value = int(text)
    if not 0 <= value <= 100:
        raise InvalidWeightError(f"weight {value} is outside 0-100")
    return value


class WeightState:
    """The weight in force, shared by the request path and one source; listeners see every change.

    A plain int attribute: reading it is atomic under the GIL, so the ConfigMap thread may write it while
    the event loop reads it.
    """

    def __init__(self, initial: int = 0, source: str = "none") -> None:
        self.value = initial
        self.source = source
        self.updated_at: float | None = None
        self.rejections = 0
        """Invalid values seen (and ignored) so far: shown in /router/state, so a typo is visible."""
        self._listeners: list[Callable[[int], None]] = []

    def subscribe(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)
        listener(self.value)

    def apply(self, value: int, origin: str) -> None:
        previous = self.value
        self.value = value
        self.updated_at = time.time()
        for listener in self._listeners:
            listener(value)
        if previous != value:
            log.info("event=weight_changed source=%s old=%d new=%d origin=%s", self.source, previous, value, origin)

    def reject(self, reason: str, origin: str) -> None:
        self.rejections += 1
        log.warning(
            "event=weight_rejected source=%s kept=%d reason=%r origin=%s",
            self.source,
            self.value,
            reason,
            origin,
        )


class WeightSource(Protocol):
    """Feeds a WeightState until stopped."""

    description: str

    async def start(self, state: WeightState) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _FileStamp:
    mtime_ns: int
    size: int
    inode: int


class FileWeightSource:
    """Polls a file holding one integer 0-100, for runs without a cluster.

    Polling the stat (mtime, size, inode) every 200 ms is cheaper than a read and catches both in-place
    writes and atomic renames; a change therefore applies within a second.
    """

    def __init__(self, path: Path, poll_seconds: float = FILE_POLL_SECONDS) -> None:
        self.path = path
        self.poll_seconds = poll_seconds
        self.description = f"file:{path}"
        self._stamp: _FileStamp | None = None
        self._task: asyncio.Task[None] | None = None
        self._missing_logged = False

    def poll_once(self, state: WeightState) -> None:
        """Apply the file's weight if the file changed since the last poll."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self._missing_logged:
                state.reject("weight file does not exist", str(self.path))
                self._missing_logged = True
            self._stamp = None
            return
        self._missing_logged = False
        stamp = _FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            state.reject(f"cannot read weight file: {exc}", str(self.path))
            return
        self._stamp = stamp
        try:
            state.apply(parse_weight(raw), str(self.path))
        except InvalidWeightError as exc:
            state.reject(str(exc), str(self.path))

    async def start(self, state: WeightState) -> None:
        state.source = self.description
        self.poll_once(state)
        self._task = asyncio.create_task(self._run(state), name="weight-file-poll")

    async def _run(self, state: WeightState) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                self.poll_once(state)
            except Exception:  # never let the poller die: the router would freeze its weight silently
                log.exception("event=weight_poll_failed source=%s", self.description)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def parse_configmap_ref(ref: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` -> (namespace, name)."""
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"expected NAMESPACE/NAME, got {ref!r}")
    return namespace, name


def weight_from_configmap(obj: Any) -> int:
    """The weight held under key `weight` of a ConfigMap (a client model or a plain dict)."""
    data = obj.get("data") if isinstance(obj, dict) else getattr(obj, "data", None)
    if not data or CONFIGMAP_KEY not in data:
        raise InvalidWeightError(f"ConfigMap has no data key {CONFIGMAP_KEY!r}")
    return parse_weight(data[CONFIGMAP_KEY])


def _resource_version(obj: Any) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else getattr(obj, "metadata", None)
    if meta is None:
        return None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else getattr(meta, "resource_version", None)
    return str(rv) if rv is not None else None


def load_kube_api() -> Any:
    """A CoreV1Api from the in-cluster service account, else from the local kubeconfig."""
    # Imported here: the kubernetes package takes ~0.2 s to import, and only --weight-configmap needs it
    # (every `backtest-engine` subcommand imports this module to build its parser).
    from kubernetes import client, config  # noqa: PLC0415

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.CoreV1Api()


class ConfigMapWeightSource:
    """Watches one ConfigMap through the Kubernetes API in a background thread.

    List-then-watch from the listed resourceVersion; a closed or expired watch (410 Gone) re-lists, and
    any other failure retries with capped backoff, so an API server restart only delays updates. The
    sync `kubernetes` client is used because its watch is mature; the thread keeps it off the event loop.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        api_factory: Callable[[], Any] = load_kube_api,
        watch_timeout_seconds: int = 60,
        max_backoff_seconds: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.description = f"configmap:{namespace}/{name}"
        self._api_factory = api_factory
        self._watch_timeout = watch_timeout_seconds
        self._max_backoff = max_backoff_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None

    def handle(self, state: WeightState, obj: Any, event_type: str = "LISTED") -> None:
        """Apply one ConfigMap version (listed or from a watch event) to the state."""
        if event_type == "DELETED":
            state.reject("ConfigMap was deleted", self.description)
            return
        try:
            state.apply(weight_from_configmap(obj), self.description)
        except InvalidWeightError as exc:
            state.reject(str(exc), self.description)

    async def start(self, state: WeightState) -> None:
        state.source = self.description
        self._thread = threading.Thread(target=self._run, args=(state,), name="weight-configmap-watch", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
            self._thread = None

    def _run(self, state: WeightState) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._list_and_watch(state)
                backoff = 0.5
            except Exception as exc:
                log.warning(
                    "event=configmap_watch_failed source=%s error=%r retry_in=%.1f",
                    self.description,
                    exc,
                    backoff,
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _list_and_watch(self, state: WeightState) -> None:
        from kubernetes import watch  # noqa: PLC0415  (see load_kube_api)
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        api = self._api_factory()
        selector = f"metadata.name={self.name}"
        listed = api.list_namespaced_config_map(self.namespace, field_selector=selector)
        if not listed.items:
            state.reject("ConfigMap does not exist (yet)", self.description)
        for item in listed.items:
            self.handle(state, item)
        resource_version = listed.metadata.resource_version
        while not self._stop.is_set():
            self._watch = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in self._watch.stream(
                    api.list_namespaced_config_map,
                    self.namespace,
                    field_selector=selector,
                    resource_version=resource_version,
                    timeout_seconds=self._watch_timeout,
                ):
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise ApiException(status=getattr(obj, "code", None) or 500, reason=str(obj))
                    resource_version = _resource_version(obj) or resource_version
                    self.handle(state, obj, event["type"])
            except ApiException as exc:
                if exc.status == 410:  # history compacted: list again from now
                    log.info("event=configmap_watch_expired source=%s relisting=true", self.description)
                    return
                raise
            finally:
                self._watch.stop()
