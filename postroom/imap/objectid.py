"""OBJECTID (RFC 8474): MAILBOXID, EMAILID and THREADID, and the lazy fill of sort keys they and SORT share.

Theory of operation
-------------------
The three identifiers are derived from what the store keeps, so none needs a column of its own:

* MAILBOXID (RFC 8474 §4): from the mailbox's id and UIDVALIDITY, both fixed for the mailbox's life: RENAME
  keeps them (the renamed row is the same mailbox), and a mailbox deleted and created again gets new ones
  (store invariant 3). INBOX's RENAME moves its messages to a new mailbox, which gets a new MAILBOXID, while
  INBOX keeps its own (RFC 8474 §4.2 asks exactly that).
* EMAILID (RFC 8474 §5.1): from the user and the body (content-addressed): a COPY or MOVE keeps it, as the RFC
  requires; two deliveries of the same bytes to one user share it, which §5.1 allows. The user is part of it,
  so equal bodies of two users do not show the same identifier.
* THREADID (RFC 8474 §5.2): from the thread id the store gave the message when it was stored
  (`Store.thread_ids`); NIL while a message stored by an older version has none yet, which `ensure_keys`
  fills in (the metadata is recomputed and written back, and the store gives the thread then).

Each is a letter and 24 hex digits of a SHA-256 (RFC 8474 §7: a digest must resist collisions; a prefix lets the
algorithm change later), within `objectid` = 1*255(ALPHA / DIGIT / "_" / "-") of §6, and never all digits.

Invariants
1. An identifier depends only on values that never change for its object (mailbox id and UIDVALIDITY; user id
   and body hash; thread id), so it is stable across sessions, restarts and RENAME.
2. `ensure_keys` loads metadata `META_BATCH` bodies per store call and writes back what it computed, so each
   body of an older store is upgraded once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from postroom.store.api import MessageInfo, SortRow

from . import parser as P
from .session import Session


def _digest(kind: str, value: str) -> str:
    return hashlib.sha256(f"postroom-{kind}:{value}".encode()).hexdigest()[:24]


def mailbox_id(mailbox: int, uidvalidity: int) -> str:
    """RFC 8474 §4 MAILBOXID of a mailbox."""
    return "F" + _digest("mailbox", f"{mailbox}:{uidvalidity}")


def email_id(user_id: int, blob_id: str) -> str:
    """RFC 8474 §5.1 EMAILID of a message of `user_id` whose body is `blob_id`."""
    return "M" + _digest("email", f"{user_id}:{blob_id}")


def thread_id(thread: int) -> str | None:
    """RFC 8474 §5.2 THREADID of a stored thread id; None (NIL) for 0, "not known yet"."""
    return "T" + _digest("thread", str(thread)) if thread else None


async def ensure_keys(s: Session, rows: Sequence[SortRow]) -> list[SortRow]:
    """`rows` with the sort keys of every body filled in: a row whose body has none stored (`known` 0: stored by
    an older version, or without metadata) gets them from its metadata, which is computed if needed and written
    back, so the store keeps the keys and gives the message its thread (invariant 2). A row whose message was
    expunged meanwhile is dropped."""
    missing = [i for i, r in enumerate(rows) if not r.known]
    if not missing:
        return list(rows)
    from .fetch import META_BATCH, prefetch_meta

    sel_id = s.sel.id if s.sel is not None else 0
    out: list[SortRow | None] = list(rows)
    for k in range(0, len(missing), META_BATCH):
        batch = [rows[i] for i in missing[k:k + META_BATCH]]
        infos = [MessageInfo(sel_id, r.uid, 0, r.internal_date, r.size, 0, frozenset(), r.blob_id) for r in batch]
        metas = await prefetch_meta(s, infos)
        back: dict[str, bytes] = {}
        for i, r in zip(missing[k:k + META_BATCH], batch):
            meta = metas.get(r.blob_id)
            if meta is None:
                out[i] = None
                continue
            kk = meta.keys
            out[i] = r._replace(known=1, sent=meta.sent_date, subject=kk.subject, reply=int(kk.reply),
                                from_=kk.from_, to=kk.to, cc=kk.cc, display_from=kk.display_from,
                                display_to=kk.display_to, message_id=kk.message_id,
                                references=" ".join(kk.references))
            back[r.blob_id] = meta.to_bytes()
        await s.store.write_metas(back)  # the store keeps the keys and gives the messages their thread
    return [r for r in out if r is not None]


OBJECT_KEYS = ("EMAILID", "THREADID")
SLICE = 5000  # identifiers computed between two yields


def object_keys(key: P.Key, out: list[P.Key]) -> None:
    """The EMAILID and THREADID keys of a search program (RFC 8474 §6)."""
    if key.op in OBJECT_KEYS:
        out.append(key)
    for a in key.args:
        if isinstance(a, P.Key):
            object_keys(a, out)


async def matching(s: Session, op: str, value: str) -> set[int]:
    """UIDs of the selected mailbox whose EMAILID or THREADID is `value` (SEARCH EMAILID / THREADID, RFC 8474
    §6): one listing, identifiers computed in slices."""
    sel = s.sel
    if sel is None or not sel.uids:
        return set()
    user = s.user.id if s.user is not None else 0
    out: set[int] = set()
    if op == "EMAILID":
        cols = await s.store.list_columns(sel.id, sel.uids[0], sel.uids[-1])
        pairs: list[tuple[int, str]] = list(zip(cols.uids, cols.blob_ids))
        for n, (uid, blob_id) in enumerate(pairs):
            if email_id(user, blob_id) == value:
                out.add(uid)
            if n % SLICE == SLICE - 1:
                await asyncio.sleep(0)
        return out
    threads = await s.store.thread_ids(sel.id, sel.uids[0], sel.uids[-1])
    names: dict[int, str | None] = {}
    for n, (uid, tid) in enumerate(threads.items()):
        name = names.get(tid)
        if name is None:
            name = names[tid] = thread_id(tid)
        if name == value:
            out.add(uid)
        if n % SLICE == SLICE - 1:
            await asyncio.sleep(0)
    return out
