"""Pure builders of the real node's configuration: kubelet, kube-proxy, CoreDNS, and the cluster objects the
host-process add-ons need (RBAC, the kube-dns and metrics-server Services with their EndpointSlices, the
metrics APIService). No I/O here, so unit tests read every setting that matters on this machine kind.

Settings worth knowing, with why:
- kubelet: cgroup v1 only with ``failCgroupV1: false`` (KEP-5573), the cgroupfs driver, no QoS cgroups and no
  node-allocatable enforcement (a small shared VM), no swap check, no image garbage collection, disk
  eviction off (kind's settings for small nodes); pod logs and volume plugins under the node's own folders.
- kube-proxy: iptables mode; no conntrack sysctl writes; NodePorts only on the node address (never
  localhost, which would need route_localnet).
- CoreDNS: serves cluster.local and the reverse zones from the API, answers nothing else (no forwarder: no
  name outside the cluster is ever looked up elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backtest_devtools.certs import NODE_IP
from backtest_devtools.netsetup import CLUSTER_DOMAIN, DNS_SERVICE_IP, POD_CIDR

NODE_NAME = "backtest-node"
NODE_LABEL = "backtest.dev/node"
DNS_PORT = 53
Manifest = dict[str, Any]


def kubelet_config(
    *,
    ca_file: Path,
    tls_cert: Path,
    tls_key: Path,
    port: int,
    healthz_port: int,
    runtime_socket: Path,
    resolv_conf: Path,
    pod_logs: Path,
    volume_plugins: Path,
) -> Manifest:
    zero = "0%"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(tls_cert),
        "tlsPrivateKeyFile": str(tls_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": zero,
            "nodefs.inodesFree": zero,
            "imagefs.available": zero,
            "imagefs.inodesFree": zero,
        },
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv_conf),
        "podLogsDirectory": str(pod_logs),
        "volumePluginDir": str(volume_plugins),
        "serializeImagePulls": False,
        "registerNode": True,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "nodeStatusUpdateFrequency": "4s",
        "nodeStatusReportFrequency": "1m",
        "syncFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "maxPods": 110,
        "logging": {"format": "text"},
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> Manifest:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"masqueradeAll": False, "localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        # 0 leaves the host's conntrack settings alone (kube-proxy would otherwise write sysctls).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def corefile(kubeconfig: Path, health_port: int, ready_port: int) -> str:
    """Cluster names only; other names get REFUSED (there is no upstream to ask)."""
    zones = f"{CLUSTER_DOMAIN} in-addr.arpa ip6.arpa"
    return f"""{CLUSTER_DOMAIN}:{DNS_PORT} in-addr.arpa:{DNS_PORT} ip6.arpa:{DNS_PORT} {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {zones} {{
        kubeconfig {kubeconfig} backtest-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loadbalance
}}
"""


def _cluster_role(name: str, rules: list[Manifest]) -> Manifest:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": rules}  # fmt: skip


def _user_binding(kind: str, name: str, role_kind: str, role: str, user: str, namespace: str = "") -> Manifest:
    metadata: Manifest = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def _host_service(name: str, ports: list[Manifest], cluster_ip: str | None = None) -> list[Manifest]:
    """A Service without selector whose one endpoint is a process on the node's address."""
    spec: Manifest = {"ports": [dict(port) for port in ports]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    labels = {"k8s-app": name, "backtest.dev/host-process": "true"}
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "kube-system", "labels": labels}, "spec": spec}  # fmt: skip
    slice_ports = [{"name": port["name"], "port": port["targetPort"], "protocol": port.get("protocol", "TCP")}
                   for port in ports]  # fmt: skip
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-host",
            "namespace": "kube-system",
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "backtest-devtools",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}, "nodeName": NODE_NAME}],
        "ports": slice_ports,
    }
    return [service, endpoints]


def dns_objects() -> list[Manifest]:
    """RBAC for CoreDNS (user system:coredns) and the kube-dns Service on the cluster DNS address."""
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]
    ports = [
        {"name": "dns", "port": DNS_PORT, "targetPort": DNS_PORT, "protocol": "UDP"},
        {"name": "dns-tcp", "port": DNS_PORT, "targetPort": DNS_PORT, "protocol": "TCP"},
    ]
    return [
        _cluster_role("system:coredns", rules),
        _user_binding("ClusterRoleBinding", "system:coredns", "ClusterRole", "system:coredns", "system:coredns"),
        *_host_service("kube-dns", ports, DNS_SERVICE_IP),
    ]


METRICS_USER = "system:metrics-server"


def metrics_server_rbac() -> list[Manifest]:
    """metrics-server's own RBAC (it reads its authentication config at start, so this comes first)."""
    reader_rules = [
        {"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}
    ]
    aggregated = _cluster_role("system:aggregated-metrics-reader", reader_rules)
    aggregated["metadata"]["labels"] = {
        f"rbac.authorization.k8s.io/aggregate-to-{role}": "true" for role in ("view", "edit", "admin")
    }
    server_rules = [
        {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
    ]
    return [
        aggregated,
        _cluster_role(METRICS_USER, server_rules),
        _user_binding("ClusterRoleBinding", METRICS_USER, "ClusterRole", METRICS_USER, METRICS_USER),
        _user_binding(
            "ClusterRoleBinding",
            "metrics-server:system:auth-delegator",
            "ClusterRole",
            "system:auth-delegator",
            METRICS_USER,
        ),
        _user_binding(
            "RoleBinding",
            "metrics-server-auth-reader",
            "Role",
            "extension-apiserver-authentication-reader",
            METRICS_USER,
            namespace="kube-system",
        ),
    ]


def metrics_server_api(port: int, ca_bundle_b64: str) -> list[Manifest]:
    """The Service and endpoint of the host metrics-server, and the APIService serving metrics.k8s.io."""
    api_service = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": "v1beta1.metrics.k8s.io"},
        "spec": {
            "group": "metrics.k8s.io",
            "version": "v1beta1",
            "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
            "caBundle": ca_bundle_b64,
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    return [*_host_service("metrics-server", [{"name": "https", "port": 443, "targetPort": port}]), api_service]


def collection_path(manifest: Manifest) -> str:
    """REST collection of a manifest (the few kinds the node creates)."""
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    plural = {"EndpointSlice": "endpointslices", "APIService": "apiservices"}.get(kind, kind.lower() + "s")
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    namespace = manifest["metadata"].get("namespace")
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
