"""Against the real API server: the operator's pods get the generated key Secret, the shared database and
the grace period; the Secret is owned, named in status, and never rotated by later passes."""

from __future__ import annotations

import base64

import pytest
from kubernetes import client as k8s

from backtest_operator.policy import Action

from .test_reconcile import make_harness  # noqa: F401 - the fixture

pytestmark = pytest.mark.cluster


def _secret(harness):
    found = harness.core.read_namespaced_secret("quant-credentials", harness.namespace)
    return found, {key: base64.b64decode(value).decode() for key, value in (found.data or {}).items()}


def test_new_object_gets_generated_keys_a_managed_database_and_network_policies(make_harness):  # noqa: F811
    harness = make_harness()
    harness.step_until(Action.READY)
    secret, data = _secret(harness)
    assert set(data) == {"api-keys", "admin-keys", "proxy-token", "database-password"}
    assert data["api-keys"].startswith("default:") and len(data["api-keys"]) > 40
    owner = secret.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("BacktestService", "quant", True)
    status = harness.get()["status"]
    assert status["apiKeysSecret"] == "quant-credentials" and status["database"].startswith("managed:")
    database = harness.apps.read_namespaced_stateful_set("quant-db", harness.namespace)
    assert database.spec.volume_claim_templates[0].spec.resources.requests == {"storage": "5Gi"}
    revision = status["stableRevision"]
    pod = harness.apps.read_namespaced_deployment(f"quant-{revision}", harness.namespace).spec.template.spec
    assert pod.termination_grace_period_seconds == 60
    env = {e.name: e for e in pod.containers[0].env}
    assert env["ENGINE_API_KEYS"].value_from.secret_key_ref.name == "quant-credentials"
    assert "$(ENGINE_DATABASE_PASSWORD)@quant-db:5432" in env["DATABASE_URL"].value
    policies = k8s.NetworkingV1Api(harness.core.api_client).list_namespaced_network_policy(harness.namespace)
    assert {p.metadata.name for p in policies.items} == {"quant-engine", "quant-router", "quant-db"}


def test_generated_values_are_never_rotated_when_the_operator_passes_again(make_harness):  # noqa: F811
    harness = make_harness()
    harness.step_until(Action.READY)
    _, first = _secret(harness)
    harness.patch({"spec": {"engine": {"databaseUrlSecret": {"name": "external-db", "key": "url"}}}})
    for _ in range(3):
        harness.step()
    _, later = _secret(harness)
    assert later == first  # every value kept: clients' keys and the database password still work
    harness.patch({"spec": {"engine": {"apiKeysSecret": {"name": "my-keys", "key": "keys"}}}})
    harness.step()
    assert harness.get()["status"]["apiKeysSecret"] == "my-keys"
