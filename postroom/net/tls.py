"""TLS material: a self-signed certificate on first run, and the SSL contexts built from it.

Theory of operation
-------------------
Postroom must speak TLS from its first start (ARCHITECTURE principle 7: secure by default), before an operator
has obtained a real certificate. `ensure_certificate` therefore writes a self-signed certificate and key when,
and only when, both files are missing. A production config points `tls.cert` / `tls.key` at real files and this
module never touches them.

Invariants
1. An existing certificate or key is never overwritten. If exactly one of the two files exists the pair is
   inconsistent and `ensure_certificate` raises rather than guessing.
2. The private key is created with mode 0600 from the first byte (opened with O_EXCL and that mode, then
   renamed into place), so it is never readable by others, not even briefly.
3. Server contexts refuse anything older than TLS 1.2 (RFC 8996 deprecates TLS 1.0 and 1.1) and refuse
   client-initiated renegotiation.
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

VALIDITY_DAYS = 3650


def _san_entries(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in (hostname, "localhost", "127.0.0.1", "::1"):
        key = name.lower()
        if not name or key in seen:
            continue
        seen.add(key)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return names


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` via a temporary file created with `mode` (invariant 2)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed `mode`; make it exact
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def ensure_certificate(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str],
                       hostname: str) -> bool:
    """Create a self-signed certificate for `hostname` unless both files exist. True if one was created.

    The certificate (EC P-256, SHA-256, ten years) names `hostname`, localhost, 127.0.0.1 and ::1 in its
    subjectAltName so local clients can verify it by name or by loopback address.
    """
    cert_p, key_p = Path(cert_path), Path(key_path)
    cert_exists, key_exists = cert_p.exists(), key_p.exists()
    if cert_exists and key_exists:
        return False
    if cert_exists != key_exists:  # invariant 1
        present, missing = (cert_p, key_p) if cert_exists else (key_p, cert_p)
        raise FileNotFoundError(
            f"TLS: {present} exists but {missing} does not; restore it, or remove both to have a new "
            f"self-signed pair generated")

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Postroom self-signed"),
    ])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san_entries(hostname)), critical=False)
        # CA:FALSE: NSS clients (Thunderbird) reject a CA certificate used as a server certificate; OpenSSL
        # still accepts this self-signed leaf as its own trust anchor (cafile=cert.pem).
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    for parent in {cert_p.parent, key_p.parent}:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(key_p, key_pem, 0o600)
    _write_private(cert_p, cert_pem, 0o644)
    return True


def server_context(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or later, no compression, no client renegotiation (invariant 3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    return ctx


def client_context_trusting(cert_path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A client context that trusts exactly the certificate at `cert_path` (tests, `postroom check`)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(cert_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
