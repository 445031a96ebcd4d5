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
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from backtest_devtools.config import Settings
from backtest_devtools.errors import BuildError

Report = Callable[[str], None]


@dataclass(frozen=True)
class GoRelease:
    """One upstream Go module and the programs built from it."""

    label: str
    module: str
    version: str
    programs: dict[str, str]  # binary name -> import path of its main package
    tags: tuple[str, ...] = ()
    ldflags: Callable[[GoRelease], list[str]] = field(default=lambda _r: [])
    sources: dict[str, str] = field(default_factory=dict)
    """Go files of a program of our own, written into the wrapper module (its programs' import path is the
    wrapper module's path); empty for upstream programs."""

    def binary(self, settings: Settings, name: str) -> Path:
        """Cache path of one binary: bin/<name>-<version>/<name>, plus a digest of our own sources if any."""
        return settings.bin_dir / f"{name}-{self.version}{self.stamp}" / name

    @property
    def stamp(self) -> str:
        if not self.sources:
            return ""
        text = "".join(f"{name}\0{body}\0" for name, body in sorted(self.sources.items()))
        return "-" + hashlib.sha256(text.encode()).hexdigest()[:8]

    def is_cached(self, settings: Settings) -> bool:
        return all(os.access(self.binary(settings, name), os.X_OK) for name in self.programs)


def _kube_ldflags(release: GoRelease) -> list[str]:
    """The same -X flags as hack/lib/version.sh, so /version reports the real release."""
    major, minor = release.version.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": release.version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return flags


def _kwok_ldflags(release: GoRelease) -> list[str]:
    return [f"-X sigs.k8s.io/kwok/pkg/consts.Version={release.version}"]


KUBERNETES = GoRelease(
    label="kubernetes",
    module="k8s.io/kubernetes",
    version="v1.36.3",
    programs={
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    },
    tags=("selinux", "notest"),
    ldflags=_kube_ldflags,
)
ETCD = GoRelease(
    label="etcd",
    module="go.etcd.io/etcd/server/v3",
    version="v3.6.16",
    programs={"etcd": "go.etcd.io/etcd/server/v3"},
)
KWOK = GoRelease(
    label="kwok",
    module="sigs.k8s.io/kwok",
    version="v0.8.0",
    programs={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    ldflags=_kwok_ldflags,
)


# helm v3.22.0's go.mod requires k8s.io/client-go v0.37.0; helm's Makefile turns that into the Kubernetes
# version that `helm template` and `helm lint` assume (.Capabilities.KubeVersion, deprecation checks).
# Without these flags helm would assume v1.20. Update together with HELM.version.
HELM_KUBE_VERSION = ("1", "37")


def _helm_ldflags(release: GoRelease) -> list[str]:
    """The -X flags of helm's Makefile for a tagged release (empty metadata: not "unreleased")."""
    major, minor = HELM_KUBE_VERSION
    flags = [
        f"-X helm.sh/helm/v3/internal/version.version={release.version}",
        "-X helm.sh/helm/v3/internal/version.metadata=",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
    ]
    for package in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {package}.k8sVersionMajor={major}", f"-X {package}.k8sVersionMinor={minor}"]
    return flags


KSTATUS_MAIN = """// kstatus: print the verdict of sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute for each object.
// Reads a JSON object or a JSON list of objects on stdin; writes one JSON line per object.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(data, &items); err != nil {
		items = []json.RawMessage{data}
	}
	out := json.NewEncoder(os.Stdout)
	for _, item := range items {
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(item); err != nil {
			fail(err)
		}
		result, err := status.Compute(object)
		if err != nil {
			fail(err)
		}
		verdict := map[string]string{"status": string(result.Status), "message": result.Message}
		if err := out.Encode(verdict); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
"""
KSTATUS = GoRelease(
    label="kstatus",
    module="sigs.k8s.io/cli-utils",
    version="v0.37.2",
    programs={"kstatus": "backtest.dev/devtools/kstatus"},
    sources={"main.go": KSTATUS_MAIN},
)
"""Flux's health verdict, computed by the library Flux uses (tests/e2e/test_mechanics.py, GitOps health)."""

HELM = GoRelease(
    label="helm",
    module="helm.sh/helm/v3",
    version="v3.22.0",
    programs={"helm": "helm.sh/helm/v3/cmd/helm"},
    ldflags=_helm_ldflags,
)
RELEASES: tuple[GoRelease, ...] = (ETCD, KWOK, KUBERNETES, HELM, KSTATUS)


def binary(settings: Settings, name: str) -> Path:
    """Cached path of a binary by name, whichever release builds it."""
    for release in RELEASES:
        if name in release.programs:
            return release.binary(settings, name)
    raise KeyError(name)


def ensure_built(settings: Settings, report: Report | None = None) -> dict[str, float]:
    """Build whatever is missing from the cache; returns seconds spent per release label (0 if cached)."""
    say = report or _stderr
    timings: dict[str, float] = {release.label: 0.0 for release in RELEASES}
    missing = [release for release in RELEASES if not release.is_cached(settings)]
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
    upstream = _download(settings, release, env, log)
    (workdir / "go.mod").write_text(wrapper_go_mod(release, Path(upstream["GoMod"]).read_text()))
    (workdir / "go.sum").touch()
    for name, text in release.sources.items():
        (workdir / name).write_text(text)
    _run([settings.go, "mod", "tidy"], workdir, env, log, release.label)
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
    own = f"backtest.dev/devtools/{release.label}"
    lines = [
        f"module {own}",
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
    upstream = [package for package in release.programs.values() if not package.startswith(own)]
    if upstream:
        lines.append("tool (")
        lines += [f"\t{package}" for package in upstream]
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


def _download(settings: Settings, release: GoRelease, env: dict[str, str], log: Path) -> dict[str, str]:
    assert settings.go is not None
    result = subprocess.run(
        [settings.go, "mod", "download", "-json", f"{release.module}@{release.version}"],
        cwd=settings.src_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    with log.open("a") as handle:
        handle.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise BuildError(release.label, "go mod download failed", log)
    info: dict[str, str] = json.loads(result.stdout)
    return info


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


def _run(command: list[str], cwd: Path, env: dict[str, str], log: Path, label: str) -> None:
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        result = subprocess.run(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise BuildError(label, f"`{' '.join(command[1:3])}` exited {result.returncode}", log)


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
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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
        produced = out / _default_binary_name(package)
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


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
