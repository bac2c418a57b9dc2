"""The certificates SeaweedFS's internal ports demand of every caller (mutual TLS).

SeaweedFS's JWT keys cover reads and writes of the volume and filer servers only: its master
(HTTP and gRPC, e.g. `/col/delete`, which drops a whole bucket) and every gRPC port answer
anyone on the machine without them. With mutual TLS on all of them, a caller must hold the
stack's client certificate, which lives in the stack's private folder. The authority's key
signs one certificate and is never written: nothing can issue another.
"""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from team_stack.settings import LOOPBACK, write_private

VALID_FOR = datetime.timedelta(days=3650)
# SeaweedFS's components that serve gRPC and HTTPS; the client is every caller among them.
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "client")
HTTPS_COMPONENTS = ("master", "volume", "filer")


@dataclass(frozen=True)
class Certificates:
    """The authority's certificate, and the one certificate (with its key) that every
    component presents, as server and as client."""

    authority: Path
    certificate: Path
    key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> "Certificates":
        return cls(folder / "ca.crt", folder / "tls.crt", folder / "tls.key")

    def exist(self) -> bool:
        return all(path.exists() for path in (self.authority, self.certificate, self.key))

    def seaweedfs_environment(self) -> dict[str, str]:
        """SeaweedFS's security.toml settings for mutual TLS on every internal port, as the
        environment variables it reads over that file."""
        files = {"CERT": str(self.certificate), "KEY": str(self.key)}
        environment = {"WEED_GRPC_CA": str(self.authority), "WEED_HTTPS_CLIENT_ENABLED": "true"}
        for component in GRPC_COMPONENTS:
            environment |= {f"WEED_GRPC_{component.upper()}_{k}": v for k, v in files.items()}
        for component in (*HTTPS_COMPONENTS, "client"):
            prefix = f"WEED_HTTPS_{component.upper()}"
            environment |= {f"{prefix}_{k}": v for k, v in files.items()}
            environment[f"{prefix}_CA"] = str(self.authority)  # a CA: client certs required
        return environment


def issued(folder: Path) -> Certificates:
    """The stack's certificates in `folder`, issued the first time (each file written whole,
    readable by its owner only)."""
    certificates = Certificates.in_folder(folder)
    if certificates.exist():
        return certificates
    now = datetime.datetime.now(datetime.UTC)
    authority_key = ec.generate_private_key(ec.SECP256R1())
    authority_name = _name("tabular-mlops stack authority")
    authority = (
        _builder(authority_name, authority_key.public_key(), now)
        .issuer_name(authority_name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(authority_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alternative_names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate = (
        _builder(_name("seaweedfs"), key.public_key(), now)
        .issuer_name(authority_name)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(authority_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    # The key first, the authority last: `exist()` is true only once all three are whole.
    write_private(
        certificates.key,
        key.private_bytes(pem, private, serialization.NoEncryption()).decode(),
    )
    write_private(certificates.certificate, certificate.public_bytes(pem).decode())
    write_private(certificates.authority, authority.public_bytes(pem).decode())
    return certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little apart
        .not_valid_after(now + VALID_FOR)
    )
