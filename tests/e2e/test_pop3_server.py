"""POP3 end to end against the real server: Python's poplib, a raw socket (pipelining, STLS injection, SASL
PLAIN and SCRAM-SHA-256, limits), exclusive access, durability of QUIT, and the change feed IMAP will read."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import poplib
import socket
import ssl
import time
from typing import Any

import pytest

from postroom.store.api import AppendRequest, ChangeKind

ADDR = "alice@example.org"
PW = "alice pass word"


def raw_message(i: int) -> bytes:
    return (f"From: bob@example.org\r\nTo: {ADDR}\r\nSubject: message {i}\r\n\r\n"
            f"line one of {i}\r\n.a line starting with a dot\r\n..two\r\n.\r\nend {i}\r\n").encode()


def fill(server: Any, count: int = 3, addr: str = ADDR, pw: str = PW) -> tuple[Any, int, list[bytes]]:
    user = server.add_user(addr, pw)
    inbox = server.run(server.store.get_mailbox(user.id, "INBOX"))
    msgs = [raw_message(i) for i in range(1, count + 1)]
    server.run(server.store.append_many(inbox.id, [AppendRequest(raw=m) for m in msgs]))
    return user, inbox.id, msgs


def uids(server: Any, mailbox_id: int) -> list[int]:
    return [m.uid for m in server.run(server.store.list_messages(mailbox_id))]


def pop3s(server: Any) -> poplib.POP3_SSL:
    return poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=server.tls_client_context(), timeout=10)


class Raw:
    """A tiny line client over a socket (plain or TLS)."""

    def __init__(self, server: Any, tls: bool = False) -> None:
        listener = "pop3s" if tls else "pop3"
        sock = socket.create_connection(("127.0.0.1", server.port(listener)), timeout=10)
        self.sock: socket.socket = server.tls_client_context().wrap_socket(sock) if tls else sock
        self.buf = b""
        assert self.line().startswith(b"+OK")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def multi(self) -> list[bytes]:
        out = []
        while (line := self.line()) != b".":
            out.append(line)
        return out

    def cmd(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


# --- poplib -------------------------------------------------------------------------------------------


def test_poplib_every_command_and_durable_delete(server: Any) -> None:
    _, inbox, msgs = fill(server)
    p = pop3s(server)
    caps = p.capa()
    assert {"TOP", "UIDL", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION"} <= set(caps)
    assert "STLS" not in caps and "EXPIRE" not in caps and "LOGIN-DELAY" not in caps
    assert caps["SASL"] == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
    p.user(ADDR)
    assert p.pass_(PW).startswith(b"+OK")
    assert p.stat() == (3, sum(map(len, msgs)))
    assert p.list()[1] == [b"%d %d" % (i, len(m)) for i, m in enumerate(msgs, 1)]
    uidl = p.uidl()[1]
    assert len({u.split()[1] for u in uidl}) == 3
    for i, m in enumerate(msgs, 1):
        resp, lines, octets = p.retr(i)
        assert b"\r\n".join(lines) + b"\r\n" == m  # poplib un-stuffs: exact bytes survive the trip
        assert resp == b"+OK %d octets" % len(m)
    head = p.top(2, 1)[1]
    assert head == [b"From: bob@example.org", b"To: " + ADDR.encode(), b"Subject: message 2", b"", b"line one of 2"]
    p.dele(1)
    p.dele(3)
    with pytest.raises(poplib.error_proto, match="already deleted"):
        p.dele(1)
    with pytest.raises(poplib.error_proto, match="is deleted"):
        p.retr(1)
    with pytest.raises(poplib.error_proto, match="no such message"):
        p.retr(4)
    p.rset()
    assert p.stat()[0] == 3
    p.dele(2)
    p.noop()
    assert uids(server, inbox) == [1, 2, 3]  # DELE only marks
    assert p.quit().startswith(b"+OK")
    assert uids(server, inbox) == [1, 3]  # +OK came after the durable removal

    # The same message keeps its UIDL in the next session.
    p = pop3s(server)
    p.user(ADDR)
    p.pass_(PW)
    assert p.uidl()[1] == [b"1 " + uidl[0].split()[1], b"2 " + uidl[2].split()[1]]
    p.quit()


def test_octet_counts_are_the_octets_sent(server: Any) -> None:
    # RFC 1939 §5 (LIST/STAT: "the exact size of the message in octets") and §11: a message stored with bare
    # LF line ends (an IMAP APPEND or an import may store one) is sent with CRLF, so its size is what is sent.
    bare = b"From: bob@example.org\nTo: alice@example.org\nSubject: LF\n\nline one\nline 2\n"
    assert (len(bare), bare.count(b"\n")) == (73, 6)
    crlf = raw_message(1)
    user = server.add_user(ADDR, PW)
    inbox = server.run(server.store.get_mailbox(user.id, "INBOX"))
    server.run(server.store.append_many(inbox.id, [AppendRequest(raw=bare), AppendRequest(raw=crlf)]))
    p = pop3s(server)
    p.user(ADDR)
    p.pass_(PW)
    assert p.list()[1] == [b"1 79", b"2 %d" % len(crlf)]
    assert p.list(1) == b"+OK 1 79"
    assert p.stat() == (2, 79 + len(crlf))
    resp, lines, octets = p.retr(1)
    assert resp == b"+OK 79 octets"
    assert octets == 79  # poplib counts what arrived (lines with their CRLF, un-stuffed)
    assert b"\r\n".join(lines) + b"\r\n" == bare.replace(b"\n", b"\r\n")
    assert p.retr(2)[0] == b"+OK %d octets" % len(crlf)
    p.quit()


def test_plain_listener_needs_stls_before_user(server: Any) -> None:
    fill(server, 1)
    p = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps and caps["SASL"] == ["SCRAM-SHA-256"]
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.user(ADDR)
    p.stls(server.tls_client_context())
    caps = p.capa()
    assert "STLS" not in caps and "USER" in caps
    p.user(ADDR)
    p.pass_(PW)
    assert p.stat()[0] == 1
    p.quit()


@pytest.mark.parametrize("server_overrides", [{"auth": {"max_failures_per_ip": 100}}])  # no delays here
def test_wrong_password_and_lockout(server: Any) -> None:
    fill(server, 1)
    p = pop3s(server)
    for _ in range(5):  # auth.max_failures_per_user, from this one address
        p.user(ADDR)
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
            p.pass_("wrong")
    p.user(ADDR)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_(PW)  # this (user, address) pair is refused: the right password fails the same way
    p.quit()


def test_second_session_is_in_use_and_drop_deletes_nothing(server: Any) -> None:
    _, inbox, _ = fill(server, 2)
    first = pop3s(server)
    first.user(ADDR)
    first.pass_(PW)
    first.dele(1)
    second = pop3s(server)
    second.user(ADDR)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PW)
    first.sock.close()  # dropped without QUIT
    first.file.close()
    # The lock goes with the session; the second client may now log in, and nothing was deleted.
    for _ in range(100):
        second.user(ADDR)
        try:
            second.pass_(PW)
            break
        except poplib.error_proto as exc:
            assert b"IN-USE" in exc.args[0]
    assert second.stat()[0] == 2
    second.quit()
    assert uids(server, inbox) == [1, 2]


def test_deletions_reach_the_change_feed(server: Any) -> None:
    user, inbox, _ = fill(server, 3)
    sub = server.run(_subscribe(server.store, user.id))
    p = pop3s(server)
    p.user(ADDR)
    p.pass_(PW)
    p.dele(2)
    p.quit()
    changes = server.run(_drain(sub))
    assert [(c.kind, c.mailbox_id, c.uid) for c in changes] == [(ChangeKind.EXPUNGE, inbox, 2)]


async def _subscribe(store: Any, user_id: int) -> Any:
    return store.hub.subscribe(user_id)


async def _drain(sub: Any) -> list[Any]:
    out = []
    while (c := sub.get_nowait()) is not None:
        out.append(c)
    sub.close()
    return out


# --- raw protocol -------------------------------------------------------------------------------------


def test_pipelined_commands_answered_in_order(server: Any) -> None:
    _, _, msgs = fill(server, 3)
    c = Raw(server, tls=True)
    c.send(f"CAPA\r\nUSER {ADDR}\r\nPASS {PW}\r\nSTAT\r\nRETR 1\r\nRETR 2\r\nRETR 3\r\nLIST 9\r\nDELE 3\r\n"
           "UIDL 3\r\nQUIT\r\n".encode())
    assert c.line().startswith(b"+OK") and b"PIPELINING" in c.multi()
    assert c.line() == b"+OK send PASS"
    assert c.line().startswith(b"+OK alice@example.org has 3 messages")
    assert c.line() == b"+OK 3 %d" % sum(map(len, msgs))
    for m in msgs:
        assert c.line() == b"+OK %d octets" % len(m)
        body = b"\r\n".join(c.multi()) + b"\r\n"
        assert body == m.replace(b"\r\n.", b"\r\n..")
    assert c.line() == b"-ERR no such message"
    assert c.line() == b"+OK message 3 deleted"
    assert c.line() == b"-ERR message 3 is deleted"
    assert c.line().startswith(b"+OK") and c.closed()


def test_read_ahead_serves_exact_bodies_in_any_order(server: Any) -> None:
    # The session reads bodies ahead (pop3/session.py invariant 6): more messages than one read-ahead holds
    # (READ_AHEAD_COUNT, READ_AHEAD_OCTETS), one larger than READ_AHEAD_OCTETS, one with bare LFs, dot lines;
    # read in order, out of order and pipelined, each reply is the message as RFC 1939 §3 sends it. A message
    # removed by another session before its body was read is "-ERR ... removed"; nothing else changes.
    from postroom.pop3.session import READ_AHEAD_COUNT, READ_AHEAD_OCTETS

    user = server.add_user(ADDR, PW)
    inbox = server.run(server.store.get_mailbox(user.id, "INBOX"))
    msgs = [raw_message(i) for i in range(1, 2 * READ_AHEAD_COUNT + 10)]
    msgs[5] = b"Subject: big\r\n\r\n" + b".x\r\n" * (READ_AHEAD_OCTETS // 3 + 1000)
    msgs[6] = b"Subject: LF\n\n.dot\nline\n"
    server.run(server.store.append_many(inbox.id, [AppendRequest(raw=m) for m in msgs]))
    sent = [m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for m in msgs]  # as sent: CRLF line ends
    p = pop3s(server)
    p.user(ADDR)
    p.pass_(PW)
    gone = len(msgs) - 2  # not read ahead by the time it is asked for: removed first
    infos = server.run(server.store.list_messages(inbox.id))
    server.run(server.store.remove_messages(inbox.id, [infos[gone - 1].uid]))
    order = [*range(1, 10), *range(len(msgs), 20, -1), 3, 2, *range(10, 21)]
    for n in order:
        if n == gone:
            with pytest.raises(poplib.error_proto, match=f"message {n} was removed by another session"):
                p.retr(n)
            continue
        resp, lines, octets = p.retr(n)
        assert resp == b"+OK %d octets" % len(sent[n - 1]) and octets == len(sent[n - 1])
        assert b"\r\n".join(lines) + b"\r\n" == sent[n - 1]
    p.quit()
    del sent[gone - 1]  # a new session's maildrop: the numbers after it move down by one (RFC 1939 §5)
    order = [n if n < gone else n - 1 for n in order if n != gone]
    c = Raw(server, tls=True)
    c.send(f"USER {ADDR}\r\nPASS {PW}\r\n".encode() + b"".join(b"RETR %d\r\nTOP %d 0\r\n" % (n, n) for n in order))
    assert c.line() == b"+OK send PASS" and c.line().startswith(b"+OK alice@example.org has")
    for n in order:
        assert c.line() == b"+OK %d octets" % len(sent[n - 1])
        assert b"\r\n".join(c.multi()) + b"\r\n" == sent[n - 1].replace(b"\r\n.", b"\r\n..")
        assert c.line() == b"+OK top of message follows"
        assert b"\r\n".join(c.multi()) + b"\r\n" == sent[n - 1].split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    c.close()


def test_stls_with_pipelined_plaintext_is_refused(server: Any) -> None:
    c = Raw(server)
    c.send(b"STLS\r\nCAPA\r\n")
    assert c.line().startswith(b"-ERR")
    assert c.line().startswith(b"+OK Capability")  # the pipelined CAPA, answered in plaintext
    assert b"USER" not in c.multi()
    c.close()


def test_sasl_plain_initial_response_and_challenge(server: Any) -> None:
    fill(server, 1)
    c = Raw(server, tls=True)
    token = base64.b64encode(b"\0" + ADDR.encode() + b"\0" + PW.encode())
    assert c.cmd(b"AUTH PLAIN " + token).startswith(b"+OK alice@example.org has 1 messages")
    c.cmd("QUIT")
    c = Raw(server, tls=True)
    assert c.cmd("AUTH PLAIN") == b"+ "
    assert c.cmd("*") == b"-ERR authentication cancelled"
    assert c.cmd("AUTH PLAIN") == b"+ "
    assert c.cmd(base64.b64encode(b"\0" + ADDR.encode() + b"\0nope")) == b"-ERR [AUTH] Authentication failed"
    assert c.cmd("AUTH LOGIN") == b"+ " + base64.b64encode(b"Username:")
    assert c.cmd(base64.b64encode(ADDR.encode())) == b"+ " + base64.b64encode(b"Password:")
    assert c.cmd(base64.b64encode(PW.encode())).startswith(b"+OK")
    c.cmd("QUIT")


def test_sasl_scram_sha_256_over_plain_connection(server: Any) -> None:
    fill(server, 1)
    c = Raw(server)  # SCRAM never exposes the password, so it is offered without TLS
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={ADDR},r={nonce}"
    challenge = c.cmd(b"AUTH SCRAM-SHA-256 " + base64.b64encode(f"n,,{first_bare}".encode()))
    assert challenge.startswith(b"+ ")
    server_first = base64.b64decode(challenge[2:]).decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", PW.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    final = c.cmd(base64.b64encode(f"{without_proof},p={proof}".encode()))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = b"v=" + base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest())
    assert final == b"+ " + base64.b64encode(expected)  # additional data with success, as a challenge
    assert c.cmd("").startswith(b"+OK alice@example.org has 1 messages")
    c.cmd("QUIT")


def test_malformed_input_gets_err_and_session_goes_on(server: Any) -> None:
    fill(server, 1)
    c = Raw(server, tls=True)
    assert c.cmd(b"NOOP " + b"x" * 10000) == b"-ERR line too long"
    assert c.cmd(b"\xff\xfe") == b"-ERR unknown command"
    assert c.cmd("APOP a b").startswith(b"-ERR APOP")
    assert c.cmd("STAT").startswith(b"-ERR STAT is not allowed")
    assert c.cmd(f"USER {ADDR}") == b"+OK send PASS"
    assert c.cmd(f"PASS {PW}").startswith(b"+OK")
    assert c.cmd("RETR").startswith(b"-ERR RETR needs")
    assert c.cmd("TOP 1").startswith(b"-ERR TOP needs")
    assert c.cmd("NOOP") == b"+OK"
    c.cmd("QUIT")


@pytest.mark.parametrize("server_overrides", [{"limits": {"errors_per_session": 3}}])
def test_too_many_errors_end_the_session(server: Any) -> None:
    c = Raw(server, tls=True)
    assert c.cmd("BAD") == b"-ERR unknown command"
    assert c.cmd("BAD") == b"-ERR unknown command"
    assert c.cmd("BAD") == b"-ERR too many errors, closing connection"
    assert c.closed()


@pytest.mark.parametrize("server_overrides", [{"pop3": {"login_delay_seconds": 3600, "expire": "never"}}])
def test_login_delay_and_expire_advertised_and_enforced(server: Any) -> None:
    fill(server, 1)
    p = pop3s(server)
    caps = p.capa()
    assert caps["LOGIN-DELAY"] == ["3600"] and caps["EXPIRE"] == ["NEVER"]
    p.user(ADDR)
    p.pass_(PW)
    p.quit()
    p = pop3s(server)
    p.user(ADDR)
    with pytest.raises(poplib.error_proto, match=r"\[LOGIN-DELAY\]"):
        p.pass_(PW)
    p.quit()


@pytest.mark.parametrize("server_overrides", [{"pop3": {"expire": "0"}}])
def test_expire_zero_removes_retrieved_messages_at_quit(server: Any) -> None:
    _, inbox, _ = fill(server, 3)
    p = pop3s(server)
    assert p.capa()["EXPIRE"] == ["0"]
    p.user(ADDR)
    p.pass_(PW)
    p.retr(2)
    p.top(3, 0)
    p.quit()
    assert uids(server, inbox) == [1, 3]


@pytest.mark.parametrize("server_overrides", [{"limits": {"pop3_idle_seconds": 0.3}}])
def test_idle_timeout_says_so_and_deletes_nothing(server: Any) -> None:
    _, inbox, _ = fill(server, 1)
    c = Raw(server, tls=True)
    c.cmd(f"USER {ADDR}")
    c.cmd(f"PASS {PW}")
    assert c.cmd("DELE 1").startswith(b"+OK")
    assert c.line().startswith(b"-ERR autologout")  # waits for the idle timer
    assert c.closed()
    assert uids(server, inbox) == [1]


def test_session_log_line(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    fill(server, 2)
    with caplog.at_level(logging.INFO, logger="postroom.net.session"):
        p = pop3s(server)
        p.user(ADDR)
        p.pass_(PW)
        p.retr(1)
        p.retr(2)
        p.dele(1)
        p.quit()
        for _ in range(200):
            lines = [r.getMessage() for r in caplog.records if "protocol=pop3" in r.getMessage()]
            if lines:
                break
            time.sleep(0.02)
    (line,) = lines
    assert f"user={ADDR}" in line and "retrieved=2" in line and "deleted=1" in line and "end=quit" in line
    assert "auth=USER" in line and "pass word" not in line
