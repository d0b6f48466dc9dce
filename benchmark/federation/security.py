"""Certificates and SuperNode keys for a secure Flower deployment (``fedvid deploy certs``).

What Flower 1.41 expects (read from its source):

- SuperLink TLS: ``--ssl-certfile`` (PEM certificate whose SANs name every host/IP the
  SuperNodes dial), ``--ssl-keyfile`` (PEM key), ``--ssl-ca-certfile`` (the CA, PEM).
  SuperNodes and ``flwr`` verify it with ``--root-certificates`` / ``root-certificates``.
- SuperNode authentication: the SuperLink runs with ``--enable-supernode-auth`` and only
  accepts SuperNodes whose public key was registered with
  ``flwr supernode register KEY.pub`` (OpenSSH public key on a NIST curve); each SuperNode
  signs its requests with ``--auth-supernode-private-key`` (OpenSSH private key, EC).

Layout written under ``OUT`` (private keys 0600, every file atomic, nothing overwritten
unless asked)::

    ca/ca.crt, ca/ca.key                       the CA (keep ca.key offline)
    superlink/server.crt, server.key, ca.crt   for flower-superlink
    superlink/supernode-keys/NAME.pub          the public keys to register
    supernodes/NAME/node.key, node.pub, ca.crt for flower-supernode on NAME's machine
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from benchmark.io import atomic_write_bytes

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
#: Flower accepts SuperNode keys on any NIST curve; P-384 is the one its docs use.
CURVE = ec.SECP384R1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Always in the SuperLink certificate: with ``--host 0.0.0.0`` (or ``::``) the SuperLink's own
#: SuperExec (which starts the ServerApp) dials it on 127.0.0.1 (::1) over TLS (flwr 1.41
#: ``resolve_bind_address``).
SUPEREXEC_HOSTS = ("127.0.0.1", "::1")


class CredentialsError(ValueError):
    """Bad input for certificate/key generation (the message names the value and the fix)."""


@dataclass(frozen=True)
class Layout:
    """Where ``fedvid deploy certs`` puts each file under ``root``."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink" / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink" / "server.key"

    @property
    def superlink_ca(self) -> Path:
        return self.root / "superlink" / "ca.crt"

    def registered_key(self, node: str) -> Path:
        return self.root / "superlink" / "supernode-keys" / f"{node}.pub"

    def node_key(self, node: str) -> Path:
        return self.root / "supernodes" / node / "node.key"

    def node_pub(self, node: str) -> Path:
        return self.root / "supernodes" / node / "node.pub"

    def node_ca(self, node: str) -> Path:
        return self.root / "supernodes" / node / "ca.crt"


# ------------------------------------------------------------------------------------
# Keys and certificates
# ------------------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVE())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """``x509`` SubjectAltName entries: an IP address where ``host`` parses as one, else a DNS name."""
    entries: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
            raise CredentialsError(
                f"--host {host!r} is neither an IP address nor a DNS name: give the name or IP the "
                "SuperNodes use to reach the SuperLink (e.g. --host superlink.example.org --host 10.0.0.5)"
            )
        entries.append(x509.DNSName(host))
    if not entries:
        raise CredentialsError("no --host given: the SuperLink certificate needs the host names/IPs SuperNodes dial")
    return entries


def make_ca(common_name: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def issue_server_cert(
    ca_key, ca_cert: x509.Certificate, hosts: list[str], days: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for the SuperLink, valid for ``hosts`` (SANs), signed by the CA."""
    sans = san_entries(hosts)
    key = new_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0].strip())]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def node_key_pair() -> tuple[bytes, bytes]:
    """(OpenSSH private key, OpenSSH public key) of one SuperNode, the formats Flower loads."""
    key = new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def load_ca(cert_path: Path, key_path: Path):
    """An existing CA (e.g. the institution's own): its certificate and unencrypted PEM key."""
    for flag, path in (("--ca-cert", cert_path), ("--ca-key", key_path)):
        if not Path(path).is_file():
            raise CredentialsError(f"{flag} {path}: no such file")
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except ValueError as e:
        raise CredentialsError(f"--ca-cert {cert_path}: not a PEM certificate ({e})") from e
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise CredentialsError(
            f"--ca-key {key_path}: not an unencrypted PEM private key ({e}); "
            "decrypt it first, e.g. `openssl pkey -in KEY -out ca.key`"
        ) from e
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise CredentialsError(f"--ca-key {key_path} is not the key of --ca-cert {cert_path}")
    return key, cert


# ------------------------------------------------------------------------------------
# Writing a credential set
# ------------------------------------------------------------------------------------


def check_node_names(nodes: list[str]) -> None:
    for node in nodes:
        if not _NAME.match(node):
            raise CredentialsError(f"--supernode {node!r}: use letters, digits, '.', '_' or '-' (it names a directory)")
    if len(set(nodes)) != len(nodes):
        raise CredentialsError(f"--supernode names repeat: {nodes}")


def make_credentials(
    out: Path,
    hosts: list[str],
    nodes: list[str],
    *,
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    days: int = 365,
    overwrite: bool = False,
) -> dict[Path, int]:
    """Write a CA (unless ``ca`` is given), a SuperLink certificate for ``hosts`` (when any)
    and one key pair per SuperNode under ``out``; returns {path: mode} of what was written.

    Refuses, before writing anything, when a file would be replaced and ``overwrite`` is false.
    """
    layout = Layout(Path(out))
    check_node_names(nodes)
    if days < 1:
        raise CredentialsError(f"--days {days}: must be >= 1")
    if not hosts and not nodes:
        raise CredentialsError("nothing to make: give --host (SuperLink certificate) and/or --supernode NAME")
    files: dict[Path, tuple[bytes, int]] = {}
    if hosts:
        san_entries(hosts)  # validate before generating anything
        if ca is None:
            ca_key, ca_cert = make_ca("FedVid-Bench deployment CA", days)
            files[layout.ca_key] = (_pem_key(ca_key), PRIVATE_MODE)
        else:
            ca_key, ca_cert = ca
        ca_pem = _pem_cert(ca_cert)
        files[layout.ca_cert] = (ca_pem, PUBLIC_MODE)
        server_hosts = [*hosts, *(h for h in SUPEREXEC_HOSTS if h not in hosts)]
        server_key, server_cert = issue_server_cert(ca_key, ca_cert, server_hosts, days)
        files[layout.server_cert] = (_pem_cert(server_cert), PUBLIC_MODE)
        files[layout.server_key] = (_pem_key(server_key), PRIVATE_MODE)
        files[layout.superlink_ca] = (ca_pem, PUBLIC_MODE)
        for node in nodes:
            files[layout.node_ca(node)] = (ca_pem, PUBLIC_MODE)
    for node in nodes:
        private, public = node_key_pair()
        files[layout.node_key(node)] = (private, PRIVATE_MODE)
        files[layout.node_pub(node)] = (public, PUBLIC_MODE)
        files[layout.registered_key(node)] = (public, PUBLIC_MODE)
    existing = sorted(str(p) for p in files if p.exists())
    if existing and not overwrite:
        raise CredentialsError(
            f"refusing to replace existing file(s): {', '.join(existing)}. "
            "Pass --overwrite to replace them (e.g. to rotate a key), or choose another output directory."
        )
    for path, (data, mode) in files.items():
        atomic_write_bytes(path, data, mode=mode)
    return {p: m for p, (_, m) in files.items()}
