"""The moving parts of a rollout on one machine: engine, router and operator processes, and client traffic.

Shared by the end-to-end tests and ``make demo``. Processes are started from the same entry points as the
images (``backtest-engine serve``, ``backtest-engine router``, ``backtest-operator run``); they stand in for
the pods kwok runs in the local control plane.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from backtest_devtools import processes
from backtest_devtools.errors import ClusterError

BIN = Path(sys.executable).parent
API_KEY = "local-demo-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, what: str, log: Path, timeout: float = 60.0) -> None:
    def up() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code < 500
        except httpx.HTTPError:
            return False

    if not processes.wait_until(up, timeout, 0.2):
        raise ClusterError(what, f"did not answer at {url} within {timeout:.0f}s", log)


@dataclass
class Stack:
    """Processes started for one rollout, stopped together."""

    workdir: Path
    started: list[processes.Managed] = field(default_factory=list)

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> processes.Managed:
        managed = processes.start(
            name, command, run_dir=self.workdir / "run", log_dir=self.workdir / "logs",
            owner_mark=command[0], die_with_parent=True, env=env,
        )  # fmt: skip
        self.started.append(managed)
        return managed

    def engine(self, track: str, port: int, env: dict[str, str] | None = None) -> processes.Managed:
        """An engine process for one track on a fixed port (restartable with other settings)."""
        # One client key sends all the traffic here: the per-key rate limit (600/min by default) would
        # turn most of it into 429s, so it is lifted far above what a test or the demo sends.
        settings = {"ENGINE_API_KEYS": API_KEY, "ENGINE_TRACK": track, "ENGINE_FAULT_SEED": "1",
                    "ENGINE_RATE_LIMIT": "10000000",
                    "DATABASE_URL": f"sqlite:///{self.workdir / f'{track}.db'}", **(env or {})}  # fmt: skip
        command = [str(BIN / "backtest-engine"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        managed = self.start(f"engine-{track}", command, settings)
        wait_http(f"http://127.0.0.1:{port}/api/v1/health", f"engine-{track}", managed.log)
        return managed

    def router(self, stable: str, canary: str, configmap: str, port: int, kubeconfig: Path,
               objective_seconds: float, extra: Sequence[str] = ()) -> processes.Managed:  # fmt: skip
        """The router in front of both tracks; a canary attempt is abandoned half a second past the objective.
        ``extra``: more router arguments (e.g. the shadow settings the operator derives from the spec)."""
        command = [
            str(BIN / "backtest-engine"), "router", "--stable", stable, "--canary", canary,
            "--weight-configmap", configmap, "--host", "127.0.0.1", "--port", str(port),
            "--latency-objective", f"{objective_seconds:g}", "--canary-timeout", f"{objective_seconds + 0.5:g}",
            *extra,
        ]  # fmt: skip
        managed = self.start("router", command, {"KUBECONFIG": str(kubeconfig)})
        wait_http(f"http://127.0.0.1:{port}/router/health", "router", managed.log)
        return managed

    def operator(self, namespace: str, kubeconfig: Path, metrics_port: int) -> processes.Managed:
        env = {"KUBECONFIG": str(kubeconfig), "OPERATOR_METRICS_PORT": str(metrics_port),
               "OPERATOR_METRICS_HOST": "127.0.0.1"}  # fmt: skip
        command = [str(BIN / "backtest-operator"), "run", "--namespace", namespace,
                   "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]  # fmt: skip
        return self.start("operator", command, env)

    def stop(self, managed: processes.Managed) -> None:
        processes.stop(managed, grace=5.0)
        if managed in self.started:
            self.started.remove(managed)

    def close(self) -> None:
        for managed in reversed(self.started):
            processes.stop(managed, grace=5.0)
        self.started.clear()


Request = Callable[[httpx.Client], int]


def strategies_request(base_url: str) -> Request:
    """A cheap idempotent read of the engine API."""
    return lambda client: client.get(f"{base_url}/api/v1/strategies").status_code


def backtest_request(base_url: str) -> Request:
    """A real backtest on a small synthetic series; the Idempotency-Key lets the router replay it on stable."""
    counter = iter(range(10**9))

    def send(client: httpx.Client) -> int:
        number = next(counter)
        body = {"strategy": "sma_crossover", "params": {"fast": 5 + number % 10, "slow": 40},
                "synthetic": {"symbol": "DEMO", "bars": 500, "seed": number % 50}}  # fmt: skip
        headers = {"Idempotency-Key": f"demo-{number}"}
        return client.post(f"{base_url}/api/v1/backtests", json=body, headers=headers).status_code

    return send


@dataclass
class Traffic:
    """Steady traffic from several client threads, counting what clients see.

    Several threads keep the rate when some answers are slow (a canary timing out must not throttle the
    load that is supposed to reveal it). Every answer that is not 2xx is a client error, 4xx included: a
    429 or 401 means the traffic never exercised the engines, and a test must not pass on that.
    """

    request: Request
    rate: float
    clients: int = 8
    sent: int = 0
    client_errors: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    """Answers by status code (``transport`` when there was none)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Traffic:
        for index in range(self.clients):
            thread = threading.Thread(target=self._run, args=(index,), name=f"traffic-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def _run(self, index: int) -> None:
        period = self.clients / self.rate
        with httpx.Client(timeout=10.0, headers={"X-API-Key": API_KEY}) as client:
            next_at = time.monotonic() + index * period / self.clients
            while not self._stop.is_set():
                try:
                    code = str(self.request(client))
                except httpx.HTTPError:
                    code = "transport"
                with self._lock:
                    self.sent += 1
                    self.codes[code] += 1
                    self.client_errors += int(not code.startswith("2"))
                next_at += period
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def summary(self) -> str:
        return f"{self.sent} requests sent, {self.client_errors} not 2xx, codes {dict(sorted(self.codes.items()))}"
