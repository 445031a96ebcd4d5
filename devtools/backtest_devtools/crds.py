"""Install CustomResourceDefinitions and wait until the API server serves them (tests, demo, benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException


def install_crds(api_client: Any, files: list[Path], timeout: float = 30.0) -> list[str]:
    """Create (or replace) every CRD in `files` and wait until each is Established; returns their names."""
    documents = [doc for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]
    return install_crd_documents(api_client, documents, timeout)


def install_crd_documents(api_client: Any, documents: Iterable[Any], timeout: float = 30.0) -> list[str]:
    """The same for CRDs already parsed (other kinds are skipped)."""
    extensions = k8s.ApiextensionsV1Api(api_client)
    names = []
    for document in documents:
        if document.get("kind") != "CustomResourceDefinition":
            continue
        name = document["metadata"]["name"]
        try:
            extensions.create_custom_resource_definition(document)
        except ApiException as error:
            if error.status != 409:
                raise
            current: Any = extensions.read_custom_resource_definition(name)
            document["metadata"]["resourceVersion"] = current.metadata.resource_version
            extensions.replace_custom_resource_definition(name, document)
        names.append(name)
    for name in names:
        wait_established(extensions, name, timeout)
    return names


def wait_established(extensions: Any, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = extensions.read_custom_resource_definition(name)
        conditions = (crd.status.conditions or []) if crd.status else []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.1)
    raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")
