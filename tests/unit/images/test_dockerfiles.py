"""The images' Dockerfiles parse, pin their base, run as non-root, check their health with the stdlib, and
start console scripts the project declares, the way the operator's pods and the chart call them.

There is no Docker engine here: this reads the files (dockerfile-parse) and checks them against the
project (pyproject, the operator's pod builders, the chart's values); it does not build the images.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.cli import build_parser
from backtest_operator.settings import OperatorSettings
from backtest_operator.traffic import router_provider
from backtest_operator.workloads import Owner, WorkloadDefaults, engine_deployment

ROOT = Path(__file__).parents[3]
DOCKERFILES = {"operator": ROOT / "operator" / "Dockerfile", "engine": ROOT / "engine" / "Dockerfile"}
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$")


def parse(component: str) -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILES[component]))


def final_stage(component: str) -> list[dict[str, Any]]:
    """Instructions after the last FROM (what the running image is made of)."""
    structure = parse(component).structure
    last_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
    return structure[last_from:]


def instruction(component: str, name: str) -> str | None:
    found = [item["value"] for item in final_stage(component) if item["instruction"] == name]
    return found[-1] if found else None


def exec_form(value: str | None) -> list[str]:
    assert value is not None
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{value!r} is not the exec (JSON) form"
    return [str(part) for part in parsed]


def healthcheck_command(component: str) -> list[str]:
    value = instruction(component, "HEALTHCHECK")
    assert value is not None, f"{component}: no HEALTHCHECK"
    return exec_form(value[value.index("CMD") + len("CMD") :].strip())


@pytest.fixture
def health_server() -> Iterator[str]:
    """A real HTTP server answering 200 on the health paths of the images, 503 elsewhere."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path in ("/healthz", "/api/v1/health", "/router/health") else 503)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("component", DOCKERFILES)
def test_every_base_image_is_an_exact_python_311_slim_release_when_parsed(component):
    images = parse(component).parent_images

    assert len(images) >= 2, f"{component}: expected a multi-stage build"
    for image in images:
        assert PINNED_PYTHON.match(image), f"{component}: base {image!r} is not pinned to an exact release"


@pytest.mark.parametrize("component", DOCKERFILES)
def test_runtime_stage_copies_the_virtualenv_from_the_build_stage_when_parsed(component):
    copies = [item["value"] for item in final_stage(component) if item["instruction"] == "COPY"]
    runs = " ".join(item["value"] for item in final_stage(component) if item["instruction"] == "RUN")

    assert any(value.startswith("--from=build ") for value in copies)
    assert "pip install" not in runs, "the runtime stage must not install anything itself"


@pytest.mark.parametrize("component", DOCKERFILES)
def test_build_stage_installs_the_project_wheel_when_parsed(component):
    runs = " ".join(item["value"] for item in parse(component).structure if item["instruction"] == "RUN")

    # $PIP_INSTALL_OPTIONS is empty for `docker build`; `make images` passes its wheelhouse through it.
    assert re.search(r"pip wheel (\$PIP_INSTALL_OPTIONS )?--no-deps --wheel-dir /wheels \.", runs)
    assert re.search(r"pip install (\$PIP_INSTALL_OPTIONS )?(--constraint constraints\.txt )?/wheels/\*\.whl", runs)


@pytest.mark.parametrize("component", DOCKERFILES)
def test_copied_sources_exist_in_the_repository_when_parsed(component):
    for item in parse(component).structure:
        if item["instruction"] != "COPY" or item["value"].startswith("--from"):
            continue
        *sources, _destination = item["value"].split()
        for source in sources:
            assert (ROOT / source).exists(), f"{component}: COPY {source} does not exist"


@pytest.mark.parametrize("component", DOCKERFILES)
def test_image_runs_as_uid_10001_when_parsed(component):
    user = instruction(component, "USER")

    # Numeric, so that Kubernetes can verify runAsNonRoot without reading /etc/passwd.
    assert user == "10001:10001"
    chart_values = yaml.safe_load((ROOT / "charts" / "backtest-operator" / "values.yaml").read_text())
    assert chart_values["podSecurityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize("component", DOCKERFILES)
def test_python_writes_no_bytecode_when_the_root_filesystem_is_read_only(component):
    env = instruction(component, "ENV") or ""

    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/venv/bin:$PATH" in env


@pytest.mark.parametrize("component", DOCKERFILES)
def test_healthcheck_is_python_stdlib_urllib_when_parsed(component):
    command = healthcheck_command(component)

    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    compile(command[2], f"{component}-healthcheck", "exec")


def test_operator_healthcheck_probes_the_liveness_endpoint_of_run_when_parsed():
    command = healthcheck_command("operator")
    liveness_default = build_parser().parse_args(["run"]).liveness

    port = liveness_default.rsplit(":", 1)[1].split("/")[0]
    assert f"http://127.0.0.1:{port}/healthz" in command[2]
    exposed = (instruction("operator", "EXPOSE") or "").split()
    assert port in exposed
    assert str(OperatorSettings().metrics_port) in exposed


def test_operator_healthcheck_succeeds_when_the_endpoint_answers_200(health_server):
    command = healthcheck_command("operator")
    script = command[2].replace("http://127.0.0.1:8080", health_server)

    assert subprocess.run([sys.executable, "-c", script], timeout=30, check=False).returncode == 0


def test_operator_healthcheck_fails_when_the_endpoint_is_unhealthy(health_server):
    command = healthcheck_command("operator")
    script = command[2].replace("http://127.0.0.1:8080/healthz", health_server + "/broken")

    assert subprocess.run([sys.executable, "-c", script], timeout=30, capture_output=True, check=False).returncode != 0


@pytest.mark.parametrize("path", ["/api/v1/health", "/router/health"])
def test_engine_healthcheck_succeeds_when_healthcheck_url_points_at_a_healthy_endpoint(health_server, path):
    command = healthcheck_command("engine")
    env = {**os.environ, "HEALTHCHECK_URL": health_server + path}

    assert subprocess.run([sys.executable, "-c", command[2]], env=env, timeout=30, check=False).returncode == 0


def test_engine_healthcheck_defaults_to_the_engine_health_endpoint_when_parsed():
    env = instruction("engine", "ENV") or ""

    assert "HEALTHCHECK_URL=http://127.0.0.1:8080/api/v1/health" in env


def test_operator_entrypoint_is_a_declared_console_script_and_cmd_parses_when_parsed():
    entrypoint = exec_form(instruction("operator", "ENTRYPOINT"))
    cmd = exec_form(instruction("operator", "CMD"))

    assert entrypoint == ["backtest-operator"]
    assert entrypoint[0] in SCRIPTS
    args = build_parser().parse_args(cmd)
    assert args.command == "run"


def test_chart_args_parse_with_the_operator_cli_when_the_image_entrypoint_runs_them():
    template = (ROOT / "charts" / "backtest-operator" / "templates" / "deployment.yaml").read_text()

    # The chart passes args only; the image's ENTRYPOINT supplies `backtest-operator`.
    assert "command:" not in template
    assert "- run\n" in template
    assert build_parser().parse_args(["run", "--namespace=a", "--liveness=http://0.0.0.0:8080/healthz"]).namespace == [
        "a"
    ]


def test_engine_cmd_is_a_declared_console_script_and_there_is_no_entrypoint_when_parsed():
    cmd = exec_form(instruction("engine", "CMD"))

    assert cmd[0] in SCRIPTS
    assert cmd[:2] == ["backtest-engine", "serve"]
    # The operator's pods pass the whole command line as args; an ENTRYPOINT would be prepended to it.
    assert instruction("engine", "ENTRYPOINT") is None


def test_operator_pods_start_declared_console_scripts_when_they_run_the_engine_image():
    owner = Owner(name="quant", namespace="research", uid="uid-1")
    spec = BacktestServiceSpec.model_validate({"image": "backtest-engine:1.0.0"})
    engine = engine_deployment(owner, spec.pod(), "rev1", "stable", 1)
    manifests = router_provider(owner, spec, BacktestServiceStatus(), WorkloadDefaults())
    router = next(m for m in manifests if m["kind"] == "Deployment")

    for deployment in (engine, router):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert "command" not in container
        assert container["args"][0] in SCRIPTS
    engine_args = engine["spec"]["template"]["spec"]["containers"][0]["args"]
    assert engine_args[:2] == exec_form(instruction("engine", "CMD"))[:2]
