"""Certificates for the dev control plane, made with ``cryptography`` (no openssl/cfssl).

One self-signed CA signs the apiserver's serving certificate and every client certificate
(admin, controller-manager, scheduler, kwok). A separate RSA key pair signs service-account
tokens.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterCerts:
    ca: CertPaths
    serving: CertPaths
    admin: CertPaths
    controller_manager: CertPaths
    scheduler: CertPaths
    kwok: CertPaths
    sa_public: Path
    sa_private: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _ca(directory: Path) -> tuple[CertPaths, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    name = _name("torchyard-dev-ca")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    paths = CertPaths(directory / "ca.crt", directory / "ca.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.key, key)
    return paths, key, cert


def _leaf(
    directory: Path,
    stem: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    orgs: tuple[str, ...] = (),
    server: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> CertPaths:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, orgs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if dns or ips:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    paths = CertPaths(directory / f"{stem}.crt", directory / f"{stem}.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.key, key)
    return paths


def generate(
    directory: Path, *, service_ip: str = "10.96.0.1", extra_ips: tuple[str, ...] = ()
) -> ClusterCerts:
    """Write every certificate and key of a fresh cluster into ``directory``; ``extra_ips``
    are more addresses the API server's serving certificate names."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca, ca_key, ca_cert = _ca(directory)
    serving = _leaf(
        directory,
        "apiserver",
        ca_key,
        ca_cert,
        "kube-apiserver",
        server=True,
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=("127.0.0.1", service_ip, *extra_ips),
    )
    admin = _leaf(directory, "admin", ca_key, ca_cert, "torchyard-admin", orgs=("system:masters",))
    cm = _leaf(directory, "controller-manager", ca_key, ca_cert, "system:kube-controller-manager")
    sched = _leaf(directory, "scheduler", ca_key, ca_cert, "system:kube-scheduler")
    # KWOK writes node and pod status for every fake node: it acts as many kubelets at once.
    kwok = _leaf(directory, "kwok", ca_key, ca_cert, "kwok-controller", orgs=("system:masters",))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_private = directory / "sa.key"
    sa_public = directory / "sa.pub"
    _write_key(sa_private, sa_key)
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ClusterCerts(
        ca=ca,
        serving=serving,
        admin=admin,
        controller_manager=cm,
        scheduler=sched,
        kwok=kwok,
        sa_public=sa_public,
        sa_private=sa_private,
    )


def serving_cert(
    directory: Path,
    stem: str,
    ca: CertPaths,
    common_name: str,
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = ("127.0.0.1",),
) -> CertPaths:
    """A serving certificate signed by an existing CA (the dev cluster's ``pki/ca.*``), for a
    local process the API server calls back (an admission webhook on 127.0.0.1)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key}: expected the EC key of the dev cluster CA")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    return _leaf(directory, stem, ca_key, ca_cert, common_name, server=True, dns=dns, ips=ips)


def client_cert(
    directory: Path, stem: str, ca: CertPaths, common_name: str, *, orgs: tuple[str, ...] = ()
) -> CertPaths:
    """A client certificate signed by an existing CA (the dev cluster's ``pki/ca.*``): a user
    of its own (``common_name``, groups ``orgs``) so the API server's flow-control metrics can
    tell one local controller's requests from another's (bench/kubeflow_compare.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key}: expected the EC key of the dev cluster CA")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    return _leaf(directory, stem, ca_key, ca_cert, common_name, orgs=orgs)
