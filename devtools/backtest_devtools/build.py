"""Build the control plane binaries once from the Go module proxy, and cache them by version.

There is no container engine and no release download here, only the Go module proxy. A release module
such as k8s.io/kubernetes cannot be `go install`ed directly because its go.mod points the staging
modules (k8s.io/api, ...) at local folders with `replace`. So for each release we generate a tiny wrapper
module that requires the release and rewrites every local-path `replace` of the release's own go.mod to
the matching published version (k8s.io/X => k8s.io/X v0.<minor>.<patch>; etcd's sibling modules => the
same version). The wrapper lists the binaries as `tool` packages so `go mod tidy` resolves exactly what
they import, then one `go build` produces all binaries of that release.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from backtest_devtools.config import Settings
from backtest_devtools.errors import BuildError
from backtest_devtools.releases import (  # re-exported: callers and tests name releases through build
    ALL_RELEASES,
    ETCD,
    HELM,
    HELM_KUBE_VERSION,
    KSTATUS,
    KUBERNETES,
    KWOK,
    NODE_RELEASES,
    RELEASES,
    GoRelease,
    binary,
)

__all__ = [
    "ALL_RELEASES",
    "ETCD",
    "HELM",
    "HELM_KUBE_VERSION",
    "KSTATUS",
    "KUBERNETES",
    "KWOK",
    "NODE_RELEASES",
    "RELEASES",
    "GoRelease",
    "binary",
    "ensure_built",
]

Report = Callable[[str], None]
# A slow or unreachable module proxy must fail the build with a clear message, never hang CI: every `go`
# command that may download has a deadline and is retried (the module cache keeps what already arrived).
PROXY_PROBE_SECONDS = 30.0
DOWNLOAD_SECONDS = 900.0
ATTEMPTS = 3


def ensure_built(
    settings: Settings, report: Report | None = None, releases: Sequence[GoRelease] = RELEASES
) -> dict[str, float]:
    """Build whatever is missing from the cache; returns seconds spent per release label (0 if cached)."""
    say = report or _stderr
    timings: dict[str, float] = {release.label: 0.0 for release in releases}
    missing = [release for release in releases if not release.is_cached(settings)]
    if not missing:
        return timings
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    # Two worktrees (or a test run and `make cluster-up`) may start cold at once: one builds, the other
    # waits and then finds the binaries cached.
    with (settings.cache_dir / "build.lock").open("w") as lock:
        if not _try_lock(lock):
            say(f"[build] another process is building in {settings.cache_dir}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        for release in missing:
            if not release.is_cached(settings):
                timings[release.label] = build_release(settings, release, say)
    return timings


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def build_release(settings: Settings, release: GoRelease, say: Report) -> float:
    """Generate the wrapper module, tidy it, build every program, then move them into the cache."""
    if settings.go is None:
        raise BuildError(release.label, "the Go toolchain (`go`) is not on PATH")
    started = time.monotonic()
    workdir = settings.src_dir / f"{release.label}-{release.version}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "build.log"
    log.write_text("")
    env = _go_env(settings)
    say(f"[build] {release.label} {release.version}: fetching modules from the Go module proxy")
    probe_proxy(env, release)
    upstream = _download(settings, release, env, log)
    (workdir / "go.mod").write_text(wrapper_go_mod(release, Path(upstream["GoMod"]).read_text()))
    (workdir / "go.sum").touch()
    main_go = workdir / "main.go"
    if release.main_go:
        main_go.write_text(release.main_go)
    else:
        main_go.unlink(missing_ok=True)
    _run_with_retries([settings.go, "mod", "tidy"], workdir, env, log, release.label)
    packages = list(release.programs.values())
    total = _count_packages(settings, release, workdir, env, log)
    say(f"[build] {release.label}: compiling {total} packages for {', '.join(release.programs)}")
    with tempfile.TemporaryDirectory(dir=settings.cache_dir) as out:
        command = [settings.go, "build", "-v", "-trimpath", "-o", out + "/"]
        if release.tags:
            command += ["-tags", ",".join(release.tags)]
        flags = ["-s", "-w", *release.ldflags(release)]
        command += ["-ldflags", " ".join(flags), *packages]
        _run_with_progress(
            command,
            cwd=workdir,
            env=env,
            log=log,
            label=release.label,
            total=total,
            say=say,
            started=started,
        )
        built = _rename_outputs(release, Path(out))
        for name, path in built.items():
            target = release.binary(settings, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), target)
    seconds = time.monotonic() - started
    say(f"[build] {release.label} {release.version}: done in {seconds:.0f}s")
    return seconds


def wrapper_go_mod(release: GoRelease, upstream_go_mod: str) -> str:
    """A go.mod that requires the release and pins its local-path replaces to published versions."""
    go_version = re.search(r"^go (\S+)", upstream_go_mod, re.M)
    lines = [
        f"module backtest.dev/devtools/{release.label}",
        "",
        f"go {go_version.group(1) if go_version else '1.26'}",
        "",
        f"require {release.module} {release.version}",
        "",
    ]
    replaces = local_replaces(upstream_go_mod)
    if replaces:
        lines.append("replace (")
        lines += [f"\t{module} => {module} {published_version(release, module)}" for module in replaces]
        lines += [")", ""]
    tools = [package for package in release.programs.values() if package != "."]
    if tools:
        lines.append("tool (")
        lines += [f"\t{package}" for package in tools]
        lines += [")", ""]
    return "\n".join(lines)


_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\S+)\s*$")


def local_replaces(go_mod: str) -> list[str]:
    """Modules that the release's go.mod replaces with a folder of its own repository.

    Replaces to a "FORBIDDEN_DEPENDENCY" folder are guards against bad imports, not modules we need.
    """
    found = []
    for line in go_mod.splitlines():
        match = _REPLACE.match(line.split("//")[0])
        if not match:
            continue
        module, target = match.groups()
        if target.startswith(".") and "FORBIDDEN" not in target:
            found.append(module)
    return found


def published_version(release: GoRelease, module: str) -> str:
    """Version of a sibling module published together with the release.

    Kubernetes tags its staging modules v0.<minor>.<patch> for release v1.<minor>.<patch>; other
    multi-module repositories (etcd) tag every module with the release's own version.
    """
    if release.module == "k8s.io/kubernetes" and module.startswith("k8s.io/"):
        return "v0" + release.version[len("v1") :]
    return release.version


def module_dir(settings: Settings, module: str, version: str) -> Path:
    """Folder of a module in the Go module cache (downloading it if needed), e.g. kwok's stage configs."""
    if settings.go is None:
        raise BuildError(module, "the Go toolchain (`go`) is not on PATH")
    env = _go_env(settings)
    scratch = settings.src_dir
    scratch.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [settings.go, "mod", "download", "-json", f"{module}@{version}"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(module, result.stderr.strip() or result.stdout.strip())
    return Path(json.loads(result.stdout)["Dir"])


def probe_proxy(env: dict[str, str], release: GoRelease) -> None:
    """Ask the module proxy for the release's .info first: an unreachable proxy fails in seconds, by name."""
    proxies = [p for p in env.get("GOPROXY", "https://proxy.golang.org").split(",") if p.startswith("http")]
    if not proxies or env.get("GOFLAGS", "").find("-mod=vendor") >= 0:
        return
    url = f"{proxies[0].rstrip('/')}/{_escape_module(release.module)}/@v/{release.version}.info"
    last = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=PROXY_PROBE_SECONDS) as response:
                response.read()
                return
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}"
            if error.code in (404, 410):
                break  # the version does not exist: retrying cannot help
        except (urllib.error.URLError, OSError) as error:
            last = str(getattr(error, "reason", error))
        time.sleep(2.0 * attempt)
    raise BuildError(
        release.label,
        f"the Go module proxy did not serve {url} ({last}; {ATTEMPTS} attempts, {PROXY_PROBE_SECONDS:.0f}s each). "
        "Check GOPROXY or the network, then run the build again: what was downloaded is kept",
    )


def _escape_module(module: str) -> str:
    """The proxy protocol's case encoding: upper-case letters become '!' + lower case."""
    return "".join(f"!{char.lower()}" if char.isupper() else char for char in module)


def _download(settings: Settings, release: GoRelease, env: dict[str, str], log: Path) -> dict[str, str]:
    assert settings.go is not None
    command = [settings.go, "mod", "download", "-json", f"{release.module}@{release.version}"]
    output = _run_with_retries(command, settings.src_dir, env, log, release.label, capture=True)
    info: dict[str, str] = json.loads(output)
    return info


def _run_with_retries(
    command: list[str], cwd: Path, env: dict[str, str], log: Path, label: str, capture: bool = False
) -> str:
    """A `go` command that downloads modules: a deadline per attempt, ATTEMPTS attempts, then a clear error."""
    what = " ".join(command[1:3])
    for attempt in range(1, ATTEMPTS + 1):
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(command)} (attempt {attempt})\n")
            handle.flush()
            try:
                result = subprocess.run(
                    command,
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.PIPE if capture else handle,
                    stderr=handle,
                    text=True,
                    timeout=DOWNLOAD_SECONDS,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                handle.write(f"timed out after {DOWNLOAD_SECONDS:.0f}s\n")
                continue
        if result.returncode == 0:
            return result.stdout if capture else ""
        if attempt < ATTEMPTS:
            time.sleep(5.0 * attempt)
    raise BuildError(
        label,
        f"`{what}` failed {ATTEMPTS} times (deadline {DOWNLOAD_SECONDS:.0f}s each; slow or unreachable proxy?)",
        log,
    )


def _count_packages(settings: Settings, release: GoRelease, workdir: Path, env: dict[str, str], log: Path) -> int:
    assert settings.go is not None
    command = [settings.go, "list", "-deps"]
    if release.tags:
        command += ["-tags", ",".join(release.tags)]
    result = subprocess.run(
        [*command, *release.programs.values()],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        with log.open("a") as handle:
            handle.write(result.stderr)
        raise BuildError(release.label, "go list failed", log)
    return len(result.stdout.split())


def _run_with_progress(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    label: str,
    total: int,
    say: Report,
    started: float,
) -> None:
    """Run `go build -v`, counting the package names it prints to show progress every ~10%."""
    done = 0
    next_mark = 10
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_lower_priority,  # noqa: PLW1509 (only os.nice: safe between fork and exec)
        )
        assert process.stdout is not None
        for line in process.stdout:
            handle.write(line)
            done += 1
            percent = min(99, done * 100 // max(total, 1))
            if percent >= next_mark:
                elapsed = time.monotonic() - started
                say(f"[build] {label}: {percent}% ({done}/{total} packages, {elapsed:.0f}s)")
                next_mark = percent + 10
        code = process.wait()
    if code != 0:
        raise BuildError(label, f"go build exited {code}", log)


def _rename_outputs(release: GoRelease, out: Path) -> dict[str, Path]:
    """`go build -o dir/` names each binary after the last element of its import path."""
    built = {}
    for name, package in release.programs.items():
        # "." is the wrapper module's own main package, named after the module (backtest.dev/devtools/<label>).
        produced = out / (release.label if package == "." else _default_binary_name(package))
        if not produced.exists():
            raise BuildError(release.label, f"go build did not produce {produced.name}")
        built[name] = produced
    return built


def _default_binary_name(package: str) -> str:
    last = package.rsplit("/", 1)[-1]
    if re.fullmatch(r"v\d+", last):  # go.etcd.io/etcd/server/v3 -> "server"
        last = package.rsplit("/", 2)[-2]
    return last


def _go_env(settings: Settings) -> dict[str, str]:
    env = dict(settings.go_env)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["GOTOOLCHAIN"] = "local"
    if settings.go:
        env["PATH"] = f"{Path(settings.go).parent}:{env.get('PATH', '')}"
    return env


def _lower_priority() -> None:
    """Compiles run at nice 10: the machine's cores are shared with other work."""
    os.nice(10)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
