"""kwok as the fake kubelet: which stage configs it runs and what the fake nodes look like.

kwok refuses to start without Stage objects. Its own repository ships the stages it uses by default
under kustomize/stage/; we read them from the Go module cache (the same version we built) rather than
copying them here, in the order their kustomization.yaml lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

NODE_ANNOTATION = "kwok.x-k8s.io/node"
NODE_ANNOTATION_VALUE = "fake"
NODE_SELECTOR = f"{NODE_ANNOTATION}={NODE_ANNOTATION_VALUE}"
LEASE_SECONDS = 40
# node/fast marks nodes Ready, the lease heartbeat keeps them Ready for the node lifecycle controller,
# pod/general walks pods through create -> init containers -> Running/Ready -> complete -> delete.
STAGE_FOLDERS = ("node/fast", "node/heartbeat-with-lease", "pod/general")


def stage_config(kwok_module_dir: Path) -> str:
    """A multi-document kwok config holding every Stage of STAGE_FOLDERS."""
    documents: list[str] = []
    for folder in STAGE_FOLDERS:
        base = kwok_module_dir / "kustomize" / "stage" / folder
        kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
        for resource in kustomization["resources"]:
            documents.append((base / resource).read_text().strip())
    return "\n---\n".join(documents) + "\n"


TAINT = {"key": NODE_ANNOTATION, "value": NODE_ANNOTATION_VALUE, "effect": "NoSchedule"}


def node_manifest(name: str, tainted: bool = False) -> dict[str, Any]:
    """A Node object kwok will manage. Untainted, ordinary Deployments schedule onto it; beside a real node it
    is tainted, so pods run for real unless they tolerate TAINT (scale tests that want fake pods)."""
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {NODE_ANNOTATION: NODE_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }
    if tainted:
        manifest["spec"] = {"taints": [dict(TAINT)]}
    return manifest
