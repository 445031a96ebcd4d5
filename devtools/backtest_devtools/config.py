"""Where things live, read once from the environment so that no other module touches os.environ."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GO_VERSION = "1.26.8"
"""The Go toolchain `make go-toolchain` installs when the machine has none new enough (toolchain.py)."""


@dataclass(frozen=True)
class Settings:
    """Paths and tools used by the builders and launchers.

    cache_dir: built binaries survive `git clean` and are shared by every worktree of the machine.
    go: the Go toolchain; only needed when a binary is missing from the cache.
    """

    cache_dir: Path
    go: str | None
    prometheus: str | None
    go_env: dict[str, str]

    @property
    def bin_dir(self) -> Path:
        return self.cache_dir / "bin"

    @property
    def src_dir(self) -> Path:
        """Wrapper Go modules (go.mod/go.sum) generated for each release; kept for inspection."""
        return self.cache_dir / "src"


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read the environment once; callers pass the result down instead of reading variables again."""
    env = dict(os.environ if environ is None else environ)
    explicit = env.get("BACKTEST_CACHE_DIR")
    if explicit:
        cache = Path(explicit)
    else:
        xdg = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "/root")) / ".cache")
        cache = Path(xdg) / "backtest-operator"
    path = env.get("PATH", "")
    # `make go-toolchain` unpacks a toolchain into the cache only when the machine has none new enough.
    cached_go = _existing(str(cache.resolve() / f"go-{GO_VERSION}" / "bin" / "go"))
    go = cached_go or shutil.which("go", path=path) or _existing("/usr/local/go/bin/go")
    prometheus = shutil.which("prometheus", path=path) or _existing("/usr/bin/prometheus")
    return Settings(cache_dir=cache.resolve(), go=go, prometheus=prometheus, go_env=env)


def _existing(candidate: str) -> str | None:
    return candidate if Path(candidate).is_file() else None
