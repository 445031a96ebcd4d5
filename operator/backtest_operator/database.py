"""The managed PostgreSQL: shared, durable storage by default, owned by the BacktestService.

Stable and canary pods of every revision read and write one database, so a dataset uploaded through one
pod is visible from all, and results written before a rollout are still there after it. One StatefulSet
replica with a PersistentVolumeClaim (retained when the StatefulSet or the BacktestService is deleted, so
deleting the object never deletes data by surprise) and a Service named `<name>-db`. The password comes
from the generated credentials Secret. For high availability or backups, point
spec.engine.databaseUrlSecret at a PostgreSQL run for that purpose (an operator or a managed service).
"""

from __future__ import annotations

from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus
from backtest_operator.credentials import (
    DATABASE_NAME,
    DATABASE_PASSWORD,
    DATABASE_PORT,
    DATABASE_USER,
    credentials_secret_name,
    database_name,
    live_pods,
    uses_managed_database,
)
from backtest_operator.workloads import LABEL_COMPONENT, LABEL_SERVICE, Manifest, Owner, object_metadata

POSTGRES_UID = 10999
"""A high uid of no user on any node; the official image runs as an arbitrary uid when PGDATA is a
subfolder it creates (below the volume's mount point)."""
PASSWORD_FILE = "/var/run/secrets/backtest/database-password"
DEFAULT_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
DATA = "/var/lib/postgresql/data"


def database_labels(owner: Owner) -> dict[str, str]:
    return {LABEL_SERVICE: owner.name, LABEL_COMPONENT: "database"}


def database_manifests(owner: Owner, spec: BacktestServiceSpec, status: BacktestServiceStatus) -> list[Manifest]:
    """Service and StatefulSet of the managed PostgreSQL, when any live revision uses it."""
    if not any(uses_managed_database(pod) for pod in live_pods(spec, status)):
        return []
    return [_service(owner), _statefulset(owner, spec)]


def _service(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(owner, database_name(owner.name), {LABEL_COMPONENT: "database"}),
        "spec": {
            "selector": database_labels(owner),
            "ports": [{"name": "postgres", "port": DATABASE_PORT, "targetPort": "postgres"}],
        },
    }


def _statefulset(owner: Owner, spec: BacktestServiceSpec) -> Manifest:
    settings = spec.database
    password_volume = {
        "name": "password",
        "secret": {
            "secretName": credentials_secret_name(owner.name),
            "items": [{"key": DATABASE_PASSWORD, "path": "database-password"}],
            "defaultMode": 0o440,
        },
    }
    ready = {"exec": {"command": ["pg_isready", "-U", DATABASE_USER, "-d", DATABASE_NAME]}}
    claim: Manifest = {
        "metadata": {"name": "data", "labels": database_labels(owner)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": settings.storage_size}}},
    }
    if settings.storage_class_name:
        claim["spec"]["storageClassName"] = settings.storage_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_metadata(owner, database_name(owner.name), {LABEL_COMPONENT: "database"}),
        "spec": {
            "serviceName": database_name(owner.name),
            "replicas": 1,
            "selector": {"matchLabels": database_labels(owner)},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": database_labels(owner)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": POSTGRES_UID,
                        "runAsGroup": POSTGRES_UID,
                        "fsGroup": POSTGRES_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 60,
                    "containers": [
                        {
                            "name": "postgres",
                            "image": settings.image,
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"name": "postgres", "containerPort": DATABASE_PORT}],
                            "env": [
                                {"name": "POSTGRES_USER", "value": DATABASE_USER},
                                {"name": "POSTGRES_DB", "value": DATABASE_NAME},
                                {"name": "POSTGRES_PASSWORD_FILE", "value": PASSWORD_FILE},  # a file, not env
                                {"name": "PGDATA", "value": f"{DATA}/pgdata"},
                            ],
                            "resources": settings.resources or DEFAULT_RESOURCES,
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "readinessProbe": {**ready, "periodSeconds": 5},
                            "livenessProbe": {**ready, "periodSeconds": 20, "failureThreshold": 6},
                            "volumeMounts": [
                                {"name": "data", "mountPath": DATA},
                                {"name": "run", "mountPath": "/var/run/postgresql"},
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "password", "mountPath": "/var/run/secrets/backtest", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [{"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}, password_volume],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }
