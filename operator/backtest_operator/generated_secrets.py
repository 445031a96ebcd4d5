"""The edge that writes the generated credentials Secret: created once, then only missing keys are added.

Server-side apply would replace the random values on every pass; instead the Secret is read, created when
absent (owned by the BacktestService, so it goes with it) and merge-patched with the keys it lacks. A
concurrent creator (a second operator pass) makes the create fail with 409, which is then a read again.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from kubernetes import client as k8s

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.credentials import credentials_secret_name, missing, wanted_keys
from backtest_operator.workloads import Manifest, Owner, object_metadata


def credentials_secret(owner: Owner, data: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": object_metadata(owner, credentials_secret_name(owner.name), {}),
        "stringData": data,
    }


def _decoded(secret: Any) -> dict[str, str]:
    data = secret.data or {}
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


async def ensure_credentials(
    core: k8s.CoreV1Api, owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus
) -> list[str]:
    """Create the Secret or add its missing keys; returns the keys written (never existing values)."""
    name = credentials_secret_name(owner.name)
    wanted = wanted_keys(spec, status)
    for _ in range(3):
        try:
            existing = await asyncio.to_thread(core.read_namespaced_secret, name, owner.namespace)
        except k8s.ApiException as error:
            if error.status != 404:
                raise
            try:
                body: Any = credentials_secret(owner, wanted)  # the client takes a plain dict as the body
                await asyncio.to_thread(core.create_namespaced_secret, owner.namespace, body)
            except k8s.ApiException as race:
                if race.status == 409:
                    continue
                raise
            return sorted(wanted)
        add = missing(_decoded(existing), wanted)
        if add:
            await asyncio.to_thread(core.patch_namespaced_secret, name, owner.namespace, {"stringData": add})
        return sorted(add)
    return []
