"""Certificates and keys for a throwaway control plane on 127.0.0.1.

One CA signs the apiserver's serving certificate and one client certificate per identity. Kubernetes
derives a client's user from the certificate: CN is the user name, O the groups. A separate RSA key
signs ServiceAccount tokens (apiserver verifies with the public half, controller-manager signs).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
# First address of the service range (--service-cluster-ip-range); in-cluster clients dial it.
SERVICE_IP = "10.0.0.1"
SERVICE_CIDR = "10.0.0.0/24"
# The real node's address, on an empty bridge of this machine (see netsetup.py). The API server listens
# on it when a real node runs, because pods cannot reach the host's loopback.
NODE_IP = "10.200.0.1"
APISERVER_DNS = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
]
APISERVER_IPS = ["127.0.0.1", SERVICE_IP, NODE_IP]


@dataclass(frozen=True)
class KeyPair:
    """Paths of a PEM certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPki:
    """Every file the control plane needs, all under one folder."""

    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    service_account_key: Path
    service_account_pub: Path


def ensure_pki(folder: Path) -> ClusterPki:
    """Create the PKI once in `folder`; reuse it when already there (restarts keep kubeconfigs valid)."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = ClusterPki(
        ca=_pair(folder, "ca"),
        apiserver=_pair(folder, "apiserver"),
        admin=_pair(folder, "admin"),
        controller_manager=_pair(folder, "controller-manager"),
        scheduler=_pair(folder, "scheduler"),
        service_account_key=folder / "sa.key",
        service_account_pub=folder / "sa.pub",
    )
    if pki.service_account_pub.exists():
        _reissue_apiserver_if_outdated(pki)
        return pki
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backtest-local-ca")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(pki.ca, ca_cert, ca_key)
    _issue(pki.apiserver, ca_cert, ca_key, "kube-apiserver", (), server=(APISERVER_DNS, APISERVER_IPS))
    _issue(pki.admin, ca_cert, ca_key, "kubernetes-admin", ("system:masters",))
    _issue(pki.controller_manager, ca_cert, ca_key, "system:kube-controller-manager", ())
    _issue(pki.scheduler, ca_cert, ca_key, "system:kube-scheduler", ())
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki.service_account_key.write_bytes(_private_pem(sa_key))
    pki.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


def _reissue_apiserver_if_outdated(pki: ClusterPki) -> None:
    """A state folder made before the real node existed lacks NODE_IP in the serving certificate."""
    cert = x509.load_pem_x509_certificate(pki.apiserver.cert.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    present = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    if set(APISERVER_IPS) <= present:
        return
    ca_cert, ca_key = _load_ca(pki)
    _issue(pki.apiserver, ca_cert, ca_key, "kube-apiserver", (), server=(APISERVER_DNS, APISERVER_IPS))


def _load_ca(pki: ClusterPki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return ca_cert, ca_key


def issue_server_cert(pki: ClusterPki, folder: Path, name: str, dns: list[str], ips: list[str]) -> KeyPair:
    """A serving certificate signed by the cluster CA (kubelet, metrics-server), reused when it exists."""
    pair = _pair(folder, name)
    if pair.cert.exists() and pair.key.exists():
        return pair
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_ca(pki)
    _issue(pair, ca_cert, ca_key, name, (), server=(dns, ips))
    return pair


def issue_client_cert(pki: ClusterPki, folder: Path, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
    """A client certificate for an extra identity, e.g. a user without rights in an RBAC test."""
    ca_cert, ca_key = _load_ca(pki)
    folder.mkdir(parents=True, exist_ok=True)
    pair = _pair(folder, user.replace(":", "-"))
    _issue(pair, ca_cert, ca_key, user, groups)
    return pair


def _issue(
    pair: KeyPair,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    groups: tuple[str, ...],
    *,
    server: tuple[list[str], list[str]] | None = None,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = _builder(x509.Name(attributes), ca_cert.subject, key).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    if server:
        names, ips = server
        alt: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    else:
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    _write(pair, builder.sign(ca_key, hashes.SHA256()), key)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _pair(folder: Path, name: str) -> KeyPair:
    return KeyPair(cert=folder / f"{name}.crt", key=folder / f"{name}.key")


def _write(pair: KeyPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(_private_pem(key))
    pair.key.chmod(0o600)


def _private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
