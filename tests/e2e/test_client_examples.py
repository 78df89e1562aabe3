"""The README's client examples (msmtp, mutt, mbsync, fetchmail), taken from README.md as written, run against a
server whose certificate names mail.example.org (and localhost) but not 127.0.0.1: the clients check it against
the copied certificate, with the README's "connecting by IP address" settings where they connect by address.

HOME is a folder of the test's own, so the examples' `~/postroom-cert.pem` and `~/.postroom-password` are used
as the README puts them; only the host, the ports and the delivery command are changed. Each test is skipped,
naming the Debian package, where its client is missing."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

README = Path(__file__).resolve().parents[2] / "README.md"
PW = "client-example-password"
ALICE, BOB = "alice@example.org", "bob@example.org"


def needs(command: str, package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(command) is None, reason=f"{command} not installed (Debian: {package})")


def example(name: str) -> str:
    """The fenced block after `<!-- client-example: NAME -->` in README.md."""
    m = re.search(rf"<!-- client-example: {name} -->\n```[^\n]*\n(.*?)```", README.read_text(), re.S)
    assert m, f"README.md has no client example {name!r}"
    return m.group(1)


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for mail.example.org and localhost only (no IP address in it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("mail.example.org"),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    assert not any(isinstance(n, x509.IPAddress) for n in
                   cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def server_overrides(tmp_path: Path) -> dict[str, Any]:
    cert, key = make_cert(tmp_path / "servertls")
    return {"server": {"hostname": "mail.example.org"}, "tls": {"cert": str(cert), "key": str(key)}}


@pytest.fixture
def home(server: Any, tmp_path: Path) -> Path:
    """The client user's home: the copied certificate and the password file, as the README has them."""
    h = tmp_path / "home"
    h.mkdir()
    shutil.copy(server.config.cert_path, h / "postroom-cert.pem")
    (h / ".postroom-password").write_text(PW + "\n")
    (h / ".postroom-password").chmod(0o600)
    server.add_user(ALICE, PW)
    server.add_user(BOB, PW)
    return h


def env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "LC_ALL": "C.UTF-8"}


def inbox(server: Any, address: str, mailbox: str = "INBOX") -> list[bytes]:
    async def go() -> list[bytes]:
        user = await server.store.get_user(address)
        box = await server.store.get_mailbox(user.id, mailbox)
        if box is None:
            return []
        return [await server.store.read_message(i.blob_id) for i in await server.store.list_messages(box.id)]

    return server.run(go())  # type: ignore[no-any-return]


def ip_is_not_in_the_certificate(server: Any) -> None:
    cert = x509.load_pem_x509_certificate(server.config.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") not in san.get_values_for_type(x509.IPAddress)


@needs("msmtp", "msmtp")
def test_msmtp_example_by_ip_address(server: Any, home: Path) -> None:
    ip_is_not_in_the_certificate(server)
    rc = (example("msmtp").replace("host mail.example.org", "host 127.0.0.1")
          .replace("port 465", f"port {server.port('submissions')}"))
    assert rc != example("msmtp")
    (home / ".msmtprc").write_text(rc)
    (home / ".msmtprc").chmod(0o600)
    message = f"From: {ALICE}\nTo: {BOB}\nSubject: by msmtp\n\nhello from msmtp\n"
    # By address without the README's override: the certificate check refuses, as the README says.
    proc = subprocess.run(["msmtp", BOB], input=message, capture_output=True, text=True, env=env(home), timeout=60)
    assert proc.returncode != 0 and inbox(server, BOB) == []
    assert "name in the certificate does not match" in proc.stderr, proc.stderr
    (home / ".msmtprc").write_text(rc.replace("tls_starttls off\n",
                                              "tls_starttls off\ntls_host_override mail.example.org\n"))
    proc = subprocess.run(["msmtp", BOB], input=message, capture_output=True, text=True, env=env(home), timeout=60)
    assert proc.returncode == 0, proc.stderr
    [got] = inbox(server, BOB)
    assert b"hello from msmtp" in got and b"Subject: by msmtp" in got


@needs("mutt", "mutt")
def test_mutt_example_sends_and_keeps_a_copy_in_sent(server: Any, home: Path) -> None:
    rc = (example("mutt").replace("mail.example.org:993", f"localhost:{server.port('imaps')}")
          .replace("mail.example.org:465", f"localhost:{server.port('submissions')}"))
    assert "mail.example.org" not in rc
    (home / ".muttrc").write_text(rc)
    (home / ".postroom-mutt-passwords").write_text(f'set imap_pass = "{PW}"\nset smtp_pass = "{PW}"\n')
    # Batch mode (stdin is not a terminal): mutt sends at once; a prompt (an untrusted certificate) would fail.
    proc = subprocess.run(["mutt", "-s", "by mutt", BOB], input="hello from mutt\n", capture_output=True,
                          text=True, env=env(home), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [got] = inbox(server, BOB)
    assert b"hello from mutt" in got and b"Subject: by mutt" in got
    [kept] = inbox(server, ALICE, "Sent")  # `record = "+Sent"`: APPENDed over IMAPS
    assert b"hello from mutt" in kept


@needs("mbsync", "isync")
def test_mbsync_example_by_name(server: Any, home: Path) -> None:
    ip_is_not_in_the_certificate(server)
    import smtplib

    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as c:
        c.sendmail("someone@far.test", [ALICE], b"Subject: for mbsync\r\n\r\nsynced\r\n")
    # mbsync has no name override: by address it refuses (the README says so); by a name the certificate
    # holds (localhost here, mail.example.org on a real machine) it syncs.
    rc = (example("mbsync").replace("Host mail.example.org", "Host 127.0.0.1")
          .replace("Port 993", f"Port {server.port('imaps')}"))
    (home / ".mbsyncrc").write_text(rc)
    (home / "Mail" / "postroom").mkdir(parents=True)
    proc = subprocess.run(["mbsync", "-a"], capture_output=True, text=True, env=env(home), timeout=60)
    assert proc.returncode != 0 and "does not match" in proc.stderr, proc.stdout + proc.stderr
    rc = rc.replace("Host 127.0.0.1", "Host localhost")
    (home / ".mbsyncrc").write_text(rc)
    proc = subprocess.run(["mbsync", "-a"], capture_output=True, text=True, env=env(home), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = list((home / "Mail" / "postroom" / "INBOX").glob("*/*"))
    assert len(files) == 1 and b"synced" in files[0].read_bytes()


@needs("fetchmail", "fetchmail")
def test_fetchmail_example_by_ip_address_needs_sslcommonname(server: Any, home: Path, tmp_path: Path) -> None:
    ip_is_not_in_the_certificate(server)
    import smtplib

    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as c:
        c.sendmail("someone@far.test", [ALICE], b"Subject: for fetchmail\r\n\r\nfetched\r\n")
    got = tmp_path / "delivered"
    got.mkdir()
    rc = (example("fetchmail").replace("poll mail.example.org", "poll 127.0.0.1")
          .replace("port 995", f"port {server.port('pop3s')}").replace('password "..."', f'password "{PW}"')
          .replace("/home/alice/", f"{home}/")
          .replace('mda "/usr/bin/procmail -d %T"', f'mda "cat > {got}/$$.eml"'))

    def run(text: str) -> subprocess.CompletedProcess[str]:
        (home / ".fetchmailrc").write_text(text)
        (home / ".fetchmailrc").chmod(0o600)
        return subprocess.run(["fetchmail", "--nodetach", "--nosyslog", "-v"], capture_output=True, text=True,
                              env=env(home), timeout=60)

    proc = run(rc)  # by address, without the README's sslcommonname: the certificate's name does not match
    assert proc.returncode != 0 and list(got.iterdir()) == [], proc.stdout + proc.stderr
    assert "Server CommonName mismatch: mail.example.org != 127.0.0.1" in proc.stdout + proc.stderr
    proc = run(rc.replace("ssl sslcertck", "ssl sslcommonname mail.example.org sslcertck"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [eml] = list(got.iterdir())
    assert b"fetched" in eml.read_bytes()
