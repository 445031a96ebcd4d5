"""pytest fixtures for a real control plane and a real Prometheus (loaded by tests/conftest.py).

- before the first test, when cluster tests were selected, missing binaries are built (outside any
  test's timeout).
- `cluster` (session): starts the control plane in a tmp folder, and
  stops it at the end. Its logs are kept, and their folder printed, when any test failed.
- `k8s_api` (session): a kubernetes ApiClient authenticated as cluster admin.
- `namespace` (function): a fresh namespace whose default ServiceAccount exists; deleted afterwards.
- `crd_installed` (session): every crds/*.yaml applied and Established.
- `prometheus` (function): a factory starting real Prometheus servers for given scrape jobs.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from backtest_devtools import build
from backtest_devtools.cluster import ClusterInfo, LocalCluster
from backtest_devtools.config import REPO_ROOT, Settings, load_settings
from backtest_devtools.crds import install_crds
from backtest_devtools.errors import DevtoolsError
from backtest_devtools.postgres import PostgresServer
from backtest_devtools.prometheus import PrometheusServer, ScrapeJob

CRD_DIR = REPO_ROOT / "crds"
GATEWAY_API = ("sigs.k8s.io/gateway-api", "v1.6.3")
"""The Gateway API release whose HTTPRoute CRD the gatewayAPI traffic provider is tested against."""
_KEPT_LOGS = pytest.StashKey[list[str]]()
_BUILD_ERROR = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def devtools_settings() -> Settings:
    return load_settings()


@pytest.hookimpl(trylast=True)  # after `-m` deselection: `make unit` never triggers a build
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build missing binaries before any test runs, so a cold build is not counted in a test's timeout."""
    if not any(item.get_closest_marker("cluster") for item in items):
        return
    try:
        build.ensure_built(load_settings(), _progress(config))
    except DevtoolsError as error:
        config.stash[_BUILD_ERROR] = str(error)


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, devtools_settings: Settings
) -> Iterator[ClusterInfo]:
    if _BUILD_ERROR in request.config.stash:
        pytest.fail(request.config.stash[_BUILD_ERROR])
    state = tmp_path_factory.mktemp("cluster")
    local = LocalCluster(devtools_settings, state, nodes=2, die_with_parent=True, report=_progress(request.config))
    try:
        info = local.up()
    except BaseException:
        local.down(quiet=True)
        request.config.stash.setdefault(_KEPT_LOGS, []).append(f"control plane logs kept in {state}")
        raise
    try:
        yield info
    finally:
        local.down(quiet=True)
        _keep_logs_if_failed(request, state, "control plane")


@pytest.fixture(scope="session")
def k8s_api(cluster: ClusterInfo) -> Iterator[Any]:
    api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s_api: Any) -> Iterator[str]:
    """A namespace named after the test, ready for pods (its default ServiceAccount exists)."""
    core = k8s.CoreV1Api(k8s_api)
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as error:
            if error.status != 404:
                raise


@pytest.fixture(scope="session")
def crd_installed(k8s_api: Any) -> list[str]:
    """Apply every CRD in crds/ (create or replace) and wait until each is Established; returns names."""
    files = sorted(CRD_DIR.glob("*.yaml"))
    if not files:
        pytest.fail(f"no CRD found in {CRD_DIR}: generate it with `make crds`")
    return install_crds(k8s_api, files)


@pytest.fixture(scope="session")
def gateway_api_installed(k8s_api: Any, devtools_settings: Settings) -> list[str]:
    """The standard HTTPRoute CRD, read from the gateway-api Go module (no other network is reachable)."""
    folder = build.module_dir(devtools_settings, *GATEWAY_API) / "config" / "crd" / "standard"
    return install_crds(k8s_api, [folder / "gateway.networking.k8s.io_httproutes.yaml"])


PrometheusFactory = Callable[[list[ScrapeJob]], PrometheusServer]


@pytest.fixture
def prometheus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, devtools_settings: Settings
) -> Iterator[PrometheusFactory]:
    """Call it with scrape jobs; it returns a started PrometheusServer (1s scrape interval)."""
    started: list[PrometheusServer] = []
    folders: list[Path] = []

    def start(jobs: list[ScrapeJob]) -> PrometheusServer:
        folder = tmp_path_factory.mktemp("prometheus")
        folders.append(folder)
        server = PrometheusServer(devtools_settings, folder, jobs, interval="1s")
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()
        for folder in folders:
            _keep_logs_if_failed(request, folder, "prometheus")


def _keep_logs_if_failed(request: pytest.FixtureRequest, folder: Path, what: str) -> None:
    """Delete the folder after a green run; keep it, and say where, when something failed."""
    if request.session.testsfailed:
        request.config.stash.setdefault(_KEPT_LOGS, []).append(f"{what} logs kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


def _progress(config: pytest.Config) -> Callable[[str], None]:
    """Print build/start progress live, past pytest's output capture (a cold build takes minutes)."""
    capture = config.pluginmanager.get_plugin("capturemanager")

    def say(message: str) -> None:
        if capture is None:
            print(message, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(message, flush=True)

    return say


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for line in config.stash.get(_KEPT_LOGS, []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests marked `postgres`)."""
    try:
        server = PostgresServer().start()
    except DevtoolsError as error:
        pytest.fail(str(error))
    try:
        yield server
    finally:
        server.stop(keep=bool(request.session.testsfailed))


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:12]}")
