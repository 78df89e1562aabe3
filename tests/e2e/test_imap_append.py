"""APPEND against the real server (imap/mailboxes.py, RFC 9051 §6.3.12): flags, date-time, APPENDUID
(UIDPLUS), the metadata stored with the message. Large literals: test_imap_append_stream.py; MULTIAPPEND:
test_imap_multiappend.py; CATENATE: test_imap_catenate.py."""

# ruff: noqa: F811 (the fixtures imported from ann_support are test arguments: pytest's way)
from __future__ import annotations

import re
from typing import Any

from ann_support import ADDR, PW, imap, raw, server_overrides, srv  # noqa: F401 (fixtures)
from imap_support import message

from postroom.mime.meta import compute_meta


def test_append_with_flags_date_and_appenduid(imap: Any) -> None:
    r = raw(imap)
    msg = message(7)
    r.send(b'a APPEND Drafts (\\Draft $Work) "14-Jul-2023 02:44:25 -0700" {%d}\r\n' % len(msg))
    assert r.line() == b"+ Ready for literal data\r\n"
    r.send(msg + b"\r\n")
    ok = r.line()
    m = re.match(rb"a OK \[APPENDUID (\d+) 1\] APPEND completed", ok)
    assert m
    r.cmd("b SELECT Drafts")
    f = r.cmd("c FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE)")[0]
    assert f == (b'* 1 FETCH (FLAGS (\\Draft \\Recent $Work) INTERNALDATE "14-Jul-2023 09:44:25 +0000" '
                 b"RFC822.SIZE %d)\r\n" % len(msg))
    assert r.cmd(b"d APPEND Nope {1+}\r\nx")[-1].startswith(b"d NO [TRYCREATE]")
    assert r.cmd(b"e APPEND INBOX (\\Bogus) {1+}\r\nx")[-1].startswith(b"e BAD")
    assert r.cmd(b"f APPEND INBOX ~{3+}\r\na\x00b")[-1].startswith(b"f OK [APPENDUID ")  # literal8


def test_append_meta_is_stored(imap: Any) -> None:
    r = raw(imap)
    r.cmd(b"a APPEND INBOX {%d+}\r\n" % len(message(1)) + message(1))
    user = imap.run(imap.store.get_user(ADDR))
    inbox = imap.run(imap.store.get_mailbox(user.id, "INBOX"))
    info = imap.run(imap.store.list_messages(inbox.id))[0]
    assert imap.run(imap.store.read_meta(info.blob_id)) == compute_meta(message(1)).to_bytes()
