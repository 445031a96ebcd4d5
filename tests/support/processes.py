"""Real processes for router tests: the test upstream (tests/support/upstream.py), real engines and the
router itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from backtest_devtools.stack import free_port

UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "upstream.py"


def wait_ready(url: str, proc: subprocess.Popen[bytes], deadline_seconds: float = 60.0) -> None:
    """Wait for a started process to answer; generous, since Python start-up on a busy machine takes seconds."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {deadline_seconds}s")


@dataclass
class Process:
    url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 1 s: uvicorn would otherwise wait for requests still sleeping."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_upstream(name: str, **env: str) -> Process:
    port = free_port()
    full_env = {**os.environ, "UPSTREAM_NAME": name, **env}
    proc = subprocess.Popen([sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)], env=full_env)
    process = Process(f"http://127.0.0.1:{port}", proc)
    try:
        wait_ready(process.url + "/_stats", proc)
    except Exception:
        process.stop()
        raise
    return process


def start_engine(database_url: str, deadline_seconds: float = 60.0, **env: str) -> Process:
    """A real engine service (`python -m backtest_engine.service`) on a free loopback port, once ready."""
    port = free_port()
    full_env = {**os.environ, "DATABASE_URL": database_url, "ENGINE_RATE_LIMIT": "1000000", **env}
    command = [sys.executable, "-m", "backtest_engine.service", "--host", "127.0.0.1", "--port", str(port)]
    process = Process(f"http://127.0.0.1:{port}", subprocess.Popen(command, env=full_env))
    try:
        wait_ready(process.url + "/api/v1/ready", process.proc, deadline_seconds)
    except Exception:
        process.stop()
        raise
    return process


def start_router(stable: str, canary: str, weight_file: Path, *extra: str, log: Path | None = None) -> Process:
    """The router on a free loopback port; its log goes to `log` when given (else to the test's stderr)."""
    port = free_port()
    args = [sys.executable, "-m", "backtest_engine.router", "--stable", stable, "--canary", canary]
    args += ["--weight-file", str(weight_file), "--port", str(port), "--host", "127.0.0.1", *extra]
    if log is None:
        proc = subprocess.Popen(args)
    else:
        with log.open("ab") as sink:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(args, stderr=sink)
    process = Process(f"http://127.0.0.1:{port}", proc)
    try:
        wait_ready(process.url + "/router/health", proc)
    except Exception:
        process.stop()
        raise
    return process
