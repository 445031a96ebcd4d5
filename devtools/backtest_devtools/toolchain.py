"""`make go-toolchain`: a Go toolchain new enough for the builds, on machines that have none (or an old one).

Go publishes its toolchains as modules (golang.org/toolchain, what GOTOOLCHAIN=goX.Y.Z downloads), so the
module proxy, the one Go-related host this workplace may reach, serves them. The zip is checked against
the checksum database's hash for that exact version (pinned below), unpacked into the build cache, and
config.load_settings finds it there.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from backtest_devtools.config import GO_VERSION, Settings, load_settings
from backtest_devtools.errors import BuildError

MINIMUM = (1, 26)
"""The builds need this (go.mod of Kubernetes 1.36, cri-tools 1.37: go 1.26.x)."""
MODULE_VERSION = f"v0.0.1-go{GO_VERSION}.linux-amd64"
# sum.golang.org's hash of the module zip (lookup golang.org/toolchain@v0.0.1-go1.26.8.linux-amd64).
ZIP_HASH = "h1:ZOmGe1OnfREDMIdb1Qi4G9JSuDPBLGExZMQ4nis1RXM="
PROXY = "https://proxy.golang.org"
ATTEMPTS = 3
READ_TIMEOUT = 60.0


def go_version(go: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([go, "version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError:
        return None
    match = re.search(r"go(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def dirhash_h1(archive: Path) -> str:
    """Go's dirhash.HashZip: sha256 over the sorted lines '<sha256 of file>  <name>'."""
    summary = hashlib.sha256()
    with zipfile.ZipFile(archive) as opened:
        for name in sorted(info.filename for info in opened.infolist() if not info.is_dir()):
            summary.update(f"{hashlib.sha256(opened.read(name)).hexdigest()}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def install(settings: Settings) -> Path:
    """Download, verify and unpack the toolchain; returns the path of its `go`."""
    target = settings.cache_dir / f"go-{GO_VERSION}"
    go = target / "bin" / "go"
    if go.exists():
        return go
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    archive = settings.cache_dir / f"go-{GO_VERSION}.zip"
    url = f"{PROXY}/golang.org/toolchain/@v/{MODULE_VERSION}.zip"
    _download(url, archive)
    found = dirhash_h1(archive)
    if found != ZIP_HASH:
        archive.unlink()
        raise BuildError("go toolchain", f"{url} has hash {found}, the checksum database says {ZIP_HASH}")
    staging = settings.cache_dir / f"go-{GO_VERSION}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(staging)
    root = staging / f"golang.org/toolchain@{MODULE_VERSION}"
    for folder in (root / "bin", *(root / "pkg" / "tool").glob("*")):
        for path in folder.iterdir():
            path.chmod(0o755)
    root.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    return go


def _download(url: str, destination: Path) -> None:
    """Streamed download with progress every 10%, a read deadline and retries."""
    last = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=READ_TIMEOUT) as response, destination.open("wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done, mark, started = 0, 10, time.monotonic()
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if total and done * 100 // total >= mark:
                        print(f"[go] {done * 100 // total}% of {total >> 20} MiB ({time.monotonic() - started:.0f}s)",
                              flush=True)  # fmt: skip
                        mark += 10
            return
        except (urllib.error.URLError, OSError) as error:
            last = str(getattr(error, "reason", error))
            print(f"[go] attempt {attempt} failed: {last}", flush=True)
            time.sleep(3.0 * attempt)
    raise BuildError("go toolchain", f"could not download {url} after {ATTEMPTS} attempts ({last})")


def main() -> int:
    settings = load_settings()
    if settings.go and (go_version(settings.go) or (0, 0)) >= MINIMUM:
        print(f"go: {settings.go} is new enough ({'.'.join(map(str, go_version(settings.go) or ()))})")
        return 0
    try:
        go = install(settings)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"go: installed {go} (found by the builds automatically)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
