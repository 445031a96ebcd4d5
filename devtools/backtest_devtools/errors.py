"""One small exception hierarchy, so callers can tell which component failed and where to look."""

from __future__ import annotations

from pathlib import Path


class DevtoolsError(Exception):
    """Base of every error raised by backtest_devtools."""


class BuildError(DevtoolsError):
    """A Go binary could not be built; `log` holds the full `go` output."""

    def __init__(self, component: str, message: str, log: Path | None = None) -> None:
        self.component = component
        self.log = log
        where = f" (log: {log})" if log else ""
        super().__init__(f"building {component} failed: {message}{where}")


class ClusterError(DevtoolsError):
    """A control plane component failed to start or to become healthy."""

    def __init__(self, component: str, message: str, log: Path | None = None) -> None:
        self.component = component
        self.log = log
        where = f"; its log is {log}" if log else ""
        tail = _tail(log) if log else ""
        super().__init__(f"{component}: {message}{where}{tail}")


class NodeBusy(DevtoolsError):
    """Another cluster on this machine runs the real node (there can be only one)."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(
            f"the real node of this machine is in use by the cluster in {holder}; stop it first "
            f"(`make cluster-down` in that worktree, or end the test session that started it)"
        )


def _tail(log: Path, lines: int = 15) -> str:
    """The last lines of a log, so that a failing test shows the cause without opening a file."""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    if not text:
        return ""
    return "\n--- last lines of the log ---\n" + "\n".join(text)
