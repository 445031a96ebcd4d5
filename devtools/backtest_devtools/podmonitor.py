"""The Prometheus scrape config a PodMonitor implies, for a Prometheus running outside the cluster.

prometheus-operator turns each PodMonitor endpoint into one scrape job with pod service discovery, a `keep`
rule per selector term and per port, its standard target labels (namespace, pod, container, job, endpoint)
and then the PodMonitor's own relabelings. This renders the same, so the real tier checks that the chart's
router PodMonitor (rendered by helm) really finds the routers the operator creates and labels their series
the way the analysis queries them. Only the PodMonitor fields the chart uses are supported; anything else
is an error rather than silently ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

Manifest = dict[str, Any]
SUPPORTED_ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "relabelings"}
SUPPORTED_OPERATORS = {"Exists", "In"}


def label_name(label: str) -> str:
    """Kubernetes label -> Prometheus meta label suffix (every invalid character becomes `_`)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def _selector_rules(selector: Manifest) -> list[Manifest]:
    rules: list[Manifest] = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        name = label_name(key)
        rules.append({"action": "keep", "regex": f"({value});true",
                      "source_labels": [f"__meta_kubernetes_pod_label_{name}",
                                        f"__meta_kubernetes_pod_labelpresent_{name}"]})  # fmt: skip
    for expression in selector.get("matchExpressions") or []:
        operator, name = expression["operator"], label_name(expression["key"])
        if operator not in SUPPORTED_OPERATORS:
            raise ValueError(f"matchExpressions operator {operator} is not supported here")
        if operator == "Exists":
            rules.append({"action": "keep", "regex": "true",
                          "source_labels": [f"__meta_kubernetes_pod_labelpresent_{name}"]})  # fmt: skip
        else:
            values = "|".join(re.escape(v) for v in expression["values"])
            rules.append({"action": "keep", "regex": f"({values});true",
                          "source_labels": [f"__meta_kubernetes_pod_label_{name}",
                                            f"__meta_kubernetes_pod_labelpresent_{name}"]})  # fmt: skip
    return rules


def scrape_configs(podmonitor: Manifest, kubeconfig: Path) -> list[Manifest]:
    """One scrape job per endpoint of `podmonitor`, discovering pods through the API of `kubeconfig`."""
    meta, spec = podmonitor["metadata"], podmonitor["spec"]
    namespaces = spec.get("namespaceSelector") or {}
    discovery: Manifest = {"role": "pod", "kubeconfig_file": str(kubeconfig)}
    if not namespaces.get("any"):
        discovery["namespaces"] = {"names": list(namespaces.get("matchNames") or [meta["namespace"]])}
    jobs = []
    for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
        unknown = set(endpoint) - SUPPORTED_ENDPOINT_FIELDS
        if unknown:
            raise ValueError(f"podMetricsEndpoints fields not supported here: {sorted(unknown)}")
        job = f"{meta['namespace']}/{meta['name']}"
        port = endpoint["port"]
        relabel = [
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
            *_selector_rules(spec["selector"]),
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": job},
            {"target_label": "endpoint", "replacement": port},
        ]
        for rule in endpoint.get("relabelings") or []:
            relabel.append({_snake(key): value for key, value in rule.items()})
        scrape: Manifest = {
            "job_name": f"podMonitor/{job}/{index}",
            "honor_labels": False,
            "metrics_path": endpoint.get("path", "/metrics"),
            "kubernetes_sd_configs": [discovery],
            "relabel_configs": relabel,
        }
        for field, key in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout")):
            if field in endpoint:
                scrape[key] = endpoint[field]
        jobs.append(scrape)
    return jobs
