"""checkov (Kubernetes framework) over the rendered chart and the operator's objects for an example
BacktestService: every failed check is a documented exception (docs/operations.md), and every documented
exception still fails (a fixed one must leave the list).

checkov lives in its own virtualenv (.venv-checkov, `make checkov`): its pinned dependencies conflict with
the project's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from backtest_devtools import chart
from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.desired import desired_manifests
from backtest_operator.workloads import Owner, WorkloadDefaults

ROOT = Path(__file__).parents[2]
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
OPERATIONS = ROOT / "docs" / "operations.md"

# (check id, object kind/name) -> why it stays. The same list, with the reasons, is in docs/operations.md.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("CKV_K8S_43", "Deployment/backtest-operator"): "image digest is a chart value (image.digest)",
    ("CKV_K8S_43", "Deployment/quant-router"): "image digest is the user's choice (spec.traffic.routerImage)",
    ("CKV_K8S_43", "Deployment/quant-ENGINE"): "image digest is the user's choice (spec.image)",
    ("CKV_K8S_43", "StatefulSet/quant-db"): "image digest is the user's choice (spec.database.image)",
    ("CKV_K8S_15", "Deployment/backtest-operator"): "IfNotPresent with immutable tags or digests",
    ("CKV_K8S_15", "Deployment/quant-router"): "IfNotPresent with immutable tags or digests",
    ("CKV_K8S_15", "Deployment/quant-ENGINE"): "IfNotPresent with immutable tags or digests",
    ("CKV_K8S_15", "StatefulSet/quant-db"): "IfNotPresent with immutable tags or digests",
    ("CKV_K8S_38", "Deployment/backtest-operator"): "the operator talks to the API server",
    ("CKV_K8S_38", "Deployment/quant-router"): "the router watches its weight ConfigMap",
    ("CKV_K8S_35", "Deployment/quant-router"): "the proxy token is read from the environment",
    ("CKV_K8S_35", "Deployment/quant-ENGINE"): "engine settings are read from the environment",
}


def example_objects() -> list[dict]:
    spec = BacktestServiceSpec.model_validate({"image": "ghcr.io/backtest-dev/backtest-engine:0.1.0"})
    status = BacktestServiceStatus(stable_revision=spec.revision(), stable_pod=spec.pod())
    return desired_manifests(Owner("quant", "research", "uid-1"), spec, status, WorkloadDefaults())


def _key(check: dict, engine: str) -> tuple[str, str]:
    """(check id, Kind/name) with the engine Deployment's revision-dependent name made stable."""
    parts = check["resource"].split(".")
    kind, name = parts[0], parts[-1] if parts[0] != "Pod" else parts[2]
    return check["check_id"], f"{kind}/{name.replace(engine, 'quant-ENGINE')}"


@pytest.fixture(scope="module")
def findings(devtools_settings, tmp_path_factory) -> list[tuple[str, str]]:
    assert CHECKOV.exists(), "checkov is not installed: run `make checkov`"
    folder = tmp_path_factory.mktemp("checkov")
    (folder / "chart.yaml").write_text(yaml.safe_dump_all(chart.render(devtools_settings)))
    objects = example_objects()
    (folder / "operator.yaml").write_text(yaml.safe_dump_all(objects))
    engine = next(o["metadata"]["name"] for o in objects if o["metadata"]["name"].startswith("quant-") and
                  o["kind"] == "Deployment" and o["metadata"]["name"] != "quant-router")  # fmt: skip
    run = subprocess.run(
        [str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "--quiet", "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    report = json.loads(run.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["resource_count"] >= 15
    return sorted({_key(check, engine) for check in report["results"]["failed_checks"]})


def test_every_failed_check_is_a_documented_exception(findings):
    unexpected = [found for found in findings if found not in EXCEPTIONS]
    assert not unexpected, f"new checkov failures (fix them, or document an exception): {unexpected}"


def test_every_documented_exception_still_fails(findings):
    stale = [key for key in EXCEPTIONS if key not in findings]
    assert not stale, f"fixed: remove from EXCEPTIONS and docs/operations.md: {stale}"


def test_exceptions_are_listed_with_their_reasons_in_the_operations_guide():
    text = OPERATIONS.read_text()
    for (check, resource), reason in EXCEPTIONS.items():
        assert f"| {check} | {resource} | {reason}" in text, (check, resource)
