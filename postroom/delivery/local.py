"""Local delivery (the MDA): one message into the INBOX of many local users, in one durable store write.

Theory of operation
-------------------
The router hands over the message bytes (already carrying the Received header of the hop that brought it), the
envelope sender and the users. `deliver_local` prepends `Return-Path:` (RFC 5321 §4.4: added at final
delivery, from the MAIL FROM reverse-path), parses the result once (`metapool.meta_pair`: on the event loop
up to `metapool.INLINE_MAX` bytes, else in a worker process that is killed past `metapool.META_SECONDS`, the
message then stored with minimal metadata and a defect), and calls `store.deliver` once for all the INBOXes:
one transaction, one blob, one fsync shared with every concurrent delivery (group commit). Metadata parsed on
the loop rides to the store decoded too (`AppendRequest.parsed`), so the store's writer does not decode it.

Invariants
1. Return-Path is the first line of the stored message; the rest is byte-exact as received.
2. When `deliver_local` returns, the message is durable in every INBOX it names (store invariant 1).
3. Each user gets at most one copy per call, whatever number of aliases led to them.
4. A message the inbound checks quarantined (DMARC, rspamd; `Envelope.junk`) goes to each user's Junk mailbox
   instead of the INBOX, with the `$Junk` keyword (the IANA IMAP keyword registry, RFC 5788: "the message is
   spam"; what Thunderbird and other clients read); a user without a Junk mailbox gets one made (special use
   \\Junk, RFC 6154). The same holds per user for the copies the sender rules file (router invariant 15).
5. A staged message (`deliver_local_file`) is stored from its file with the trace fields as a prefix the store
   writes before it, and its metadata is computed from the file by a worker: no copy of it in this process.
6. A message in memory is never copied to put Return-Path (and the caller's trace fields, `prefix`) in front:
   they ride as `AppendRequest.prefix`, the store writes them before the body, and the metadata of the joined
   bytes is computed from the pieces (`metapool.meta_bytes(prefix=...)`; joined only when parsed on the loop,
   at most `metapool.INLINE_MAX` bytes). Issue 17 item 5.
7. An INBOX id the caller passes (`inboxes`: the router's `recipient_facts`, read for this message) is used as
   given, not looked up again; the store's write still finds the mailbox in its transaction (NotFound if it
   went meanwhile, as when the lookup here raced a removal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

from postroom import metapool as pool
from postroom.config import LimitsConfig
from postroom.store.api import AlreadyExists, AppendRequest, NotFound, Store

JUNK_KEYWORDS = frozenset({"$Junk"})  # invariant 4


def return_path(mail_from: str) -> bytes:
    # RFC 5321 §4.4: Return-Path: <reverse-path>; "<>" for the null sender. The address came through our
    # parser (no CR/LF, no '>').
    return b"Return-Path: <" + mail_from.encode("utf-8") + b">\r\n"


async def _junk(store: Store, uid: int) -> int | None:
    """The user's Junk mailbox (RFC 6154 \\Junk special use, else the one named "Junk"); made when missing (every
    new user gets one, store/api.SPECIAL_USE_DEFAULTS, but a user may have deleted it)."""
    boxes = await store.list_mailboxes(uid)
    for box in boxes:
        if box.special_use == "\\Junk":
            return box.id
    for box in boxes:
        if box.name == "Junk":
            return box.id
    try:
        return (await store.create_mailbox(uid, "Junk", "\\Junk")).id
    except AlreadyExists:  # made meanwhile by the user or another delivery
        made = await store.get_mailbox(uid, "Junk")
        return made.id if made is not None else None


async def _boxes(store: Store, user_ids: Iterable[int], junk: bool | AbstractSet[int] = False,
                 inboxes: Mapping[int, int] | None = None) -> tuple[list[int], list[int]]:
    """(INBOX ids, Junk ids) of the users: a user in `junk` (all of them when True) gets their Junk mailbox.
    `inboxes`: INBOX ids the caller read for this message (user id -> mailbox id, invariant 7); the others are
    looked up."""
    ids = sorted(set(user_ids))  # invariant 3
    to_junk = (set(ids) if junk else set()) if isinstance(junk, bool) else set(junk)
    found: list[int] = []
    junks: list[int] = []
    for uid in ids:
        if uid in to_junk:
            junk_id = await _junk(store, uid)
            if junk_id is not None:
                junks.append(junk_id)
                continue
        known = inboxes.get(uid) if inboxes is not None else None
        if known is not None:
            found.append(known)
            continue
        box = await store.get_mailbox(uid, "INBOX")
        if box is None:
            raise NotFound(f"user {uid} has no INBOX")
        found.append(box.id)
    return found, junks


async def deliver_local(store: Store, limits: LimitsConfig, user_ids: Iterable[int], mail_from: str,
                        raw: bytes, junk: bool | AbstractSet[int] = False, *, enforce_quota: bool = True,
                        prefix: bytes = b"", inboxes: Mapping[int, int] | None = None) -> int:
    """Deliver the message `prefix` + `raw` (the trace fields, then the message: stored as the store request's
    prefix and body, never joined, invariant 6) to the INBOX of each user (their Junk mailbox, with `$Junk`,
    when `junk` is True or holds their id: a DMARC or spam quarantine, a blocked sender); returns how many
    mailboxes got it. One store write for all (invariant 2). OverQuota if one user cannot take it (nothing
    stored), unless `enforce_quota` is False (the server's own notices: store api invariant 12). `inboxes`: the
    INBOX ids the caller read for this message, user id -> mailbox id (invariant 7; the others are looked up)."""
    inboxes_found, junks = await _boxes(store, user_ids, junk, inboxes)
    if not inboxes_found and not junks:
        return 0
    head = return_path(mail_from) + prefix  # invariant 1; a few header fields, joined (invariant 6)
    meta, parsed = await pool.meta_pair(raw, limits, prefix=head)  # parsed: not decoded again by the store
    request = AppendRequest(raw=raw, prefix=head, meta=meta, parsed=parsed)
    await store.deliver(inboxes_found + junks, request, enforce_quota=enforce_quota,
                        box_keywords=dict.fromkeys(junks, JUNK_KEYWORDS))  # one write, whoever gets $Junk
    return len(inboxes_found) + len(junks)


async def deliver_local_file(store: Store, limits: LimitsConfig, user_ids: Iterable[int], mail_from: str,
                             prefix: bytes, path: Path, junk: bool | AbstractSet[int] = False, *,
                             inboxes: Mapping[int, int] | None = None) -> int:
    """`deliver_local` of `prefix` + the staging file `path` (left in place), stored from the file
    (`Store.deliver_file`, which writes Return-Path and `prefix` before the body). The metadata scan reads the
    file in a worker process (`metapool.meta_bytes_of_file`): the message is never whole in this process
    (invariant 5). `inboxes` as for `deliver_local`."""
    inboxes_found, junks = await _boxes(store, user_ids, junk, inboxes)
    if not inboxes_found and not junks:
        return 0
    head = return_path(mail_from) + prefix  # invariant 1
    meta = await pool.meta_bytes_of_file(head, path, limits)
    await store.deliver_file(inboxes_found + junks, path, prefix=head, meta=meta,
                             box_keywords=dict.fromkeys(junks, JUNK_KEYWORDS))
    return len(inboxes_found) + len(junks)
