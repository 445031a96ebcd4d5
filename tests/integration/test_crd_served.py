"""The generated BacktestService CRD, served by a real kube-apiserver: schema pruning, defaults, CEL and
OpenAPI validation, and the status subresource."""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "backtest.dev", "v1alpha1", "backtestservices"


def backtest_service(name: str, **spec) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BacktestService",
        "metadata": {"name": name},
        "spec": {"image": "backtest-engine:1.0.0", **spec},
    }


def phases(*entries: tuple[str, int, str]) -> list[dict]:
    return [{"name": name, "weight": weight, "duration": duration} for name, weight, duration in entries]


GOOD_PHASES = phases(("canary", 5, "1m"), ("full", 100, "2m"))


@pytest.fixture
def objects(k8s_api, crd_installed, namespace):
    api = k8s.CustomObjectsApi(k8s_api)

    class Objects:
        def create(self, body: dict) -> dict:
            return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        def get(self, name: str) -> dict:
            return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

        def patch_status(self, name: str, status: dict) -> dict:
            return api.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )

        def patch(self, name: str, body: dict) -> dict:
            return api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)

        def rejection(self, body: dict) -> tuple[str, list[str]]:
            """Create `body`, expecting a 422; returns the message and the fields named in causes."""
            with pytest.raises(ApiException) as error:
                self.create(body)
            assert error.value.status == 422, error.value.body
            details = json.loads(error.value.body)
            causes = details.get("details", {}).get("causes", [])
            return details["message"], [cause.get("field", "") for cause in causes]

    return Objects()


def test_crd_is_served_with_short_name_and_status_subresource_when_installed(k8s_api, crd_installed):
    resources = k8s.CustomObjectsApi(k8s_api).get_api_resources(GROUP, VERSION).resources
    by_name = {resource.name: resource for resource in resources}

    assert "backtestservices.backtest.dev" in crd_installed
    assert by_name["backtestservices"].kind == "BacktestService"
    assert by_name["backtestservices"].namespaced
    assert "bts" in by_name["backtestservices"].short_names
    assert "backtestservices/status" in by_name


def test_valid_object_gets_the_default_policy_when_only_image_is_given(objects):
    created = objects.create(backtest_service("minimal"))
    spec = created["spec"]

    assert spec["replicas"] == 2
    assert [(p["name"], p["weight"], p["duration"]) for p in spec["phases"]] == [
        ("canary", 1, "10m"),
        ("testing", 10, "30m"),
        ("validation", 50, "1h"),
        ("full", 100, "15m"),
    ]
    assert spec["rollback"]["maxErrorRate"] == 0.1
    assert spec["engine"]["workers"] == 2


def test_phase_defaults_are_filled_when_a_phase_omits_its_thresholds(objects):
    created = objects.create(backtest_service("custom", phases=GOOD_PHASES))

    assert created["spec"]["phases"][0] == {
        "name": "canary",
        "weight": 5,
        "duration": "1m",
        "minSuccessRate": 0.95,
        "maxErrorRate": 0.02,
        "maxResultMismatchRate": 0.0,
    }


def test_unknown_spec_fields_are_pruned_when_the_object_is_stored(objects):
    body = backtest_service("pruned", phases=GOOD_PHASES)
    body["spec"]["notAField"] = "dropped"

    stored = objects.create(body)

    assert "notAField" not in stored["spec"]


INVALID = {
    "weights-not-increasing": (
        {"phases": phases(("canary", 50, "1m"), ("testing", 10, "1m"), ("full", 100, "1m"))},
        "spec.phases",
        "strictly increasing",
    ),
    "last-weight-not-100": (
        {"phases": phases(("canary", 10, "1m"), ("testing", 50, "1m"))},
        "spec.phases",
        "weight 100",
    ),
    "rate-above-one": (
        {"phases": [{**GOOD_PHASES[0], "maxErrorRate": 1.5}, GOOD_PHASES[1]]},
        "spec.phases[0].maxErrorRate",
        "less than or equal to 1",
    ),
    "malformed-duration": (
        {"phases": [{**GOOD_PHASES[0], "duration": "ten minutes"}, GOOD_PHASES[1]]},
        "spec.phases[0].duration",
        "should match",
    ),
    "duplicate-phase-names": (
        {"phases": phases(("canary", 10, "1m"), ("canary", 100, "1m"))},
        "spec.phases",
        "unique",
    ),
    "negative-replicas": ({"replicas": -1}, "spec.replicas", "greater than or equal to 0"),
    "shadow-fraction-above-one": (
        {"traffic": {"shadow": {"fraction": 1.5}}},
        "spec.traffic.shadow.fraction",
        "less than or equal to 1",
    ),
    "shadow-without-router": (
        {"traffic": {"provider": "replicas", "shadow": {"fraction": 0.1}}},
        "spec",
        "traffic.shadow.fraction needs the router provider",
    ),
    "result-bias-too-large": (
        {"engine": {"faultInjection": {"resultBias": 0.9}}},
        "spec.engine.faultInjection.resultBias",
        "less than or equal to 0.5",
    ),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_invalid_object_is_rejected_naming_the_field_when_it_breaks_a_rule(objects, case):
    spec, field, reason = INVALID[case]

    message, fields = objects.rejection(backtest_service(case, **spec))

    assert field in fields, message
    assert field in message
    assert reason in message


def test_status_written_through_the_subresource_survives_when_read_back(objects):
    objects.create(backtest_service("with-status", phases=GOOD_PHASES))
    status = {
        "observedGeneration": 1,
        "phase": "Progressing",
        "step": 0,
        "stepName": "canary",
        "canaryWeight": 5,
        "stableRevision": "abc123",
        "canaryRevision": "def456",
        "message": "canary receives 5% of traffic",
        "conditions": [
            {
                "type": "Progressing",
                "status": "True",
                "reason": "PhaseStarted",
                "message": "phase canary started",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
        "notAStatusField": "pruned",
    }

    objects.patch_status("with-status", status)
    stored = objects.get("with-status")["status"]

    expected = copy.deepcopy(status)
    del expected["notAStatusField"]
    assert {key: stored[key] for key in expected} == expected
    assert "notAStatusField" not in stored


def test_status_is_ignored_when_written_through_the_main_resource(objects):
    objects.create(backtest_service("main-write", phases=GOOD_PHASES))
    objects.patch_status("main-write", {"phase": "Healthy", "canaryWeight": 0})

    objects.patch("main-write", {"status": {"phase": "Degraded", "canaryWeight": 77}})

    stored = objects.get("main-write")["status"]
    assert (stored["phase"], stored["canaryWeight"]) == ("Healthy", 0)


def test_generation_moves_only_with_spec_when_status_changes(objects):
    created = objects.create(backtest_service("generation", phases=GOOD_PHASES))
    objects.patch_status("generation", {"phase": "Healthy"})
    after_status = objects.get("generation")
    objects.patch("generation", {"spec": {"image": "backtest-engine:1.1.0"}})
    after_spec = objects.get("generation")

    assert after_status["metadata"]["generation"] == created["metadata"]["generation"]
    assert after_spec["metadata"]["generation"] == created["metadata"]["generation"] + 1


def test_watch_reports_creation_and_status_change_when_they_happen(k8s_api, objects, namespace):
    api = k8s.CustomObjectsApi(k8s_api)
    start = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["metadata"]["resourceVersion"]
    objects.create(backtest_service("watched", phases=GOOD_PHASES))
    objects.patch_status("watched", {"phase": "Progressing", "canaryWeight": 5})

    seen = []
    stream = watch.Watch()
    for event in stream.stream(
        api.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        resource_version=start,
        timeout_seconds=10,
    ):
        seen.append((event["type"], event["object"].get("status", {}).get("canaryWeight")))
        if len(seen) == 2:
            stream.stop()

    assert seen[0][0] == "ADDED"
    assert seen[1] == ("MODIFIED", 5)
