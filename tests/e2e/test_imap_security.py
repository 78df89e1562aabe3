"""IMAP security with the default settings: LOGINDISABLED before TLS, STARTTLS (and its injection defence),
implicit TLS (imaps), lockout after repeated failures."""

from __future__ import annotations

import base64
import imaplib
import socket
from typing import Any

import pytest
from imap_support import Raw, wire_imap

ADDR = "ann@example.org"
PW = "ann-secret"


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


@pytest.fixture
def imap(server: Any) -> Any:
    server.add_user(ADDR, PW)
    return server


def test_login_disabled_before_tls(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert b"LOGINDISABLED" in r.greeting and b"AUTH=PLAIN" not in r.greeting
    assert b"AUTH=SCRAM-SHA-256" in r.greeting and b"STARTTLS" in r.greeting
    assert r.cmd(f"a LOGIN {ADDR} {PW}") == [b"a NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS\r\n"]
    token = base64.b64encode(f"\0{ADDR}\0{PW}".encode()).decode()
    assert r.cmd(f"b AUTHENTICATE PLAIN {token}")[-1].startswith(b"b NO [PRIVACYREQUIRED]")


def test_starttls_then_login_with_imaplib(imap: Any) -> None:
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=10)
    assert "LOGINDISABLED" in c.capabilities
    c.starttls(imap.tls_client_context())
    assert "LOGINDISABLED" not in c.capabilities and "STARTTLS" not in c.capabilities
    assert c.login(ADDR, PW)[0] == "OK"
    assert c.select("INBOX")[0] == "OK"
    c.logout()


def test_starttls_refuses_pipelined_plaintext(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.send(f"a STARTTLS\r\nb LOGIN {ADDR} {PW}\r\n".encode())
    assert r.line() == b"a BAD Plaintext pipelined after STARTTLS\r\n"
    assert r.line() == b"b NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS\r\n"


def test_starttls_twice_is_bad(imap: Any) -> None:
    ctx = imap.tls_client_context()
    sock = socket.create_connection(("127.0.0.1", imap.port("imap")), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"a STARTTLS\r\n")
    assert f.readline() == b"a OK Begin TLS negotiation now\r\n"
    tls = ctx.wrap_socket(sock)
    tf = tls.makefile("rb")
    tls.sendall(b"b STARTTLS\r\n")
    assert tf.readline() == b"b BAD TLS is already active\r\n"
    tls.sendall(b"c CAPABILITY\r\n")
    caps = tf.readline()
    assert b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps
    tls.close()


def test_imaps_login(imap: Any) -> None:
    c = imaplib.IMAP4_SSL("127.0.0.1", imap.port("imaps"), ssl_context=imap.tls_client_context(), timeout=10)
    assert "AUTH=PLAIN" in c.capabilities and "STARTTLS" not in c.capabilities
    assert c.login(ADDR, PW)[0] == "OK"
    assert c.logout()[0] == "BYE"


@pytest.mark.parametrize("server_overrides", [{"auth": {"max_failures_per_ip": 100}}])  # no delays here
def test_lockout_after_repeated_failures(imap: Any) -> None:
    ctx = imap.tls_client_context()
    r = Raw(imap.port("imaps"), ctx)
    for i in range(6):
        assert r.cmd(f"f{i} LOGIN {ADDR} wrong")[-1].startswith(b"f%d NO [AUTHENTICATIONFAILED]" % i)
    # the right password is refused too while this (user, address) pair is locked, with the same answer
    assert r.cmd(f"g LOGIN {ADDR} {PW}")[-1] == b"g NO [AUTHENTICATIONFAILED] Authentication failed\r\n"


def test_refused_command_literals_are_not_run(imap: Any) -> None:
    """Finding F1 (issue 15): a command past the 64 KiB command limit ends in LITERAL+ `{21+}` (RFC 7888 §4);
    the 21 octets the client sends without waiting are the literal's, so `x2 CREATE injected2` is data and never
    runs. The second form: many short lines that add up past the limit, each with a `{3+}` literal `abc`."""
    r = Raw(imap.port("imaps"), imap.tls_client_context())
    r.login(ADDR, PW)
    r.send(b'a6 SEARCH SUBJECT "' + b"y" * 70000 + b'" BODY {21+}\r\n' + b"x2 CREATE injected2\r\n" + b"\r\n")
    assert r.line() == b"a6 BAD Command too long\r\n"
    r.send(b"a7 SEARCH " + (b'SUBJECT "' + b"y" * 2000 + b'" SUBJECT {3+}\r\nabc') * 40 + b"\r\n")
    assert r.line() == b"a7 BAD Command too long\r\n"
    assert r.cmd("a8 NOOP") == [b"a8 OK NOOP completed\r\n"]
    assert r.cmd('a9 LIST "" "injected*"') == [b"a9 OK LIST completed\r\n"]
