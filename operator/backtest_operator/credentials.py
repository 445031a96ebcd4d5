"""The Secret the operator generates for a BacktestService, and how engine and router pods read it.

Auth is on by default: without spec.engine.apiKeysSecret the operator generates an API key (tenant
`default`) and an admin key, so no engine ever runs open by accident; `engine.auth: disabled` is the
explicit, development-only way out. The same Secret holds the router's proxy token (engines trust
X-Forwarded-For only with it) and the managed database's password. Its values are random, so it is never
server-side applied (that would rotate them on every pass): `generated_secrets.ensure_credentials`
creates it once and only adds keys that are missing. It is owned by the BacktestService and deleted with it.

Storage is shared by default: the engine's DATABASE_URL is the external database's Secret, or the
PostgreSQL the operator runs (`database.py`); `engine.storage: local` (SQLite per pod) is development only.
"""

from __future__ import annotations

import secrets
from typing import Any

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus, PodSettings

Manifest = dict[str, Any]

API_KEYS = "api-keys"
ADMIN_KEYS = "admin-keys"
PROXY_TOKEN = "proxy-token"
DATABASE_PASSWORD = "database-password"
DATABASE_USER = "backtest"
DATABASE_NAME = "backtest"
DATABASE_PORT = 5432
SHUTDOWN_MARGIN_SECONDS = 5


def credentials_secret_name(service: str) -> str:
    """Name of the generated Secret of the BacktestService named `service`."""
    return f"{service}-credentials"


def database_name(service: str) -> str:
    return f"{service}-db"


def uses_managed_database(pod: PodSettings) -> bool:
    return pod.engine.storage == "shared" and pod.engine.database_url_secret is None


def generates_api_keys(pod: PodSettings) -> bool:
    return pod.engine.auth == "enabled" and pod.engine.api_keys_secret is None


def live_pods(spec: BacktestServiceSpec, status: BacktestServiceStatus) -> list[PodSettings]:
    """Pod settings of every revision that may run: the spec's, stable's and (baking) the previous one."""
    return [pod for pod in (spec.pod(), status.stable_pod, status.previous_pod) if pod is not None]


def wanted_keys(spec: BacktestServiceSpec, status: BacktestServiceStatus) -> dict[str, str]:
    """Keys the generated Secret must hold, each with a fresh random value (used only if it is missing)."""
    pods = live_pods(spec, status)
    keys = {PROXY_TOKEN: secrets.token_urlsafe(32)}
    if any(generates_api_keys(pod) for pod in pods):
        keys[API_KEYS] = f"default:{secrets.token_urlsafe(32)}"
        keys[ADMIN_KEYS] = f"ops:{secrets.token_urlsafe(32)}"
    if any(uses_managed_database(pod) for pod in pods):
        keys[DATABASE_PASSWORD] = secrets.token_hex(24)  # hex: safe inside a URL without escaping
    return keys


def missing(existing: dict[str, str] | None, wanted: dict[str, str]) -> dict[str, str]:
    """The wanted keys the Secret lacks; existing values are never replaced."""
    have = existing or {}
    return {key: value for key, value in wanted.items() if key not in have}


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> Manifest:
    ref: Manifest = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def engine_access_env(service: str, pod: PodSettings) -> list[Manifest]:
    """ENGINE_API_KEYS / ENGINE_ADMIN_KEYS / ENGINE_AUTH, the proxy token, and the shutdown budget."""
    engine = pod.engine
    generated = credentials_secret_name(service)
    env: list[Manifest] = []
    if engine.auth == "disabled":
        env.append({"name": "ENGINE_AUTH", "value": "disabled"})
    elif engine.api_keys_secret is not None:
        env.append(_secret_env("ENGINE_API_KEYS", engine.api_keys_secret.name, engine.api_keys_secret.key))
    else:
        env.append(_secret_env("ENGINE_API_KEYS", generated, API_KEYS))
        env.append(_secret_env("ENGINE_ADMIN_KEYS", generated, ADMIN_KEYS))
    env.append(_secret_env("ENGINE_PROXY_TOKEN", generated, PROXY_TOKEN))
    grace = int(engine.termination_grace_period.total_seconds())
    env.append({"name": "ENGINE_SHUTDOWN_SECONDS", "value": str(max(0, grace - SHUTDOWN_MARGIN_SECONDS))})
    return env


def database_env(service: str, pod: PodSettings) -> list[Manifest]:
    """DATABASE_URL: the external Secret, the managed PostgreSQL (password by reference), or local SQLite."""
    engine = pod.engine
    if engine.storage == "local":
        return [{"name": "DATABASE_URL", "value": "sqlite:////data/results.db"}]
    if engine.database_url_secret is not None:
        ref = engine.database_url_secret
        return [_secret_env("DATABASE_URL", ref.name, ref.key)]
    host = database_name(service)
    url = f"postgresql://{DATABASE_USER}:$(ENGINE_DATABASE_PASSWORD)@{host}:{DATABASE_PORT}/{DATABASE_NAME}"
    return [
        _secret_env("ENGINE_DATABASE_PASSWORD", credentials_secret_name(service), DATABASE_PASSWORD),
        {"name": "DATABASE_URL", "value": url},  # $(VAR) is expanded by the kubelet from the line above
    ]


def router_env(service: str) -> list[Manifest]:
    return [_secret_env("ROUTER_PROXY_TOKEN", credentials_secret_name(service), PROXY_TOKEN)]


def grace_period_seconds(pod: PodSettings) -> int:
    return int(pod.engine.termination_grace_period.total_seconds())


def describe_storage(service: str, spec: BacktestServiceSpec) -> tuple[str | None, str]:
    """(status.apiKeysSecret, status.database) for the spec's revision."""
    engine = spec.engine
    if engine.auth == "disabled":
        keys = None
    elif engine.api_keys_secret is not None:
        keys = engine.api_keys_secret.name
    else:
        keys = credentials_secret_name(service)
    if engine.storage == "local":
        database = "local: SQLite in each pod (development only; lost with the pod, not shared)"
    elif engine.database_url_secret is not None:
        database = f"external: PostgreSQL from Secret {engine.database_url_secret.name}"
    else:
        database = f"managed: PostgreSQL StatefulSet {database_name(service)} with PersistentVolumeClaim"
    return keys, database


def with_storage_status(
    service: str, spec: BacktestServiceSpec, status: BacktestServiceStatus
) -> BacktestServiceStatus:
    """The status naming the API-key Secret and the database the spec's revision uses."""
    keys, database = describe_storage(service, spec)
    if status.api_keys_secret == keys and status.database == database:
        return status
    return status.evolve(api_keys_secret=keys, database=database)
