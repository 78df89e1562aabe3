"""ACME key/chain installation survives a crash at every step (acme.py, "Installing a pair", invariant 1).

A child process installs a new pair over an old one and is killed (SIGKILL: no cleanup, no flush beyond what the
code made durable) right after step N; then the files are loaded the way the server loads them (`app.load_tls`,
which settles first), and the key must belong to the certificate: the old pair or the new one, never a mix.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postroom.acme import install_pair, settle_pair
from postroom.app import load_tls
from postroom.config import Config, load

CHILD = """
import os, signal, sys
from pathlib import Path
from postroom.acme import install_steps
cert, key, new_key, new_chain, stop = sys.argv[1:6]
for step in install_steps(Path(cert), Path(key), Path(new_key).read_bytes(), Path(new_chain).read_bytes()):
    if step == int(stop):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def make_pair(name: str) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of a new self-signed ECDSA certificate for `name`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def loaded_name(cfg: Config) -> str:
    """The common name of the certificate the server loads (load_tls raises when the key does not match)."""
    _, cert = load_tls(cfg)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def acme_config(tmp_path: Path) -> Config:
    # The directory is never contacted here: it only makes the ACME files the ones the server loads.
    cfg = load(None, {"server": {"data_dir": str(tmp_path / "data"), "hostname": "mail.example.org"},
                      "acme": {"directory": "https://127.0.0.1:1/dir", "email": "a@example.org"}})
    cfg.cert_path.parent.mkdir(parents=True)
    return cfg


@pytest.mark.parametrize("stop", [1, 2, 3, 4])
def test_killed_after_each_step_loads_a_matching_pair(tmp_path: Path, stop: int) -> None:
    cfg = acme_config(tmp_path)
    old_key, old_cert = make_pair("old.example")
    install_pair(cfg.cert_path, cfg.key_path, old_key, old_cert)
    new_key, new_cert = make_pair("new.example")
    (tmp_path / "new-key").write_bytes(new_key)
    (tmp_path / "new-chain").write_bytes(new_cert)
    child = subprocess.run([sys.executable, "-c", CHILD, str(cfg.cert_path), str(cfg.key_path),
                            str(tmp_path / "new-key"), str(tmp_path / "new-chain"), str(stop)],
                           capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    if stop == 3:  # the state the old code could leave for good: the new key beside the old certificate
        assert cfg.key_path.read_bytes() == new_key and cfg.cert_path.read_bytes() == old_cert
    # Staged but not switched (1): the old pair; staged whole (2), or half switched (3, 4): the new pair.
    assert loaded_name(cfg) == ("old.example" if stop == 1 else "new.example")
    assert sorted(p.name for p in cfg.cert_path.parent.iterdir() if not p.name.startswith(".")) == \
        ["cert.pem", "key.pem"]  # nothing staged is left
    assert os.stat(cfg.key_path).st_mode & 0o077 == 0


def test_settle_without_leftovers_does_nothing(tmp_path: Path) -> None:
    cfg = acme_config(tmp_path)
    key, cert = make_pair("only.example")
    install_pair(cfg.cert_path, cfg.key_path, key, cert)
    assert settle_pair(cfg.cert_path, cfg.key_path) == ""
    assert loaded_name(cfg) == "only.example"
