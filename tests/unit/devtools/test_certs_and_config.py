"""Certificates carry the identities Kubernetes reads from them; configs are generated as documented."""

import ipaddress

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from backtest_devtools.certs import SERVICE_IP, ensure_pki, issue_client_cert
from backtest_devtools.config import load_settings
from backtest_devtools.kwok import NODE_SELECTOR, node_manifest, stage_config
from backtest_devtools.prometheus import ScrapeJob, scrape_config


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_admin_certificate_names_user_and_group_when_the_pki_is_created(tmp_path):
    pki = ensure_pki(tmp_path)
    admin = _cert(pki.admin.cert).subject

    assert admin.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes-admin"
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert _cert(pki.admin.cert).issuer == _cert(pki.ca.cert).subject


def test_apiserver_certificate_covers_loopback_and_service_names_when_the_pki_is_created(tmp_path):
    pki = ensure_pki(tmp_path)
    names = _cert(pki.apiserver.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address(SERVICE_IP) in names.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in names.get_values_for_type(x509.DNSName)


def test_pki_is_reused_when_ensured_twice(tmp_path):
    first = ensure_pki(tmp_path).ca.cert.read_bytes()

    assert ensure_pki(tmp_path).ca.cert.read_bytes() == first


def test_extra_identity_gets_a_certificate_from_the_same_ca_when_issued(tmp_path):
    pki = ensure_pki(tmp_path / "pki")
    pair = issue_client_cert(pki, tmp_path / "users", "alice", ("developers",))

    subject = _cert(pair.cert).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert _cert(pair.cert).issuer == _cert(pki.ca.cert).subject


def test_cache_dir_follows_the_documented_precedence_when_variables_are_set():
    assert str(load_settings({"BACKTEST_CACHE_DIR": "/tmp/x", "HOME": "/h"}).bin_dir) == "/tmp/x/bin"
    assert str(load_settings({"XDG_CACHE_HOME": "/tmp/xdg", "HOME": "/h"}).cache_dir) == "/tmp/xdg/backtest-operator"
    assert str(load_settings({"HOME": "/tmp/home"}).cache_dir) == "/tmp/home/.cache/backtest-operator"


def test_scrape_config_uses_the_interval_and_labels_when_generated():
    config = scrape_config([ScrapeJob("router", ("127.0.0.1:9000",), labels={"service": "svc"})], "1s")

    assert config["global"]["scrape_interval"] == "1s"
    assert config["scrape_configs"][0]["static_configs"] == [
        {"targets": ["127.0.0.1:9000"], "labels": {"service": "svc"}}
    ]


def test_kwok_stage_config_concatenates_stages_in_kustomization_order_when_read(tmp_path):
    for folder, names in {
        "node/fast": ["a.yaml"],
        "node/heartbeat-with-lease": ["b.yaml"],
        "pod/general": ["c.yaml", "d.yaml"],
    }.items():
        base = tmp_path / "kustomize" / "stage" / folder
        base.mkdir(parents=True)
        (base / "kustomization.yaml").write_text(yaml.safe_dump({"resources": names}))
        for name in names:
            (base / name).write_text(f"kind: Stage\nmetadata:\n  name: {name[0]}\n")

    documents = list(yaml.safe_load_all(stage_config(tmp_path)))

    assert [doc["metadata"]["name"] for doc in documents] == ["a", "b", "c", "d"]


def test_fake_node_carries_the_annotation_kwok_selects_when_built():
    key, value = NODE_SELECTOR.split("=")

    assert node_manifest("n1")["metadata"]["annotations"][key] == value
    assert "taints" not in node_manifest("n1").get("spec", {})
