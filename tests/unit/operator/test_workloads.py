"""Pure builders of the owned objects: what each state of a rollout asks the cluster for."""

from backtest_operator.api import BacktestServiceStatus, RolloutPhase
from backtest_operator.desired import desired_manifests
from backtest_operator.workloads import Owner, WorkloadDefaults, engine_deployment, replica_plan

from .rollouts import make_spec, pass_phase, started, track

OWNER = Owner("quant", "research", "uid-1")
DEFAULTS = WorkloadDefaults(router_image="backtest-engine:router")


def by_kind_name(manifests):
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def test_engine_pods_are_hardened_probed_and_owned_when_built():
    spec = make_spec(engine={"faultInjection": {"errorRate": 0.2}})
    deployment = engine_deployment(OWNER, spec.pod(), spec.revision(), "canary", 2)
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("BacktestService", "uid-1", True)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/v1/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/v1/ready"
    env = {item["name"]: item for item in container["env"]}
    assert env["ENGINE_FAULT_ERROR_RATE"]["value"] == "0.2"
    assert env["ENGINE_VERSION"]["value"] == spec.revision()
    assert "ENGINE_TRACK" not in env  # a track change at promotion must not restart pods


def test_secrets_reach_pods_by_reference_when_set():
    spec = make_spec(engine={"databaseUrlSecret": {"name": "db", "key": "url"},
                             "apiKeysSecret": {"name": "engine-keys", "key": "keys"}})  # fmt: skip
    container = engine_deployment(OWNER, spec.pod(), spec.revision(), "stable", 1)["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "url"}
    assert env["ENGINE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "engine-keys", "key": "keys"}


def test_promotion_keeps_pod_templates_unchanged_when_a_revision_changes_track():
    driver = started()
    canary = driver.status.canary_revision
    before = by_kind_name(desired_manifests(OWNER, driver.spec, driver.status, DEFAULTS))
    for _ in range(4):
        pass_phase(driver)
    assert driver.status.stable_revision == canary
    after = by_kind_name(desired_manifests(OWNER, driver.spec, driver.status, DEFAULTS))
    name = ("Deployment", f"quant-{canary}")
    assert before[name]["spec"]["template"] == after[name]["spec"]["template"]
    assert after[("Service", "quant-stable")]["spec"]["selector"]["backtest.dev/revision"] == canary
    previous = driver.status.previous_revision
    assert after[("Deployment", f"quant-{previous}")]["spec"]["replicas"] == driver.spec.replicas


def test_router_gets_capacity_for_its_weight_and_the_weight_in_its_configmap_when_progressing():
    driver = started(replicas=4)
    manifests = by_kind_name(desired_manifests(OWNER, driver.spec, driver.status, DEFAULTS))
    assert manifests[("Deployment", f"quant-{driver.status.canary_revision}")]["spec"]["replicas"] == 1
    assert manifests[("Deployment", f"quant-{driver.status.stable_revision}")]["spec"]["replicas"] == 4
    assert manifests[("ConfigMap", "quant-weight")]["data"] == {"weight": "1"}
    router = manifests[("Deployment", "quant-router")]["spec"]["template"]["spec"]
    args = router["containers"][0]["args"]
    assert args[args.index("--weight-configmap") + 1] == "research/quant-weight"
    assert router["serviceAccountName"] == "quant-router"
    role = manifests[("Role", "quant-router")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["quant-weight"],
                              "verbs": ["get", "list", "watch"]}]  # fmt: skip


def test_replica_ratio_is_the_weight_when_provider_is_replicas():
    spec = make_spec(replicas=10, traffic={"provider": "replicas"})
    status = BacktestServiceStatus(phase=RolloutPhase.PROGRESSING, stable_revision="old", canary_revision="new",
                                   canary_weight=50)  # fmt: skip
    assert replica_plan(spec, status).by_revision == {"old": ("stable", 5), "new": ("canary", 5)}


def test_canary_is_scaled_to_zero_and_unselected_when_rolled_back():
    driver = started()
    driver.step(canary=track(100, errors=60))
    assert driver.status.phase == RolloutPhase.DEGRADED
    manifests = by_kind_name(desired_manifests(OWNER, driver.spec, driver.status, DEFAULTS))
    assert manifests[("Deployment", f"quant-{driver.status.canary_revision}")]["spec"]["replicas"] == 0
    assert manifests[("Service", "quant-canary")]["spec"]["selector"]["backtest.dev/revision"] == "none"
    assert manifests[("ConfigMap", "quant-weight")]["data"] == {"weight": "0"}


def test_gateway_route_carries_both_weights_when_provider_is_gateway_api():
    spec = make_spec(traffic={"provider": "gatewayAPI", "httpRoute": "public-quant",
                              "parentRefs": [{"name": "edge"}]})  # fmt: skip
    status = BacktestServiceStatus(phase=RolloutPhase.PROGRESSING, stable_revision="old", canary_revision="new",
                                   canary_weight=10)  # fmt: skip
    manifests = by_kind_name(desired_manifests(OWNER, spec, status, DEFAULTS))
    route = manifests[("HTTPRoute", "public-quant")]["spec"]
    assert route["parentRefs"] == [{"name": "edge"}]
    assert [(b["name"], b["weight"]) for b in route["rules"][0]["backendRefs"]] == [
        ("quant-stable", 90), ("quant-canary", 10),
    ]  # fmt: skip
    assert ("Deployment", "quant-router") not in manifests
