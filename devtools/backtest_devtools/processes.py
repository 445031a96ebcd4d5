"""Start long-running servers detached, remember them in pid files, and stop only those.

A pid file alone is not proof of ownership (pids are reused), so before signalling we check that the
process's command line still mentions our state folder, which every command we start does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Children started by this Python process. /proc/<pid>/cmdline reads empty while a child is in execve,
# so for our own children the Popen object is the reliable answer.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Managed:
    """A server this package started: its name, pid file and log."""

    name: str
    pid_file: Path
    log: Path
    owner_mark: str  # a string that must appear in /proc/<pid>/cmdline

    def pid(self) -> int | None:
        """The pid if the process is alive and still ours, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        child = _CHILDREN.get(pid)
        if child is not None:  # started by this very process: ask it directly (and reap it)
            return pid if child.poll() is None else None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        if self.owner_mark not in cmdline:
            return None
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # exited, waiting to be reaped
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def rss_bytes(self) -> int:
        """Resident memory of the process (0 when it is not running)."""
        pid = self.pid()
        if pid is None:
            return 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def start(
    name: str,
    command: list[str],
    *,
    run_dir: Path,
    log_dir: Path,
    owner_mark: str,
    die_with_parent: bool,
    env: dict[str, str] | None = None,
) -> Managed:
    """Start `command` in its own session with output appended to <log_dir>/<name>.log.

    die_with_parent: for test sessions, so a killed pytest never leaves servers behind; `make
    cluster-up` leaves it off because the servers must outlive the command that started them.
    env: variables added to (or replacing) this process's environment for the child.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    managed = Managed(name, run_dir / f"{name}.pid", log_dir / f"{name}.log", owner_mark)
    with managed.log.open("ab") as log:
        log.write(f"\n==> {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
            preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509
        )
    _CHILDREN[process.pid] = process
    managed.pid_file.write_text(f"{process.pid}\n")
    return managed


def stop(managed: Managed, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only if the pid is still one of ours."""
    pid = managed.pid()
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        if not wait_until(lambda: not managed.is_running(), grace):
            _signal(pid, signal.SIGKILL)
            wait_until(lambda: not managed.is_running(), 5.0)
        _reap(pid)
        _CHILDREN.pop(pid, None)
    managed.pid_file.unlink(missing_ok=True)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child, so no zombie is left."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
