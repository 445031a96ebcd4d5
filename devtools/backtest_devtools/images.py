"""Container images without Docker: the engine and operator images from the project's own Dockerfiles,
built with buildah, hermetically, cached by a content hash, and imported into the real node's containerd.

- The base is made here: a Debian bookworm root filesystem (mmdebstrap: python3, venv) turned into the
  image ``localhost/backtest/python:3.11-bookworm`` and passed through the Dockerfiles' own
  ``PYTHON_IMAGE`` build argument, so no registry is contacted.
- Dependencies come from a wheelhouse prepared on the host from the lock file (constraints.txt), mounted
  read-only into the build; pip runs with ``--no-index`` (the Dockerfiles' ``PIP_INSTALL_OPTIONS``) and the
  build has no network at all.
- The content hash covers the Dockerfile, every file of the build context (as .dockerignore selects it),
  the base image and the build arguments: with nothing changed, ``make images`` only compares hashes.
- Images are imported under the references the chart's values.yaml and the operator's defaults name, so
  pods start with ``imagePullPolicy: IfNotPresent`` and no registry.
- The pause image is built from upstream's ``build/pause`` (pause.c compiled static, its Dockerfile).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from backtest_devtools import build, containerd
from backtest_devtools.config import REPO_ROOT, Settings
from backtest_devtools.errors import BuildError

Report = Callable[[str], None]
BASE_IMAGE = "localhost/backtest/python:3.11-bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3")
PAUSE_VERSION = "3.10.2"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
WHEELHOUSE_MOUNT = "/wheelhouse"
BUILD_SECONDS = 1800.0


@dataclass(frozen=True)
class ProjectImage:
    name: str
    dockerfile: Path
    references: tuple[str, ...]
    """Normalised references the image is imported under (what pods ask for)."""


def normalise(reference: str) -> str:
    """containerd's view of a reference: `foo:1` is `docker.io/library/foo:1`."""
    name, _, tag = (
        reference.rpartition(":") if ":" in reference.rsplit("/", maxsplit=1)[-1] else (reference, "", "latest")
    )
    first = name.split("/")[0]
    if "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"
    return f"{name}:{tag}"


def project_images() -> list[ProjectImage]:
    """The engine and operator images under the chart's and the operator's default references."""
    chart = REPO_ROOT / "charts" / "backtest-operator"
    app_version = str(yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"])
    values = yaml.safe_load((chart / "values.yaml").read_text())
    from backtest_operator.settings import OperatorSettings  # noqa: PLC0415 (pydantic import only when needed)

    router_default = OperatorSettings.model_fields["router_image"].default
    router = values["operator"]["routerImage"]
    engine_refs = {normalise(f"{router['repository']}:{router['tag'] or app_version}"), normalise(str(router_default))}
    operator_refs = {
        normalise(f"{values['image']['repository']}:{values['image']['tag'] or app_version}"),
        normalise(f"backtest-operator:{app_version}"),
    }
    return [
        ProjectImage("backtest-engine", REPO_ROOT / "engine" / "Dockerfile", tuple(sorted(engine_refs))),
        ProjectImage("backtest-operator", REPO_ROOT / "operator" / "Dockerfile", tuple(sorted(operator_refs))),
    ]


# -- the build context ---------------------------------------------------------------------------------


def dockerignore_patterns(root: Path) -> list[str]:
    path = root / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def is_excluded(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parent folders) decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if any(_matches(candidate, body) for candidate in candidates):
            excluded = not negate
    return excluded


def _matches(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        tail = pattern[3:]
        segments = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(segments[i:]), tail) for i in range(len(segments)))
    return fnmatch.fnmatchcase(path, pattern) and path.count("/") == pattern.count("/")


def context_files(root: Path) -> list[Path]:
    """Files of the build context as `docker build` would send them, in a stable order."""
    patterns = dockerignore_patterns(root)
    found = []
    for folder, dirs, files in os.walk(root):
        relative_folder = os.path.relpath(folder, root)
        dirs[:] = sorted(d for d in dirs if d not in (".git", ".venv", "node_modules"))
        for name in sorted(files):
            relative = name if relative_folder == "." else f"{relative_folder}/{name}"
            if not is_excluded(relative, patterns):
                found.append(root / relative)
    return sorted(found)


def content_hash(image: ProjectImage, root: Path, base_id: str, build_args: dict[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(b"dockerfile\0" + image.dockerfile.read_bytes())
    digest.update(f"base\0{base_id}\0args\0{json.dumps(build_args, sort_keys=True)}\0".encode())
    for path in context_files(root):
        digest.update(f"\0{path.relative_to(root)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# -- buildah -----------------------------------------------------------------------------------------


def buildah(settings: Settings, *args: str, timeout: float = BUILD_SECONDS, log: Path | None = None) -> str:
    """buildah with its own storage under the cache (never the machine's /var/lib/containers)."""
    storage = settings.cache_dir / "buildah"
    command = ["buildah", "--root", str(storage / "storage"), "--runroot", "/run/backtest-buildah",
               "--storage-driver", "overlay", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise BuildError("images", f"`buildah {args[0]}` failed: {result.stderr.strip()[-800:]}", log)
    return result.stdout


def remove_older_builds(settings: Settings, repository: str, keep: str) -> None:
    """Drop earlier builds of one image from buildah's storage (about 1 GB each, so a session of edits
    would fill the disk); the archive in the cache is what the node imports. Untagged layers left behind
    go too, so the next build starts from the base image and the wheelhouse again."""
    listed = buildah(settings, "images", "--format", "{{.Name}}:{{.Tag}}", timeout=60).split()
    older = [reference for reference in listed if reference.startswith(f"{repository}:") and reference != keep]
    if older:
        buildah(settings, "rmi", *older, timeout=300)
    buildah(settings, "rmi", "--prune", timeout=300)


def image_id(settings: Settings, reference: str) -> str | None:
    try:
        out = buildah(settings, "images", "--quiet", "--no-trunc", reference, timeout=60)
    except BuildError:
        return None
    return out.split()[0] if out.split() else None


def images_dir(settings: Settings) -> Path:
    folder = settings.cache_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def ensure_base_image(settings: Settings, say: Report) -> str:
    """The Debian bookworm + Python 3.11 base, made once with mmdebstrap; returns its image ID."""
    found = image_id(settings, BASE_IMAGE)
    if found:
        return found
    folder = images_dir(settings) / "python-base"
    folder.mkdir(exist_ok=True)
    rootfs = folder / "rootfs.tar"
    log = folder / "build.log"
    if not rootfs.exists():
        say(f"[images] making the base root filesystem with mmdebstrap ({', '.join(BASE_PACKAGES)})")
        partial = folder / "rootfs.tar.partial"
        sources = Path("/etc/apt/sources.list.d/debian.sources")
        command = ["mmdebstrap", "--variant=minbase", "--format=tar", f"--include={','.join(BASE_PACKAGES)}",
                   "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                   "--dpkgopt=path-exclude=/usr/share/locale/*", "bookworm", str(partial)]  # fmt: skip
        if sources.exists():
            command.append(str(sources))
        with log.open("a") as handle:
            result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=1800, check=False)
        if result.returncode != 0:
            raise BuildError("images", "mmdebstrap could not make the base root filesystem", log)
        partial.rename(rootfs)
    (folder / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["python3"]\n')
    say(f"[images] importing the base image {BASE_IMAGE}")
    buildah(settings, "bud", "--isolation", "chroot", "--pull=never", "--format", "docker",
            "-t", BASE_IMAGE, "-f", str(folder / "Containerfile"), str(folder), log=log)  # fmt: skip
    found = image_id(settings, BASE_IMAGE)
    if not found:
        raise BuildError("images", f"{BASE_IMAGE} missing after its build", log)
    return found


def runtime_requirements() -> list[str]:
    """The project's runtime dependencies and its build backend, from pyproject.toml."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return [*project["project"]["dependencies"], *project["build-system"]["requires"]]


def ensure_wheelhouse(settings: Settings, say: Report) -> Path:
    """Wheels of every runtime dependency at the locked versions, prepared on the host (network here only)."""
    requirements = runtime_requirements()
    key = hashlib.sha256((CONSTRAINTS.read_text() + "\n".join(requirements)).encode()).hexdigest()[:16]
    folder = settings.cache_dir / "wheelhouse" / key
    if (folder / ".complete").exists():
        return folder
    say("[images] preparing the wheelhouse (pip wheel of the locked dependencies)")
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(folder), "-c", str(CONSTRAINTS),
               "--timeout", "60", "--retries", "3", *requirements]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise BuildError("images", f"pip wheel failed: {result.stderr.strip()[-800:]}")
    (folder / ".complete").write_text("")
    return folder


def build_args(base: str) -> dict[str, str]:
    return {"PYTHON_IMAGE": base, "PIP_INSTALL_OPTIONS": f"--no-index --find-links={WHEELHOUSE_MOUNT}"}


@dataclass(frozen=True)
class Built:
    image: ProjectImage
    archive: Path
    content_hash: str
    seconds: float
    """0 when the cached archive matched the content hash."""


def build_project_images(settings: Settings, say: Report) -> list[Built]:
    """Build what changed; every image ends as a docker-archive in the cache named by its content hash."""
    base_id = ensure_base_image(settings, say)
    wheelhouse = ensure_wheelhouse(settings, say)
    args = build_args(BASE_IMAGE)
    results = []
    for image in project_images():
        digest = content_hash(image, REPO_ROOT, base_id, args)
        archive = images_dir(settings) / f"{image.name}-{digest[:16]}.tar"
        if archive.exists():
            results.append(Built(image, archive, digest, 0.0))
            continue
        started = time.monotonic()
        say(f"[images] building {image.name} from {image.dockerfile.relative_to(REPO_ROOT)} (buildah, no network)")
        log = images_dir(settings) / f"{image.name}.log"
        log.write_text("")
        tag = f"localhost/backtest/{image.name}:{digest[:16]}"
        command = ["bud", "--isolation", "oci", "--pull=never", "--format", "docker", "--layers",
                   "--network", "none", "-v", f"{wheelhouse}:{WHEELHOUSE_MOUNT}:ro", "-f", str(image.dockerfile),
                   "-t", tag]  # fmt: skip
        for key, value in args.items():
            command += ["--build-arg", f"{key}={value}"]
        buildah(settings, *command, str(REPO_ROOT), log=log)
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        buildah(settings, "push", tag, f"docker-archive:{partial}:{image.references[0]}", log=log)
        partial.rename(archive)
        for old in images_dir(settings).glob(f"{image.name}-*.tar"):
            if old != archive:
                old.unlink()
        remove_older_builds(settings, f"localhost/backtest/{image.name}", tag)
        seconds = time.monotonic() - started
        say(f"[images] {image.name} built in {seconds:.0f}s")
        results.append(Built(image, archive, digest, seconds))
    return results


def ensure_pause_archive(settings: Settings, say: Report) -> Path:
    """pause.c from the Kubernetes release, compiled static, in an image made by upstream's Dockerfile."""
    archive = images_dir(settings) / f"pause-{PAUSE_VERSION}.tar"
    if archive.exists():
        return archive
    say(f"[images] building the pause image {containerd.PAUSE_IMAGE} from build/pause of Kubernetes")
    upstream = build.module_dir(settings, build.KUBERNETES.module, build.KUBERNETES.version) / "build" / "pause"
    folder = images_dir(settings) / "pause"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "bin").mkdir(parents=True)
    log = folder / "build.log"
    compile_ = ["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}-backtest",
                "-o", str(folder / "bin" / "pause-linux-amd64"), str(upstream / "linux" / "pause.c")]  # fmt: skip
    result = subprocess.run(compile_, capture_output=True, text=True, timeout=300, check=False)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise BuildError("pause", "gcc could not compile pause.c (static)", log)
    shutil.copy(upstream / "Dockerfile", folder / "Dockerfile")
    buildah(settings, "bud", "--isolation", "chroot", "--pull=never", "--format", "docker",
            "--build-arg", "BASE=scratch", "--build-arg", "ARCH=amd64", "-t", containerd.PAUSE_IMAGE,
            "-f", str(folder / "Dockerfile"), str(folder), log=log)  # fmt: skip
    partial = archive.with_suffix(".partial")
    buildah(settings, "push", containerd.PAUSE_IMAGE, f"docker-archive:{partial}:{containerd.PAUSE_IMAGE}", log=log)
    partial.rename(archive)
    return archive


# -- the node's containerd -----------------------------------------------------------------------------


def _record_file(settings: Settings) -> Path:
    return images_dir(settings) / "imported.json"


def import_into_node(settings: Settings, say: Report) -> list[str]:
    """Import the pause image and every built project image the node lacks; returns what was imported."""
    record_file = _record_file(settings)
    try:
        record: dict[str, str] = json.loads(record_file.read_text())
    except (OSError, ValueError):
        record = {}
    wanted: list[tuple[Path, list[str]]] = [(ensure_pause_archive(settings, say), [containerd.PAUSE_IMAGE])]
    for image in project_images():
        archives = sorted(images_dir(settings).glob(f"{image.name}-*.tar"))
        if archives:
            wanted.append((archives[-1], list(image.references)))
    imported = []
    for archive, references in wanted:
        current = {reference: containerd.image_digest(reference) for reference in references}
        if all(digest is not None and record.get(reference) == f"{archive.name}@{digest}"
               for reference, digest in current.items()):  # fmt: skip
            continue
        say(f"[images] importing {archive.name} into the node as {', '.join(references)}")
        containerd.import_archive(archive, references)
        for reference in references:
            record[reference] = f"{archive.name}@{containerd.image_digest(reference)}"
        imported += references
    record_file.write_text(json.dumps(record, indent=1, sort_keys=True))
    if imported:
        containerd.remove_untagged_images(settings)
    return imported


def tag_in_node(source: str, references: list[str]) -> None:
    """More names for an imported image (the demo's release tags), as pods will ask for them."""
    for reference in references:
        containerd.tag(normalise(source), normalise(reference))
