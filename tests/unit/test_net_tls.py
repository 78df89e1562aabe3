"""Self-signed certificate generation and the TLS contexts."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from postroom.net.tls import client_context_trusting, ensure_certificate, server_context


def test_generates_once_with_san_and_private_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert ensure_certificate(cert, key, "mail.example.org") is True
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"mail.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                            ipaddress.ip_address("::1")}
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert lifetime.days >= 3650
    before = (cert.read_bytes(), key.read_bytes())
    assert ensure_certificate(cert, key, "other.example") is False  # never regenerated when present
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert not [p for p in cert.parent.iterdir() if p.name.endswith(".tmp")]


def test_ip_hostname_goes_into_ip_san(tmp_path: Path) -> None:
    ensure_certificate(tmp_path / "c.pem", tmp_path / "k.pem", "192.0.2.25")
    parsed = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("192.0.2.25") in san.get_values_for_type(x509.IPAddress)


def test_half_a_pair_is_an_error_not_an_overwrite(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("operator's certificate")
    with pytest.raises(FileNotFoundError, match="k.pem"):
        ensure_certificate(cert, key, "localhost")
    assert cert.read_text() == "operator's certificate"
    assert not key.exists()


def test_contexts(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    ensure_certificate(cert, key, "localhost")
    server = server_context(cert, key)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.options & ssl.OP_NO_COMPRESSION
    client = client_context_trusting(cert)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_check_files_names_the_file_and_the_problem(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from postroom.net.tls import CertificateError, check_files, fingerprint, load_context

    cert, key = tmp_path / "a" / "cert.pem", tmp_path / "a" / "key.pem"
    ensure_certificate(cert, key, "a.test")
    parsed = check_files(cert, key)
    assert fingerprint(parsed) == "sha256:" + parsed.fingerprint(parsed.signature_hash_algorithm).hex()
    ctx, same = load_context(cert, key)
    assert isinstance(ctx, ssl.SSLContext) and same == parsed

    def problem(c: Path, k: Path) -> str:
        with pytest.raises(CertificateError) as caught:
            check_files(c, k)
        return str(caught.value)

    missing = tmp_path / "nowhere" / "cert.pem"
    assert f"tls.cert names {missing}, which does not exist" in problem(missing, key)
    assert f"tls.key names {tmp_path / 'k.pem'}, which does not exist" in problem(cert, tmp_path / "k.pem")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"hello\n")
    assert f"{junk} is not a PEM certificate" in problem(junk, key)
    assert f"{junk} is not a PEM private key" in problem(cert, junk)
    other_cert, other_key = tmp_path / "b" / "cert.pem", tmp_path / "b" / "key.pem"
    ensure_certificate(other_cert, other_key, "b.test")
    assert f"the private key {other_key} does not belong to the certificate {cert}" in problem(cert, other_key)
    # A key with a passphrase: Postroom cannot ask for it, so it says so.
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    assert f"the private key {locked} is protected by a passphrase" in problem(cert, locked)
    # A chain file: the server's certificate first, then the rest, is accepted.
    chain = tmp_path / "chain.pem"
    chain.write_bytes(cert.read_bytes() + other_cert.read_bytes())
    assert check_files(chain, key) == parsed
