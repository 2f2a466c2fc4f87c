"""Credentials for a TLS deployment: chain, SANs, validity, key formats, modes, no overwrite."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from flwr.cli.supernode.register import try_load_public_key

from server.certificates import (
    PRIVATE_MODE,
    SERVER_VALID_DAYS,
    CredentialsError,
    check_private_key_file,
    credential_paths,
    issue_credentials,
    site_keys,
    write_new_file,
)
from server.cli import main

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _verify(certs: Path, name: x509.GeneralName, at: dt.datetime = NOW) -> None:
    """Verify the server certificate as a TLS client would: chain to ca.crt, name, time."""
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    verifier = PolicyBuilder().store(Store([ca])).time(at).build_server_verifier(name)
    verifier.verify(server, [])


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    certs = tmp_path_factory.mktemp("creds") / "certs"
    issue_credentials(certs, ["uk", "de-shop"], ["fl.example.org", "10.1.2.3"], now=NOW)
    return certs


def test_server_certificate_chains_to_the_ca_for_loopback_and_given_hosts(issued: Path) -> None:
    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("fl.example.org"),
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
    ):
        _verify(issued, name)
    with pytest.raises(VerificationError):
        _verify(issued, x509.DNSName("evil.example.org"))


def test_server_certificate_is_rejected_outside_its_validity_and_by_another_ca(
    issued: Path, tmp_path: Path
) -> None:
    server = x509.load_pem_x509_certificate((issued / "server.pem").read_bytes())
    assert server.not_valid_after_utc == NOW + dt.timedelta(days=SERVER_VALID_DAYS)
    assert server.not_valid_before_utc <= NOW
    with pytest.raises(VerificationError):
        _verify(issued, x509.DNSName("localhost"), NOW + dt.timedelta(days=SERVER_VALID_DAYS + 1))
    with pytest.raises(VerificationError):
        _verify(issued, x509.DNSName("localhost"), NOW - dt.timedelta(days=1))
    other = tmp_path / "other"
    issue_credentials(other, ["x"], now=NOW)
    (other / "server.pem").unlink()
    (other / "server.pem").write_bytes((issued / "server.pem").read_bytes())
    with pytest.raises(VerificationError):
        _verify(other, x509.DNSName("localhost"))


def test_server_key_matches_certificate_and_ca_key_is_not_kept(issued: Path) -> None:
    server = x509.load_pem_x509_certificate((issued / "server.pem").read_bytes())
    key = serialization.load_pem_private_key((issued / "server.key").read_bytes(), None)
    assert key.public_key() == server.public_key()
    ca = x509.load_pem_x509_certificate((issued / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    private_files = sorted(
        str(p.relative_to(issued))
        for p in issued.rglob("*")
        if p.is_file() and b"PRIVATE KEY" in p.read_bytes()
    )
    assert private_files == ["server.key", "sites/de-shop.key", "sites/uk.key"]


def test_files_have_private_and_public_modes(issued: Path) -> None:
    assert {p.name: _mode(p) for p in issued.rglob("*") if p.is_file()} == {
        "ca.crt": 0o644,
        "server.pem": 0o644,
        "server.key": 0o600,
        "uk.key": 0o600,
        "uk.pub": 0o644,
        "de-shop.key": 0o600,
        "de-shop.pub": 0o644,
    }


def test_site_keys_are_p384_openssh_pairs_that_flower_accepts(issued: Path) -> None:
    sites = site_keys(issued)
    assert [site.name for site in sites] == ["de-shop", "uk"]
    for site in sites:
        private = serialization.load_ssh_private_key(site.private_key.read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        line = site.public_key.read_text()
        assert line.startswith("ecdsa-sha2-nistp384 ")
        assert line.rstrip().endswith(f"fedshop-site:{site.name}")
        public = serialization.load_ssh_public_key(line.encode())
        assert public == private.public_key()
        signature = private.sign(b"challenge", ec.ECDSA(hashes.SHA384()))
        public.verify(signature, b"challenge", ec.ECDSA(hashes.SHA384()))
        # the exact loader `flwr supernode register` runs on the .pub file
        assert try_load_public_key(site.public_key)
    uk, de = (serialization.load_ssh_public_key(s.public_key.read_bytes()) for s in sites)
    assert uk != de


def test_existing_site_key_is_never_overwritten(issued: Path) -> None:
    before = {p: p.read_bytes() for p in issued.rglob("*") if p.is_file()}
    with pytest.raises(CredentialsError, match="uk.key already exists"):
        issue_credentials(issued, ["new-site", "uk"])
    after = {p: p.read_bytes() for p in issued.rglob("*") if p.is_file()}
    assert after == before  # checked before writing: not even new-site was created


def test_sites_are_added_to_an_existing_directory_under_the_same_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    issue_credentials(certs, ["uk"], ["fl.example.org"])
    ca_before = (certs / "ca.crt").read_bytes()
    issued = issue_credentials(certs, ["fr"], ["fl.example.org"])
    assert [s.name for s in issued.sites] == ["fr"]
    assert (certs / "ca.crt").read_bytes() == ca_before
    assert [s.name for s in site_keys(certs)] == ["fr", "uk"]
    with pytest.raises(CredentialsError, match="does not cover host.*other.example.org"):
        issue_credentials(certs, ["es"], ["other.example.org"])
    assert not (certs / "sites" / "es.key").exists()


def test_incomplete_directory_and_bad_names_are_refused_before_writing(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    issue_credentials(certs, ["uk"])
    (certs / "ca.crt").unlink()
    with pytest.raises(CredentialsError, match="incomplete credentials directory.*ca.crt"):
        issue_credentials(certs, ["fr"])
    fresh = tmp_path / "fresh"
    for names in (["../escape"], ["a b"], [""], ["uk", "uk"]):
        with pytest.raises(CredentialsError):
            issue_credentials(fresh, names)
    assert not fresh.exists()


def test_write_new_file_refuses_existing_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "secret.key"
    write_new_file(target, b"one", PRIVATE_MODE)
    with pytest.raises(CredentialsError, match="already exists"):
        write_new_file(target, b"two", PRIVATE_MODE)
    assert target.read_bytes() == b"one"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    write_new_file(key, b"k", 0o644)
    with pytest.raises(CredentialsError, match="readable by others.*0644"):
        check_private_key_file(key)
    key.chmod(0o600)
    check_private_key_file(key)
    with pytest.raises(CredentialsError, match="not found"):
        check_private_key_file(tmp_path / "missing.key")


def test_certs_command_lists_what_each_site_receives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--site", "uk", "--site", "fr"]) == 0
    printed = capsys.readouterr().out
    paths = credential_paths(out, ["uk", "fr"])
    for site in paths.sites:
        assert f"{site.name}: {paths.ca_cert} and {site.private_key}" in printed
    assert "ca.key" not in printed
    assert main(["certs", "--out", str(out), "--site", "uk"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fedshop-server: error: ") and error.count("\n") == 1
    assert "refusing to overwrite" in error
