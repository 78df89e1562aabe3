"""The selected-state commands that change messages, against the real server (imap/messages.py): STORE,
COPY, MOVE, EXPUNGE, CLOSE, UNSELECT."""

# ruff: noqa: F811 (the fixtures imported from ann_support are test arguments: pytest's way)
from __future__ import annotations

import re
from typing import Any

from ann_support import ADDR, PW, imap, raw, server_overrides, srv  # noqa: F401 (fixtures)
from imap_support import fill


def test_store_flags_and_keywords(imap: Any) -> None:
    fill(imap, ADDR, PW, 3)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    assert r.cmd("b STORE 1:2 +FLAGS (\\Flagged $Todo)") == [  # a new keyword is announced first (RFC 9051 §7.3.5)
        b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Todo)\r\n",
        b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Todo \\*)] Flags permitted\r\n",
        b"* 1 FETCH (FLAGS (\\Flagged \\Recent $Todo))\r\n", b"* 2 FETCH (FLAGS (\\Flagged \\Recent $Todo))\r\n",
        b"b OK STORE completed\r\n"]
    assert r.cmd("c STORE 1 -FLAGS ($Todo)") == [b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n",
                                                 b"c OK STORE completed\r\n"]
    assert r.cmd("d STORE 1 FLAGS.SILENT (\\Answered)") == [b"d OK STORE completed\r\n"]
    assert r.cmd("e UID STORE 1,3 FLAGS (\\Seen)") == [b"* 1 FETCH (FLAGS (\\Seen \\Recent) UID 1)\r\n",
                                                      b"* 3 FETCH (FLAGS (\\Seen \\Recent) UID 3)\r\n",
                                                      b"e OK STORE completed\r\n"]
    assert r.cmd("f STORE 1 +FLAGS (\\Recent)")[-1] == b"f OK STORE completed\r\n"
    assert r.cmd("g STORE 1 +FLAGS (\\Bogus)")[-1].startswith(b"g BAD")
    # RFC 7162 §3.2.11: with QRESYNC offered, CLOSED ends the old mailbox's responses, rev1 too
    assert r.cmd("h SELECT INBOX")[:2] == [b"* OK [CLOSED] Previous mailbox closed\r\n",
                                           b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Todo)\r\n"]


def test_copy_move_expunge_close_unselect(imap: Any) -> None:
    fill(imap, ADDR, PW, 5)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    trash = r.cmd("b STATUS Trash (UIDVALIDITY)")[0]
    v = int(re.search(rb"UIDVALIDITY (\d+)", trash).group(1))  # type: ignore[union-attr]
    assert r.cmd("c COPY 1:2 Trash") == [b"c OK [COPYUID %d 1:2 1:2] COPY completed\r\n" % v]
    assert r.cmd("d COPY 1 Nope")[-1].startswith(b"d NO [TRYCREATE]")
    assert r.cmd("e MOVE 2,4 Trash") == [b"* OK [COPYUID %d 2,4 3:4] Moved\r\n" % v, b"* 2 EXPUNGE\r\n",
                                         b"* 3 EXPUNGE\r\n", b"e OK MOVE completed\r\n"]
    # left: UIDs 1 3 5
    assert r.cmd("f UID MOVE 5 Trash")[1:] == [b"* 3 EXPUNGE\r\n", b"f OK MOVE completed\r\n"]
    r.cmd("g STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert r.cmd("h UID EXPUNGE 3") == [b"* 2 EXPUNGE\r\n", b"h OK UID EXPUNGE completed\r\n"]
    assert r.cmd("i EXPUNGE") == [b"* 1 EXPUNGE\r\n", b"i OK EXPUNGE completed\r\n"]
    assert r.cmd("j STATUS INBOX (MESSAGES)")[0] == b'* STATUS "INBOX" (MESSAGES 0)\r\n'
    r.cmd("k SELECT Trash")
    r.cmd("l STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert r.cmd("m UNSELECT") == [b"m OK UNSELECT completed\r\n"]
    assert r.cmd("n STATUS Trash (MESSAGES DELETED)")[0] == b'* STATUS "Trash" (MESSAGES 5 DELETED 1)\r\n'
    r.cmd("o SELECT Trash")
    assert r.cmd("p CHECK") == [b"p OK CHECK completed\r\n"]
    assert r.cmd("q CLOSE") == [b"q OK CLOSE completed\r\n"]  # silently expunges
    assert r.cmd("r STATUS Trash (MESSAGES DELETED)")[0] == b'* STATUS "Trash" (MESSAGES 4 DELETED 0)\r\n'
    assert r.cmd("s EXPUNGE")[-1].startswith(b"s BAD")
