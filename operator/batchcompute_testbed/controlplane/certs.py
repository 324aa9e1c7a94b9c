"""Key material for the local control plane: service-account keys and a client-certificate CA."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from batchcompute_testbed.pki import new_ca

_VALIDITY = datetime.timedelta(days=7)
_BACKDATE = datetime.timedelta(minutes=5)


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600)
    path.write_bytes(data)


def write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """Write an RSA key pair for signing service-account tokens; returns (private, public)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / "sa.key"
    public = directory / "sa.pub"
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@dataclass(frozen=True)
class ClientCertificate:
    cert_file: Path
    key_file: Path


class ClientCA:
    """A throw-away CA the API server trusts for client certificates (`--client-ca-file`).

    It lets users be added after the server has started: the static token file is only read
    at start-up, while a certificate with CN=<user> and O=<group> is accepted at any time.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert_file = directory / "client-ca.crt"
        cert, self._key = new_ca("batchcompute-testbed-client-ca", _VALIDITY)
        self._name = cert.subject
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, user: str, groups: tuple[str, ...], stem: str) -> ClientCertificate:
        """Sign a client certificate for `user` in `groups`, written as `<stem>.crt/.key`."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_file = self.directory / f"{stem}.crt"
        key_file = self.directory / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_file,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return ClientCertificate(cert_file, key_file)
