"""A small Kubernetes API client for ``kubectl backtest``, on the standard library and PyYAML only.

Why not the ``kubernetes`` package here: importing it costs about half a second of CPU (it loads every API
group's models), which alone breaks the plugin's budget of 0.3 s per command. The plugin needs one
object's GET, PATCH and WATCH, and kubeconfig handling as kubectl does it: ``--kubeconfig`` or
``$KUBECONFIG`` (a list of files, merged, the first value of each entry winning) or ``~/.kube/config``;
``--context`` choosing the cluster, the user *and* the namespace; certificates and keys as files (relative
to the kubeconfig) or inline data; bearer tokens and token files; basic auth; exec credential plugins
(client.authentication.k8s.io); and a pod's service account when there is no kubeconfig at all.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeconfigError(Exception):
    """The kubeconfig cannot be used as asked (missing file, unknown context, unsupported auth)."""


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


@dataclass
class Connection:
    """Where the API server is and how to authenticate to it, as one context of a kubeconfig says."""

    server: str
    namespace: str = "default"
    context: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None


def _load_files(explicit: str | None) -> list[tuple[Path, dict[str, Any]]]:
    import yaml  # noqa: PLC0415 - only commands that talk to the API server read a kubeconfig

    if explicit:
        paths = [Path(explicit).expanduser()]
    elif os.environ.get("KUBECONFIG"):
        paths = [Path(p).expanduser() for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    else:
        paths = [Path("~/.kube/config").expanduser()]
    loaded = []
    for path in paths:
        if not path.exists():
            if explicit:
                raise KubeconfigError(f"kubeconfig {path} does not exist")
            continue
        loaded.append((path, yaml.safe_load(path.read_text()) or {}))
    return loaded


def _merged(files: list[tuple[Path, dict[str, Any]]]) -> tuple[str, dict[str, dict[str, Any]]]:
    """current-context and named entries (contexts, clusters, users), first definition wins, with the
    folder of the file that defined each entry (relative paths are resolved against it)."""
    current = ""
    entries: dict[str, dict[str, Any]] = {"contexts": {}, "clusters": {}, "users": {}}
    for path, config in files:
        current = current or str(config.get("current-context") or "")
        for kind, key in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in config.get(kind) or []:
                if item.get("name") not in entries[kind]:
                    entries[kind][item["name"]] = {**(item.get(key) or {}), "__dir__": str(path.parent)}
    return current, entries


def connect(kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None) -> Connection:
    """The connection of ``context`` (default: the current one); namespace: explicit, else the context's."""
    files = _load_files(kubeconfig)
    if not files:
        if (SERVICE_ACCOUNT / "token").exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return _in_cluster(namespace)
        raise KubeconfigError("no kubeconfig found (set --kubeconfig or KUBECONFIG)")
    current, entries = _merged(files)
    name = context or current
    if not name:
        raise KubeconfigError("the kubeconfig has no current-context; pass --context")
    if name not in entries["contexts"]:
        raise KubeconfigError(f"context {name!r} is not in the kubeconfig")
    ctx = entries["contexts"][name]
    cluster = entries["clusters"].get(ctx.get("cluster", ""))
    if cluster is None:
        raise KubeconfigError(f"context {name!r} names cluster {ctx.get('cluster')!r}, which is not defined")
    user = entries["users"].get(ctx.get("user", ""), {})
    connection = Connection(
        server=str(cluster["server"]).rstrip("/"),
        namespace=namespace or ctx.get("namespace") or "default",
        context=name,
    )
    connection.tls = _tls(cluster, user) if connection.server.startswith("https") else None
    connection.headers = _auth_headers(user, cluster)
    return connection


def _in_cluster(namespace: str | None) -> Connection:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token = (SERVICE_ACCOUNT / "token").read_text().strip()
    own = (SERVICE_ACCOUNT / "namespace").read_text().strip() if (SERVICE_ACCOUNT / "namespace").exists() else ""
    tls = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    return Connection(f"https://{host}:{port}", namespace or own or "default", "in-cluster",
                      {"Authorization": f"Bearer {token}"}, tls)  # fmt: skip


def _path(entry: dict[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else Path(entry["__dir__"]) / path)


def _material(entry: dict[str, Any], key: str) -> bytes | None:
    """A certificate or key given as a file (``key``) or inline (``key-data``, base64)."""
    data = entry.get(f"{key}-data")
    if data:
        return base64.b64decode(data)
    path = _path(entry, key)
    return Path(path).read_bytes() if path else None


def _tls(cluster: dict[str, Any], user: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        ca = _material(cluster, "certificate-authority")
        if ca is not None:
            context.load_verify_locations(cadata=ca.decode())
    cert, key = _material(user, "client-certificate"), _material(user, "client-key")
    credential = _exec_credential(user) if user.get("exec") else {}
    cert = credential.get("clientCertificateData", "").encode() or cert
    key = credential.get("clientKeyData", "").encode() or key
    if cert and key:
        # ssl loads a client certificate only from files: write them where only this user can read, briefly.
        with tempfile.TemporaryDirectory() as folder:
            cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
            cert_file.write_bytes(cert)
            key_file.touch(mode=0o600)
            key_file.write_bytes(key)
            context.load_cert_chain(str(cert_file), str(key_file))
    return context


def _auth_headers(user: dict[str, Any], cluster: dict[str, Any]) -> dict[str, str]:
    if user.get("auth-provider"):
        raise KubeconfigError("auth-provider users are not supported; use an exec credential plugin")
    token = user.get("token")
    token_file = _path(user, "tokenFile")
    if token_file:
        token = Path(token_file).read_text().strip()
    if user.get("exec"):
        token = _exec_credential(user).get("token") or token
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user.get("username"):
        pair = f"{user['username']}:{user.get('password', '')}".encode()
        return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
    return {}


_EXEC_CACHE: dict[str, dict[str, str]] = {}


def _exec_credential(user: dict[str, Any]) -> dict[str, str]:
    """Run a client-go credential plugin once per process; returns its ExecCredential status."""
    spec = user["exec"]
    key = json.dumps(spec, sort_keys=True)
    if key not in _EXEC_CACHE:
        env = {**os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []}}
        request = {"apiVersion": spec.get("apiVersion", "client.authentication.k8s.io/v1"), "kind": "ExecCredential",
                   "spec": {"interactive": False}}  # fmt: skip
        env["KUBERNETES_EXEC_INFO"] = json.dumps(request)
        try:
            done = subprocess.run(
                [spec["command"], *(spec.get("args") or [])], env=env, capture_output=True, text=True,
                timeout=60, check=True,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise KubeconfigError(f"credential plugin {spec['command']!r} failed: {exc}") from None
        _EXEC_CACHE[key] = json.loads(done.stdout).get("status") or {}
    return _EXEC_CACHE[key]


class Client:
    """GET, merge PATCH and WATCH of namespaced objects, through one Connection."""

    def __init__(self, connection: Connection, timeout: float = 30.0) -> None:
        self.connection = connection
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                 timeout: float | None = None) -> Any:  # fmt: skip
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.connection.server + path, data=data, method=method)
        for name, value in {**self.connection.headers, "Accept": "application/json"}.items():
            request.add_header(name, value)
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout, context=self.connection.tls)
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                message = json.loads(text).get("message", error.reason)
            except ValueError:
                message = error.reason
            raise ApiError(error.code, str(message), text) from None

    def get(self, path: str) -> dict[str, Any]:
        with self._request("GET", path) as response:
            found: dict[str, Any] = json.load(response)
            return found

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        with self._request("PATCH", path, patch, "application/merge-patch+json") as response:
            patched: dict[str, Any] = json.load(response)
            return patched

    def watch(self, path: str, params: dict[str, str], timeout_seconds: int) -> Iterator[dict[str, Any]]:
        """One watch request: its events until the server ends it (the caller reconnects)."""
        query = urllib.parse.urlencode({**params, "watch": "1", "timeoutSeconds": str(timeout_seconds)})
        with self._request("GET", f"{path}?{query}", timeout=timeout_seconds + 15) as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)
