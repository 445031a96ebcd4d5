"""Generate the BacktestService CRD from the pydantic models (``make crds``).

pydantic's JSON schema is close to a Kubernetes structural schema but not the same: ``$ref`` must be
inlined, ``Optional`` becomes an omitted field rather than ``anyOf [.., null]``, free-form Kubernetes
objects become ``x-kubernetes-preserve-unknown-fields``, and defaults produced by factories must be
spelled out so the API server applies them. This module makes exactly those translations and no others.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter

from backtest_operator.api import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    BacktestServiceSpec,
    BacktestServiceStatus,
)

Schema = dict[str, Any]
_DROPPED_KEYS = {"title", "$defs"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Rollout state"},
    {"name": "Step", "type": "string", "jsonPath": ".status.stepName", "description": "Current phase"},
    {
        "name": "Weight",
        "type": "integer",
        "jsonPath": ".status.canaryWeight",
        "description": "Percentage of traffic asked for the new revision",
    },
    {
        "name": "Effective",
        "type": "integer",
        "jsonPath": ".status.effectiveWeight",
        "description": "Percentage of traffic the data plane sends to the new revision, as read back",
    },
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "priority": 1},
    {"name": "Stable", "type": "string", "jsonPath": ".status.stableRevision"},
    {"name": "Canary", "type": "string", "jsonPath": ".status.canaryRevision"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Verdict",
        "type": "string",
        "jsonPath": ".status.lastAnalysis.verdict",
        "priority": 1,
        "description": "Verdict of the latest evaluation",
    },
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]


SCALE_SUBRESOURCE: dict[str, str] = {
    "specReplicasPath": ".spec.replicas",
    "statusReplicasPath": ".status.replicas",
    "labelSelectorPath": ".status.selector",
}
"""`kubectl scale bts` and a HorizontalPodAutoscaler resize spec.replicas; the operator splits it between the
tracks. The selector (all engine pods of the service) lets an HPA average pod metrics."""


def _inline(node: Any, definitions: Schema) -> Any:
    """Replace every $ref by its definition, recursively."""
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].split("/")[-1]]
        merged = {**_inline(target, definitions), **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, definitions)
    return {key: _inline(value, definitions) for key, value in node.items()}


def _structural(node: Any) -> Any:
    """Rewrite pydantic idioms into their structural-schema equivalents."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    variants = node.get("anyOf")
    if variants is not None:
        present = [v for v in variants if v.get("type") != "null"]
        if len(present) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {variants}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", ...) is None:
            del rest["default"]
        node = {**present[0], **rest}
    node = {k: v for k, v in node.items() if k not in _DROPPED_KEYS}
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if node.get("type") == "object" and node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    return {key: _structural(value) for key, value in node.items()}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``Model``, ``Model | None`` or ``list[Model]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _apply_factory_defaults(model: type[BaseModel], schema: Schema) -> None:
    """Spell out defaults that pydantic computes with a factory, so the API server applies them too."""
    for name, field in model.model_fields.items():
        prop = schema["properties"][field.alias or name]
        if field.default_factory is not None and field.annotation is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            prop["default"] = TypeAdapter[Any](field.annotation).dump_python(
                value, mode="json", by_alias=True, exclude_none=True
            )
        nested = _model_in(field.annotation)
        if nested is not None:
            _apply_factory_defaults(nested, prop["items"] if prop.get("type") == "array" else prop)


def model_schema(model: type[BaseModel], *, with_defaults: bool) -> Schema:
    """The structural OpenAPI v3 schema of a model."""
    raw = model.model_json_schema(by_alias=True, mode="serialization")
    schema: Schema = _structural(_inline(raw, raw.get("$defs", {})))
    if with_defaults:
        _apply_factory_defaults(model, schema)
    return schema


def render_crd() -> Schema:
    """The whole CustomResourceDefinition object."""
    spec = model_schema(BacktestServiceSpec, with_defaults=True)
    status = model_schema(BacktestServiceStatus, with_defaults=False)
    root = {
        "type": "object",
        "description": "A backtest engine service delivered progressively: canary, phases, analysis, rollback.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}, "scale": SCALE_SUBRESOURCE},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated from backtest_operator.api by `make crds`; do not edit by hand.\n"


def render_yaml() -> str:
    return HEADER + yaml.safe_dump(render_crd(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render_yaml())


if __name__ == "__main__":
    main()
