"""The real node's configuration says what this machine kind needs, and keeps pod traffic on the machine."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest

from backtest_devtools import containerd, netsetup, nodeconfig
from backtest_devtools.certs import NODE_IP, SERVICE_CIDR
from backtest_devtools.releases import COREDNS, COREDNS_PLUGINS, KUBERNETES, KUBERNETES_NODE, NODE_RELEASES

LOCAL_RANGES = [ipaddress.ip_network(SERVICE_CIDR), ipaddress.ip_network(f"{NODE_IP}/32")]


def kubelet(tmp_path: Path) -> dict:
    return nodeconfig.kubelet_config(
        ca_file=tmp_path / "ca.crt", tls_cert=tmp_path / "k.crt", tls_key=tmp_path / "k.key", port=10250,
        healthz_port=10248, runtime_socket=containerd.SOCKET, resolv_conf=tmp_path / "resolv.conf",
        pod_logs=tmp_path / "logs", volume_plugins=tmp_path / "plugins",
    )  # fmt: skip


def test_kubelet_runs_on_cgroup_v1_with_cgroupfs_when_configured_for_this_host(tmp_path):
    config = kubelet(tmp_path)

    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupsPerQOS"] is False
    assert config["enforceNodeAllocatable"] == []
    assert config["failSwapOn"] is False


def test_kubelet_serves_only_authenticated_requests_on_the_node_address_when_configured(tmp_path):
    config = kubelet(tmp_path)

    assert config["address"] == NODE_IP
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["healthzBindAddress"] == "127.0.0.1"


def test_pods_resolve_through_the_cluster_dns_service_when_kubelet_is_configured(tmp_path):
    config = kubelet(tmp_path)

    assert config["clusterDNS"] == [netsetup.DNS_SERVICE_IP]
    assert ipaddress.ip_address(netsetup.DNS_SERVICE_IP) in ipaddress.ip_network(SERVICE_CIDR)


def test_pod_network_has_no_masquerade_and_no_default_route_when_rendered():
    bridge = netsetup.cni_config()["plugins"][0]
    routes = [ipaddress.ip_network(route["dst"]) for route in bridge["ipam"]["routes"]]

    assert bridge["ipMasq"] is False
    assert bridge["isDefaultGateway"] is False
    assert ipaddress.ip_network("0.0.0.0/0") not in routes
    assert all(route in LOCAL_RANGES for route in routes), routes


def test_guard_drops_pod_traffic_that_would_leave_the_bridge_when_rendered():
    rules = [" ".join(rule) for rule in netsetup.guard_rules()]

    assert f"-s {netsetup.POD_CIDR} ! -o {netsetup.BRIDGE} -j DROP" in rules
    assert f"-d {netsetup.POD_CIDR} ! -i {netsetup.BRIDGE} -j DROP" in rules


def test_containerd_clamps_oom_score_and_sends_every_pull_to_a_closed_loopback_port(tmp_path):
    config = tomllib.loads(containerd.config_toml(tmp_path / "root", tmp_path / "cni", tmp_path / "registry"))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]

    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == containerd.PAUSE_IMAGE
    assert cri["containerd"]["runtimes"]["runc"]["options"]["BinaryName"] == "/usr/sbin/runc"
    assert cri["registry"]["config_path"] == str(tmp_path / "registry")
    hosts = tomllib.loads(containerd.registry_hosts())
    assert ipaddress.ip_address(hosts["server"].split("//")[1].split(":")[0]).is_loopback


def test_coredns_answers_cluster_zones_only_when_configured(tmp_path):
    text = nodeconfig.corefile(tmp_path / "kubeconfig", 8081, 8082)

    assert f"bind {NODE_IP}" in text
    assert "kubernetes cluster.local" in text
    assert "forward" not in text


def test_coredns_is_built_with_exactly_the_plugins_its_corefile_uses(tmp_path):
    text = nodeconfig.corefile(tmp_path / "kubeconfig", 8081, 8082)
    directives = {line.split()[0] for line in text.splitlines()[1:] if line.startswith("    ") and line.strip()}
    directives -= {"}", "kubeconfig", "pods", "fallthrough", "ttl"}

    assert directives <= set(COREDNS_PLUGINS)
    for plugin in COREDNS_PLUGINS:
        assert f'"github.com/coredns/coredns/plugin/{plugin}"' in COREDNS.main_go


def test_kubelet_and_kube_proxy_come_from_the_control_plane_release_when_built():
    assert KUBERNETES_NODE.module == KUBERNETES.module
    assert KUBERNETES_NODE.version == KUBERNETES.version
    assert {"kubelet", "kube-proxy"} <= set(KUBERNETES_NODE.programs)
    assert {release.label for release in NODE_RELEASES} >= {"kubernetes-node", "coredns", "metrics-server"}


def test_dns_service_points_at_coredns_on_the_node_address_when_rendered():
    objects = {(item["kind"], item["metadata"]["name"]): item for item in nodeconfig.dns_objects()}
    service = objects[("Service", "kube-dns")]
    endpoints = objects[("EndpointSlice", "kube-dns-host")]

    assert service["spec"]["clusterIP"] == netsetup.DNS_SERVICE_IP
    assert "selector" not in service["spec"]
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == "kube-dns"
    assert endpoints["endpoints"][0]["addresses"] == [NODE_IP]
    assert {p["protocol"] for p in endpoints["ports"]} == {"UDP", "TCP"}


def test_metrics_api_is_served_by_the_host_metrics_server_when_registered():
    rendered = nodeconfig.metrics_server_rbac() + nodeconfig.metrics_server_api(4443, "Q0E=")
    objects = {(item["kind"], item["metadata"]["name"]): item for item in rendered}
    api_service = objects[("APIService", "v1beta1.metrics.k8s.io")]
    endpoints = objects[("EndpointSlice", "metrics-server-host")]

    assert api_service["spec"]["service"] == {"name": "metrics-server", "namespace": "kube-system", "port": 443}
    assert api_service["spec"]["caBundle"] == "Q0E="
    assert endpoints["ports"][0]["port"] == 4443


@pytest.mark.parametrize(
    ("manifest", "path"),
    [
        ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "kube-system"}},
         "/api/v1/namespaces/kube-system/services"),
        ({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "a", "namespace": "n"}},
         "/apis/discovery.k8s.io/v1/namespaces/n/endpointslices"),
        ({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "a"}},
         "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
        ({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "a"}},
         "/apis/apiregistration.k8s.io/v1/apiservices"),
    ],
)  # fmt: skip
def test_objects_are_created_in_their_rest_collection_when_posted(manifest, path):
    assert nodeconfig.collection_path(manifest) == path


def test_kube_proxy_leaves_conntrack_and_localhost_alone_when_configured(tmp_path):
    config = nodeconfig.kube_proxy_config(tmp_path / "kubeconfig", 1, 2)

    assert config["mode"] == "iptables"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["iptables"]["localhostNodePorts"] is False
    assert config["nodePortAddresses"] == [f"{NODE_IP}/32"]
