"""`make lock`: resolve the project's Python dependencies once and pin every one of them in constraints.txt.

pyproject.toml keeps ranges (what the code supports); constraints.txt pins what was tested, so a new release
upstream cannot break `make setup`, CI or the images (their Dockerfiles install with the same file). The
resolution is pip's own (`pip install --dry-run --report`), for the runtime and dev dependencies plus the
build backend the images need (setuptools, wheel). Run it to take upgrades on purpose, then run the tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from backtest_devtools.config import REPO_ROOT

CONSTRAINTS = REPO_ROOT / "constraints.txt"
HEADER = """\
# Locked Python dependencies (runtime, dev, and the build backend of the images), resolved by pip.
# Regenerate on purpose with `make lock`; `make setup`, CI and both Dockerfiles install with this file.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical(match.group(1))


def direct_requirements(pyproject: dict[str, Any], extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """Every requirement the lock must cover: runtime, the chosen extras, and the build backend."""
    project = pyproject["project"]
    found = list(project["dependencies"])
    for extra in extras:
        found += project.get("optional-dependencies", {}).get(extra, [])
    return found + list(pyproject["build-system"]["requires"])


def pinned(constraints_text: str) -> dict[str, str]:
    """name -> version of every `name==version` line."""
    pins = {}
    for raw in constraints_text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name.split("[")[0])] = version.strip()
    return pins


def resolve(requirements: list[str]) -> dict[str, str]:
    """pip's resolution of `requirements` for this interpreter (nothing is installed)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                   "--report", str(report), *requirements]  # fmt: skip
        subprocess.run(command, check=True, timeout=900)
        data = json.loads(report.read_text())
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in data["install"]}


def main() -> int:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    versions = resolve(direct_requirements(pyproject))
    versions.pop("backtest-operator", None)
    lines = [f"{name}=={version}" for name, version in sorted(versions.items())]
    CONSTRAINTS.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"wrote {CONSTRAINTS} ({len(lines)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
