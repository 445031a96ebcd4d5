"""What the operator gives engine pods by default: generated keys, a shared database, a grace period, and
NetworkPolicies that let only the router and Prometheus reach them."""

from backtest_operator.api import BacktestServiceStatus
from backtest_operator.credentials import (
    ADMIN_KEYS,
    API_KEYS,
    DATABASE_PASSWORD,
    PROXY_TOKEN,
    missing,
    wanted_keys,
    with_storage_status,
)
from backtest_operator.desired import desired_manifests
from backtest_operator.generated_secrets import credentials_secret
from backtest_operator.workloads import engine_deployment

from .rollouts import make_spec, started
from .test_workloads import DEFAULTS, OWNER, by_kind_name


def _engine(spec):
    deployment = engine_deployment(OWNER, spec.pod(), spec.revision(), "stable", 2)
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]["env"]


def _ref(env, name):
    item = next(e for e in env if e["name"] == name)
    return item.get("valueFrom", {}).get("secretKeyRef") or item["value"]


def test_engine_pods_get_generated_keys_shared_database_and_grace_period_by_default():
    pod, env = _engine(make_spec())
    assert _ref(env, "ENGINE_API_KEYS") == {"name": "quant-credentials", "key": API_KEYS}
    assert _ref(env, "ENGINE_ADMIN_KEYS") == {"name": "quant-credentials", "key": ADMIN_KEYS}
    assert _ref(env, "ENGINE_PROXY_TOKEN") == {"name": "quant-credentials", "key": PROXY_TOKEN}
    names = [e["name"] for e in env]
    assert names.index("ENGINE_DATABASE_PASSWORD") < names.index("DATABASE_URL")  # $(VAR) needs it first
    assert _ref(env, "DATABASE_URL") == "postgresql://backtest:$(ENGINE_DATABASE_PASSWORD)@quant-db:5432/backtest"
    assert pod["terminationGracePeriodSeconds"] == 60 and _ref(env, "ENGINE_SHUTDOWN_SECONDS") == "55"
    assert "ENGINE_AUTH" not in names


def test_explicit_development_settings_turn_auth_off_and_use_local_sqlite_only_when_asked():
    _, env = _engine(make_spec(engine={"auth": "disabled", "storage": "local", "terminationGracePeriod": "20s"}))
    assert _ref(env, "ENGINE_AUTH") == "disabled" and "ENGINE_API_KEYS" not in [e["name"] for e in env]
    assert _ref(env, "DATABASE_URL") == "sqlite:////data/results.db"
    assert _ref(env, "ENGINE_SHUTDOWN_SECONDS") == "15"


def test_managed_database_is_a_statefulset_with_a_retained_claim_when_no_database_secret_is_given():
    driver = started()
    objects = by_kind_name(desired_manifests(OWNER, driver.spec, driver.status, DEFAULTS))
    database = objects[("StatefulSet", "quant-db")]
    assert database["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert database["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert database["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    container = database["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    password = database["spec"]["template"]["spec"]["volumes"][-1]["secret"]
    assert password["secretName"] == "quant-credentials" and password["items"][0]["key"] == DATABASE_PASSWORD
    assert {"name": "POSTGRES_PASSWORD_FILE", "value": "/var/run/secrets/backtest/database-password"} in container[
        "env"
    ]
    assert objects[("Service", "quant-db")]["spec"]["ports"][0]["port"] == 5432


def test_no_managed_database_when_every_revision_uses_an_external_one():
    spec = make_spec(engine={"databaseUrlSecret": {"name": "db", "key": "url"}})
    kinds = {m["kind"] for m in desired_manifests(OWNER, spec, BacktestServiceStatus(), DEFAULTS)}
    assert "StatefulSet" not in kinds
    assert DATABASE_PASSWORD not in wanted_keys(spec, BacktestServiceStatus())


def test_engine_pods_accept_only_the_router_and_prometheus_when_the_router_routes():
    spec = make_spec(networkPolicy={"prometheus": {"namespaceSelector": {"name": "monitoring"}}})
    objects = by_kind_name(desired_manifests(OWNER, spec, BacktestServiceStatus(), DEFAULTS))
    engine = objects[("NetworkPolicy", "quant-engine")]["spec"]
    assert engine["podSelector"]["matchLabels"] == {
        "backtest.dev/service": "quant",
        "app.kubernetes.io/component": "engine",
    }
    peers = engine["ingress"][0]["from"]
    assert {
        "podSelector": {"matchLabels": {"backtest.dev/service": "quant", "app.kubernetes.io/component": "router"}}
    } in peers
    assert {"namespaceSelector": {"matchLabels": {"name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}} in peers  # fmt: skip
    assert len(peers) == 2 and engine["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]
    database = objects[("NetworkPolicy", "quant-db")]["spec"]["ingress"][0]["from"]
    assert database == [{"podSelector": {"matchLabels": engine["podSelector"]["matchLabels"]}}]
    router = objects[("Deployment", "quant-router")]["spec"]["template"]["spec"]["containers"][0]
    assert router["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "quant-credentials", "key": PROXY_TOKEN}


def test_network_policies_can_be_turned_off():
    spec = make_spec(networkPolicy={"enabled": False})
    assert "NetworkPolicy" not in {m["kind"] for m in desired_manifests(OWNER, spec, BacktestServiceStatus(), DEFAULTS)}


def test_generated_secret_keeps_existing_values_and_only_adds_missing_keys():
    spec = make_spec()
    wanted = wanted_keys(spec, BacktestServiceStatus())
    assert set(wanted) == {API_KEYS, ADMIN_KEYS, PROXY_TOKEN, DATABASE_PASSWORD}
    assert wanted[API_KEYS].startswith("default:") and wanted[ADMIN_KEYS].startswith("ops:")
    assert wanted_keys(spec, BacktestServiceStatus())[API_KEYS] != wanted[API_KEYS]  # random every time...
    assert missing({API_KEYS: "kept", PROXY_TOKEN: "kept"}, wanted) == {
        ADMIN_KEYS: wanted[ADMIN_KEYS],
        DATABASE_PASSWORD: wanted[DATABASE_PASSWORD],
    }  # fmt: skip  ...so values already there are never replaced
    secret = credentials_secret(OWNER, wanted)
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "BacktestService"


def test_status_names_the_key_secret_and_the_database_when_set():
    status = with_storage_status("quant", make_spec(), BacktestServiceStatus())
    assert status.api_keys_secret == "quant-credentials" and status.database.startswith("managed:")
    own = make_spec(
        engine={"apiKeysSecret": {"name": "keys", "key": "k"}, "databaseUrlSecret": {"name": "db", "key": "u"}}
    )
    status = with_storage_status("quant", own, status)
    assert status.api_keys_secret == "keys" and status.database == "external: PostgreSQL from Secret db"
