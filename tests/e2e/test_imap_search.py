"""SEARCH and UID SEARCH against the real server (imap/search.py, RFC 9051 §6.4.4): the keys, ESEARCH
(RFC 4731) and IMAP4rev2's answers. The full-text index: test_imap_search_index.py."""

# ruff: noqa: F811 (the fixtures imported from ann_support are test arguments: pytest's way)
from __future__ import annotations

from typing import Any

from ann_support import ADDR, PW, imap, raw, server_overrides, srv  # noqa: F401 (fixtures)
from imap_support import fill


def test_search_keys_and_esearch(imap: Any) -> None:
    fill(imap, ADDR, PW, 6)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    r.cmd("a STORE 2,4 +FLAGS.SILENT (\\Seen)")
    r.cmd("a STORE 5 +FLAGS.SILENT ($Important)")
    assert r.cmd("b SEARCH SEEN") == [b"* SEARCH 2 4\r\n", b"b OK SEARCH completed\r\n"]
    assert r.cmd("b SEARCH UNSEEN NOT 1")[0] == b"* SEARCH 3 5 6\r\n"
    assert r.cmd("b SEARCH OR 1 SUBJECT \"note 6\"")[0] == b"* SEARCH 1 6\r\n"
    assert r.cmd("b SEARCH FROM ann SUBJECT NOTE")[0] == b"* SEARCH 1 2 3 4 5 6\r\n"
    assert r.cmd("b SEARCH KEYWORD $important")[0] == b"* SEARCH 5\r\n"
    assert r.cmd("b SEARCH UNKEYWORD $Important 4:*")[0] == b"* SEARCH 4 6\r\n"
    assert r.cmd("b SEARCH BODY \"number 3\"")[0] == b"* SEARCH 3\r\n"
    assert r.cmd("b SEARCH TEXT \"number 3\"")[0] == b"* SEARCH 3\r\n"
    assert r.cmd("b SEARCH HEADER Message-ID <m4@")[0] == b"* SEARCH 4\r\n"
    assert r.cmd("b SEARCH HEADER X-Missing \"\"")[0] == b"* SEARCH\r\n"
    assert r.cmd("b SEARCH SENTON 5-Feb-2024 SENTSINCE 5-Feb-2024 NOT SENTBEFORE 5-Feb-2024")[0] == \
        b"* SEARCH 1 2 3 4 5 6\r\n"
    assert r.cmd("b SEARCH SINCE 1-Jan-2000 NOT BEFORE 1-Jan-2000 NOT ON 1-Jan-2000")[0] == b"* SEARCH 1 2 3 4 5 6\r\n"
    assert r.cmd("b SEARCH LARGER 1 SMALLER 100000 TO bob CC nobody")[0] == b"* SEARCH\r\n"
    assert r.cmd("b SEARCH RECENT NEW")[0] == b"* SEARCH 1 3 5 6\r\n"
    assert r.cmd("b SEARCH OLD")[0] == b"* SEARCH\r\n"
    assert r.cmd("b SEARCH CHARSET UTF-8 SUBJECT note")[0] == b"* SEARCH 1 2 3 4 5 6\r\n"
    assert r.cmd("c SEARCH CHARSET KOI8-R ALL")[-1].startswith(b"c NO [BADCHARSET (UTF-8 US-ASCII)]")
    assert r.cmd("d UID SEARCH UID 2:4 ANSWERED")[0] == b"* SEARCH\r\n"
    assert r.cmd("d UID SEARCH UID 2:4")[0] == b"* SEARCH 2 3 4\r\n"
    assert r.cmd("e SEARCH RETURN (MIN MAX COUNT) UNSEEN")[0] == b'* ESEARCH (TAG "e") MIN 1 MAX 6 COUNT 4\r\n'
    assert r.cmd("f UID SEARCH RETURN () UNSEEN")[0] == b'* ESEARCH (TAG "f") UID ALL 1,3,5:6\r\n'
    assert r.cmd("f SEARCH RETURN (COUNT) DELETED")[0] == b'* ESEARCH (TAG "f") COUNT 0\r\n'
    # SEARCHRES: save, then use $
    assert r.cmd("g SEARCH RETURN (SAVE) SEEN") == [b"g OK SEARCH completed\r\n"]
    assert r.cmd("h FETCH $ (UID)")[:-1] == [b"* 2 FETCH (UID 2)\r\n", b"* 4 FETCH (UID 4)\r\n"]
    assert r.cmd("i SEARCH $ UNSEEN")[0] == b"* SEARCH\r\n"
    assert r.cmd("j UID SEARCH RETURN (SAVE MIN) UNSEEN")[0] == b'* ESEARCH (TAG "j") UID MIN 1\r\n'
    assert r.cmd("k UID FETCH $ (FLAGS)")[:-1] == [b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n"]


def test_search_in_rev2_answers_esearch_and_drops_recent(imap: Any) -> None:
    fill(imap, ADDR, PW, 2)
    r = raw(imap)
    r.cmd("a ENABLE IMAP4rev2")
    lines = r.cmd("b SELECT INBOX")
    assert not any(b"RECENT" in x or b"UNSEEN" in x for x in lines)
    assert b'* LIST () "/" "INBOX"\r\n' in lines
    assert r.cmd("c SEARCH ALL")[0] == b'* ESEARCH (TAG "c") ALL 1:2\r\n'
    assert r.cmd("d FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())\r\n"
    assert r.cmd("e SELECT INBOX")[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
