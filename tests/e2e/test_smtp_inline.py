"""SMTP commands answered from the connection's callback (smtp/session.py invariant 13, net/connection.py
invariant 12) over real sockets: the replies come in the order of the commands whatever the split of the
client's bytes (RFC 5321 §4.2, RFC 2920 §3.1), a message's data taken that way is stored byte-exact and still
held to the minimum data rate, a batch of replies larger than the inline bound is answered whole, and too
many errors still close the session.

Expected replies are RFC 5321's codes with the enhanced codes of RFC 3463 / RFC 2034; the stored message is
what the client sent below Return-Path and Received (RFC 5321 §4.4)."""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from typing import Any

import pytest
from smtp_support import inbox

MESSAGE = (b"From: Bob <bob@remote.test>\r\nTo: alice@example.org\r\nSubject: split\r\n\r\n"
           b"line one\r\n..a stuffed dot\r\n" + b"x" * 70 + b"\r\n") * 20
SCRIPT = (b"EHLO split.test\r\nNOOP\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.org>\r\n"
          b"RCPT TO:<nobody@example.org>\r\nDATA\r\n")
AFTER_DATA = MESSAGE + b".\r\nRSET\r\nBOGUS\r\nQUIT\r\n"
# RFC 5321 §4.1.1 / §4.2: EHLO 250, NOOP 250, MAIL 250, RCPT 250, unknown user 550 (5.1.1), DATA 354, the
# message 250, RSET 250, an unknown command 500 (5.5.1), QUIT 221.
CODES = [b"220", b"250", b"250", b"250", b"250", b"550", b"354", b"250", b"250", b"500", b"221"]


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"limits": {"errors_per_session": 5, "min_data_rate": 2000, "data_rate_grace_seconds": 1}}


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("alice@example.org", "correct horse battery")
    return server


def client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece leaves as its own segment
    return s


def read_replies(s: socket.socket, n: int) -> list[bytes]:
    """The next `n` replies (a multi-line reply is one), each as its last line."""
    got: list[bytes] = []
    buf = b""
    while len(got) < n:
        while b"\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return got
            buf += chunk
        line, _, buf = buf.partition(b"\r\n")
        if line[3:4] != b"-":
            got.append(line)
    assert buf == b""
    return got


def send_in_pieces(s: socket.socket, data: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in [*cuts, len(data)]:
        if cut > last:
            s.sendall(data[last:cut])
            time.sleep(0.002)  # let the piece arrive alone, so the server sees this split
            last = cut


def body_of(stored: bytes) -> bytes:
    m = re.match(rb"Return-Path: <[^>]*>\r\nReceived: [^\r]*\r\n(?:\t[^\r]*\r\n)*", stored)
    assert m is not None, stored[:300]
    return stored[m.end():]


@pytest.mark.parametrize("split", ["whole", "lines", "bytes", "random"])
def test_replies_in_order_and_message_exact_whatever_the_split(srv: Any, split: str) -> None:
    rng = random.Random(17)
    with client(srv.port("smtp")) as s:
        assert read_replies(s, 1)[0][:3] == b"220"
        data = SCRIPT + AFTER_DATA
        if split == "whole":
            cuts: list[int] = []
        elif split == "lines":
            cuts = [m.end() for m in re.finditer(rb"\r\n", data)]
        elif split == "bytes":
            cuts = list(range(1, len(SCRIPT) + 60))  # the commands and the start of the data, a byte at a time
        else:
            cuts = sorted(rng.sample(range(1, len(data)), 120))
        # The client pipelines everything up to DATA, waits for 354 (RFC 2920 §3.1), then sends the rest.
        cut_at = len(SCRIPT)
        send_in_pieces(s, SCRIPT, [c for c in cuts if c < cut_at])
        replies = read_replies(s, 6)
        send_in_pieces(s, AFTER_DATA, [c - cut_at for c in cuts if c > cut_at])
        replies += read_replies(s, 4)
    assert [r[:3] for r in [b"220", *replies]] == CODES
    assert replies[4].startswith(b"550 5.1.1")
    assert replies[8].startswith(b"500 5.5.")  # RFC 3463 §3.6: a command not recognised
    assert [body_of(m) for m in inbox(srv, "alice@example.org")] == [MESSAGE.replace(b"\r\n..", b"\r\n.")]


def test_commands_one_at_a_time_like_smtp_source(srv: Any) -> None:
    """Each command waits for its reply (Postfix's smtp-source, most clients): three messages on one session."""
    with client(srv.port("smtp")) as s:
        assert read_replies(s, 1)[0][:3] == b"220"
        s.sendall(b"EHLO one.test\r\n")
        assert read_replies(s, 1)[0][:3] == b"250"
        for n in range(3):
            for line, code in ((b"MAIL FROM:<bob@remote.test>\r\n", b"250 2.1.0"),
                               (b"RCPT TO:<alice@example.org>\r\n", b"250 2.1.5"), (b"DATA\r\n", b"354")):
                s.sendall(line)
                assert read_replies(s, 1)[0].startswith(code)
            s.sendall(b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (n, n))
            assert read_replies(s, 1)[0].startswith(b"250 2.0.0")
        s.sendall(b"QUIT\r\n")
        assert read_replies(s, 1)[0].startswith(b"221")
    assert [body_of(m) for m in inbox(srv, "alice@example.org")] == [
        b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(3)]


def test_more_replies_than_the_inline_bound_all_come_in_order(srv: Any) -> None:
    count = 20_000  # 120 KB of NOOPs in one burst: 280 KB of replies, past DRAIN_ABOVE (64 KiB) several times
    with client(srv.port("smtp")) as s:
        assert read_replies(s, 1)[0][:3] == b"220"
        got: list[list[bytes]] = []
        reader = threading.Thread(target=lambda: got.append(read_replies(s, count + 2)))
        reader.start()
        s.sendall(b"EHLO many.test\r\n" + b"NOOP\r\n" * count + b"QUIT\r\n")
        reader.join(60)
    assert not reader.is_alive()
    replies = got[0]
    assert len(replies) == count + 2
    assert replies[0][:3] == b"250" and replies[-1][:3] == b"221"
    assert set(replies[1:-1]) == {b"250 2.0.0 OK"}  # RFC 5321 §4.1.1.9


def test_too_many_errors_close_the_session(srv: Any) -> None:
    with client(srv.port("smtp")) as s:
        assert read_replies(s, 1)[0][:3] == b"220"
        s.sendall(b"EHLO err.test\r\n")
        assert read_replies(s, 1)[0][:3] == b"250"
        s.sendall(b"BOGUS\r\n" * 5 + b"NOOP\r\n")
        replies = read_replies(s, 6)
        assert s.recv(100) == b""  # closed after the 421
    # five errors (errors_per_session), then 421 4.7.0 and nothing more: the NOOP is not answered
    assert [r[:3] for r in replies] == [b"500"] * 5 + [b"421"]
    assert replies[-1].startswith(b"421 4.7.0")


def test_data_taken_line_by_line_is_held_to_the_minimum_rate(srv: Any) -> None:
    with client(srv.port("smtp")) as s:
        assert read_replies(s, 1)[0][:3] == b"220"
        for line, code in ((b"EHLO slow.test\r\n", b"250"), (b"MAIL FROM:<bob@remote.test>\r\n", b"250"),
                           (b"RCPT TO:<alice@example.org>\r\n", b"250"), (b"DATA\r\n", b"354")):
            s.sendall(line)
            assert read_replies(s, 1)[0][:3] == code
        # Whole lines (each answered from the callback) at 100 bytes/s, a twentieth of min_data_rate: the
        # session ends with 421 4.4.2 once the grace second has passed (net invariant 7).
        s.settimeout(0.5)
        reply = b""
        for _ in range(200):  # at most 100 s
            try:
                s.sendall(b"slow " * 9 + b"line\r\n")
            except OSError:
                break
            try:
                reply += s.recv(1000)
            except TimeoutError:
                continue
            if reply.endswith(b"\r\n") or not reply:
                break
        assert reply.startswith(b"421 4.4.2"), reply
    assert inbox(srv, "alice@example.org") == []
