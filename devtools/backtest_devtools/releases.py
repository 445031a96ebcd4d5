"""What is built from the Go module proxy: one GoRelease per upstream module, and the programs built from it.

Two groups: the control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, helm),
which every cluster test needs, and the real node (kubelet, kube-proxy, CoreDNS, metrics-server, crictl),
built only when a real node is asked for. build.py holds the mechanics; this module only the catalogue.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from backtest_devtools.config import Settings


@dataclass(frozen=True)
class GoRelease:
    """One upstream Go module and the programs built from it."""

    label: str
    module: str
    version: str
    programs: dict[str, str]  # binary name -> import path of its main package
    tags: tuple[str, ...] = ()
    ldflags: Callable[[GoRelease], list[str]] = field(default=lambda _r: [])
    main_go: str = ""
    """Source of a main package written into the wrapper module itself (program path "."): used to build a
    trimmed program, e.g. CoreDNS with only the plugins a local cluster needs."""

    def binary(self, settings: Settings, name: str) -> Path:
        """Cache path of one binary: bin/<name>-<version>/<name>, plus a digest of our own main.go if any
        (so that editing it rebuilds the program)."""
        return settings.bin_dir / f"{name}-{self.version}{self.stamp}" / name

    @property
    def stamp(self) -> str:
        if not self.main_go:
            return ""
        return "-" + hashlib.sha256(f"main.go\0{self.main_go}\0".encode()).hexdigest()[:8]

    def is_cached(self, settings: Settings) -> bool:
        return all(os.access(self.binary(settings, name), os.X_OK) for name in self.programs)


def _kube_ldflags(release: GoRelease) -> list[str]:
    """The same -X flags as hack/lib/version.sh, so /version reports the real release."""
    major, minor = release.version.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": release.version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return flags


def _kwok_ldflags(release: GoRelease) -> list[str]:
    return [f"-X sigs.k8s.io/kwok/pkg/consts.Version={release.version}"]


KUBERNETES = GoRelease(
    label="kubernetes",
    module="k8s.io/kubernetes",
    version="v1.36.3",
    programs={
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    },
    tags=("selinux", "notest"),
    ldflags=_kube_ldflags,
)
ETCD = GoRelease(
    label="etcd",
    module="go.etcd.io/etcd/server/v3",
    version="v3.6.16",
    programs={"etcd": "go.etcd.io/etcd/server/v3"},
)
KWOK = GoRelease(
    label="kwok",
    module="sigs.k8s.io/kwok",
    version="v0.8.0",
    programs={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    ldflags=_kwok_ldflags,
)


# helm v3.22.0's go.mod requires k8s.io/client-go v0.37.0; helm's Makefile turns that into the Kubernetes
# version that `helm template` and `helm lint` assume (.Capabilities.KubeVersion, deprecation checks).
# Without these flags helm would assume v1.20. Update together with HELM.version.
HELM_KUBE_VERSION = ("1", "37")


def _helm_ldflags(release: GoRelease) -> list[str]:
    """The -X flags of helm's Makefile for a tagged release (empty metadata: not "unreleased")."""
    major, minor = HELM_KUBE_VERSION
    flags = [
        f"-X helm.sh/helm/v3/internal/version.version={release.version}",
        "-X helm.sh/helm/v3/internal/version.metadata=",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
    ]
    for package in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {package}.k8sVersionMajor={major}", f"-X {package}.k8sVersionMinor={minor}"]
    return flags


HELM = GoRelease(
    label="helm",
    module="helm.sh/helm/v3",
    version="v3.22.0",
    programs={"helm": "helm.sh/helm/v3/cmd/helm"},
    ldflags=_helm_ldflags,
)
KSTATUS_MAIN = """// kstatus: print the verdict of sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute for each object.
// Reads a JSON object or a JSON list of objects on stdin; writes one JSON line per object.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(data, &items); err != nil {
		items = []json.RawMessage{data}
	}
	out := json.NewEncoder(os.Stdout)
	for _, item := range items {
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(item); err != nil {
			fail(err)
		}
		result, err := status.Compute(object)
		if err != nil {
			fail(err)
		}
		verdict := map[string]string{"status": string(result.Status), "message": result.Message}
		if err := out.Encode(verdict); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
"""
KSTATUS = GoRelease(
    label="kstatus",
    module="sigs.k8s.io/cli-utils",
    version="v0.37.2",
    programs={"kstatus": "."},
    main_go=KSTATUS_MAIN,
)
"""Flux's health verdict, computed by the library Flux uses (tests/e2e/test_mechanics.py, GitOps health)."""

RELEASES: tuple[GoRelease, ...] = (ETCD, KWOK, KUBERNETES, HELM, KSTATUS)
"""The control plane: built for every cluster test."""

# The real node. kubelet and kube-proxy come from the same release as the control plane (a second wrapper
# module with the same requirements, so Go's build cache shares every package already compiled for it).
KUBERNETES_NODE = GoRelease(
    label="kubernetes-node",
    module="k8s.io/kubernetes",
    version=KUBERNETES.version,
    programs={
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    },
    tags=KUBERNETES.tags,
    ldflags=_kube_ldflags,
)

# CoreDNS with the plugins a one-node cluster uses, in CoreDNS's own order (core/dnsserver/zdirectives.go).
# The stock build links every plugin (AWS, Azure, Google Cloud DNS, etcd, QUIC...), several minutes of
# compiling for nothing; `coremain` plus chosen plugin packages is CoreDNS's documented way to build it.
COREDNS_PLUGINS = ("bind", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes")
_COREDNS_DIRECTIVES_IN_ORDER = (
    "bind", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes",
)  # fmt: skip
COREDNS_MAIN = (
    "// Generated by backtest_devtools.releases: CoreDNS with the plugins of a local one-node cluster.\n"
    "package main\n\nimport (\n"
    '\t"github.com/coredns/coredns/core/dnsserver"\n'
    '\t"github.com/coredns/coredns/coremain"\n'
    + "".join(f'\t_ "github.com/coredns/coredns/plugin/{name}"\n' for name in COREDNS_PLUGINS)
    + ")\n\nfunc init() {\n\tdnsserver.Directives = []string{"
    + ", ".join(f'"{name}"' for name in _COREDNS_DIRECTIVES_IN_ORDER)
    + "}\n}\n\nfunc main() { coremain.Run() }\n"
)


def _coredns_ldflags(release: GoRelease) -> list[str]:
    return [f"-X github.com/coredns/coredns/coremain.GitCommit={release.version}"]


COREDNS = GoRelease(
    label="coredns",
    module="github.com/coredns/coredns",
    version="v1.14.7",
    programs={"coredns": "."},
    ldflags=_coredns_ldflags,
    main_go=COREDNS_MAIN,
)
METRICS_SERVER = GoRelease(
    label="metrics-server",
    module="sigs.k8s.io/metrics-server",
    version="v0.9.0",
    programs={"metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server"},
)
# crictl talks CRI to containerd: the node is torn down through the CRI (StopPodSandbox runs the CNI DEL
# that removes a pod's iptables rules and IP reservation), which `ctr` cannot do.
CRI_TOOLS = GoRelease(
    label="cri-tools",
    module="sigs.k8s.io/cri-tools",
    version="v1.37.0",
    programs={"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"},
)


def _prometheus_ldflags(release: GoRelease) -> list[str]:
    """Prometheus tags v3.X.Y as module version v0.3XX.Y; the binary reports the release."""
    minor_patch = release.version.removeprefix("v0.3")
    minor, patch = minor_patch.split(".")
    package = "github.com/prometheus/common/version"
    return [f"-X {package}.Version=3.{int(minor)}.{patch}", f"-X {package}.Branch=HEAD"]


# Debian's prometheus package is built without Kubernetes service discovery, which the real tier needs (the
# chart's PodMonitor becomes kubernetes_sd_configs). Prometheus's own build tags keep only that mechanism.
PROMETHEUS = GoRelease(
    label="prometheus",
    module="github.com/prometheus/prometheus",
    version="v0.316.0",
    programs={"prometheus": "github.com/prometheus/prometheus/cmd/prometheus"},
    tags=("remove_all_sd", "enable_kubernetes_sd"),
    ldflags=_prometheus_ldflags,
)
NODE_RELEASES: tuple[GoRelease, ...] = (KUBERNETES_NODE, COREDNS, METRICS_SERVER, CRI_TOOLS, PROMETHEUS)
"""The real node: built when a real node is started (or by `make node-build`)."""
ALL_RELEASES: tuple[GoRelease, ...] = RELEASES + NODE_RELEASES


def binary(settings: Settings, name: str) -> Path:
    """Cached path of a binary by name, whichever release builds it."""
    for release in ALL_RELEASES:
        if name in release.programs:
            return release.binary(settings, name)
    raise KeyError(name)
