"""The committed CRD is generated from the models and obeys the structural-schema rules."""

from pathlib import Path
from typing import Any

import yaml

from backtest_operator.crd import render_yaml
from backtest_operator.reference import render_reference

ROOT = Path(__file__).parents[3]
CRD_FILE = ROOT / "crds" / "backtest.dev_backtestservices.yaml"
CHART_CRD_FILE = ROOT / "charts" / "backtest-operator" / "crds" / CRD_FILE.name


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found.extend(_walk(value, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            found.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            found.extend(_walk(node["additionalProperties"], f"{path}{{}}"))
    return found


def _root_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_models_when_regenerated():
    assert CRD_FILE.read_text() == render_yaml(), "crds/ is stale: run `make crds`"


def test_chart_crd_matches_models_when_regenerated():
    assert CHART_CRD_FILE.read_text() == render_yaml(), "the chart's crds/ copy is stale: run `make crds`"


def test_every_schema_node_is_structural_when_generated():
    for path, node in _walk(_root_schema()):
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            assert forbidden not in node, f"{path} uses {forbidden}"
        assert "type" in node, f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path} mixes properties and additionalProperties"


def test_spec_carries_defaults_of_the_default_policy_when_generated():
    spec = _root_schema()["properties"]["spec"]
    phases = spec["properties"]["phases"]["default"]
    assert [(p["name"], p["weight"], p["duration"]) for p in phases] == [
        ("canary", 1, "10m"),
        ("testing", 10, "30m"),
        ("validation", 50, "1h"),
        ("full", 100, "15m"),
    ]
    rollback = spec["properties"]["rollback"]["default"]
    assert rollback["maxErrorRate"] == 0.10
    assert rollback["maxFallbackRate"] == 0.25
    assert rollback["maxLatencyIncrease"] == "2s"
    assert spec["properties"]["analysis"]["properties"]["minRequests"]["default"] == 50


def test_phase_list_has_cel_rules_naming_each_constraint_when_generated():
    phases = _root_schema()["properties"]["spec"]["properties"]["phases"]
    messages = {rule["message"] for rule in phases["x-kubernetes-validations"]}
    assert messages == {
        "phase weights must be strictly increasing",
        "the last phase must have weight 100",
        "phase names must be unique",
    }
    assert phases["maxItems"] == 10  # bounds the cost of the CEL rules


def test_reference_doc_matches_models_when_regenerated():
    reference = Path(__file__).parents[3] / "docs" / "backtestservice-reference.md"
    assert reference.read_text() == render_reference(), "docs/ reference is stale: run `make crds`"
