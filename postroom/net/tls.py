"""TLS material: a self-signed certificate on first run, and the SSL contexts built from it.

Theory of operation
-------------------
Postroom must speak TLS from its first start (ARCHITECTURE principle 7: secure by default), before an operator
has obtained a real certificate. `ensure_certificate` therefore writes a self-signed certificate and key when,
and only when, both files are missing. A production config points `tls.cert` / `tls.key` at real files and this
module never touches them.

Only the built-in location (`<data_dir>/tls/cert.pem` and `key.pem`, used while `tls.cert` is empty) is ever
generated. A configured `tls.cert` / `tls.key` must name files that exist and parse: `load_context` checks each
file on its own first, so the error names the file and what is wrong with it (missing, unreadable, not PEM, a key
with a passphrase, a key that does not belong to the certificate), rather than OpenSSL's "PEM lib". The same
function serves the start, `postroom check` and a reload (SIGHUP), which keeps the old context when it raises.

Invariants
1. An existing certificate or key is never overwritten. If exactly one of the two files exists the pair is
   inconsistent and `ensure_certificate` raises rather than guessing.
2. The private key is created with mode 0600 from the first byte (opened with O_EXCL and that mode, then
   renamed into place), so it is never readable by others, not even briefly.
3. Every node on one shared store (PostgreSQL, issue 16 item 3) serves the same generated certificate: the
   store keeps the pair (`Store.shared_value`, the first node's wins, atomically) and each node writes it to
   its built-in files before loading them (`shared_candidate`, `install_shared`; app.py). Configured files and
   ACME certificates are the operator's: each node has its own files.
4. Server contexts refuse anything older than TLS 1.2 (RFC 8996 deprecates TLS 1.0 and 1.1) and refuse
   client-initiated renegotiation.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
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


def generate_pair(hostname: str) -> tuple[bytes, bytes]:
    """A new self-signed certificate and its private key, both PEM (EC P-256, SHA-256, ten years; the names of
    `ensure_certificate`): (certificate, PKCS#8 key)."""
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
    return cert_pem, key_pem


STORE_NAME = "tls-self-signed"  # the generated pair among `Store.shared_value`s (nodes on one store)


def shared_candidate(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], hostname: str) -> bytes:
    """What this node offers the store as the generated pair every node shares (`Store.shared_value`): the pair
    in its built-in files when both exist and belong together (a server that was alone keeps its certificate),
    else a new one. JSON {"cert": PEM, "key": PEM}."""
    try:
        check_files(cert_path, key_path)
        cert_pem, key_pem = Path(cert_path).read_bytes(), Path(key_path).read_bytes()
    except CertificateError:
        cert_pem, key_pem = generate_pair(hostname)
    return json.dumps({"cert": cert_pem.decode("ascii"), "key": key_pem.decode("ascii")}).encode()


def install_shared(value: bytes, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> bool:
    """Write the store's shared pair (`shared_candidate`'s form) to this node's built-in files, 0600 (invariant
    2), unless they hold it already. True if written. Invariant 1 does not hold here: the store's pair is the
    authority, and a different pair of this node's own is replaced (the caller logs it). Raises
    CertificateError for a value that is not such a pair."""
    try:
        pair = json.loads(value)
        cert_pem, key_pem = str(pair["cert"]).encode("ascii"), str(pair["key"]).encode("ascii")
    except (ValueError, KeyError, TypeError, UnicodeError):
        raise CertificateError(f"TLS: the store's {STORE_NAME} is not a certificate and key pair") from None
    cert_p, key_p = Path(cert_path), Path(key_path)
    try:
        if cert_p.read_bytes() == cert_pem and key_p.read_bytes() == key_pem:
            return False
    except OSError:
        pass
    for parent in {cert_p.parent, key_p.parent}:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(key_p, key_pem, 0o600)
    _write_private(cert_p, cert_pem, 0o600)
    return True


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

    cert_pem, key_pem = generate_pair(hostname)
    for parent in {cert_p.parent, key_p.parent}:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(key_p, key_pem, 0o600)
    _write_private(cert_p, cert_pem, 0o600)  # public, but the data folder is private (process.py)
    return True


class CertificateError(Exception):
    """A certificate or key file is unusable. The message names the file and the problem, for the operator."""


def _brief(exc: Exception) -> str:
    """cryptography's parse error without its pointer to the FAQ."""
    return re.sub(r"\s*See https?://\S+ for more details\.", "", str(exc)).strip() or type(exc).__name__


def _read(path: Path, what: str, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(
            f"TLS: {setting} names {path}, which does not exist (put the {what} there, or leave tls.cert and "
            f"tls.key empty to have a self-signed pair generated in the data folder)") from None
    except OSError as exc:
        raise CertificateError(f"TLS: cannot read the {what} {path}: {exc.strerror or exc}") from None


def check_files(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> x509.Certificate:
    """Check that `cert_path` holds a PEM certificate (the first is the server's, the rest its chain) and
    `key_path` an unencrypted PEM private key that belongs to it. Returns the server's certificate.
    Raises CertificateError naming the file and the problem."""
    cert_p, key_p = Path(cert_path), Path(key_path)
    cert_pem = _read(cert_p, "certificate", "tls.cert")
    key_pem = _read(key_p, "private key", "tls.key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"TLS: {cert_p} is not a PEM certificate ({_brief(exc)}); it must hold -----BEGIN "
                               f"CERTIFICATE----- blocks, the server's certificate first") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(f"TLS: the private key {key_p} is protected by a passphrase; give Postroom an "
                               f"unencrypted key (mode 0600), e.g. openssl pkey -in {key_p.name} -out new.pem") \
            from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"TLS: {key_p} is not a PEM private key ({_brief(exc)})") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise CertificateError(f"TLS: the private key {key_p} does not belong to the certificate {cert_p} (the first "
                               f"certificate in the file must be the server's own)")
    return chain[0]


def load_context(cert_path: str | os.PathLike[str],
                 key_path: str | os.PathLike[str]) -> tuple[ssl.SSLContext, x509.Certificate]:
    """`check_files`, then the server context over those files (invariant 3), with the server's certificate.
    Raises CertificateError."""
    cert = check_files(cert_path, key_path)
    try:
        return server_context(cert_path, key_path), cert
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(f"TLS: OpenSSL refused {os.fspath(cert_path)} / {os.fspath(key_path)}: {exc}") from None


def server_context(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or later, no compression, no client renegotiation (invariant 3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    return ctx


def fingerprint(cert: x509.Certificate) -> str:
    """'sha256:' and the hex SHA-256 of the certificate's DER form, as `openssl x509 -fingerprint -sha256`
    shows it (without the colons): how logs name the certificate a listener serves."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def client_context_trusting(cert_path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A client context that trusts exactly the certificate at `cert_path` (tests, `postroom check`)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(cert_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
