"""The full-text index through the store interface (`search_text`, `index_backlog`): written with the message,
shared by copies, gone with the last reference, re-indexed with new metadata; and the schema-8 migration of a
store written at schema 7 with messages, worked off in steps."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from postroom.mime.meta import compute_meta
from postroom.store import scanform
from postroom.store.api import AppendRequest, Flag, NotFound, OverQuota, Store, StoreMode, TextCandidates
from postroom.store.sqlite import SQLiteStore, fts
from postroom.store.textindex import TextAll, TextAny, TextTerm

from .conftest import BODY_BACKENDS, downgrade, inbox, new_user


def mail(n: int, subject: str, body: str, with_meta: bool = True) -> AppendRequest:
    raw = (f"From: Ann <ann@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
           f"Message-ID: <{n}@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()
    return AppendRequest(raw=raw, meta=compute_meta(raw).to_bytes() if with_meta else None)


def uids(found: TextCandidates | None) -> list[int]:
    assert found is not None
    return [m.uid for m in found.messages]


async def wait_indexed(store: Store, *mailbox_ids: int) -> None:
    """Until no message of the mailboxes is in the backlog: SQLite's writer indexes the bodies it parked while
    jobs waited once it has had no job for `engine.IDLE_SECONDS` (engine invariant 10); PostgreSQL at once."""
    for _ in range(200):
        looks = [await store.search_text(m, 1, 2**32 - 1, TextTerm("body", "nothing-here")) for m in mailbox_ids]
        if all(found is not None and found.unindexed == 0 for found in looks):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the parked bodies were not indexed within 10 s")


@BODY_BACKENDS
async def test_narrowing_finds_what_matches_and_little_else(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [
        mail(1, "Quarterly budget", "numbers in the spreadsheet"),
        mail(2, "会议报告", "明天下午开会, 请准备预算"),
        mail(3, "Re: lunch", "Tiếng Việt: cảm ơn nhiều; привет из Москвы"),
    ])
    top = 2**32 - 1
    assert uids(await store.search_text(box.id, 1, top, TextTerm("subject", "BUDGET"))) == [1]
    assert uids(await store.search_text(box.id, 1, top, TextTerm("body", "准备预算"))) == [2]
    assert uids(await store.search_text(box.id, 1, top, TextTerm("text", "cảm ơn"))) == [3]
    assert uids(await store.search_text(box.id, 1, top, TextTerm("text", "МОСКВ"))) == [3]
    assert uids(await store.search_text(box.id, 1, top, TextTerm("from", "ann@"))) == [1, 2, 3]
    assert uids(await store.search_text(box.id, 1, top, TextTerm("header", "<2@exam", "message-id"))) == [2]
    assert uids(await store.search_text(box.id, 2, 3, TextTerm("from", "ann@"))) == [2, 3]  # the range holds
    assert uids(await store.search_text(box.id, 1, top, TextTerm("subject", "absent"))) == []
    # AND keeps what narrows; OR needs both sides; a term under three characters cannot narrow alone.
    both = TextAll((TextTerm("body", "会"), TextTerm("subject", "议报告")))
    assert uids(await store.search_text(box.id, 1, top, both)) == [2]
    either = TextAny((TextTerm("subject", "lunch"), TextTerm("subject", "budget")))
    assert uids(await store.search_text(box.id, 1, top, either)) == [1, 3]
    assert await store.search_text(box.id, 1, top, TextTerm("body", "会")) is None
    assert await store.search_text(box.id, 1, top, TextAny((TextTerm("body", "会"), TextTerm("body", "abc")))) is None
    with pytest.raises(NotFound):
        await store.search_text(box.id + 1000, 1, top, TextTerm("body", "abc"))


@BODY_BACKENDS
async def test_an_exact_answer_is_exactly_what_matches(store: Store) -> None:
    """`TextCandidates.exact` (fts.py invariant 5): when an engine says its candidates are exact, they are the
    messages whose header field contains the needle (RFC 9051 §6.4.4: a case-insensitive substring), no more. On
    SQLite a header field's own column answers exactly: "abcde" is not in "bcde abcd", though every trigram a
    plain lookup checks ("abc", "cde") is; a body term, or a needle with "?", is confirmed by the caller. On
    PostgreSQL every whole needle is exact (textindex invariant 3)."""
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [
        mail(1, "Quarterly budget", "numbers"),
        mail(2, "bcde abcd", "abcde in the body"),
        mail(3, "Re: ABCDE?", "nothing"),
        mail(4, "Привет, БЮДЖЕТ", "budget in the body only"),
    ])
    top = 2**32 - 1
    cases = [
        (TextTerm("subject", "BUDGET"), [1]),
        (TextTerm("subject", "abcde"), [3]),
        (TextTerm("subject", "бюджет"), [4]),
        (TextTerm("header", "abcde", "subject"), [3]),
        (TextTerm("from", "ANN@EXAMPLE"), [1, 2, 3, 4]),
        (TextAny((TextTerm("subject", "budget"), TextTerm("subject", "abcde"))), [1, 3]),
        (TextAll((TextTerm("subject", "re: "), TextTerm("subject", "abcde"))), [3]),
        (TextTerm("body", "ABC"), [2]),  # three characters: one trigram, exact without positions
        (TextTerm("text", "abc"), [2, 3]),
    ]
    sqlite = isinstance(store, SQLiteStore)
    for flt, expected in cases:
        found = await store.search_text(box.id, 1, top, flt)
        assert found is not None
        assert set(expected) <= set(uids(found)), flt  # never loses a match (invariant 3)
        if found.exact:
            assert uids(found) == expected, flt
        assert found.exact or not sqlite, flt
    # Body and TEXT needles: exact on PostgreSQL (a LIKE on the text itself), confirmed by the caller on SQLite.
    for flt, expected in ((TextTerm("body", "abcde"), [2]), (TextTerm("text", "budget"), [1, 4]),
                          (TextAll((TextTerm("subject", "budget"), TextTerm("body", "numbers"))), [1])):
        found = await store.search_text(box.id, 1, top, flt)
        assert found is not None and set(expected) <= set(uids(found)), flt
        assert found.exact != sqlite, flt
        if found.exact:
            assert uids(found) == expected, flt
    # A needle with "?" (a lone surrogate in a field is indexed as "?"), or one cut in pieces, is never exact.
    for flt in (TextTerm("subject", "abcde?"), TextTerm("text", "abc\nbcd"), TextTerm("header", "ann", "x-other")):
        found = await store.search_text(box.id, 1, top, flt)
        assert found is not None and not found.exact, flt


@BODY_BACKENDS
async def test_text_after_a_nul_is_found(store: Store) -> None:
    """A NUL in decoded text (an RFC 2047 word or a base64 body can carry one) hides nothing from SEARCH (RFC 9051
    §6.4.4): the index holds it as U+FFFD (textindex invariant 2), where SQLite's FTS5 stopped reading."""
    import base64

    subject = "=?utf-8?b?" + base64.b64encode(b"invoice\x00 wiretransfer urgent").decode() + "?="
    body = base64.b64encode(b"Hello\x00 please pay the wiretransfer invoice now\r\n").decode()
    raw = (f"From: Ann <ann@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\nMessage-ID: <n@x>\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{body}\r\n").encode()
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [AppendRequest(raw=raw, meta=compute_meta(raw).to_bytes()), mail(2, "x", "y")])
    top = 2**32 - 1
    for flt in (TextTerm("subject", "wiretransfer"), TextTerm("subject", "urg"), TextTerm("body", "pay the"),
                TextTerm("text", "now"), TextTerm("body", "wiretransfer invoice")):
        assert uids(await store.search_text(box.id, 1, top, flt)) == [1], flt


async def test_schema_23_writes_the_header_index_again(tmp_path: Path) -> None:
    """Schema 23 makes `fts_head` anew with positions and fills it from the stored metadata of the indexed
    bodies (header fields only; the body index is kept), so a store upgraded from 22 answers header keys
    exactly at once, without a rebuild."""
    db, blobs = tmp_path / "s.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [mail(1, "alpha report", "one"), mail(2, "beta alphabet", "two")])
    await store.close()
    downgrade(db, 23)  # the later steps undone; then step 23 by hand, keeping the index's version
    conn = sqlite3.connect(db)  # schema 22's header index: no positions, and (as after step 22) full rows
    conn.execute("DROP TABLE fts_head")
    conn.execute("CREATE VIRTUAL TABLE fts_head USING fts5(h_subject, h_from, h_to, h_cc, h_bcc, h_headers, h_names,"
                 " tokenize='trigram case_sensitive 1', detail=column, content='')")
    conn.execute("PRAGMA user_version = 22")
    conn.commit()
    conn.close()
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        top = 2**32 - 1
        found = await store.search_text(box.id, 1, top, TextTerm("subject", "alpha"))
        assert found is not None and uids(found) == [1, 2] and found.exact and found.unindexed == 0
        found = await store.search_text(box.id, 1, top, TextTerm("subject", "a report"))
        assert found is not None and uids(found) == [1] and found.exact
        assert _count(store, "SELECT count(*) FROM fts_docs") == 2  # the body index was kept
        found = await store.search_text(box.id, 1, top, TextTerm("body", "two"))
        assert found is not None and uids(found) == [2]
    finally:
        await store.close()


@BODY_BACKENDS
async def test_copies_share_the_index_and_the_last_reference_removes_it(store: Store) -> None:
    user = await new_user(store)
    box = await inbox(store, user)
    other = await store.create_mailbox(user.id, "Kept")
    await store.append(box.id, mail(1, "unique xylophone", "body"))
    await store.copy_messages(box.id, [1], other.id)
    top = 2**32 - 1
    rare = TextTerm("subject", "xylophone")
    assert uids(await store.search_text(other.id, 1, top, rare)) == [1]
    await store.move_messages(other.id, [1], box.id)  # MOVE: a copy and a removal, the body stays
    assert uids(await store.search_text(box.id, 1, top, rare)) == [1, 2]
    assert uids(await store.search_text(other.id, 1, top, rare)) == []
    await store.store_flags(box.id, [1], mode=StoreMode.ADD, flags=int(Flag.DELETED))
    await store.expunge(box.id)
    assert uids(await store.search_text(box.id, 1, top, rare)) == [2]
    await store.remove_messages(box.id, [2])  # the last reference
    assert uids(await store.search_text(box.id, 1, top, rare)) == []
    if isinstance(store, SQLiteStore):
        assert _count(store, "SELECT count(*) FROM fts_docs") == 0
        assert _count(store, "SELECT count(*) FROM fts_body WHERE fts_body MATCH '\"xyl\"'") == 0
        assert _count(store, "SELECT count(*) FROM fts_head WHERE fts_head MATCH '\"xyl\"'") == 0


@BODY_BACKENDS
async def test_new_metadata_is_indexed_and_metadata_less_bodies_are_candidates(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    req = mail(1, "later", "text computed afterwards", with_meta=False)
    await store.append(box.id, req)
    await store.append(box.id, mail(2, "other", "nothing to see"))
    top = 2**32 - 1
    found = await store.search_text(box.id, 1, top, TextTerm("body", "afterwards"))
    assert found is not None and uids(found) == [1] and found.unindexed == 1  # not indexed: scanned exactly
    found = await store.search_text(box.id, 1, top, TextTerm("body", "nothing"))
    assert found is not None and uids(found) == [1, 2] and found.unindexed == 1
    info = (await store.list_messages(box.id))[0]
    await store.write_metas({info.blob_id: compute_meta(req.raw).to_bytes()})
    found = await store.search_text(box.id, 1, top, TextTerm("body", "nothing"))
    assert found is not None and uids(found) == [2] and found.unindexed == 0


@BODY_BACKENDS
async def test_concurrent_deliveries_are_found_at_once_and_indexed_once(store: Store) -> None:
    """Deliveries written together (one group commit on SQLite) are found by SEARCH as soon as each returns:
    through the index, or, for the bodies SQLite's writer parked in the backlog because more jobs were waiting
    (engine invariant 10), as unindexed candidates; once the writer is idle they are all indexed. A body
    delivered by several jobs at once is indexed once; a job that fails after storing its body (over quota)
    leaves no index row and no backlog row behind."""
    users = [await new_user(store, f"u{i}@example.org") for i in range(3)]
    boxes = [await inbox(store, u) for u in users]
    full = await new_user(store, "full@example.org")
    await store.set_user_quota("full@example.org", messages=1)
    await store.append((await inbox(store, full)).id, mail(99, "filler", "the one message allowed"))
    shared = mail(50, "shared circular", "for every member of the list")
    refused = mail(51, "refused letter", "zebrafinch over quota")
    calls = [store.deliver([boxes[0].id], mail(i, f"note {i}", f"walrus{i:03d} in the body")) for i in range(20)]
    calls += [store.deliver([b.id], shared) for b in boxes]
    calls.append(store.deliver([(await inbox(store, full)).id], refused))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, list) for r in results[:-1]), results
    assert isinstance(results[-1], OverQuota)
    top = 2**32 - 1
    uid_of = [r[0].uid for r in results[:20]]  # type: ignore[index]
    for i in range(20):
        found = await store.search_text(boxes[0].id, 1, top, TextTerm("body", f"walrus{i:03d}"))
        assert found is not None and uid_of[i] in uids(found), i
    await wait_indexed(store, *(b.id for b in boxes))
    for i in range(20):
        found = await store.search_text(boxes[0].id, 1, top, TextTerm("body", f"walrus{i:03d}"))
        assert found is not None and uids(found) == [uid_of[i]] and found.unindexed == 0, i
    for box in boxes:
        found = await store.search_text(box.id, 1, top, TextTerm("subject", "circular"))
        assert found is not None and len(uids(found)) == 1 and found.unindexed == 0
    full_box = await inbox(store, full)
    assert uids(await store.search_text(full_box.id, 1, top, TextTerm("body", "zebrafinch"))) == []
    step = await store.index_backlog(100)
    assert (step.looked, step.remaining) == (0, 0)  # nothing was left to the backlog


async def test_a_busy_writer_parks_index_rows_and_writes_them_when_idle(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Engine invariant 10, made to happen: a batch that ends while another job waits puts its new bodies in
    the backlog instead of indexing them; SEARCH finds them at once (as unindexed candidates); a parked body
    removed before the writer is idle leaves nothing behind; the others are indexed once the writer had no job
    for `IDLE_SECONDS`, in transactions of their own, and the backlog is empty again."""
    store = SQLiteStore(tmp_path / "postroom.db", tmp_path / "blobs")
    store.parks = True  # as `postroom serve` has it (engine invariant 10)
    await store.open()
    engine = store._engine
    try:
        box = await inbox(store, await new_user(store))
        releases: list[threading.Event] = []

        def holder() -> tuple[asyncio.Future[None], threading.Event, threading.Event]:
            """A write job that keeps the writer inside its batch until released."""
            started, release = threading.Event(), threading.Event()
            releases.append(release)

            def hold(tx: object) -> None:
                started.set()
                release.wait(10)

            return asyncio.ensure_future(engine.write(hold)), started, release

        first, started1, release1 = holder()  # batch 1: the writer waits in it
        await asyncio.to_thread(started1.wait, 10)
        deliveries = [asyncio.ensure_future(store.append(box.id, mail(i, f"parked {i}", f"heron{i} story")))
                      for i in range(1, 4)]
        second, started2, release2 = holder()  # batch 2 = the three deliveries, then this
        await asyncio.sleep(0.1)  # the three appends and `second` are queued behind batch 1
        release1.set()
        await first
        await asyncio.to_thread(started2.wait, 10)  # batch 2 runs...
        later = asyncio.ensure_future(store.append(box.id, mail(9, "latecomer", "comes while batch 2 runs")))
        await asyncio.sleep(0.1)  # ...while `later` waits for the writer: batch 2 parks its index rows
        release2.set()
        await asyncio.gather(second, *deliveries, later)
        assert _count(store, "SELECT count(*) FROM fts_backlog") >= 3
        top = 2**32 - 1
        found = await store.search_text(box.id, 1, top, TextTerm("body", "heron2"))
        assert found is not None and 2 in uids(found) and found.unindexed >= 3
        await store.remove_messages(box.id, [3])  # parked, then gone before the writer is idle
        caplog.set_level(logging.DEBUG, logger="postroom.store")
        for _ in range(200):
            if _count(store, "SELECT count(*) FROM fts_backlog") == 0:
                break
            await asyncio.sleep(0.05)
        assert _count(store, "SELECT count(*) FROM fts_backlog") == 0
        found = await store.search_text(box.id, 1, top, TextTerm("body", "heron2"))
        assert found is not None and uids(found) == [2] and found.unindexed == 0
        assert uids(await store.search_text(box.id, 1, top, TextTerm("body", "heron3"))) == []
        assert _count(store, "SELECT count(*) FROM fts_docs") == 3  # 1, 2 and the latecomer
        assert any("full-text index caught up" in r.getMessage() for r in caplog.records)
    finally:
        for release in releases:
            release.set()
        await store.close()


async def test_a_batch_that_waited_for_another_process_parks_its_index_rows(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Engine invariant 10 across processes: a batch that found the writer flock held (another process writing:
    here a second open file description of the lock file, which `flock` treats alike) parks its new bodies'
    index rows, though no job of its own process waits; they are indexed once the writer is idle."""
    store = SQLiteStore(tmp_path / "postroom.db", tmp_path / "blobs")
    store.parks = True  # as `postroom serve` has it (engine invariant 10)
    await store.open()
    other = os.open(f"{store.path}-writer.lock", os.O_RDWR)
    try:
        box = await inbox(store, await new_user(store))
        caplog.set_level(logging.DEBUG, logger="postroom.store")
        fcntl.flock(other, fcntl.LOCK_EX)  # "another process" writes
        delivery = asyncio.ensure_future(store.append(box.id, mail(1, "contended", "plover tale")))
        await asyncio.sleep(0.2)  # the writer took the job and waits for the flock
        fcntl.flock(other, fcntl.LOCK_UN)
        await delivery
        await wait_indexed(store, box.id)
        assert [r.getMessage() for r in caplog.records if "caught up" in r.getMessage()] == [
            "store writer: full-text index caught up, 1 parked items done"]
        found = await store.search_text(box.id, 1, 2**32 - 1, TextTerm("body", "plover"))
        assert found is not None and uids(found) == [1] and found.unindexed == 0
    finally:
        os.close(other)
        await store.close()


async def test_a_store_that_does_not_park_indexes_a_contended_batch_itself(tmp_path: Path) -> None:
    """Engine invariant 10: a process that does not work the backlog off when it starts (a command-line tool
    such as `postroom import` beside the server: `parks` is False, the default) writes the full-text rows of a
    batch that waited for another process's writer itself, so it leaves nothing in the backlog when it exits."""
    store = SQLiteStore(tmp_path / "postroom.db", tmp_path / "blobs")
    assert store.parks is False
    await store.open()
    other = os.open(f"{store.path}-writer.lock", os.O_RDWR)
    try:
        box = await inbox(store, await new_user(store))
        fcntl.flock(other, fcntl.LOCK_EX)  # the server writes
        delivery = asyncio.ensure_future(store.append(box.id, mail(1, "imported", "curlew tale")))
        await asyncio.sleep(0.2)  # the writer took the job and waits for the flock
        fcntl.flock(other, fcntl.LOCK_UN)
        await delivery
    finally:
        os.close(other)
        await store.close()
    assert _count(store, "SELECT count(*) FROM fts_backlog") == 0
    assert _count(store, "SELECT count(*) FROM fts_docs") == 1


def test_the_writers_load_decides_how_often_parked_steps_run_between_batches(tmp_path: Path) -> None:
    """Engine invariant 10: the writer's load is an exponential moving average (time constant `LOAD_WINDOW`)
    of the share of time it waited for or held the write lock; between batches a parked step is due after
    `PARKED_LAG` while that load is under `LOAD_LOW` or more than `PARKED_SOFT` items are parked, and
    otherwise only after `PARKED_LAG_BUSY`."""
    from postroom.store.sqlite import engine as E

    e = SQLiteStore(tmp_path / "postroom.db", tmp_path / "blobs")._engine  # never opened: no writer thread
    now = time.monotonic()
    e._load, e._load_at = 0.0, now - E.LOAD_WINDOW
    e._note_load(now - E.LOAD_WINDOW)  # busy for the whole window
    assert abs(e._load - (1 - math.exp(-1))) < 0.02
    e._load_at = time.monotonic() - 3 * E.LOAD_WINDOW
    e._note_load(time.monotonic())  # then three windows idle
    assert e._load < 0.632 * math.exp(-3) + 0.01
    e._parked_since = time.monotonic() - (E.PARKED_LAG + 0.5)
    e._load = E.LOAD_LOW - 0.1
    assert e._parked_step_due()
    e._load = E.LOAD_LOW + 0.1
    assert not e._parked_step_due()
    e._parked_count = E.PARKED_SOFT + 1
    assert e._parked_step_due()
    e._parked_count = E.PARKED_SOFT
    assert not e._parked_step_due()
    e._parked_since = time.monotonic() - (E.PARKED_LAG_BUSY + 0.5)
    assert e._parked_step_due()


async def test_parked_bodies_are_indexed_together_and_only_indexed_ones_leave_the_backlog(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fts.index_parked`, the idle writer's step (engine invariant 10): the parked bodies still in the backlog
    are indexed in one pass, as a batch's are, and leave it; one whose metadata is of an older format stays in
    it (for `postroom index`), one removed meanwhile leaves nothing behind: schema invariant 12 ("exactly one
    of `fts_docs` and `fts_backlog`") holds after, and SEARCH finds the indexed ones through the index."""
    store = SQLiteStore(tmp_path / "postroom.db", tmp_path / "blobs")
    await store.open()
    try:
        box = await inbox(store, await new_user(store))
        with monkeypatch.context() as m:  # delivered as a parking batch leaves them: in the backlog
            m.setattr(fts, "index_later", lambda tx, blob_id, meta, parsed: tx.conn.execute(
                "INSERT OR IGNORE INTO fts_backlog(blob_id) VALUES (?)", (blob_id,)))
            await store.append_many(box.id, [mail(i, f"parked {i}", f"kestrel{i} tale") for i in range(1, 5)])
        ids = [m.blob_id for m in await store.list_messages(box.id)]
        conn = sqlite3.connect(store.path)
        conn.execute("UPDATE blobs SET meta = CAST('{\"v\":1}' AS BLOB) WHERE id = ?", (ids[3],))  # older format
        conn.commit()
        conn.close()
        await store.remove_messages(box.id, [3])
        await store._engine.write(lambda tx: fts.index_parked(tx.conn, ids))
        assert _ids(store, "SELECT blob_id FROM fts_docs") == {ids[0], ids[1]}
        assert _ids(store, "SELECT blob_id FROM fts_backlog") == {ids[3]}
        found = await store.search_text(box.id, 1, 2**32 - 1, TextTerm("body", "kestrel2"))
        assert found is not None and uids(found) == [2, 4] and found.unindexed == 1  # 4: a candidate, unindexed
    finally:
        await store.close()


async def test_a_parked_batch_backlogs_only_bodies_that_are_there_and_not_indexed(tmp_path: Path) -> None:
    """Schema invariant 12 ("exactly one of `fts_docs` and `fts_backlog`") at the commit of a batch that parks
    (engine invariant 10): in one batch, a body stored new (its rows deferred), the same body stored again by a
    later job (then indexed at once: `acquire_blob` indexes a stored body that is not indexed yet), and a body
    stored and removed again. `park_new` must not put the indexed body in the backlog too, nor record a body
    that is gone. Checked while the writer is held in the next batch, before it is idle."""
    store = SQLiteStore(tmp_path / "postroom.db", tmp_path / "blobs")
    store.parks = True  # as `postroom serve` has it (engine invariant 10)
    await store.open()
    engine = store._engine
    releases: list[threading.Event] = []
    try:
        box = await inbox(store, await new_user(store))

        def holder() -> tuple[asyncio.Future[None], threading.Event]:
            started, release = threading.Event(), threading.Event()
            releases.append(release)

            def hold(tx: object) -> None:
                started.set()
                release.wait(10)

            return asyncio.ensure_future(engine.write(hold)), started

        first, started1 = holder()  # batch 1: the writer waits in it
        await asyncio.to_thread(started1.wait, 10)
        twice = mail(1, "twice", "the same ostrich body")
        batch2 = [asyncio.ensure_future(store.append(box.id, twice)),  # UID 1: new, deferred
                  asyncio.ensure_future(store.append(box.id, twice)),  # UID 2: stored already, indexed now
                  asyncio.ensure_future(store.append(box.id, mail(3, "brief", "a short-lived kiwi"))),  # UID 3
                  asyncio.ensure_future(store.remove_messages(box.id, [3]))]  # ... gone in the same batch
        second, started2 = holder()  # the last job of batch 2
        await asyncio.sleep(0.1)  # all queued behind batch 1
        releases[0].set()
        await first
        await asyncio.to_thread(started2.wait, 10)  # batch 2 runs...
        third, started3 = holder()  # ...while this waits: batch 2 parks; then this holds the writer
        await asyncio.sleep(0.1)
        releases[1].set()
        await asyncio.gather(second, *batch2)
        await asyncio.to_thread(started3.wait, 10)  # the writer is in batch 3: nothing parked was run yet
        assert _count(store, "SELECT count(*) FROM messages") == 2
        both = _count(store, "SELECT count(*) FROM fts_docs d JOIN fts_backlog b ON b.blob_id = d.blob_id")
        gone = _count(store, "SELECT count(*) FROM fts_backlog b WHERE b.blob_id NOT IN (SELECT id FROM blobs)")
        assert (both, gone) == (0, 0), f"{both} bodies indexed and in the backlog, {gone} backlog rows of none"
        releases[2].set()
        await third
        found = await store.search_text(box.id, 1, 2**32 - 1, TextTerm("body", "ostrich"))
        assert uids(found) == [1, 2]
    finally:
        for release in releases:
            release.set()
        await store.close()


async def test_parked_bodies_are_indexed_while_writes_keep_coming(tmp_path: Path) -> None:
    """A busy server is rarely idle for `IDLE_SECONDS`: with one write every 20 ms (each its own batch, none
    parks), bodies parked by an earlier burst must still be indexed while the trickle goes on, or the backlog
    (and the cost of every SEARCH, which reads backlog bodies from their metadata) only grows until the
    traffic stops. Measured on `postroom serve` with 10 SMTP sessions at ~110 messages/s: the backlog grew by
    ~25 bodies/s for as long as the traffic lasted and SEARCH BODY took 50-250 ms instead of 1-3 ms."""
    store = SQLiteStore(tmp_path / "postroom.db", tmp_path / "blobs")
    store.parks = True  # as `postroom serve` has it (engine invariant 10)
    await store.open()
    engine = store._engine
    release, release2 = threading.Event(), threading.Event()
    try:
        box = await inbox(store, await new_user(store))
        started, started2 = threading.Event(), threading.Event()

        def hold(tx: object) -> None:
            started.set()
            release.wait(10)

        def hold2(tx: object) -> None:  # the last job of the burst's batch: keeps it open until the trickle waits
            started2.set()
            release2.wait(10)

        def nothing(tx: object) -> None:
            return None

        held = asyncio.ensure_future(engine.write(hold))
        await asyncio.to_thread(started.wait, 10)
        burst = [asyncio.ensure_future(store.append(box.id, mail(i, f"burst {i}", f"grebe{i} story")))
                 for i in range(1, 301)]
        burst.append(asyncio.ensure_future(engine.write(hold2)))
        await asyncio.sleep(0.2)  # queued behind `held`: one batch of the 300 appends and `hold2`
        release.set()
        await held
        await asyncio.to_thread(started2.wait, 10)
        trickle = [asyncio.ensure_future(engine.write(nothing))]  # waits for the writer as the batch ends
        await asyncio.sleep(0.1)
        release2.set()
        await asyncio.gather(*burst)
        assert _count(store, "SELECT count(*) FROM fts_backlog") > 0  # the burst's batch parked
        for _ in range(300):  # 6 s of writes, never IDLE_SECONDS apart
            trickle.append(asyncio.ensure_future(engine.write(nothing)))
            await asyncio.sleep(0.02)
            if _count(store, "SELECT count(*) FROM fts_backlog") == 0:
                break
        await asyncio.gather(*trickle)
        assert _count(store, "SELECT count(*) FROM fts_backlog") == 0, "parked bodies wait for an idle writer"
    finally:
        release.set()
        release2.set()
        await store.close()


async def test_index_rows_that_cannot_be_written_leave_the_body_in_the_backlog(tmp_path: Path) -> None:
    """fts.py invariant 1 when the batch's index step fails (here a real constraint: an `fts_scan` row already
    holds the document id the next body takes): the delivery still succeeds, its body waits in the backlog and
    is found by the exact check meanwhile, and the backlog indexes it once the obstacle is gone."""
    store = SQLiteStore(tmp_path / "postroom.db", tmp_path / "blobs")
    await store.open()
    try:
        box = await inbox(store, await new_user(store))
        await store.append(box.id, mail(1, "first", "indexed as usual"))
        conn = sqlite3.connect(store.path)
        try:
            (seq,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'fts_docs'").fetchone()
            conn.execute("INSERT INTO fts_scan(docid, form) VALUES (?, x'00')", (int(seq) + 1,))
            conn.commit()
        finally:
            conn.close()
        await store.append(box.id, mail(2, "second", "kingfisher in the backlog"))
        top = 2**32 - 1
        found = await store.search_text(box.id, 1, top, TextTerm("body", "kingfisher"))
        assert found is not None and uids(found) == [2] and found.unindexed == 1
        assert _count(store, "SELECT count(*) FROM fts_backlog") == 1
        conn = sqlite3.connect(store.path)
        try:
            conn.execute("DELETE FROM fts_scan WHERE docid = ?", (int(seq) + 1,))
            conn.commit()
        finally:
            conn.close()
        step = await store.index_backlog(100)
        assert (step.indexed, step.remaining) == (1, 0)
        found = await store.search_text(box.id, 1, top, TextTerm("body", "kingfisher"))
        assert found is not None and uids(found) == [2] and found.unindexed == 0
    finally:
        await store.close()


def _ids(store: SQLiteStore, sql: str) -> set[str]:
    conn = sqlite3.connect(store.path)
    try:
        return {str(r[0]) for r in conn.execute(sql)}
    finally:
        conn.close()


def _count(store: SQLiteStore, sql: str) -> int:
    conn = sqlite3.connect(store.path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


async def test_a_schema_7_store_with_messages_is_indexed_in_steps(tmp_path: Path) -> None:
    """Schema step 10 (with 8 and 9) on a store as version 7 left it: every body in the backlog (searched
    exactly meanwhile), then indexed in steps by `index_backlog`; a body with an older metadata format is
    reported for upgrade."""
    db, blobs = tmp_path / "v7.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs, inline_max=1000)
    await store.open()
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [mail(i, f"subject {i}", f"body {i} " + ("filler " * (i * 40))) for i in range(30)])
    old = mail(99, "old format", "rare-word-here")
    await store.append(box.id, old)
    await store.close()
    downgrade(db, 7)  # exactly the version 7 schema, with the rows
    conn = sqlite3.connect(db)
    conn.execute("UPDATE blobs SET meta = CAST('{\"v\":1}' AS BLOB)"  # an older metadata format
                 " WHERE id = (SELECT blob_id FROM messages WHERE uid = 31)")
    conn.commit()
    conn.close()

    store = SQLiteStore(db, blobs, inline_max=1000)
    await store.open()
    try:
        top = 2**32 - 1
        found = await store.search_text(box.id, 1, top, TextTerm("subject", "subject 7"))
        assert found is not None and found.unindexed == 31 and len(found.messages) == 31  # all scanned
        steps = []
        after = ""
        while True:
            step = await store.index_backlog(8, after)
            steps.append(step)
            if step.remaining == 0:
                break
            after = step.last
        assert [s.looked for s in steps] == [8, 8, 8, 7] and sum(s.indexed for s in steps) == 30
        needs = [b for s in steps for b in s.needs_meta]
        assert len(needs) == 1
        found = await store.search_text(box.id, 1, top, TextTerm("subject", "subject 7"))
        assert found is not None and uids(found) == [8, 31] and found.unindexed == 1  # 31: not indexed yet
        await store.write_metas({needs[0]: compute_meta(old.raw).to_bytes()})
        found = await store.search_text(box.id, 1, top, TextTerm("body", "RARE-WORD"))
        assert found is not None and uids(found) == [31] and found.unindexed == 0
        assert (await store.index_backlog(8)).looked == 0
    finally:
        await store.close()


async def test_an_index_of_another_version_is_built_again(tmp_path: Path) -> None:
    """fts.py invariant 2: rows are deleted with values derived again from the metadata, so an index made by a
    derivation of another version (another Python Unicode database, another text format) cannot be trusted:
    opening the store empties it and puts every body back in the backlog; searches stay right meanwhile."""
    db, blobs = tmp_path / "s.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [mail(1, "alpha report", "one"), mail(2, "beta report", "two")])
    await store.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'fts_version'")
    conn.commit()
    conn.close()
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        top = 2**32 - 1
        found = await store.search_text(box.id, 1, top, TextTerm("subject", "alpha"))
        assert found is not None and uids(found) == [1, 2] and found.unindexed == 2
        assert _count(store, "SELECT count(*) FROM fts_docs") == 0
        step = await store.index_backlog(10)
        assert (step.looked, step.indexed, step.remaining) == (2, 2, 0)
        found = await store.search_text(box.id, 1, top, TextTerm("subject", "alpha"))
        assert found is not None and uids(found) == [1] and found.unindexed == 0
    finally:
        await store.close()


async def test_build_index_works_off_the_backlog_with_a_progress_display(tmp_path: Path) -> None:
    """`postroom index` (indexing.build_index): a schema-7 store with messages, one with an older metadata
    format, is indexed in steps with a progress display; the older metadata is computed again and stored."""
    import io

    from postroom.config import LimitsConfig
    from postroom.indexing import build_index
    from postroom.progress import Progress

    db, blobs = tmp_path / "v7.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [mail(i, f"subject {i}", f"body {i}") for i in range(450)])
    await store.close()
    downgrade(db, 7)  # exactly the version 7 schema, with the rows
    conn = sqlite3.connect(db)
    conn.execute("UPDATE blobs SET meta = CAST('{\"v\":1}' AS BLOB) WHERE id = (SELECT blob_id FROM messages"
                 " WHERE uid = 5)")
    conn.commit()
    conn.close()
    out = io.StringIO()
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        done = await build_index(store, LimitsConfig(), lambda total, label: Progress(total, label, out, tty=False))
        assert done == 450
        assert out.getvalue().startswith("index: 450 messages")  # the summary line of a non-terminal display
        found = await store.search_text(box.id, 1, 2**32 - 1, TextTerm("subject", "subject 4"))
        assert found is not None and found.unindexed == 0
        assert [m.uid for m in found.messages] == [5, *range(41, 51), *range(401, 451)]
        assert await build_index(store, LimitsConfig()) == 0  # nothing left
    finally:
        await store.close()


@BODY_BACKENDS
async def test_index_follows_bodies_stored_copied_moved_and_removed_in_one_batch(store: Store) -> None:
    """Writes that reach the engine together (one group commit on SQLite, where the index rows of new bodies are
    written after the batch's last job: fts.py `index_later`, engine invariant 9) and act on the same bodies: a
    body stored, copied, moved, expunged and stored again, a body whose last reference goes while another job
    delivers it anew. Whatever order the engine ran them in, every message is found through the index by its
    words, and only those (fts.py invariant 1: no body left out of both the index and the backlog)."""
    user = await new_user(store)
    box = await inbox(store, user)
    other = await store.create_mailbox(user.id, "Other")
    await store.append(box.id, mail(1, "first", "walrus old"))
    nxt = (await store.get_mailbox_by_id(box.id)).uidnext  # type: ignore[union-attr]
    await asyncio.gather(
        store.append(box.id, mail(2, "second", "okapi two")),
        store.copy_messages(box.id, [nxt], other.id),
        store.append(box.id, mail(3, "third", "quokka three")),
        store.move_messages(box.id, [nxt + 1], other.id),
        store.append(box.id, mail(4, "fourth", "narwhal four")),
        store.store_flags(box.id, [nxt + 2], mode=StoreMode.ADD, flags=int(Flag.DELETED)),
        store.expunge(box.id, [nxt + 2]),
        store.append(box.id, mail(4, "fourth", "narwhal four")),  # the same body again
        store.remove_messages(box.id, [1]),  # the last reference of "walrus" ...
        store.deliver([other.id], mail(1, "first", "walrus old")),  # ... and a new one, in the same batch
        return_exceptions=True)
    top = 2**32 - 1
    for settled in (False, True):
        if settled:
            await wait_indexed(store, box.id, other.id)
        for mbox in (box, other):
            listed = await store.list_messages(mbox.id)
            bodies = {m.uid: await store.read_message(m.blob_id) for m in listed}
            for word in ("walrus", "okapi", "quokka", "narwhal"):
                found = await store.search_text(mbox.id, 1, top, TextTerm("body", word))
                assert found is not None, (mbox.name, word)
                has = [u for u, raw in bodies.items() if word.encode() in raw]
                if not settled:  # parked bodies are candidates until indexed: none left out
                    assert set(has) <= set(uids(found)), (mbox.name, word)
                    continue
                assert found.unindexed == 0, (mbox.name, word)
                assert uids(found) == has, (mbox.name, word)
    step = await store.index_backlog(100)
    assert (step.looked, step.remaining) == (0, 0)  # nothing was left to the backlog
    if isinstance(store, SQLiteStore):  # no index row for a body that is gone
        assert _count(store, "SELECT count(*) FROM fts_docs d WHERE NOT EXISTS"
                             " (SELECT 1 FROM blobs b WHERE b.id = d.blob_id AND b.refcount > 0)") == 0


@BODY_BACKENDS
async def test_a_body_whose_index_rows_cannot_be_derived_costs_no_other_its_index(
        store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite's fts.py invariant 6 (PostgreSQL's 3): when deriving a body's rows raises (a fault on its text,
    injected here into `scanform.build` for one subject), its message is still stored, the bodies written with
    it are indexed, and it stays in the backlog, found by every search as a candidate to check exactly; a step
    of the backlog passes over it (no new metadata asked for) instead of failing, and says so in the log."""
    real = scanform.build

    def build(parsed: Any) -> bytes:
        if "POISON" in parsed.keys.subject.upper():
            raise ValueError("a derivation fault (test)")
        return real(parsed)

    monkeypatch.setattr(scanform, "build", build)
    box = await inbox(store, await new_user(store))
    subjects = ["fine one", "fine two", "poison pill", "fine four", "fine five"]
    results = await asyncio.gather(*(store.append(box.id, mail(n, s, f"body {n}"))
                                     for n, s in enumerate(subjects, 1)))
    assert sorted(r.uid for r in results) == [1, 2, 3, 4, 5]  # nobody refused
    uid_of = {s: r.uid for s, r in zip(subjects, results, strict=True)}  # (jobs may run in another order)
    top = 2**32 - 1
    for _ in range(200):  # (at once here; a store that parks would write them once idle: engine invariant 10)
        found = await store.search_text(box.id, 1, top, TextTerm("subject", "five"))
        if found is not None and found.unindexed == 1:
            break
        await asyncio.sleep(0.05)
    assert found is not None and found.unindexed == 1  # the poison pill alone is in the backlog
    poison = uid_of["poison pill"]
    assert uids(found) == sorted([uid_of["fine five"], poison])  # the match, and the one to check exactly
    assert uids(await store.search_text(box.id, 1, top, TextTerm("subject", "poison"))) == [poison]
    step = await store.index_backlog(100)
    assert (step.looked, step.indexed, step.needs_meta, step.remaining) == (1, 0, [], 0)
    assert "cannot be indexed" in caplog.text
    monkeypatch.setattr(scanform, "build", real)  # the fault mended: the next step indexes it
    assert (await store.index_backlog(100)).indexed == 1
    assert (await store.search_text(box.id, 1, top, TextTerm("subject", "five"))).unindexed == 0  # type: ignore[union-attr]
