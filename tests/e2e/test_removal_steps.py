"""Removals larger than one write job of the SQLite store (store/sqlite/messages.py invariant 9: `REMOVE_STEP`
messages a job) over real clients: IMAP EXPUNGE and UID EXPUNGE, their responses to the session that removes and
to one that watches, with and without QRESYNC, and POP3 QUIT deleting more than a step's worth."""

# ruff: noqa: F811 (the fixtures imported from ann_support are test arguments: pytest's way)
from __future__ import annotations

import poplib
import re
from typing import Any

from ann_support import ADDR, PW, imap, raw, server_overrides, srv  # noqa: F401 (fixtures)
from imap_support import fill

from postroom.store.sqlite.messages import REMOVE_STEP

COUNT = 2 * REMOVE_STEP + 203  # three steps' worth, the last one short
KEPT = (1, REMOVE_STEP + 100, COUNT)  # one at each end and one inside the second step


def _expected_expunges(kept: tuple[int, ...]) -> list[bytes]:
    """RFC 9051 §7.5.1: each EXPUNGE response's number is the message's number after the ones before it went;
    removed in ascending order, so each UID's number is 1 + how many kept UIDs lie below it."""
    return [b"* %d EXPUNGE\r\n" % (1 + sum(k < uid for k in kept)) for uid in range(1, COUNT + 1) if uid not in kept]


def _vanished(line: bytes) -> set[int]:
    found = set()
    for part in line.split(b" ")[-1].strip().split(b","):
        low, _, high = part.partition(b":")
        found.update(range(int(low), int(high or low) + 1))
    return found


def test_expunge_of_several_steps_numbers_every_response_in_order(imap: Any) -> None:
    fill(imap, ADDR, PW, COUNT)
    r, watcher, resync = raw(imap), raw(imap), raw(imap)
    r.cmd("a SELECT INBOX")
    watcher.cmd("a SELECT INBOX")
    resync.cmd("a ENABLE QRESYNC")
    resync.cmd("b SELECT INBOX")
    keep = ",".join(str(u) for u in KEPT)
    assert r.cmd("b STORE 1:* +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"b OK")
    assert r.cmd(f"c STORE {keep} -FLAGS.SILENT (\\Deleted)")[-1].startswith(b"c OK")
    out = r.cmd("d EXPUNGE")
    assert out[-1] == b"d OK EXPUNGE completed\r\n"
    assert out[:-1] == _expected_expunges(KEPT)
    assert r.cmd("e FETCH 1:* (UID)")[:-1] == [b"* %d FETCH (UID %d)\r\n" % (i + 1, u) for i, u in enumerate(KEPT)]
    # Another session learns of the same removals at its next NOOP, numbered in its own view.
    seen = [line for line in watcher.cmd("c NOOP") if b"EXPUNGE" in line]
    assert seen == _expected_expunges(KEPT)
    assert watcher.cmd("d FETCH 1:* (UID)")[:-1] == r.cmd("f FETCH 1:* (UID)")[:-1]
    # With QRESYNC (RFC 7162 §3.2.10.2): VANISHED, each removed UID once.
    lines = resync.cmd("c NOOP")
    vanished: list[int] = []
    for line in lines:
        if line.startswith(b"* VANISHED"):
            vanished.extend(sorted(_vanished(line)))
    assert sorted(vanished) == [u for u in range(1, COUNT + 1) if u not in KEPT]
    assert len(set(vanished)) == len(vanished)


def test_uid_expunge_of_several_steps_removes_only_the_named_deleted_messages(imap: Any) -> None:
    fill(imap, ADDR, PW, COUNT)
    r = raw(imap)
    r.cmd("a ENABLE QRESYNC")
    r.cmd("b SELECT INBOX")
    r.cmd("c STORE 1:* +FLAGS.SILENT (\\Deleted)")
    high = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(r.cmd("d STATUS INBOX (HIGHESTMODSEQ)"))).group(1))  # type: ignore[union-attr]
    # Named: every UID but the last; among them, one whose \Deleted is gone again stays (RFC 4315 §2.1).
    r.cmd(f"e UID STORE {REMOVE_STEP + 1} -FLAGS.SILENT (\\Deleted)")
    out = r.cmd(f"f UID EXPUNGE 1:{COUNT - 1}")
    assert out[-1].startswith(b"f OK [HIGHESTMODSEQ ")
    gone = set()
    for line in out[:-1]:
        assert line.startswith(b"* VANISHED "), line
        gone |= _vanished(line)
    assert gone == set(range(1, COUNT)) - {REMOVE_STEP + 1}
    top = int(re.search(rb"HIGHESTMODSEQ (\d+)", out[-1]).group(1))  # type: ignore[union-attr]
    assert top >= high + len(gone)  # every expunge a MODSEQ of its own (RFC 7162 §3.2.10)
    assert r.cmd("g UID SEARCH ALL")[0] == b"* SEARCH %d %d\r\n" % (REMOVE_STEP + 1, COUNT)
    # A resync from before the removal learns every removed UID (RFC 7162 §3.2.5.2, VANISHED (EARLIER)).
    r2 = raw(imap)
    r2.cmd("a ENABLE QRESYNC")
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(r2.cmd("b STATUS INBOX (UIDVALIDITY)"))).group(1))  # type: ignore[union-attr]
    lines = r2.cmd(f"c SELECT INBOX (QRESYNC ({uidvalidity} {high}))")
    earlier = set()
    for line in lines:
        if line.startswith(b"* VANISHED (EARLIER) "):
            earlier |= _vanished(line)
    assert earlier == gone


def test_pop3_quit_deletes_several_steps_of_messages(imap: Any) -> None:
    mailbox_id = fill(imap, ADDR, PW, COUNT)
    p = poplib.POP3("127.0.0.1", imap.port("pop3"), timeout=30)
    p.stls(imap.tls_client_context())
    p.user(ADDR)
    p.pass_(PW)
    assert p.stat()[0] == COUNT
    for n in range(1, COUNT + 1):
        if n not in KEPT:
            p.dele(n)
    assert p.quit().startswith(b"+OK")
    assert [m.uid for m in imap.run(imap.store.list_messages(mailbox_id))] == list(KEPT)
