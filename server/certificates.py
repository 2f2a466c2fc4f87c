"""Certificates and keys for a TLS deployment with SuperNode authentication.

The central team issues, with :func:`issue_credentials`, into one directory:

- ``ca.crt``: a self-signed EC P-384 certificate authority. Every site gets a copy to verify
  the SuperLink (``flower-supernode --root-certificates``). Its private key signs the server
  certificate and is then discarded, so no CA key ever lies on disk to be stolen; a new
  server certificate means a new directory and a new ``ca.crt`` for every site.
- ``server.pem`` / ``server.key``: the SuperLink's certificate (EC P-384, signed by the CA,
  SANs ``localhost``, ``127.0.0.1``, ``::1`` and any extra host names or addresses) and its
  private key (PKCS#8 PEM, mode 0600), for ``flower-superlink --ssl-certfile/--ssl-keyfile``.
- ``sites/<name>.key`` / ``sites/<name>.pub``: one SuperNode authentication key pair per site
  (EC P-384). The private key is OpenSSH PEM (mode 0600) for
  ``flower-supernode --auth-supernode-private-key``; the public key is one OpenSSH line
  ``ecdsa-sha2-nistp384 ... fedshop-site:<name>`` for ``flwr supernode register``. Site keys
  do not depend on the CA, so sites can be added to an existing directory later.

Every file is written to a private temporary file and hard-linked into place, so a reader never
sees half a key and an existing file is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
SITES_DIR = "sites"
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 825
"""The longest server-certificate lifetime browsers and most TLS stacks still accept."""
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
CURVE = ec.SECP384R1
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CredentialsError(Exception):
    """Credentials cannot be issued or used: a file exists, a name is invalid, a key is unsafe."""


@dataclass(frozen=True)
class SiteKeyFiles:
    """Where one site's SuperNode authentication key pair lives."""

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class Credentials:
    """The files of one credentials directory (see the module docstring)."""

    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    sites: tuple[SiteKeyFiles, ...]


def credential_paths(directory: Path | str, sites: Iterable[str] = ()) -> Credentials:
    """The paths of a credentials directory for the given site names (nothing is read)."""
    directory = Path(directory)
    return Credentials(
        directory=directory,
        ca_cert=directory / CA_CERT,
        server_cert=directory / SERVER_CERT,
        server_key=directory / SERVER_KEY,
        sites=tuple(site_key_paths(directory, name) for name in sites),
    )


def site_key_paths(directory: Path | str, name: str) -> SiteKeyFiles:
    """The key pair paths of site ``name`` inside credentials ``directory``."""
    check_site_name(name)
    sites = Path(directory) / SITES_DIR
    return SiteKeyFiles(name, sites / f"{name}.key", sites / f"{name}.pub")


def site_keys(directory: Path | str) -> list[SiteKeyFiles]:
    """Every site key pair in ``directory/sites`` that has a public key, sorted by name."""
    sites = Path(directory) / SITES_DIR
    return [site_key_paths(directory, pub.stem) for pub in sorted(sites.glob("*.pub"))]


def check_site_name(name: str) -> None:
    """Refuse a site name that is not safe as a file name (letters, digits, ``.``, ``_``, ``-``).

    Raises:
        CredentialsError: the name is empty, too long or holds other characters.
    """
    if not SITE_NAME.fullmatch(name):
        raise CredentialsError(
            f"invalid site name {name!r}: use 1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )


def issue_credentials(
    directory: Path | str,
    sites: Sequence[str],
    hosts: Sequence[str] = (),
    *,
    now: dt.datetime | None = None,
) -> Credentials:
    """Create the CA, server certificate and site key pairs in ``directory``.

    If ``directory`` already holds a CA and server certificate, only the site key pairs are
    added; the extra ``hosts`` must then already be in the server certificate.

    Args:
        directory: the credentials directory (created if missing).
        sites: names of the sites to create key pairs for.
        hosts: DNS names or IP addresses the SuperLink is reached at, besides loopback.
        now: start of the validity period (default: the current time), for tests.

    Returns:
        The paths of the CA, server and the new sites' files.

    Raises:
        CredentialsError: a site name is invalid or repeated, a site key already exists, the
            directory holds only part of a server set, or a host is missing from the
            existing server certificate. Checked before anything is written.
    """
    directory = Path(directory)
    if len(set(sites)) != len(sites):
        raise CredentialsError(f"site names repeat: {', '.join(sites)}")
    paths = credential_paths(directory, sites)
    for site in paths.sites:
        for path in (site.private_key, site.public_key):
            if path.exists() or path.is_symlink():
                raise CredentialsError(
                    f"{path} already exists; refusing to overwrite the key of site {site.name!r}"
                )
    server_files = (paths.ca_cert, paths.server_cert, paths.server_key)
    present = [path for path in server_files if path.exists()]
    if present and len(present) < len(server_files):
        missing = ", ".join(str(path) for path in server_files if not path.exists())
        raise CredentialsError(f"incomplete credentials directory {directory}: missing {missing}")
    if present:
        _check_hosts_covered(paths.server_cert, hosts)
    else:
        _write_server_set(paths, hosts, now or dt.datetime.now(dt.UTC))
    for site in paths.sites:
        private_key, public_key = site_key_pair(site.name)
        write_new_file(site.private_key, private_key, PRIVATE_MODE)
        write_new_file(site.public_key, public_key, PUBLIC_MODE)
    return paths


def site_key_pair(name: str) -> tuple[bytes, bytes]:
    """A new EC P-384 SuperNode key pair: (OpenSSH PEM private key, OpenSSH public key line)."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + f" fedshop-site:{name}\n".encode()


def certificate_authority(
    now: dt.datetime, valid_days: int = CA_VALID_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedshop federation CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), now, valid_days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    return key, cert


def server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    now: dt.datetime,
    valid_days: int = SERVER_VALID_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new TLS server key and certificate signed by the CA, valid for loopback and ``hosts``."""
    key = ec.generate_private_key(CURVE())
    names = list(dict.fromkeys([*LOOPBACK_HOSTS, *hosts]))
    common_name = hosts[0] if hosts else LOOPBACK_HOSTS[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now, valid_days)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def check_private_key_file(path: Path | str) -> None:
    """Refuse a private key file that is missing, not a regular file, or readable by others.

    Raises:
        CredentialsError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(f"{path}: private key file not found")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CredentialsError(
            f"{path}: private key is readable by others (mode {mode:04o}); run chmod 600 {path}"
        )


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to the new file ``path`` with ``mode``, atomically, never overwriting.

    The bytes go to a private temporary file in the same directory, are synced, then the
    file is hard-linked to ``path``; linking fails if ``path`` exists.

    Raises:
        CredentialsError: ``path`` already exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exact mode, whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temp, path)
    except FileExistsError:
        raise CredentialsError(f"{path} already exists; refusing to overwrite it") from None
    finally:
        temp.unlink(missing_ok=True)


def _write_server_set(paths: Credentials, hosts: Sequence[str], now: dt.datetime) -> None:
    ca_key, ca_cert = certificate_authority(now)
    server_key, server_cert = server_certificate(ca_key, ca_cert, hosts, now)
    pem = serialization.Encoding.PEM
    write_new_file(
        paths.server_key,
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        PRIVATE_MODE,
    )
    write_new_file(paths.server_cert, server_cert.public_bytes(pem), PUBLIC_MODE)
    # written last: its presence marks a complete server set
    write_new_file(paths.ca_cert, ca_cert.public_bytes(pem), PUBLIC_MODE)


def _check_hosts_covered(server_cert: Path, hosts: Sequence[str]) -> None:
    cert = x509.load_pem_x509_certificate(server_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    missing = [host for host in hosts if _general_name(host) not in sans]
    if missing:
        raise CredentialsError(
            f"{server_cert} does not cover host(s) {', '.join(missing)} and the CA key is not"
            " kept; issue a new credentials directory for new hosts"
        )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    valid_days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # a minute of slack for clocks that run slightly behind the issuer's
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=valid_days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
