"""Trickled connections expire (issue 11 item 8; net/connection.py invariant 7): a client sending one byte a
second used to restart the idle timer with every byte and hold its connection slot for ever. Now a command line
must be whole within `limits.command_deadline_seconds` of its first byte, and DATA / BDAT / literal bytes must
average `limits.min_data_rate` after `limits.data_rate_grace_seconds`; each protocol answers with its own
goodbye (SMTP `421 4.4.2`, RFC 5321 §4.5.3.2.7's code for a timeout; IMAP `* BYE`, RFC 9051 §7.1.5; POP3
`-ERR`) and the session's log line names the reason. The deadlines are small here so the tests are quick; the
client trickles for far longer than they are, so nothing depends on exact timing."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest

PW = "trickle-password"
USER = "tom@example.org"
TRICKLE_BYTES = 30  # at one byte a second: 30 s, ten times the command deadline


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    # Not whole seconds: a deadline never falls on the moment the next trickled byte arrives (a close with
    # that byte unread would be a reset, which can take the goodbye with it).
    return {"limits": {"command_deadline_seconds": 2.5, "min_data_rate": 500, "data_rate_grace_seconds": 1.5},
            "auth": {"allow_plaintext": True}}


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user(USER, PW)
    return server


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while marker not in out:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def trickle(sock: socket.socket, data: bytes, interval: float = 1.0) -> bytes:
    """Send `data` one byte every `interval` seconds; return what the server said meanwhile (stops when the
    server closes the connection)."""
    got = b""
    for i in range(len(data)):
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            break
        sock.settimeout(interval)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
        if got.endswith(b"\r\n"):
            break  # the goodbye: stop sending
    return got


def session_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "postroom.net.session"]


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [ln for ln in session_lines(caplog) if text in ln]
        if lines:
            return lines
        time.sleep(0.05)
    return []


def test_smtp_command_trickled_one_byte_a_second_gets_421(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.net.session")
    with socket.create_connection(("127.0.0.1", srv.port("smtp"))) as sock:
        read_until(sock, b"\r\n")
        got = trickle(sock, b"NOOP " + b"x" * TRICKLE_BYTES + b"\r\n")
    assert got.startswith(b"421 4.4.2 Command not received in time"), got
    assert wait_for_log(caplog, "timeout=command-deadline")


def test_smtp_data_trickled_gets_421(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.net.session")
    with socket.create_connection(("127.0.0.1", srv.port("smtp"))) as sock:
        read_until(sock, b"\r\n")
        sock.sendall(b"EHLO slow.test\r\nMAIL FROM:<s@slow.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % USER.encode())
        read_until(sock, b"354 ")
        got = trickle(sock, b"Subject: slow\r\n\r\n" + b"y" * TRICKLE_BYTES)
    assert got.startswith(b"421 4.4.2 Data arriving too slowly"), got
    assert wait_for_log(caplog, "timeout=min-data-rate")


def test_smtp_steady_client_is_not_cut(srv: Any) -> None:
    # A command in two halves, well inside the deadline, and a body at a few KB/s: both fine.
    with socket.create_connection(("127.0.0.1", srv.port("smtp"))) as sock:
        read_until(sock, b"\r\n")
        sock.sendall(b"EHLO ok.te")
        time.sleep(1)
        sock.sendall(b"st\r\nMAIL FROM:<s@ok.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % USER.encode())
        read_until(sock, b"354 ")
        sock.sendall(b"Subject: steady\r\n\r\n")
        for _ in range(4):
            sock.sendall(b"z" * 4000 + b"\r\n")
            time.sleep(0.5)
        sock.sendall(b".\r\nQUIT\r\n")
        out = read_until(sock, b"221 ")
    assert b"250 2.0.0 OK queued as" in out and b"421" not in out


def test_imap_command_trickled_gets_bye(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.net.session")
    with socket.create_connection(("127.0.0.1", srv.port("imap"))) as sock:
        read_until(sock, b"\r\n")
        got = trickle(sock, b"a1 NOOP" + b" " * TRICKLE_BYTES + b"\r\n")
    assert got.startswith(b"* BYE Command not received in time"), got
    assert wait_for_log(caplog, "timeout=command-deadline")


def test_imap_append_literal_trickled_gets_bye(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.net.session")
    with socket.create_connection(("127.0.0.1", srv.port("imap"))) as sock:
        read_until(sock, b"\r\n")
        sock.sendall(b"a1 LOGIN %s %s\r\n" % (USER.encode(), PW.encode()))
        read_until(sock, b"a1 OK")
        sock.sendall(b"a2 APPEND INBOX {1000}\r\n")
        read_until(sock, b"+ ")
        got = trickle(sock, b"Subject: slow\r\n\r\n" + b"y" * TRICKLE_BYTES)
    assert got.startswith(b"* BYE Literal data arriving too slowly"), got
    assert wait_for_log(caplog, "timeout=min-data-rate")


def test_imap_command_cut_by_literal_plus_literals_has_one_deadline(srv: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    # Attack on issue 11: each line after a literal had a deadline of its own, so a command cut into tiny
    # LITERAL+ literals (RFC 7888), each line sent just inside the deadline, lasted as long as the client liked,
    # before login too. Now the command as a whole must arrive within the deadline, one grace and its literal
    # bytes at the minimum rate (2.5 + 1.5 + 0.002 s here); 12 segments of 1.5 s would take 18 s.
    caplog.set_level(logging.INFO, logger="postroom.net.session")
    with socket.create_connection(("127.0.0.1", srv.port("imap"))) as sock:
        read_until(sock, b"\r\n")
        start = time.monotonic()
        sock.sendall(b"b XYZZY")
        got = b""
        for _ in range(12):
            time.sleep(1.5)
            try:
                sock.sendall(b" {1+}\r\nx")
            except OSError:
                break
            sock.settimeout(0.01)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            got += chunk
            if not chunk or b"BYE" in got:
                break
        got += read_until(sock, b"BYE", timeout=5)
        elapsed = time.monotonic() - start
    assert got.startswith(b"* BYE Command not received in time"), got
    assert elapsed < 12, elapsed  # cut after about 4 s, not after the client's 18 s
    assert wait_for_log(caplog, "timeout=command-deadline")


def test_pop3_command_trickled_gets_err(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.net.session")
    with socket.create_connection(("127.0.0.1", srv.port("pop3"))) as sock:
        read_until(sock, b"\r\n")
        got = trickle(sock, b"USER " + b"t" * TRICKLE_BYTES + b"\r\n")
    assert got.startswith(b"-ERR command not received in time"), got
    assert wait_for_log(caplog, "timeout=command-deadline")
