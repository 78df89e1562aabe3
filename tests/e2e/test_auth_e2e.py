"""Logins end to end, through the one Authenticator every protocol uses: failures from an address only slow it
down, only a (user, address) pair that keeps failing is refused, that state survives a restart, and SCRAM's
answer for an unknown user depends on the server's own secret. Clients connect from 127.0.0.1 and 127.0.0.2
(both loopback on Linux) to play two addresses."""

from __future__ import annotations

import base64
import imaplib
import os
import poplib
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import LISTENERS, ServerHandle
from imap_support import wire_imap
from smtp_support import smtps_dialogue

from postroom import config as config_mod

PW = "correct horse battery"
ALICE = "alice@example.org"
OTHER = "127.0.0.2"


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


class IMAPFrom(imaplib.IMAP4_SSL):
    """imaplib over implicit TLS from a chosen local address."""

    def __init__(self, source: str, port: int, ctx: ssl.SSLContext) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, ssl_context=ctx, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock)  # type: ignore[no-any-return]


class POP3From(poplib.POP3_SSL):
    """poplib over implicit TLS from a chosen local address."""

    def __init__(self, source: str, port: int, ctx: ssl.SSLContext) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, context=ctx, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.context.wrap_socket(sock)  # type: ignore[no-any-return]


def imap_login(server: Any, user: str, password: str, source: str = "127.0.0.1") -> bool:
    c = IMAPFrom(source, server.port("imaps"), server.tls_client_context())
    try:
        c.login(user, password)
    except imaplib.IMAP4.error as exc:
        assert "AUTHENTICATIONFAILED" in str(exc)
        return False
    finally:
        c.shutdown()
    return True


def pop3_login(server: Any, user: str, password: str, source: str = "127.0.0.1") -> bool:
    p = POP3From(source, server.port("pop3s"), server.tls_client_context())
    try:
        p.user(user)
        p.pass_(password)
    except poplib.error_proto as exc:
        assert b"[AUTH]" in exc.args[0]
        return False
    finally:
        p.close()
    return True


def start_server(data_dir: Path, overrides: dict[str, Any] | None = None) -> ServerHandle:
    """A server of our own (the `server` fixture's cannot be restarted under it)."""
    base = {"server": {"data_dir": str(data_dir), "shutdown_grace_seconds": 2.0},
            "listeners": {name: "127.0.0.1:0" for name in LISTENERS}, "delivery": {"enabled": False},
            "inbound": {"spf": False, "dkim": False, "dmarc": False, "arc": False}}
    handle = ServerHandle(config_mod.load(None, config_mod.merge(base, overrides or {})))
    handle.run(handle.postroom.start())
    return handle


def restart(server: ServerHandle) -> ServerHandle:
    """Stop `server` and start a new one over the same data folder (as `postroom serve` after a restart)."""
    server.stop()
    again = ServerHandle(server.config)
    again.run(again.postroom.start())
    return again


@pytest.mark.parametrize("server_overrides", [{"auth": {"max_failures_per_ip": 10}}])
def test_right_password_from_an_address_that_failed_for_other_users(server: Any) -> None:
    server.add_user(ALICE, PW)
    for i in range(10):  # ten failures from 127.0.0.1, none of them for alice
        assert not imap_login(server, f"probe{i}@example.org", "guess")
    # The address is slowed down from here on, never refused: alice's right password works, by IMAP and POP3.
    assert imap_login(server, ALICE, PW)
    assert pop3_login(server, ALICE, PW)


def test_only_the_failing_pair_is_refused_and_a_restart_keeps_it(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", {"auth": {"max_failures_per_ip": 100, "max_failures_per_user": 5}})
    try:
        server.add_user(ALICE, PW)
        for _ in range(5):
            assert not pop3_login(server, ALICE, "guess", source=OTHER)
        assert not pop3_login(server, ALICE, PW, source=OTHER)  # that pair is refused, right password or not
        assert not imap_login(server, ALICE, PW, source=OTHER)  # in every protocol
        assert imap_login(server, ALICE, PW)  # alice from her own address is not locked out by someone else
        assert pop3_login(server, ALICE, PW)
        server = restart(server)
        assert not imap_login(server, ALICE, PW, source=OTHER)  # a restart is not a reset
        assert imap_login(server, ALICE, PW)
    finally:
        server.stop()


# ---- SCRAM for unknown users (RFC 5802 §9)

def scram_first(server: Any, user: str) -> dict[str, str]:
    """SMTP AUTH SCRAM-SHA-256 on submissions up to the server-first-message, then cancel: its attributes."""
    with smtps_dialogue(server) as (s, reply):
        s.sendall(b"EHLO scram\r\n")
        reply()
        first = f"n,,n={user},r={base64.b64encode(os.urandom(12)).decode()}"
        s.sendall(b"AUTH SCRAM-SHA-256 " + base64.b64encode(first.encode()) + b"\r\n")
        answer = reply()
        assert answer.startswith(b"334 ")
        s.sendall(b"*\r\n")
        assert reply().startswith(b"501")
    return dict(kv.split("=", 1) for kv in base64.b64decode(answer[4:].strip()).decode().split(","))


def test_scram_salt_of_an_unknown_user_depends_on_the_server_secret(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        server.add_user(ALICE, PW)
        real = scram_first(server, ALICE)
        fake = scram_first(server, "nobody@example.org")
        # The same shape as a verifier made now: iteration count and salt length (RFC 7677 §4: at least 4096).
        assert fake["i"] == real["i"] == "4096"
        assert len(base64.b64decode(fake["s"])) == len(base64.b64decode(real["s"])) == 16
        assert scram_first(server, "nobody@example.org")["s"] == fake["s"]  # asking twice tells nothing
        other = start_server(tmp_path / "other-data")  # another installation, with its own secret
        try:
            assert scram_first(other, "nobody@example.org")["s"] != fake["s"]
        finally:
            other.stop()
        secret = Path(server.config.data_path) / "server-secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
        server = restart(server)  # the same installation after a restart: the same answers
        assert scram_first(server, "nobody@example.org")["s"] == fake["s"]
        assert scram_first(server, ALICE)["s"] == real["s"]
    finally:
        server.stop()
