"""Generate docs/backtestservice-reference.md from the CRD schema (``make crds``; a test fails when stale).

The reference walks the same structural schema the API server enforces, so its types, defaults, bounds and
descriptions are exactly the ones a user meets.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from backtest_operator.crd import render_crd

HEADER = """# BacktestService reference

Generated from the pydantic models by `make crds` (do not edit by hand). `apiVersion: backtest.dev/v1alpha1`,
kind `BacktestService`, short name `bts`, namespaced. Durations are strings such as `30s`, `10m`, `1h30m`.
Rates are fractions in [0, 1].
"""


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "object")
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node:
        return f"map[string]{_type(node['additionalProperties'])}"
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return "object (Kubernetes)"
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    if node.get("pattern") and "ms|s|m|h" in node["pattern"]:
        return "duration"
    return str(kind)


BOUNDS = (
    ("minimum", ">= {}"), ("maximum", "<= {}"), ("minLength", "length >= {}"), ("maxLength", "length <= {}"),
    ("minItems", ">= {} items"), ("maxItems", "<= {} items"),
)  # fmt: skip


def _rules(node: dict[str, Any]) -> str:
    parts = []
    for key, text in BOUNDS:
        if key in node:
            parts.append(text.format(node[key]))
    parts += [rule["message"] for rule in node.get("x-kubernetes-validations", [])]
    return "; ".join(parts)


def _default(node: dict[str, Any]) -> str:
    if "default" not in node or (isinstance(node["default"], dict | list) and len(json.dumps(node["default"])) > 40):
        return "" if "default" not in node else "(nested defaults)"
    return f"`{json.dumps(node['default'])}`"


def _rows(node: dict[str, Any], path: str, required: set[str]) -> list[str]:
    rows = []
    for name, child in node.get("properties", {}).items():
        field = f"{path}.{name}"
        mark = " (required)" if name in required else ""
        description = " ".join(str(child.get("description", "")).split())
        rows.append(f"| `{field}`{mark} | {_type(child)} | {_default(child)} | {_rules(child)} | {description} |")
        target = child.get("items", child) if child.get("type") == "array" else child
        rows += _rows(target, f"{field}[]" if child.get("type") == "array" else field, set(target.get("required", [])))
    return rows


def render_reference() -> str:
    root = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    lines = [HEADER]
    for section in ("spec", "status"):
        node = root["properties"][section]
        lines += [f"## {section}\n", "| field | type | default | constraints | description |", "|---|---|---|---|---|"]
        lines += _rows(node, section, set(node.get("required", [])))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    sys.stdout.write(render_reference())


if __name__ == "__main__":
    main()
