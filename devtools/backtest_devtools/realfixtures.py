"""pytest fixtures for tests on real pods (marker `real`; loaded by tests/conftest.py).

- Before the first test, when `real` tests were selected: the control plane and the node's binaries are
  built, and the engine and operator images (outside any test's timeout).
- `real_cluster` (session): a LocalCluster with the real node, in a tmp folder, stopped at the end, and
  that stop is checked: anything left behind (process, mount, interface, iptables chain) fails the run.
  Only one real node runs per machine: when another cluster holds it, the fixture waits up to
  BACKTEST_REAL_NODE_WAIT seconds (default 900) and then fails naming the holder. With
  BACKTEST_REAL_CLUSTER=<state folder> (e.g. the repo's .cluster after `make cluster-up`) the tests use
  that running cluster and leave it running.
- `real_k8s_api` (session), `real_namespace` (function): as `k8s_api` and `namespace`, on that cluster.
- `node_image` (session): gives an imported image more tags, e.g. ``node_image("backtest-engine:2.0.0")``.
- `operator_release` (session): the Helm chart installed for real (operator pod under the chart's
  ServiceAccount and RBAC, watching every namespace); uninstalled at the end.
- `router_prometheus` (session): a host Prometheus discovering the routers through the scrape config the
  chart's router PodMonitor implies (1s interval).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from backtest_devtools import build, images, node
from backtest_devtools.certs import NODE_IP
from backtest_devtools.chart import helm_install, helm_uninstall, router_scrape_configs
from backtest_devtools.cluster import ClusterInfo, LocalCluster
from backtest_devtools.config import Settings, load_settings
from backtest_devtools.errors import DevtoolsError
from backtest_devtools.prometheus import PrometheusServer

_PREPARE_ERROR = pytest.StashKey[str]()
OPERATOR_RELEASE = "backtest"
OPERATOR_NAMESPACE = "backtest-system"


@dataclass
class RealCluster:
    """A cluster with a real node: its LocalCluster (restartable by tests that check stop/start)."""

    local: LocalCluster
    info: ClusterInfo
    owned: bool
    """False when the tests borrowed a running cluster (BACKTEST_REAL_CLUSTER): they never stop it."""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build binaries and images before any real test runs (a cold build is not a test's timeout)."""
    if not any(item.get_closest_marker("real") for item in items):
        return
    say = _progress(config)
    try:
        settings = load_settings()
        build.ensure_built(settings, say, build.ALL_RELEASES)
        reason = node.can_start_here()
        if reason:
            config.stash[_PREPARE_ERROR] = f"a real node cannot start on this machine: {reason}"
            return
        images.build_project_images(settings, say)
        images.ensure_pause_archive(settings, say)
    except DevtoolsError as error:
        config.stash[_PREPARE_ERROR] = str(error)


@pytest.fixture(scope="session")
def real_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    if _PREPARE_ERROR in request.config.stash:
        pytest.fail(request.config.stash[_PREPARE_ERROR])
    settings = load_settings()
    say = _progress(request.config)
    borrowed = os.environ.get("BACKTEST_REAL_CLUSTER")
    if borrowed:
        local = LocalCluster(settings, Path(borrowed), real_node=None, report=say)
        if local.node is None or not all(local.status().values()):
            pytest.fail(f"BACKTEST_REAL_CLUSTER={borrowed} is not a running cluster with a real node")
        images.import_into_node(settings, say)
        yield RealCluster(local, local.info(), owned=False)
        return
    state = tmp_path_factory.mktemp("real-cluster")
    local = LocalCluster(settings, state, nodes=0, die_with_parent=True, report=say, real_node=True)
    _wait_for_free_node(local, say)
    try:
        info = local.up()
    except BaseException:
        local.down(quiet=True)
        request.config.stash.setdefault(_KEPT, []).append(f"real cluster logs kept in {state}")
        raise
    try:
        yield RealCluster(local, info, owned=True)
    finally:
        leftovers = local.down(quiet=True)
        if request.session.testsfailed or leftovers:
            request.config.stash.setdefault(_KEPT, []).append(f"real cluster logs kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
        if leftovers:
            pytest.fail(f"stopping the real node left behind: {'; '.join(leftovers)}")


def _wait_for_free_node(local: LocalCluster, say: Callable[[str], None]) -> None:
    assert local.node is not None
    deadline = time.monotonic() + float(os.environ.get("BACKTEST_REAL_NODE_WAIT", "900"))
    holder = local.node.holder()
    if holder:
        say(f"[real] the real node is busy (cluster in {holder}); waiting for it to be free")
    while holder and time.monotonic() < deadline:
        time.sleep(5)
        holder = local.node.holder()
    if holder:
        pytest.fail(f"the real node of this machine is in use by the cluster in {holder}; waited "
                    f"{os.environ.get('BACKTEST_REAL_NODE_WAIT', '900')}s (BACKTEST_REAL_NODE_WAIT)")  # fmt: skip


@pytest.fixture(scope="session")
def real_k8s_api(real_cluster: RealCluster) -> Iterator[Any]:
    api = k8s_config.new_client_from_config(config_file=str(real_cluster.info.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def real_namespace(request: pytest.FixtureRequest, real_k8s_api: Any) -> Iterator[str]:
    """A namespace named after the test, ready for pods; deleted afterwards (its pods stop for real)."""
    core = k8s.CoreV1Api(real_k8s_api)
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
def node_image(real_cluster: RealCluster) -> Callable[[str], str]:
    """Tag the engine (or operator) image under another reference in the node; returns the reference."""

    def tag(reference: str) -> str:
        source = "backtest-operator:0.1.0" if reference.startswith("backtest-operator") else "backtest-engine:0.1.0"
        images.tag_in_node(source, [reference])
        return reference

    return tag


@pytest.fixture(scope="session")
def operator_release(real_cluster: RealCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """The chart installed with helm (default values: the operator watches every namespace)."""
    settings = load_settings()
    kubeconfig = real_cluster.info.kubeconfig
    result = helm_install(settings, kubeconfig, OPERATOR_RELEASE, OPERATOR_NAMESPACE, ["--wait", "--timeout", "3m"])
    if result.returncode != 0:
        pytest.fail(f"helm install failed: {result.stderr.strip()[-1500:]}")
    try:
        yield OPERATOR_RELEASE
    finally:
        helm_uninstall(settings, kubeconfig, OPERATOR_RELEASE, OPERATOR_NAMESPACE)


@pytest.fixture(scope="session")
def router_prometheus(
    real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    settings: Settings = load_settings()
    configs = router_scrape_configs(settings, real_cluster.info.kubeconfig, interval="1s")
    server = PrometheusServer(
        settings,
        tmp_path_factory.mktemp("router-prometheus"),
        [],
        interval="1s",
        extra_scrape_configs=configs,
        host=NODE_IP,  # the operator's pod queries it: pods reach the host on the node address only
        binary=build.binary(settings, "prometheus"),  # Debian's has no Kubernetes discovery
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


_KEPT = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for line in config.stash.get(_KEPT, []):
        terminalreporter.write_line(line)


def _progress(config: pytest.Config) -> Callable[[str], None]:
    capture = config.pluginmanager.get_plugin("capturemanager")

    def say(message: str) -> None:
        if capture is None:
            print(message, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(message, flush=True)

    return say
