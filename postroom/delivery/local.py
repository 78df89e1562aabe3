"""Local delivery (the MDA): one message into the INBOX of many local users, in one durable store write.

Theory of operation
-------------------
The router hands over the message bytes (already carrying the Received header of the hop that brought it), the
envelope sender and the users. `deliver_local` prepends `Return-Path:` (RFC 5321 §4.4: added at final
delivery, from the MAIL FROM reverse-path), parses the result once (`mime.pool.meta_bytes`: on the event loop
up to `mime.pool.INLINE_MAX` bytes, else in a worker process that is killed past `mime.pool.META_SECONDS`, the
message then stored with minimal metadata and a defect), and calls `store.deliver` once for all the INBOXes:
one transaction, one blob, one fsync shared with every concurrent delivery (group commit).

Invariants
1. Return-Path is the first line of the stored message; the rest is byte-exact as received.
2. When `deliver_local` returns, the message is durable in every INBOX it names (store invariant 1).
3. Each user gets at most one copy per call, whatever number of aliases led to them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from postroom.config import LimitsConfig
from postroom.mime import pool
from postroom.store.api import AppendRequest, NotFound, Store


def return_path(mail_from: str) -> bytes:
    # RFC 5321 §4.4: Return-Path: <reverse-path>; "<>" for the null sender. The address came through our
    # parser (no CR/LF, no '>').
    return b"Return-Path: <" + mail_from.encode("utf-8") + b">\r\n"


async def _inboxes(store: Store, user_ids: Iterable[int]) -> list[int]:
    boxes = []
    for uid in sorted(set(user_ids)):  # invariant 3
        box = await store.get_mailbox(uid, "INBOX")
        if box is None:
            raise NotFound(f"user {uid} has no INBOX")
        boxes.append(box.id)
    return boxes


async def deliver_local(store: Store, limits: LimitsConfig, user_ids: Iterable[int], mail_from: str,
                        raw: bytes, *, enforce_quota: bool = True) -> int:
    """Deliver to the INBOX of each user; returns how many INBOXes got it. OverQuota if one user cannot take it
    (nothing stored), unless `enforce_quota` is False (the server's own notices: store api invariant 12)."""
    boxes = await _inboxes(store, user_ids)
    if not boxes:
        return 0
    stored = return_path(mail_from) + raw  # invariant 1
    request = AppendRequest(raw=stored, meta=await pool.meta_bytes(stored, limits))
    await store.deliver(boxes, request, enforce_quota=enforce_quota)
    return len(boxes)


async def deliver_local_file(store: Store, limits: LimitsConfig, user_ids: Iterable[int], mail_from: str,
                             prefix: bytes, path: Path) -> int:
    """`deliver_local` of `prefix` + the staging file `path` (left in place), stored from the file
    (`Store.deliver_file`). The metadata scan needs the bytes: they are read once, in a thread, and dropped."""
    boxes = await _inboxes(store, user_ids)
    if not boxes:
        return 0
    head = return_path(mail_from) + prefix  # invariant 1
    stored = await asyncio.to_thread(lambda: head + path.read_bytes())
    meta = await pool.meta_bytes(stored, limits)
    del stored
    await store.deliver_file(boxes, path, prefix=head, meta=meta)
    return len(boxes)
