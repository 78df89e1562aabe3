"""The conversation view: a mailbox's messages grouped by the thread id stored for each at delivery.

Theory of operation
-------------------
Every message gets a thread id in the transaction that stores it (store/sqlite/threads.py: from its Message-ID,
References / In-Reply-To and base subject, RFC 5256 §3 REFERENCES; the id IMAP's THREADID and THREAD use, RFC
8474), so grouping needs no look at other messages' headers. A conversation is listed at the place of its newest
message in this mailbox (highest UID), newest conversation first, and shows the subject and sender of that
message, how many messages it has here, how many are unread, and the newest date.

A page walks the mailbox newest first (`Store.page_messages`, `WALK_CHUNK` records at a time, by UID), takes the
thread ids of those records (`Store.thread_ids` over the same UID range), and asks the thread index for each new
thread's summary (`Store.thread_summaries`: count, newest UID, newest date, unread). A thread whose newest UID
is the one just met starts a conversation row; one whose newest UID is above it was listed on an earlier page and
is skipped. The walk stops at `page_size` conversations or after `MAX_WALK` records, whichever comes first; the
next page starts below the last record walked (`?below=UID`). So a page reads at most `MAX_WALK` records and the
summaries of the threads among them, whatever the mailbox's size. A message without a thread id yet (stored
before thread ids existed, until its metadata is read) is a conversation of its own.

Opening a conversation (`thread_uids`) lists its messages in this mailbox, oldest first, at most `MAX_THREAD`.

Invariants
1. No page reads more than `MAX_WALK` message records plus the summaries of the threads among them.
2. A conversation appears on exactly one page of a walk from the top (at its newest message).
3. Only the signed-in user's own mailbox is read (mail.py resolves it); a thread id names messages of that
   mailbox alone (`thread_summaries` and `thread_uids` filter by mailbox).
"""

from __future__ import annotations

from dataclasses import dataclass

from postroom.store.api import Flag, Mailbox, MessageInfo, Store, ThreadSummary

WALK_CHUNK = 200  # records read per step of the walk
MAX_WALK = 2000  # records one page may walk (invariant 1)
MAX_THREAD = 500  # messages shown when a conversation is opened


@dataclass(frozen=True)
class Conversation:
    """One row of the conversation list: its newest message here and its summary."""

    thread_id: int  # 0: a message without a thread id (a conversation of one)
    newest: MessageInfo
    count: int
    unseen: int
    newest_date: float


@dataclass(frozen=True)
class ConversationPage:
    rows: list[Conversation]
    older: int | None  # the `below` of the next page, or None at the end


async def page(store: Store, box: Mailbox, size: int, below: int | None = None) -> ConversationPage:
    """Up to `size` conversations whose newest message is below UID `below` (None: the top). NotFound if the
    mailbox is gone."""
    rows: list[Conversation] = []
    seen: set[int] = set()
    walked = 0
    cursor = below
    last_uid: int | None = None
    while len(rows) < size and walked < MAX_WALK:
        chunk = await store.page_messages(box.id, min(WALK_CHUNK, MAX_WALK - walked), below=cursor)
        if not chunk:
            return ConversationPage(rows, None)
        walked += len(chunk)
        tids = await store.thread_ids(box.id, chunk[-1].uid, chunk[0].uid)
        fresh = {tids.get(m.uid, 0) for m in chunk} - seen - {0}
        summaries: dict[int, ThreadSummary] = await store.thread_summaries(box.id, sorted(fresh)) if fresh else {}
        for m in chunk:
            last_uid = m.uid
            tid = tids.get(m.uid, 0)
            if tid == 0:
                rows.append(Conversation(0, m, 1, 0 if m.flags & Flag.SEEN else 1, m.internal_date))
            elif tid not in seen:
                seen.add(tid)
                got = summaries.get(tid)
                if got is not None and got.newest_uid == m.uid:  # invariant 2: listed at its newest message
                    rows.append(Conversation(tid, m, got.messages, got.unseen, got.newest_date))
            if len(rows) >= size:
                break
        cursor = chunk[-1].uid
    if last_uid is None:
        return ConversationPage(rows, None)
    more = await store.page_messages(box.id, 1, below=last_uid)
    return ConversationPage(rows, last_uid if more else None)


async def messages(store: Store, box: Mailbox, thread_id: int) -> list[MessageInfo]:
    """The conversation's messages in `box`, oldest first (at most `MAX_THREAD`)."""
    out = []
    for uid in await store.thread_uids(box.id, thread_id, MAX_THREAD):
        info = await store.get_message(box.id, uid)
        if info is not None:
            out.append(info)
    return out
