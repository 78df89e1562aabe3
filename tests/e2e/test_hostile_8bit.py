"""Issue 11 item 4: 8-bit bytes in command arguments get the protocol's error reply, never a traceback.

Mailbox names that are not UTF-8 (or not modified UTF-7) reach the store in every IMAP command that takes one;
they used to end in `NO [SERVERBUG]` with a logged traceback each time (log flooding). The rule of the three
dispatchers ("a client input error is never logged as a traceback") is checked here the same way for IMAP,
POP3 and SMTP: every command of each protocol with 8-bit bytes in each argument position, over a real socket.
"""

from __future__ import annotations

import base64
import logging
import random
import socket
from typing import Any

import pytest
from imap_support import Raw, fill, wire_imap

ADDR = "ann@example.org"
PW = "ann-secret"

# Invalid UTF-8 (a lone 0xff, a truncated sequence, an encoded surrogate, an overlong NUL), and modified UTF-7
# that is broken or hides 8-bit bytes (RFC 3501 §5.1.3).
NOT_UTF8 = [b'"\xff"', b'"a\xc3"', b'"\xed\xa0\x80"', b'"\xc0\x80x"', b"{2+}\r\n\xff\xfe", b'"&-x\xff"',
            b'"INBOX/\xff"']
NOT_MUTF7 = [b'"&Jjo"', b'"&2D0-"', b'"&AGE-"']  # unterminated; a lone surrogate; "a" that must not be encoded
NAME_COMMANDS = [b"CREATE %s", b"SELECT %s", b"EXAMINE %s", b"STATUS %s (MESSAGES)", b"DELETE %s",
                 b"RENAME %s x", b"RENAME INBOX %s", b"SUBSCRIBE %s", b"UNSUBSCRIBE %s", b'LIST "" %s',
                 b'LIST %s "*"', b'LSUB "" %s', b'LIST "" (%s) RETURN (STATUS (MESSAGES))', b"COPY 1 %s",
                 b"MOVE 1 %s", b"UID COPY 1 %s", b"UID MOVE 1 %s", b"APPEND %s {1+}\r\nx"]
# RFC 5530 §3: CANNOT, "the operation violates some invariant of the server", for a name the server cannot
# store; a name that is not even valid syntax (8-bit outside a literal, RFC 9051 §9 "quoted") may be BAD.
ACCEPTED = (b" NO [CANNOT] ", b" BAD ", b" NO [NONEXISTENT] ", b" NO [TRYCREATE] ")


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}, "limits": {"errors_per_session": 100000}}


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize("rev2", [False, True], ids=["rev1", "rev2"])
def test_imap_8bit_mailbox_names(monkeypatch: pytest.MonkeyPatch, server: Any, caplog: pytest.LogCaptureFixture,
                                 rev2: bool) -> None:
    wire_imap(monkeypatch)
    fill(server, ADDR, PW, 2)
    r = Raw(server.port("imap"))
    r.login(ADDR, PW)
    if rev2:
        assert r.cmd("e ENABLE IMAP4rev2")[-1].startswith(b"e OK")
    before = r.cmd('y LIST "" "*"')
    caplog.set_level(logging.INFO)
    for name in NOT_UTF8 + ([] if rev2 else NOT_MUTF7):
        for i, template in enumerate(NAME_COMMANDS):
            assert r.cmd("s SELECT INBOX")[-1].startswith(b"s OK")
            line = b"t%d " % i + template % name
            tagged = r.cmd(line)[-1]
            assert tagged.startswith(b"t%d " % i) and any(c in tagged for c in ACCEPTED), (line, tagged)
    # The session is still usable and nothing was created under a broken name.
    assert r.cmd('z LIST "" "*"')[:-1] == before[:-1]
    assert _tracebacks(caplog) == []


def _imap_lines(rnd: random.Random) -> list[bytes]:
    junk = [b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xfe\xff", b"a\xe9b", b"&\xff-"]
    templates = [b"LOGIN %s %s", b"AUTHENTICATE %s", b"ID (%s %s)", b"ENABLE %s", b"SELECT %s", b"STATUS %s (%s)",
                 b"FETCH 1 (BODY[HEADER.FIELDS (%s)])", b"FETCH 1 %s", b"STORE 1 +FLAGS (%s)",
                 b"STORE 1 +FLAGS %s", b"SEARCH KEYWORD %s", b"SEARCH HEADER %s %s", b"SEARCH TEXT %s",
                 b"SEARCH CHARSET %s TEXT x", b"SEARCH SUBJECT {%d+}\r\n%s", b"UID SEARCH %s", b"%s",
                 b"NOOP %s", b"LIST %s %s", b"NAMESPACE %s", b"IDLE %s", b"COPY %s x", b"APPEND INBOX (%s) {1+}\r\nx",
                 b"UID EXPUNGE %s", b"CAPABILITY %s"]
    out = []
    for t in templates:
        for _ in range(6):
            n = t.count(b"%")
            args = []
            for _ in range(n):
                a = rnd.choice(junk) * rnd.randint(1, 3)
                args.append(a)
            if b"{%d+}" in t:
                args = [len(args[1])] + args[1:] if n == 2 else args  # type: ignore[list-item]
                line = t % (len(args[-1]), args[-1])
            else:
                line = t % tuple(args) if n else t
            out.append(line)
    return out


def test_imap_8bit_arguments_fuzz(monkeypatch: pytest.MonkeyPatch, server: Any,
                                  caplog: pytest.LogCaptureFixture) -> None:
    wire_imap(monkeypatch)
    fill(server, ADDR, PW, 2)
    caplog.set_level(logging.INFO)
    rnd = random.Random(11)
    lines = _imap_lines(rnd)
    # Before login (LOGIN/AUTHENTICATE with 8-bit names and passwords), then after it in the selected state.
    r = Raw(server.port("imap"))
    for i, line in enumerate(lines):
        tagged = r.cmd(b"p%d " % i + line)[-1]
        if line.startswith(b"AUTHENTICATE"):
            continue  # a continuation was asked: the next line answers it
        assert b"SERVERBUG" not in tagged, (line, tagged)
    r = Raw(server.port("imap"))
    r.login(ADDR, PW)
    for i, line in enumerate(lines):
        r.cmd("s SELECT INBOX")
        if line.startswith((b"LOGIN", b"AUTHENTICATE", b"IDLE")):
            continue
        out = r.cmd(b"q%d " % i + line)
        assert b"SERVERBUG" not in out[-1], (line, out)
    assert _tracebacks(caplog) == []


def _pop3(server: Any) -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", server.port("pop3")), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"+OK")
    return sock, f


def test_pop3_8bit_arguments_fuzz(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    from postroom.store.api import AppendRequest

    user = server.add_user(ADDR, PW)
    inbox = server.run(server.store.get_mailbox(user.id, "INBOX"))
    server.run(server.store.append(inbox.id, AppendRequest(raw=b"Subject: x\r\n\r\nhi\r\n")))
    caplog.set_level(logging.INFO)
    rnd = random.Random(4)
    junk = [b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"a\xe9b", b"1\xff", b"\xff 1"]
    verbs = [b"USER", b"PASS", b"APOP", b"AUTH", b"AUTH PLAIN", b"STAT", b"LIST", b"UIDL", b"RETR", b"TOP",
             b"TOP 1", b"DELE", b"NOOP", b"RSET", b"CAPA", b"STLS", b"\xff", b"US\xe9R"]
    for logged_in in (False, True):
        sock, f = _pop3(server)
        if logged_in:
            sock.sendall(f"USER {ADDR}\r\nPASS {PW}\r\n".encode())
            assert f.readline().startswith(b"+OK") and f.readline().startswith(b"+OK")
        for verb in verbs:
            for _ in range(4):
                arg = rnd.choice(junk)
                if verb == b"AUTH PLAIN":
                    arg = base64.b64encode(b"\0" + arg + b"\0" + arg)
                sock.sendall(verb + b" " + arg + b"\r\n")
                reply = f.readline()
                if reply.startswith(b"+ "):  # a SASL continuation: cancel it (RFC 5034 §4)
                    sock.sendall(b"*\r\n")
                    reply = f.readline()
                assert reply.startswith((b"+OK", b"-ERR")), (verb, arg, reply)
                if reply.startswith(b"+OK") and verb in (b"LIST", b"UIDL", b"RETR", b"TOP", b"TOP 1", b"CAPA"):
                    while f.readline() not in (b".\r\n", b""):
                        pass
        sock.close()
    assert _tracebacks(caplog) == []


def test_smtp_8bit_arguments_fuzz(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    server.add_user(ADDR, PW)
    caplog.set_level(logging.INFO)
    rnd = random.Random(5)
    junk = [b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"a\xe9b", b"<\xff@example.org>", b"<ann\xff@example.org>",
            b"<ann@exa\xffmple.org>", b"<ann@example.org> SIZE=\xff", b"<ann@example.org> BODY=8BIT\xff",
            b"<ann@example.org> \xff=1", b"<\xc3\xa9@example.org> SMTPUTF8", b"<ann@example.org> RET=\xff"]
    verbs = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"VRFY", b"EXPN", b"HELP", b"NOOP", b"AUTH",
             b"AUTH PLAIN", b"BDAT", b"\xff", b"RSET"]
    for listener in ("smtp", "submission"):
        sock = socket.create_connection(("127.0.0.1", server.port(listener)), timeout=10)
        f = sock.makefile("rb")

        def reply(f: Any = f) -> bytes:
            while True:
                line: bytes = f.readline()
                if line[3:4] != b"-":
                    return line

        assert reply().startswith(b"220")
        sock.sendall(b"EHLO client.test\r\n")
        assert reply().startswith(b"250")
        for verb in verbs:
            for _ in range(5):
                arg = rnd.choice(junk)
                if verb == b"AUTH PLAIN":
                    arg = base64.b64encode(b"\0" + arg + b"\0" + arg)
                sock.sendall(verb + b" " + arg + b"\r\n")
                line = reply()
                if line.startswith(b"334"):
                    sock.sendall(b"*\r\n")  # RFC 4954 §4: cancel the exchange
                    line = reply()
                assert line[:1] in (b"2", b"4", b"5") and not line.startswith(b"451"), (verb, arg, line)
                if line.startswith(b"421"):
                    break
            sock.sendall(b"RSET\r\n")
            if not reply().startswith(b"250"):
                break
        sock.close()
    assert _tracebacks(caplog) == []
