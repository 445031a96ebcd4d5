"""How GitOps tools judge a BacktestService's health, computed by their own code, not by a re-implementation.

* Flux (and ``kubectl wait``-style tooling built on cli-utils) uses kstatus: ``kstatus`` here is a small Go
  program compiled against sigs.k8s.io/cli-utils itself (``build.KSTATUS``, from the Go module proxy,
  cached like the control plane) that prints ``status.Compute`` for each object it reads.
* Argo CD runs a Lua health check per resource kind with gopher-lua (Lua 5.1): the chart ships ours in
  ``files/argocd-health.lua``; ``argocd_health`` runs it with Debian's ``lua5.1`` on an object turned into
  a Lua table, the way Argo CD hands objects to its scripts.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from typing import Any

from backtest_devtools import build
from backtest_devtools.chart import CHART_DIR
from backtest_devtools.config import Settings
from backtest_devtools.errors import DevtoolsError

ARGOCD_HEALTH = CHART_DIR / "files" / "argocd-health.lua"


def kstatus(settings: Settings, objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    """kstatus's verdict (``status``: InProgress, Current, Failed, Terminating...) and message per object."""
    binary = build.binary(settings, "kstatus")
    done = subprocess.run(
        [str(binary)], input=json.dumps(objects), capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise DevtoolsError(f"kstatus failed: {done.stderr.strip()}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def lua_literal(value: Any) -> str:
    """A JSON value as a Lua 5.1 table constructor (null becomes nil: the key is absent, as in Argo CD)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for what JSON can carry
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item) for item in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot express {type(value).__name__} in Lua")


def argocd_health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Run the Argo CD health check on one object with a Lua 5.1 interpreter: ``{status, message}``."""
    interpreter = shutil.which("lua5.1")
    if interpreter is None:
        raise DevtoolsError("lua5.1 is not installed (Debian package lua5.1; `make deps-system` installs it)")
    body = script if script is not None else ARGOCD_HEALTH.read_text()
    program = (
        f"local obj = {lua_literal(obj)}\n"
        f"local function check(obj)\n{body}\nend\n"
        "local hs = check(obj)\n"
        'io.write(hs.status, "\\n", hs.message or "", "\\n")\n'
    )
    done = subprocess.run([interpreter, "-"], input=program, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise DevtoolsError(f"the Argo CD health check failed in Lua: {done.stderr.strip()}")
    status, _, message = done.stdout.partition("\n")
    return {"status": status, "message": message.rstrip("\n")}
