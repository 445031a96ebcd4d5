"""Images are named as pods ask for them and rebuilt only when what goes into them changes; Python
dependencies are locked; the Go toolchain download is checked like `go` checks modules."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from backtest_devtools import images, lock, podmonitor, toolchain
from backtest_devtools.config import REPO_ROOT
from backtest_operator.settings import OperatorSettings

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("reference", "normalised"),
    [
        ("backtest-engine:0.1.0", "docker.io/library/backtest-engine:0.1.0"),
        ("backtest-engine", "docker.io/library/backtest-engine:latest"),
        ("quant/engine:2", "docker.io/quant/engine:2"),
        ("ghcr.io/backtest-dev/backtest-engine:0.1.0", "ghcr.io/backtest-dev/backtest-engine:0.1.0"),
        ("localhost/backtest/pause:3.10.2", "localhost/backtest/pause:3.10.2"),
        ("registry:5000/a/b:1", "registry:5000/a/b:1"),
    ],
)
def test_references_are_normalised_like_containerd_when_imported(reference, normalised):
    assert images.normalise(reference) == normalised


def test_images_carry_the_references_of_the_chart_and_the_operator_defaults_when_imported():
    chart = yaml.safe_load((REPO_ROOT / "charts/backtest-operator/values.yaml").read_text())
    version = yaml.safe_load((REPO_ROOT / "charts/backtest-operator/Chart.yaml").read_text())["appVersion"]
    by_name = {image.name: image for image in images.project_images()}

    engine, operator = by_name["backtest-engine"], by_name["backtest-operator"]
    assert images.normalise(f"{chart['operator']['routerImage']['repository']}:{version}") in engine.references
    assert images.normalise(OperatorSettings().router_image) in engine.references
    assert images.normalise(f"{chart['image']['repository']}:{version}") in operator.references


def test_build_context_is_what_dockerignore_selects_when_listed():
    files = {str(path.relative_to(REPO_ROOT)) for path in images.context_files(REPO_ROOT)}

    assert {"pyproject.toml", "README.md", "constraints.txt", "engine/Dockerfile"} <= files
    assert any(name.startswith("engine/backtest_engine/") for name in files)
    assert not any(name.startswith(("tests/", "charts/", ".git/", ".venv/")) for name in files)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in files)


def context(tmp_path: Path) -> tuple[Path, images.ProjectImage]:
    (tmp_path / ".dockerignore").write_text("*\n!app/\n!Dockerfile\n**/__pycache__\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "Dockerfile").write_text("FROM base\nCOPY app/ app/\n")
    (tmp_path / "notes.txt").write_text("outside the context\n")
    return tmp_path, images.ProjectImage("app", tmp_path / "Dockerfile", ("docker.io/library/app:1",))


def test_content_hash_is_stable_when_nothing_in_the_context_changed(tmp_path):
    root, image = context(tmp_path)
    first = images.content_hash(image, root, "sha256:base", {"A": "1"})
    (root / "notes.txt").write_text("edited, but outside the build context\n")
    (root / "app" / "__pycache__").mkdir()
    (root / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")

    assert images.content_hash(image, root, "sha256:base", {"A": "1"}) == first


def test_content_hash_changes_when_a_context_file_the_base_or_an_argument_changes(tmp_path):
    root, image = context(tmp_path)
    first = images.content_hash(image, root, "sha256:base", {"A": "1"})

    assert images.content_hash(image, root, "sha256:other", {"A": "1"}) != first
    assert images.content_hash(image, root, "sha256:base", {"A": "2"}) != first
    (root / "app" / "main.py").write_text("print(2)\n")
    assert images.content_hash(image, root, "sha256:base", {"A": "1"}) != first


def test_hermetic_build_arguments_install_from_the_wheelhouse_only_when_passed():
    args = images.build_args(images.BASE_IMAGE)

    assert args["PYTHON_IMAGE"] == images.BASE_IMAGE
    assert "--no-index" in args["PIP_INSTALL_OPTIONS"].split()
    assert f"--find-links={images.WHEELHOUSE_MOUNT}" in args["PIP_INSTALL_OPTIONS"].split()


@pytest.mark.parametrize("component", ["engine", "operator"])
def test_dockerfile_installs_with_the_lock_file_and_passes_pip_options_when_built(component):
    text = (REPO_ROOT / component / "Dockerfile").read_text()

    assert "ARG PIP_INSTALL_OPTIONS" in text
    assert "--constraint constraints.txt" in text
    assert "constraints.txt" in text.split("COPY pyproject.toml", 1)[1].splitlines()[0]


def test_lock_file_pins_every_dependency_of_the_project_when_read():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = lock.pinned(lock.CONSTRAINTS.read_text())
    names = {lock.requirement_name(requirement) for requirement in lock.direct_requirements(pyproject)}

    missing = sorted(name for name in names if name not in pins)
    assert not missing, f"constraints.txt lacks {missing}: run `make lock`"


def test_toolchain_hash_matches_the_go_checksum_database_when_computed():
    # github.com/josharian/intern v1.0.0, whose hash every go.sum that uses it records.
    archive = DATA / "josharian-intern-v1.0.0.zip"

    assert toolchain.dirhash_h1(archive) == "h1:vlS4z54oSdjm0bgjRigI+G1HpF+tI+9rE5LLzOg8HmY="


CHART_LIKE_PODMONITOR = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PodMonitor",
    "metadata": {"name": "backtest-routers", "namespace": "backtest-system"},
    "spec": {
        "selector": {
            "matchLabels": {"app.kubernetes.io/component": "router"},
            "matchExpressions": [{"key": "backtest.dev/service", "operator": "Exists"}],
        },
        "namespaceSelector": {"any": True},
        "podMetricsEndpoints": [
            {
                "port": "http",
                "path": "/metrics",
                "interval": "1s",
                "scrapeTimeout": "1s",
                "relabelings": [
                    {"sourceLabels": ["__meta_kubernetes_pod_label_backtest_dev_service"], "targetLabel": "service"}
                ],
            }
        ],
    },
}


def test_podmonitor_becomes_pod_discovery_with_its_selector_and_relabelings_when_rendered(tmp_path):
    (job,) = podmonitor.scrape_configs(CHART_LIKE_PODMONITOR, tmp_path / "kubeconfig")
    rules = job["relabel_configs"]

    assert job["kubernetes_sd_configs"] == [{"role": "pod", "kubeconfig_file": str(tmp_path / "kubeconfig")}]
    assert job["scrape_interval"] == "1s"
    assert {"action": "keep", "regex": "(router);true", "source_labels": [
        "__meta_kubernetes_pod_label_app_kubernetes_io_component",
        "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_component"]} in rules  # fmt: skip
    assert {"action": "keep", "regex": "true",
            "source_labels": ["__meta_kubernetes_pod_labelpresent_backtest_dev_service"]} in rules  # fmt: skip
    assert {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"} in rules
    assert rules[-1] == {"source_labels": ["__meta_kubernetes_pod_label_backtest_dev_service"],
                         "target_label": "service"}  # fmt: skip


def test_podmonitor_fields_this_renderer_does_not_know_are_an_error_when_rendered(tmp_path):
    monitor = yaml.safe_load(yaml.safe_dump(CHART_LIKE_PODMONITOR))
    monitor["spec"]["podMetricsEndpoints"][0]["metricRelabelings"] = []

    with pytest.raises(ValueError, match="metricRelabelings"):
        podmonitor.scrape_configs(monitor, tmp_path / "kubeconfig")
