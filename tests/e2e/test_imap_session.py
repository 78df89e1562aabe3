"""The IMAP session against the real server (imap/session.py, imap/framer.py): BAD never drops the
connection, the command and literal limits (synchronizing, LITERAL+, TOOBIG), too many errors, pipelined
and byte-by-byte input, and one whole imaplib session."""

# ruff: noqa: F811 (the fixtures imported from ann_support are test arguments: pytest's way)
from __future__ import annotations

import imaplib
from typing import Any

from ann_support import ADDR, PW, imap, raw, server_overrides, srv  # noqa: F401 (fixtures)
from imap_support import Raw, fill, message


def client(server: Any) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=10)
    c.login(ADDR, PW)
    return c


def test_bad_syntax_never_drops_the_session(imap: Any) -> None:
    r = raw(imap)
    assert r.cmd("a FROB")[-1] == b"a BAD Unknown command FROB\r\n"
    assert r.cmd('a LOGIN "unterminated')[-1].startswith(b"a BAD")
    r.send(b"+++\r\n")
    assert r.line().startswith(b"* BAD")
    r.send(b"x " + b"A" * 70000 + b"\r\n")  # over limits.imap_command_length (64 KiB)
    assert r.line().startswith(b"x BAD Command too long")
    assert r.cmd("b FETCH 1 FLAGS")[-1].startswith(b"b BAD")  # not selected
    assert r.cmd("c NOOP") == [b"c OK NOOP completed\r\n"]


def test_long_commands_up_to_the_command_limit(imap: Any) -> None:
    """Issue 15 item 6: RFC 2971 §3.3 allows 30 field-value pairs with values of 1024 octets, one ID command of
    about 31 KB; a SEARCH with hundreds of keys is one long line too. The IMAP command limit (64 KiB,
    limits.imap_command_length) rules, not the 8 KiB limits.line_length of SMTP and POP3."""
    fill(imap, ADDR, PW, 3)
    r = raw(imap)
    pairs = " ".join(f'"field{i:02d}" "{chr(65 + i % 26) * 1024}"' for i in range(30))
    line = f"a ID ({pairs})"
    assert len(line) > 30 * 1024
    lines = r.cmd(line)
    assert lines[0].startswith(b'* ID ("name" "Postroom"') and lines[-1] == b"a OK ID completed\r\n"
    r.cmd("b SELECT INBOX")
    keys = " ".join(f"UNKEYWORD $never{i:03d}" for i in range(500))  # every message matches every key
    assert len(keys) > 8192
    assert r.cmd(f"c SEARCH {keys}") == [b"* SEARCH 1 2 3\r\n", b"c OK SEARCH completed\r\n"]
    # Over the limit: a clear BAD, and the session goes on.
    r.send(b"d SEARCH " + b"ALL " * 20000 + b"\r\n")
    assert r.line() == b"d BAD Command too long\r\n"
    assert r.cmd("e NOOP") == [b"e OK NOOP completed\r\n"]


def test_long_lines_inside_idle_and_authenticate(imap: Any) -> None:
    """IDLE's DONE line and AUTHENTICATE's response lines are read with limits of their own (session.py)."""
    import base64

    r = raw(imap)
    r.send(b"i IDLE\r\n")
    assert r.line() == b"+ idling\r\n"
    r.send(b"x" * 5000 + b"\r\n")  # longer than any DONE line needs to be
    assert r.line() == b"i BAD Line too long\r\n"
    assert r.cmd("n NOOP") == [b"n OK NOOP completed\r\n"]
    a = Raw(imap.port("imap"))
    a.send(b"a AUTHENTICATE PLAIN\r\n")
    assert a.line() == b"+ \r\n"
    # A response line longer than limits.line_length (8 KiB) is within the AUTHENTICATE line limit.
    a.send(base64.b64encode(b"\0" + ADDR.encode() + b"\0" + b"x" * 9000) + b"\r\n")
    assert a.line() == b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    a.send(b"b AUTHENTICATE PLAIN\r\n")
    assert a.line() == b"+ \r\n"
    a.send(b"A" * 70000 + b"\r\n")
    assert a.line() == b"b BAD Line too long\r\n"
    assert a.cmd("c NOOP") == [b"c OK NOOP completed\r\n"]


def test_too_many_errors_says_bye(imap: Any) -> None:
    r = raw(imap)
    lines: list[bytes] = []
    r.send(b"".join(b"e%d FROB\r\n" % i for i in range(25)))
    while True:
        try:
            lines.append(r.line())
        except (ConnectionError, OSError):
            break
    assert lines[-1] == b"* BYE Too many errors\r\n"


def test_literals_sync_nonsync_and_too_big(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.send(b"a LOGIN {15}\r\n")
    assert r.line() == b"+ Ready for literal data\r\n"
    r.send(ADDR.encode() + b" {" + str(len(PW)).encode() + b"+}\r\n" + PW.encode() + b"\r\n")
    assert r.line().startswith(b"a OK ")
    r.send(b"b APPEND INBOX {999999999999}\r\n")
    assert r.line().startswith(b"b NO [TOOBIG]")
    r.send(b"c APPEND INBOX {99999999999+}\r\n")  # the client will send it anyway: too big to wait for
    assert r.line().startswith(b"c NO [TOOBIG]")


def test_imaplib_end_to_end(imap: Any) -> None:
    fill(imap, ADDR, PW, 3)
    c = client(imap)
    assert c.select("INBOX") == ("OK", [b"3"])
    typ, data = c.fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and data[0][1] == b"Subject: note 1\r\n\r\n"  # type: ignore[index]
    assert c.search(None, "SUBJECT", '"note 2"') == ("OK", [b"2"])
    assert c.uid("SEARCH", "ALL") == ("OK", [b"1 2 3"])
    assert c.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert c.expunge() == ("OK", [b"1"])
    assert c.create("Box")[0] == "OK"
    assert c.copy("1", "Box")[0] == "OK"
    assert c.uid("MOVE", "3", "Box")[0] == "OK"
    assert c.status("Box", "(MESSAGES)") == ("OK", [b'"Box" (MESSAGES 2)'])
    assert c.rename("Box", "Box2")[0] == "OK"
    assert c.subscribe("Box2")[0] == "OK"
    assert b'"Box2"' in b"".join(c.lsub()[1])  # type: ignore[arg-type]
    assert c.unsubscribe("Box2")[0] == "OK"
    assert c.namespace()[0] == "OK"
    assert c.check()[0] == "OK"
    assert c.close()[0] == "OK"
    assert c.delete("Box2")[0] == "OK"
    assert c.append("INBOX", "(\\Seen)", imaplib.Time2Internaldate(1700000000), message(9))[0] == "OK"
    assert c.logout()[0] == "BYE"


def test_string_literal_limit_is_smaller_than_append(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.send(b"a LOGIN {1000000}\r\n")
    assert r.line().startswith(b"a NO [TOOBIG]")
    assert r.cmd("b NOOP") == [b"b OK NOOP completed\r\n"]


SCRIPT = (b"p1 LOGIN ann@example.org {10+}\r\nann-secret\r\np2 SELECT INBOX\r\n"
          b"p3 APPEND INBOX (\\Seen) {14+}\r\nSubject: x\r\n\r\n\r\np4 NOOP\r\np5 UID FETCH 1 (FLAGS RFC822.SIZE)\r\n"
          b"p6 LOGOUT\r\n")


def _run_script(imap: Any, chunks: list[bytes]) -> list[bytes]:
    import socket as socket_mod

    r = Raw(imap.port("imap"))
    r.sock.setsockopt(socket_mod.IPPROTO_TCP, socket_mod.TCP_NODELAY, 1)
    for chunk in chunks:
        r.send(chunk)
    lines = []
    while True:
        line = r.line()
        lines.append(line)
        if line.startswith(b"p6 "):
            return [x for x in lines if not x.startswith(b"* ")] + [x for x in lines if x.startswith(b"* 1 FETCH")]


def test_pipelined_and_byte_by_byte_input_give_the_same_answers(imap: Any) -> None:
    whole = _run_script(imap, [SCRIPT])
    assert [x.split(b" ")[:2] for x in whole[:6]] == [[b"p%d" % i, b"OK"] for i in range(1, 7)]
    assert whole[-1] == b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) RFC822.SIZE 14)\r\n"
    one_by_one = _run_script(imap, [SCRIPT[i:i + 1] for i in range(len(SCRIPT))])
    assert [x.split(b" ")[:2] for x in one_by_one] == [x.split(b" ")[:2] for x in whole]
