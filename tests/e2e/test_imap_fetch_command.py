"""FETCH and UID FETCH against the real server (imap/fetch.py, RFC 9051 §6.4.5): the data items byte for
byte, BINARY of an unknown transfer encoding, metadata computed for a message stored without it,
structure items without the kept rows. The planner's unit tests: tests/unit/test_imap_fetch.py."""

# ruff: noqa: F811 (the fixtures imported from ann_support are test arguments: pytest's way)
from __future__ import annotations

import random
import re
from typing import Any

import pytest
from ann_support import ADDR, PW, imap, raw, server_overrides, srv  # noqa: F401 (fixtures)
from imap_support import fill, message

from postroom.imap import fetch
from postroom.mime.meta import compute_meta
from postroom.store.blobs import blob_id_of


def test_fetch_items(imap: Any) -> None:
    mime = (b"From: a@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"AAECAw==\r\n--b--\r\n")
    r = raw(imap)
    r.cmd(b"a APPEND INBOX {%d+}\r\n" % len(mime) + mime)
    r.cmd("b SELECT INBOX")
    meta = compute_meta(mime)
    lines = r.cmd("c FETCH 1 (UID ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE)")
    assert lines[0] == (b"* 1 FETCH (UID 1 ENVELOPE " + meta.envelope + b" BODYSTRUCTURE " + meta.bodystructure
                        + b" BODY " + meta.body + b" RFC822.SIZE %d)\r\n" % len(mime))
    assert r.cmd("d FETCH 1 BODY.PEEK[1]")[0] == b"* 1 FETCH (BODY[1] {5}\r\nhello)\r\n"
    assert r.cmd("d FETCH 1 BODY.PEEK[1.MIME]")[0] == (
        b"* 1 FETCH (BODY[1.MIME] {28}\r\nContent-Type: text/plain\r\n\r\n)\r\n")
    assert r.cmd("d FETCH 1 BODY.PEEK[]<6.13>")[0] == b"* 1 FETCH (BODY[]<6> {13}\r\na@example.org)\r\n"
    assert r.cmd("d FETCH 1 BODY.PEEK[HEADER.FIELDS (subject)]")[0] == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (subject)] {18}\r\nSubject: parts\r\n\r\n)\r\n")
    assert r.cmd("d FETCH 1 BODY.PEEK[9]")[0] == b"* 1 FETCH (BODY[9] NIL)\r\n"
    assert r.cmd("e FETCH 1 BINARY.SIZE[2]")[0] == b"* 1 FETCH (BINARY.SIZE[2] 4)\r\n"
    assert r.cmd("e FETCH 1 BINARY.PEEK[2]")[0] == b"* 1 FETCH (BINARY[2] ~{4}\r\n\x00\x01\x02\x03)\r\n"
    assert r.cmd("e FETCH 1 RFC822.HEADER")[0].startswith(b"* 1 FETCH (RFC822.HEADER {")
    assert r.cmd("f FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))\r\n"  # PEEKs left \Seen alone
    lines = r.cmd("g FETCH 1 BODY[TEXT]")
    assert lines[0].startswith(b"* 1 FETCH (BODY[TEXT] {") and lines[0].endswith(b" FLAGS (\\Seen \\Recent))\r\n")
    lines = r.cmd("h FETCH 1 RFC822")
    assert lines[0] == b"* 1 FETCH (RFC822 {%d}\r\n" % len(mime) + mime + b")\r\n"
    assert r.cmd("i FETCH 1 FAST")[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE ")
    assert r.cmd("i FETCH 1 ALL")[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE ")
    assert b"BODY (" in r.cmd("i FETCH 1 FULL")[0]
    assert r.cmd("j FETCH 2 FLAGS")[-1].startswith(b"j BAD")
    assert r.cmd("k UID FETCH 5 FLAGS") == [b"k OK FETCH completed\r\n"]
    assert r.cmd("l UID FETCH 1 FLAGS")[0] == b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))\r\n"
    assert r.cmd("m UID FETCH 1:* (RFC822.SIZE)")[0] == b"* 1 FETCH (UID 1 RFC822.SIZE %d)\r\n" % len(mime)


def test_unknown_cte_binary(imap: Any) -> None:
    msg = b"Subject: x\r\nContent-Transfer-Encoding: x-weird\r\n\r\nabc\r\n"
    r = raw(imap)
    r.cmd(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg)
    r.cmd("b SELECT INBOX")
    assert r.cmd("c FETCH 1 BINARY[1]")[-1].startswith(b"c NO [UNKNOWN-CTE]")


def test_message_without_meta_is_computed_on_fetch(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from postroom.store.api import AppendRequest

    monkeypatch.setattr(fetch, "META_CACHE", fetch.MetaCache())  # an earlier test may have decoded these bytes

    user = imap.run(imap.store.get_user(ADDR))
    inbox = imap.run(imap.store.get_mailbox(user.id, "INBOX"))
    imap.run(imap.store.append(inbox.id, AppendRequest(raw=message(3))))  # imported without meta
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    assert r.cmd("b FETCH 1 ENVELOPE")[0] == b"* 1 FETCH (ENVELOPE " + compute_meta(message(3)).envelope + b")\r\n"
    # Its structure is kept from then on (fetch.py invariant 6, schema 19), the same bytes.
    blob = blob_id_of(message(3))
    kept = imap.run(imap.store.read_structures([blob]))[blob]
    assert kept.envelope == compute_meta(message(3)).envelope


def test_structure_items_without_kept_rows(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body stored before schema 19 (its metadata current, no `imap_structure` row) answers ENVELOPE,
    BODYSTRUCTURE and BODY from its metadata, the same bytes as a body with the row, and gets the row."""
    import sqlite3

    fill(imap, ADDR, PW, 3)
    blobs = [blob_id_of(message(i)) for i in (1, 2, 3)]
    assert set(imap.run(imap.store.read_structures(blobs))) == set(blobs)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    before = r.cmd("b FETCH 1:3 (ENVELOPE BODYSTRUCTURE BODY)")
    if getattr(imap.store, "path", None) is not None:
        conn = sqlite3.connect(imap.store.path)
        conn.execute("DELETE FROM imap_structure WHERE blob_id = ?", (blobs[1],))
        conn.commit()
        conn.close()
    else:  # POSTROOM_TEST_STORE=postgresql: the same table on that engine (postgresql/structure.py)
        import asyncpg

        async def forget() -> None:
            pg = await asyncpg.connect(imap.store.dsn)
            try:
                await pg.execute("DELETE FROM imap_structure WHERE blob_id = $1", blobs[1])
            finally:
                await pg.close()

        imap.run(forget())
    monkeypatch.setattr(fetch, "META_CACHE", fetch.MetaCache())  # nothing decoded before is remembered
    assert r.cmd("c FETCH 1:3 (ENVELOPE BODYSTRUCTURE BODY)") == [*before[:-1], b"c OK FETCH completed\r\n"]
    assert set(imap.run(imap.store.read_structures(blobs))) == set(blobs)
    meta = compute_meta(message(2))
    assert before[1] == (b"* 2 FETCH (ENVELOPE " + meta.envelope + b" BODYSTRUCTURE " + meta.bodystructure
                         + b" BODY " + meta.body + b")\r\n")


def _flags_by_msn(lines: list[bytes]) -> dict[int, bytes]:
    out = {}
    for line in lines:
        m = re.match(rb"\* (\d+) FETCH \(.*?(FLAGS \([^)]*\))", line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def test_whole_mailbox_flags_equal_the_general_path(imap: Any) -> None:
    """`FETCH 1:* (FLAGS)` and `(UID FLAGS)` of a mailbox (fetch.py `_flag_run`, one formatted line a message)
    carry each message's flags exactly as the general item path does (`FLAGS INTERNALDATE`), for messages with
    system flags, keywords and \\Recent (RFC 9051 §7.5.2 FLAGS; RFC 3501 §2.3.2 \\Recent in a rev1 session), with
    message numbers 1..n in order, the UID where asked, and every keyword announced by a FLAGS response before
    a FETCH that carries it (RFC 9051 §7.3.5)."""
    fill(imap, ADDR, PW, 3)
    r = raw(imap)
    r.cmd("a SELECT INBOX")  # claims \Recent for 1-3 in this rev1 session
    other = raw(imap)
    other.cmd("b SELECT INBOX")
    r.cmd("a STORE 1 +FLAGS.SILENT (\\Seen)")
    r.cmd("a STORE 2 +FLAGS.SILENT (\\Flagged $Work)")
    # `other` learns of the keyword only now, from the FETCH answer itself: the FLAGS line must come first.
    lines = other.cmd("b FETCH 1:* (FLAGS)")
    fetches = [x for x in lines if x.startswith(b"* ") and b" FETCH " in x]
    assert [int(x.split()[1]) for x in fetches][:3] == [1, 2, 3]  # then the changes' own FETCH responses
    flags_line = next(i for i, x in enumerate(lines) if x.startswith(b"* FLAGS ") and b"$Work" in x)
    first_work = next(i for i, x in enumerate(lines) if x.startswith(b"* ") and b" FETCH " in x and b"$Work" in x)
    assert flags_line < first_work
    general = _flags_by_msn(r.cmd("a FETCH 1:* (FLAGS INTERNALDATE)"))
    assert b"\\Recent" in general[3] and b"$Work" in general[2] and b"\\Seen" in general[1]
    for query in ("(FLAGS)", "(UID FLAGS)", "(FLAGS UID)"):
        answer = r.cmd(f"a FETCH 1:* {query}")
        assert _flags_by_msn(answer) == general, query
        if "UID" in query:
            assert all(re.search(rb"UID \d+", x) for x in answer if x.startswith(b"* ") and b" FETCH " in x)
    plain = _flags_by_msn(other.cmd("b FETCH 1:* (FLAGS)"))
    assert plain == _flags_by_msn(other.cmd("b FETCH 1:* (FLAGS RFC822.SIZE)"))


_COLUMN_QUERIES = ("1:* (UID ENVELOPE BODYSTRUCTURE)", "1:* (ENVELOPE)", "2:5 (BODY FLAGS UID)",
                   "1,3,5:* (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY)",
                   "1:* (MODSEQ BODYSTRUCTURE SAVEDATE)", "* (ENVELOPE UID ENVELOPE)")


def _fetch_answers(r: Any, queries: tuple[str, ...], uid: bool = False) -> list[list[bytes]]:
    return [r.cmd(f"q {'UID ' if uid else ''}FETCH {q}") for q in queries]


def _same(got: list[list[bytes]], want: list[list[bytes]]) -> None:
    """Answer by answer, line by line (a readable failure)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g) == len(w), (g, w)
        for a, b in zip(g, w):
            assert a == b


def test_column_fetch_equals_the_item_path(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """FETCH of message-row items with ENVELOPE, BODYSTRUCTURE and BODY (fetch.py `column_fetch`, chunks of
    rows with their kept structure, invariant 7) answers byte for byte as the item-by-item writer does, for
    messages with system flags, keywords, \\Recent (a rev1 session), a gap from an expunge (two runs), a body
    whose structure row is not kept, chunk boundaries anywhere, UID FETCH and UIDONLY (RFC 9586 §3.3)."""
    import sqlite3

    fill(imap, ADDR, PW, 7)
    blob = blob_id_of(message(4))
    if getattr(imap.store, "path", None) is not None:  # one body as stored before schema 19: no kept row
        conn = sqlite3.connect(imap.store.path)
        conn.execute("DELETE FROM imap_structure WHERE blob_id = ?", (blob,))
        conn.commit()
        conn.close()
    r = raw(imap)
    r.cmd("a SELECT INBOX")  # \Recent for all in this rev1 session
    r.cmd("b STORE 1 +FLAGS.SILENT (\\Seen $Work)")
    r.cmd("b STORE 3 +FLAGS.SILENT (\\Flagged \\Deleted)")
    r.cmd("c UID EXPUNGE 3")
    r.cmd("d FETCH 1 (MODSEQ)")  # CONDSTORE on (RFC 7162 §3.1): its HIGHESTMODSEQ announcement out of the way
    uo = raw(imap)
    uo.cmd("e ENABLE UIDONLY")
    uo.cmd("e SELECT INBOX")
    monkeypatch.setattr(fetch, "META_CACHE", fetch.MetaCache())
    monkeypatch.setattr(fetch, "COLUMN_CHUNK", 2)
    columns = _fetch_answers(r, _COLUMN_QUERIES) + _fetch_answers(r, _COLUMN_QUERIES, uid=True)
    only = _fetch_answers(uo, ("1:* (ENVELOPE FLAGS)", "2:6 (UID BODY)"), uid=True)
    monkeypatch.setattr(fetch, "COLUMN_CHUNK", 1000)
    _same(_fetch_answers(r, _COLUMN_QUERIES) + _fetch_answers(r, _COLUMN_QUERIES, uid=True), columns)
    monkeypatch.setattr(fetch, "_COLUMN_ITEMS", frozenset())  # the item-by-item writer answers
    monkeypatch.setattr(fetch, "META_CACHE", fetch.MetaCache())
    _same(_fetch_answers(r, _COLUMN_QUERIES) + _fetch_answers(r, _COLUMN_QUERIES, uid=True), columns)
    _same(_fetch_answers(uo, ("1:* (ENVELOPE FLAGS)", "2:6 (UID BODY)"), uid=True), only)
    assert columns[0][0] == (b"* 1 FETCH (UID 1 ENVELOPE " + compute_meta(message(1)).envelope + b" BODYSTRUCTURE "
                             + compute_meta(message(1)).bodystructure + b")\r\n")
    assert columns[2][0].startswith(b"* 2 FETCH (BODY (") and b"FLAGS (\\Recent) UID 2)" in columns[2][0]
    assert b"FLAGS (\\Seen \\Recent $Work) INTERNALDATE" in columns[3][0] and len(columns[3]) == 5
    assert len(columns[0]) == 7 and columns[5] == [columns[5][0], b"q OK FETCH completed\r\n"]
    assert only[0][0].startswith(b"* 1 UIDFETCH (ENVELOPE (") and len(only[1]) == 5  # UIDs 2, 4, 5, 6


def _count_list_changed(imap: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The MODSEQ of each `Store.list_changed` call the server makes from now on (the flags listing's catch-up)."""
    changed: list[int] = []
    real_changed = imap.store.list_changed

    async def counted_changed(mailbox_id: int, modseq: int, *args: Any) -> Any:
        changed.append(modseq)
        return await real_changed(mailbox_id, modseq, *args)

    monkeypatch.setattr(imap.store, "list_changed", counted_changed)
    return changed


def test_flag_cache_answers_only_while_the_mailbox_is_unchanged(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated `FETCH 1:* (FLAGS)` answers from `fetch.FLAG_CACHE` without listing the rows again, and the
    same bytes as a fresh listing: any change to the mailbox (a flag set by another session or straight in the
    store, as another process would; an expunge; an arrival) takes a new MODSEQ (RFC 7162 §3.1), and the
    kept listing is then not used as it is: it is brought up to date with the rows changed since its MODSEQ
    (`Store.list_changed`), not listed again (fetch.py invariant 8)."""
    from postroom.store.api import Flag, StoreMode

    fill(imap, ADDR, PW, 4)
    monkeypatch.setattr(fetch, "FLAG_CACHE", fetch.FlagCache(min_count=2))
    listings: list[tuple[int, int]] = []
    real = imap.store.list_columns

    async def counted(mailbox_id: int, first: int = 1, last: int | None = None, **kw: Any) -> Any:
        listings.append((first, last or 0))
        return await real(mailbox_id, first, last, **kw)

    monkeypatch.setattr(imap.store, "list_columns", counted)
    changed = _count_list_changed(imap, monkeypatch)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    box = imap.run(imap.store.get_mailbox(imap.run(imap.store.get_user(ADDR)).id, "INBOX"))
    first = r.cmd("b FETCH 1:* (FLAGS)")
    listings.clear()
    assert r.cmd("b FETCH 1:* (FLAGS)") == first and listings == []  # a hit
    imap.run(imap.store.store_flags(box.id, [2], StoreMode.ADD, int(Flag.FLAGGED)))  # as another process would
    lines = r.cmd("c FETCH 1:* (FLAGS)")
    assert lines[1] == b"* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\n" and listings == [] and len(changed) == 1
    assert r.cmd("c FETCH 1:* (FLAGS)")[:4] == lines[:4] and len(changed) == 1  # a hit on the updated listing
    other = raw(imap)
    other.cmd("d SELECT INBOX")
    other.cmd("d STORE 3 +FLAGS.SILENT (\\Deleted $Work)")
    lines = r.cmd("e FETCH 1:* (UID FLAGS)")
    assert b"* 3 FETCH (UID 3 FLAGS (\\Deleted \\Recent $Work))\r\n" in lines and listings == []
    assert lines[0] == b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Work)\r\n"  # before its FETCH
    other.cmd("f EXPUNGE")
    fill(imap, ADDR, PW, 1)
    r.cmd("g NOOP")  # the expunge and the arrival reported: the view is 1, 2, 4, 5
    listings.clear()
    lines = r.cmd("h FETCH 1:* (UID FLAGS)")
    assert [x for x in lines if x.startswith(b"* ")] == [
        b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n", b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\n",
        b"* 3 FETCH (UID 4 FLAGS (\\Recent))\r\n", b"* 4 FETCH (UID 5 FLAGS (\\Recent))\r\n"] and len(listings) == 1
    assert r.cmd("h FETCH 1:* (UID FLAGS)") == lines and len(listings) == 1  # a hit again
    # SEARCH on one system flag answers from the kept listing too (search.py), the same as the store's query.
    queried: list[int] = []
    by_flag = imap.store.uids_with_flag

    async def spied(*args: Any) -> Any:
        queried.append(1)
        return await by_flag(*args)

    monkeypatch.setattr(imap.store, "uids_with_flag", spied)
    assert r.cmd("j UID SEARCH UNSEEN") == [b"* SEARCH 1 2 4 5\r\n", b"j OK SEARCH completed\r\n"]
    assert r.cmd("j SEARCH FLAGGED") == [b"* SEARCH 2\r\n", b"j OK SEARCH completed\r\n"] and queried == []
    imap.run(imap.store.store_flags(box.id, [4], StoreMode.ADD, int(Flag.SEEN)))
    lines = r.cmd("k UID SEARCH UNSEEN")  # with the change's FETCH (RFC 9051 §7.5.2)
    assert [x for x in lines if x.startswith(b"* SEARCH")] == [b"* SEARCH 1 2 5\r\n"] and queried == [1]
    assert r.cmd("k UID SEARCH SEEN") == [b"* SEARCH 4\r\n", b"k OK SEARCH completed\r\n"]


_FLAG_QUERIES = ("1:* (FLAGS)", "1:* (UID FLAGS)", "1:* (FLAGS UID)", "2:* FLAGS", "3:* FLAGS", "1:3 (FLAGS)")


def _fetch_lines(answers: list[list[bytes]]) -> list[list[bytes]]:
    """The message data lines of each answer (FETCH, UIDFETCH) and its tagged line: keyword announcements are
    written once per session, by whichever answer shows the keyword first."""
    return [[x for x in a if not x.startswith((b"* FLAGS ", b"* OK [PERMANENTFLAGS"))] for a in answers]


_ORIGINAL = {"_LIGHT": frozenset(fetch._LIGHT), "_COLUMN_ITEMS": frozenset(fetch._COLUMN_ITEMS)}


@pytest.mark.parametrize("block", [2, 3])
def test_flag_fetch_equals_the_item_path(imap: Any, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """FETCH of FLAGS (and UID) from the kept listing, brought up to date after each change (`changed_since`), and
    from the kept response lines (fetch.py invariants 8 and 9) answers byte for byte as the item-by-item writer
    does: keywords, \\Recent for one rev1 session and not the other (RFC 3501 §2.3.2: the two must not share
    lines), a flag change from another session, an expunge not yet reported (a gap in the listing:
    EXPUNGEISSUED, RFC 9051 §7.1), one reported (the message numbers move), an arrival, UID FETCH and UIDONLY;
    kept lines in blocks of `block` messages, of which only those with a changed message are made again."""
    fill(imap, ADDR, PW, 6)
    monkeypatch.setattr(fetch, "_FLAG_BATCH", block)
    cache = fetch.FlagCache(min_count=2)
    monkeypatch.setattr(fetch, "FLAG_CACHE", cache)
    changed = _count_list_changed(imap, monkeypatch)
    a, b, other = raw(imap), raw(imap), raw(imap)
    a.cmd("a SELECT INBOX")  # rev1: \Recent for all six in this session only
    b.cmd("b SELECT INBOX")
    other.cmd("o SELECT INBOX")
    uo = raw(imap)
    uo.cmd("u ENABLE UIDONLY")
    uo.cmd("u SELECT INBOX")
    item_path = {"_LIGHT": frozenset(), "_COLUMN_ITEMS": frozenset()}
    steps = ("o STORE 2 +FLAGS.SILENT (\\Seen $Work)", "o STORE 3 +FLAGS.SILENT (\\Flagged \\Deleted Later)",
             "o UID EXPUNGE 3", "NOOP", "o STORE 5 -FLAGS.SILENT (\\Seen)", "APPEND", "NOOP",
             "o STORE 1 +FLAGS.SILENT (\\Deleted)", "o UID EXPUNGE 1",
             "NOOP a", "NOOP",  # UIDs 2:* messages 1 on for a, still 2 on for b: one listing, two texts
             "o STORE 1:* +FLAGS.SILENT (\\Answered)")
    for step in ("NOOP", *steps):
        if step == "APPEND":
            fill(imap, ADDR, PW, 1)
        elif not step.startswith("NOOP"):
            other.cmd(step)
        for r in (a, b):  # what happened reported: NOOP all of it (the views change), FETCH no expunge (§7.5.1)
            r.cmd("n NOOP" if step == "NOOP" or (step == "NOOP a" and r is a) else "n FETCH 1 (UID)")
        uo.cmd("n NOOP")
        kept: list[list[list[bytes]]] = []
        # UID FETCH may report expunges (RFC 9051 §7.5.1): not while one is to stay hidden in this step.
        with_uid = step not in ("o UID EXPUNGE 3", "o UID EXPUNGE 1", "NOOP a")
        for r in (a, b):  # the first answer lists or updates, the second writes the kept lines
            kept.append(_fetch_answers(r, _FLAG_QUERIES) + (_fetch_answers(r, _FLAG_QUERIES, True) if with_uid else []))
            assert _fetch_lines(_fetch_answers(r, _FLAG_QUERIES)) == _fetch_lines(kept[-1][:len(_FLAG_QUERIES)])
        kept.append(_fetch_answers(uo, _FLAG_QUERIES[:3], uid=True))
        for name, value in item_path.items():
            monkeypatch.setattr(fetch, name, value)
        for r, answers in zip((a, b), kept):
            _same(_fetch_lines(_fetch_answers(r, _FLAG_QUERIES)
                               + (_fetch_answers(r, _FLAG_QUERIES, True) if with_uid else [])), _fetch_lines(answers))
        _same(_fetch_lines(_fetch_answers(uo, _FLAG_QUERIES[:3], uid=True)), _fetch_lines(kept[2]))
        for name in item_path:
            monkeypatch.setattr(fetch, name, _ORIGINAL[name])
    assert len(changed) >= 8  # the kept listing was brought up to date after the changes, not listed again
    assert b"* 2 FETCH (FLAGS (\\Answered \\Recent))\r\n" in kept[0][0]  # rev1 \\Recent, in session a only
    assert b"* 2 FETCH (FLAGS (\\Answered))\r\n" in kept[1][0]
    assert b"* 1 FETCH (UID 2 FLAGS (\\Seen \\Answered $Work))\r\n" in kept[1][1]
    assert kept[1][len(_FLAG_QUERIES)] == kept[1][1] and len(kept[1]) == 2 * len(_FLAG_QUERIES)  # UID FETCH
    assert b"* 6 UIDFETCH (FLAGS (\\Answered))\r\n" in kept[2][0] and len(kept[0][0]) == 6  # UIDs 2, 4-7


def test_flag_cache_is_bounded() -> None:
    """`FlagCache` holds at most its byte bound, least recently used out (issue 11: memory is bounded)."""
    from array import array

    from postroom.store.api import MessageColumns

    def cols(n: int) -> MessageColumns:
        return MessageColumns(array("I", range(1, n + 1)), [1] * n, [0] * n, (), (), (), {}, (), stamp=(1, 1))

    cache = fetch.FlagCache(max_bytes=100_000)
    for k in range(20):
        cache.put((k, 1, 1000), cols(1000))  # ~20 KB each
    assert cache.held <= 100_000
    kept = [k for k in range(20) if cache.get((k, 1, 1000)) is not None]
    assert kept == list(range(20 - len(kept), 20)) and 1 <= len(kept) < 20
    cache.put((99, 1, 10_000), cols(10_000))  # over a quarter of the bound: not kept
    assert cache.get((99, 1, 10_000)) is None and cache.held <= 100_000


def _fetched(lines: list[bytes]) -> dict[int, tuple[list[bytes], bytes | None, bytes | None]]:
    """Message number -> (flags sorted, UID, MODSEQ) of the `* n FETCH` lines of an answer."""
    out = {}
    for line in lines:
        m = re.match(rb"\* (\d+) FETCH \((.*)\)\r\n$", line)
        if m:
            flags = re.search(rb"FLAGS \(([^)]*)\)", m.group(2))
            uid = re.search(rb"UID (\d+)", m.group(2))
            modseq = re.search(rb"MODSEQ \((\d+)\)", m.group(2))
            out[int(m.group(1))] = (sorted(flags.group(1).split()) if flags else [],
                                    uid.group(1) if uid else None, modseq.group(1) if modseq else None)
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_kept_flag_lines_follow_every_change_of_three_sessions(imap: Any, monkeypatch: pytest.MonkeyPatch,
                                                               seed: int) -> None:
    """Three sessions on one mailbox (two rev1 with their own \\Recent, one with CONDSTORE enabled) change flags and
    keywords, append and expunge at random; after each change every session's `FETCH 1:* (FLAGS)`, `(UID FLAGS)`,
    `(FLAGS UID)`, `(FLAGS MODSEQ)` and `UID FETCH 1:* (FLAGS)`, answered from the kept listing brought up to date
    and its kept lines (fetch.py invariants 8, 9; small blocks so that changes land in some and not others),
    says what the general item path says from a fresh listing (`FLAGS UID MODSEQ INTERNALDATE`), message by
    message (RFC 9051 §7.5.2; RFC 7162 §3.1.4.2 MODSEQ)."""
    rnd = random.Random(seed)
    fill(imap, ADDR, PW, 30)
    # every session's every variant kept with its listing, so that a change finds them all to carry over
    monkeypatch.setattr(fetch, "FLAG_CACHE", fetch.FlagCache(min_count=2, texts_per_listing=32))
    monkeypatch.setattr(fetch, "_FLAG_BATCH", 4)
    a, b, c = raw(imap), raw(imap), raw(imap)
    a.cmd("a SELECT INBOX")
    b.cmd("b ENABLE CONDSTORE")
    b.cmd("b SELECT INBOX")
    c.cmd("c SELECT INBOX")
    flags = ["$Work", "$Home", "later", "\\Seen", "\\Flagged", "\\Deleted", "\\Answered"]
    for step in range(25):
        who = rnd.choice([a, b, c])
        n = len(_fetched(who.cmd("x FETCH 1:* (UID)")))
        op = rnd.random()
        if op < 0.6 and n:
            lo = rnd.randint(1, n)
            hi = rnd.randint(lo, n)
            how = rnd.choice(["+", "-", ""])
            who.cmd(f"x STORE {lo}:{hi} {how}FLAGS.SILENT ({rnd.choice(flags)} {rnd.choice(flags)})")
        elif op < 0.8:
            m = message(100 + step)
            who.cmd(b"x APPEND INBOX {%d+}\r\n" % len(m) + m)
        elif n:
            who.cmd(f"x STORE {rnd.randint(1, n)} +FLAGS.SILENT (\\Deleted)")
            who.cmd("x EXPUNGE")
        for s in (a, b, c):
            s.cmd("y NOOP")  # the changes reported: the view is the mailbox's
            want = _fetched(s.cmd("g FETCH 1:* (FLAGS UID MODSEQ INTERNALDATE)"))
            for query in ("FETCH 1:* (FLAGS)", "FETCH 1:* (UID FLAGS)", "FETCH 1:* (FLAGS UID)",
                          "FETCH 1:* (FLAGS MODSEQ)", "FETCH 1:* (FLAGS)", "UID FETCH 1:* (FLAGS)"):
                got = _fetched(s.cmd(f"z {query}"))
                assert sorted(got) == sorted(want), (step, query)
                for k, (fl, uid, modseq) in got.items():
                    assert fl == want[k][0], (step, query, k)
                    assert uid is None or uid == want[k][1]
                    assert modseq is None or modseq == want[k][2]
