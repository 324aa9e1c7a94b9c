"""A throw-away certificate authority and a server certificate for 127.0.0.1 and localhost.

The CA is kept in the TLS directory and reused, so clients that trusted `ca.pem` keep working
across emulator restarts; the server certificate is issued afresh on every start.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from batchcompute_testbed.pki import key_usage, new_ca

_PRIVATE = serialization.PrivateFormat.PKCS8
_PEM = serialization.Encoding.PEM


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    if private:
        tmp.chmod(0o600)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, _PRIVATE, serialization.NoEncryption())


def _load_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert_path, key_path = tls_dir / "ca.pem", tls_dir / "ca-key.pem"
    if not (cert_path.exists() and key_path.exists()):
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1):
        return None
    return cert, key


def _new_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert, key = new_ca("batchcompute emulator test CA", datetime.timedelta(days=365))
    _write(tls_dir / "ca-key.pem", _key_pem(key), private=True)
    _write(tls_dir / "ca.pem", cert.public_bytes(_PEM))
    return cert, key


def _server_cert(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, host: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
    ]
    try:
        extra: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    if extra not in names:
        names.append(extra)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def server_ssl_context(tls_dir: Path, host: str = "127.0.0.1") -> tuple[ssl.SSLContext, Path]:
    """Make (or reuse) the CA in `tls_dir`, issue a server certificate, return the context and
    the path of `ca.pem` for clients."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _load_ca(tls_dir) or _new_ca(tls_dir)
    cert, key = _server_cert(ca, ca_key, host)
    cert_path, key_path = tls_dir / "server.pem", tls_dir / "server-key.pem"
    _write(cert_path, cert.public_bytes(_PEM) + ca.public_bytes(_PEM))
    _write(key_path, _key_pem(key), private=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, tls_dir / "ca.pem"
