"""The wrapper go.mod derived from a release's own go.mod pins every local replace to a published version."""

from backtest_devtools.build import (
    ETCD,
    HELM,
    HELM_KUBE_VERSION,
    KUBERNETES,
    RELEASES,
    local_replaces,
    published_version,
    wrapper_go_mod,
)

KUBE_GO_MOD = """module k8s.io/kubernetes

go 1.26.0

require (
	k8s.io/api v0.0.0
	k8s.io/client-go v0.0.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go // comment
	github.com/some/fork => github.com/other/fork v1.2.3
)
"""

ETCD_GO_MOD = """module go.etcd.io/etcd/server/v3

go 1.26.0

replace (
	go.etcd.io/etcd/api/v3 => ../api
	go.etcd.io/etcd/client/v3 => ../client/v3
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
"""


def test_local_replaces_lists_folder_targets_only_when_parsing_a_release_go_mod():
    assert local_replaces(KUBE_GO_MOD) == ["k8s.io/api", "k8s.io/client-go"]
    assert local_replaces(ETCD_GO_MOD) == ["go.etcd.io/etcd/api/v3", "go.etcd.io/etcd/client/v3"]


def test_staging_modules_get_v0_versions_when_the_release_is_kubernetes():
    assert published_version(KUBERNETES, "k8s.io/api") == "v0" + KUBERNETES.version[2:]
    assert published_version(ETCD, "go.etcd.io/etcd/api/v3") == ETCD.version


def test_wrapper_go_mod_requires_the_release_and_lists_tools_when_generated():
    text = wrapper_go_mod(KUBERNETES, KUBE_GO_MOD)
    minor_patch = KUBERNETES.version[2:]

    assert f"require k8s.io/kubernetes {KUBERNETES.version}" in text
    assert f"\tk8s.io/api => k8s.io/api v0{minor_patch}" in text
    assert f"\tk8s.io/client-go => k8s.io/client-go v0{minor_patch}" in text
    assert "github.com/other/fork" not in text
    assert "\tk8s.io/kubernetes/cmd/kube-apiserver\n" in text
    assert text.splitlines()[2] == "go 1.26.0"


def test_wrapper_go_mod_has_no_replace_block_when_the_release_has_no_local_replaces():
    text = wrapper_go_mod(ETCD, "module go.etcd.io/etcd/server/v3\n\ngo 1.25\n")

    assert "replace" not in text
    assert "go 1.25" in text


def test_helm_ldflags_stamp_the_release_and_its_kubernetes_version_when_built():
    flags = " ".join(HELM.ldflags(HELM))

    assert f"-X helm.sh/helm/v3/internal/version.version={HELM.version}" in flags
    major, minor = HELM_KUBE_VERSION
    for package in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        assert f"-X {package}.k8sVersionMajor={major}" in flags
        assert f"-X {package}.k8sVersionMinor={minor}" in flags


def test_helm_is_built_with_the_control_plane_when_releases_are_listed():
    assert HELM in RELEASES
    assert HELM.programs == {"helm": "helm.sh/helm/v3/cmd/helm"}
