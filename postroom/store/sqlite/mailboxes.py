"""Mailboxes in SQLite: create, delete, rename, subscribe, list, status.

Theory of operation: a mailbox is a row keyed by id, unique per (user_id, full name). The hierarchy is only in
the names ("Archive/2024" is a child of "Archive"), so renaming a parent rewrites its children's names in the same
transaction. Every call is scoped by user id and touches no other user's rows.

Invariants:
1. Names pass `names.mailbox` first: INBOX is spelled "INBOX", no empty components.
2. Every user has an INBOX; it cannot be deleted, and renaming it moves its messages to a new mailbox (new UIDs,
   RFC 9051 §6.3.6) and leaves INBOX empty. Children of INBOX are not renamed with it.
3. A mailbox gets a UIDVALIDITY no mailbox ever had: `max(counter + 1, now)` from the `counters` row, in the
   same transaction that creates it; renaming keeps the UIDVALIDITY (the UIDs still mean the same messages).
4. Creating or renaming to "a/b/c" creates missing "a" and "a/b" (RFC 9051 §6.3.4); deleting "a" leaves "a/b".
5. `recent_uid` (the IMAP \\Recent watermark, schema invariant 6) changes only in `claim_recent`, which reads and
   advances it in one write job: two claims can never both get the same UID. (A point read before the job
   answers "nothing to claim" alone, with no write.)
6. Subscriptions are rows of their own keyed (user, name) (api invariant 8): CREATE, DELETE and RENAME never
   touch them; a mailbox is `subscribed` when its name is there, so a re-created name is subscribed again.
7. A mailbox created below an existing one gets a copy of its ACL (acl.py invariant 4); RENAME keeps a
   mailbox's ACL (its rows follow the mailbox id), DELETE drops it (cascade).
8. `create_mailbox` gives a special use only to the user's first mailbox with it (checked in the job that
   creates the row, so two concurrent CREATEs cannot both get it); the mailboxes made for a new user have one
   each.
"""

from __future__ import annotations

import sqlite3
import time

from postroom.store import names
from postroom.store.api import (
    AlreadyExists,
    Change,
    ChangeKind,
    Forbidden,
    Invalid,
    Mailbox,
    MailboxStatus,
    NotFound,
    SpecialUseTaken,
    StoreError,
    WriteResult,
)
from postroom.store.sqlite import acl
from postroom.store.sqlite.common import (
    MAILBOX_COLUMNS,
    MESSAGE_COLUMNS,
    Base,
    claim_recent_in,
    find_mailbox,
    load_mailbox,
    mailbox_from_row,
    message_from_row,
    release_blobs,
)
from postroom.store.sqlite.engine import Tx
from postroom.store.sqlite.messages import NewMessage, delete_messages, insert_messages
from postroom.store.sqlite.threads import drop_sort_rows, thread_ids_of

# RFC 6154 §2 and RFC 8457 (\Important).
SPECIAL_USES = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash", "\\Important"})
MAX_UIDVALIDITY = 2**32 - 1  # RFC 9051 §9: nz-number is 32-bit


def _special_use(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    for known in SPECIAL_USES:
        if known.lower() == value.lower():
            return known
    raise Invalid(f"unknown special-use attribute: {value!r}")


def _check_user(conn: sqlite3.Connection, user_id: int) -> None:
    if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
        raise NotFound(f"no user with id {user_id}")


def insert_mailbox(tx: Tx, user_id: int, name: str, special_use: str | None, subscribe: bool) -> Mailbox:
    """A new mailbox row (and, with `subscribe`, its name among the user's subscriptions)."""
    row = tx.conn.execute(
        "UPDATE counters SET value = max(value + 1, ?) WHERE name = 'uidvalidity' RETURNING value",
        (int(time.time()),),
    ).fetchone()
    uidvalidity = int(row[0])
    if uidvalidity > MAX_UIDVALIDITY:
        raise StoreError("UIDVALIDITY counter exhausted")
    cur = tx.conn.execute(
        "INSERT INTO mailboxes(user_id, name, uidvalidity, special_use) VALUES (?, ?, ?, ?)",
        (user_id, name, uidvalidity, special_use),
    )
    if subscribe:
        tx.conn.execute("INSERT OR IGNORE INTO subscriptions(user_id, name) VALUES (?, ?)", (user_id, name))
    subscribed = _is_subscribed(tx.conn, user_id, name)  # invariant 6: maybe from before the mailbox was made
    mbox = Mailbox(int(cur.lastrowid or 0), user_id, name, uidvalidity, 1, 1, special_use, subscribed)
    tx.changes.append(Change(ChangeKind.MAILBOX_CREATED, user_id, mbox.id, name=name))
    return mbox


def _is_subscribed(conn: sqlite3.Connection, user_id: int, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM subscriptions WHERE user_id = ? AND name = ?", (user_id, name)).fetchone()
    return row is not None


def _create_parents(tx: Tx, user_id: int, name: str) -> None:
    for parent in names.parents(name):
        if find_mailbox(tx.conn, user_id, parent) is None:
            insert_mailbox(tx, user_id, parent, None, subscribe=False)


def _need(conn: sqlite3.Connection, user_id: int, name: str) -> Mailbox:
    mbox = find_mailbox(conn, user_id, name)
    if mbox is None:
        raise NotFound(f"no such mailbox: {name}")
    return mbox


class MailboxesMixin(Base):
    async def list_mailboxes(self, user_id: int) -> list[Mailbox]:
        def q(conn: sqlite3.Connection) -> list[Mailbox]:
            rows = conn.execute(
                f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE user_id = ? ORDER BY name <> 'INBOX', name",
                (user_id,),
            )
            return [mailbox_from_row(r) for r in rows]

        return await self._engine.read(q)

    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None:
        try:
            name = names.mailbox(name)
        except Invalid:
            return None
        return await self._engine.read(lambda conn: find_mailbox(conn, user_id, name), quick=True)

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        def q(conn: sqlite3.Connection) -> Mailbox | None:
            try:
                return load_mailbox(conn, mailbox_id)
            except NotFound:
                return None

        return await self._engine.read(q, quick=True)

    async def create_mailbox(self, user_id: int, name: str, special_use: str | None = None, *,
                             as_user: int | None = None) -> Mailbox:
        name = names.mailbox(name)
        use = _special_use(special_use)

        def op(tx: Tx) -> Mailbox:
            _check_user(tx.conn, user_id)
            parent = acl.nearest_existing(tx.conn, user_id, name)
            if as_user is not None:
                acl.require_parent(tx.conn, as_user, parent)
            if find_mailbox(tx.conn, user_id, name) is not None:
                raise AlreadyExists(f"mailbox exists: {name}")
            if use is not None and tx.conn.execute(
                    "SELECT 1 FROM mailboxes WHERE user_id = ? AND special_use = ?", (user_id, use)).fetchone():
                raise SpecialUseTaken(f"another mailbox is {use} already")  # invariant 8
            mark = len(tx.changes)
            _create_parents(tx, user_id, name)
            mbox = insert_mailbox(tx, user_id, name, use, subscribe=False)
            acl.inherit(tx, parent, [c.mailbox_id for c in tx.changes[mark:]])  # acl.py invariant 4
            return mbox

        return await self._engine.write(op)

    async def delete_mailbox(self, user_id: int, name: str) -> WriteResult:
        name = names.mailbox(name)
        if name == "INBOX":
            raise Invalid("INBOX cannot be deleted")

        def op(tx: Tx) -> WriteResult:
            mbox = _need(tx.conn, user_id, name)
            counts = dict(
                tx.conn.execute(
                    "SELECT blob_id, count(*) FROM messages WHERE mailbox_id = ? GROUP BY blob_id", (mbox.id,)
                ).fetchall()
            )
            tx.conn.execute("DELETE FROM messages WHERE mailbox_id = ?", (mbox.id,))
            drop_sort_rows(tx.conn, mbox.id)  # threads.py invariant 7
            tx.conn.execute("DELETE FROM mailboxes WHERE id = ?", (mbox.id,))  # cascades to expunged
            tx.conn.execute("DELETE FROM metadata WHERE mailbox_id = ?", (mbox.id,))  # schema invariant 12
            release_blobs(tx, counts)
            change = Change(ChangeKind.MAILBOX_DELETED, user_id, mbox.id, name=name)
            tx.changes.append(change)
            return WriteResult((change,))

        return await self._engine.write(op)

    async def rename_mailbox(self, user_id: int, old: str, new: str, *, as_user: int | None = None) -> WriteResult:
        old = names.mailbox(old)
        new = names.mailbox(new)
        if new == old:
            raise AlreadyExists(f"mailbox exists: {new}")
        if old != "INBOX" and names.is_inside(new, old):
            raise Invalid(f"cannot rename {old} into itself ({new})")

        def op(tx: Tx) -> WriteResult:
            src = _need(tx.conn, user_id, old)
            if as_user is not None:  # RFC 4314 §4: "x" on the old name, "k" on the new one's parent
                if "x" not in acl.rights_of(tx.conn, as_user, src.id):
                    raise Forbidden("no right to rename the mailbox")
                acl.require_parent(tx.conn, as_user, acl.nearest_existing(tx.conn, user_id, new))
            if find_mailbox(tx.conn, user_id, new) is not None:
                raise AlreadyExists(f"mailbox exists: {new}")
            mark = len(tx.changes)
            if old == "INBOX":
                self._rename_inbox(tx, src, new, now)
            else:
                self._rename_tree(tx, src, new)
            return WriteResult(tuple(tx.changes[mark:]))

        now = self._clock()
        return await self._engine.write(op)

    @staticmethod
    def _rename_tree(tx: Tx, src: Mailbox, new: str) -> None:
        old = src.name
        children = tx.conn.execute(
            "SELECT id, name FROM mailboxes WHERE user_id = ? AND substr(name, 1, ?) = ? ORDER BY name",
            (src.user_id, len(old) + 1, old + "/"),
        ).fetchall()
        moves = [(src.id, old, new)] + [(cid, cname, new + cname[len(old) :]) for cid, cname in children]
        for _, _, target in moves[1:]:
            if find_mailbox(tx.conn, src.user_id, target) is not None:
                raise AlreadyExists(f"mailbox exists: {target}")
        _create_parents(tx, src.user_id, new)
        tx.conn.executemany("UPDATE mailboxes SET name = ? WHERE id = ?", [(t, i) for i, _, t in moves])
        tx.changes.extend(
            Change(ChangeKind.MAILBOX_RENAMED, src.user_id, i, name=t, old_name=o) for i, o, t in moves
        )

    @staticmethod
    def _rename_inbox(tx: Tx, inbox: Mailbox, new: str, now: float) -> None:
        _create_parents(tx, inbox.user_id, new)
        dest = insert_mailbox(tx, inbox.user_id, new, None, subscribe=False)
        rows = tx.conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? ORDER BY uid", (inbox.id,)
        ).fetchall()
        msgs = [message_from_row(r) for r in rows]
        threads = thread_ids_of(tx.conn, inbox.id, [m.uid for m in msgs])  # RFC 8474 §5.2: messages keep theirs
        insert_messages(tx, dest, [NewMessage(m.internal_date, m.size, m.flags, m.keywords, m.blob_id,
                                              threads.get(m.uid, 0)) for m in msgs], quota=False)  # same user
        delete_messages(tx, inbox, msgs, now=now, release=False)

    async def set_subscribed(self, user_id: int, name: str, subscribed: bool) -> WriteResult:
        name = names.mailbox(name)

        def op(tx: Tx) -> WriteResult:
            _check_user(tx.conn, user_id)
            if _is_subscribed(tx.conn, user_id, name) == bool(subscribed):
                return WriteResult()
            if subscribed:
                (count,) = tx.conn.execute(
                    "SELECT count(*) FROM subscriptions WHERE user_id = ?", (user_id,)
                ).fetchone()
                if count >= names.MAX_SUBSCRIPTIONS:
                    raise Invalid(f"too many subscriptions (at most {names.MAX_SUBSCRIPTIONS})")
                tx.conn.execute("INSERT INTO subscriptions(user_id, name) VALUES (?, ?)", (user_id, name))
            else:
                tx.conn.execute("DELETE FROM subscriptions WHERE user_id = ? AND name = ?", (user_id, name))
            mbox = find_mailbox(tx.conn, user_id, name)
            kind = ChangeKind.MAILBOX_SUBSCRIBED if subscribed else ChangeKind.MAILBOX_UNSUBSCRIBED
            change = Change(kind, user_id, 0 if mbox is None else mbox.id, name=name)
            tx.changes.append(change)
            return WriteResult((change,))

        return await self._engine.write(op)

    async def list_subscriptions(self, user_id: int) -> list[str]:
        def q(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT name FROM subscriptions WHERE user_id = ? ORDER BY name", (user_id,))
            return [str(r[0]) for r in rows]

        return await self._engine.read(q)

    async def claim_recent(self, mailbox_id: int) -> tuple[int, int]:
        def look(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute("SELECT recent_uid, uidnext FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
            if row is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            return int(row[0]), int(row[1]) - 1

        # Invariant 5: a point read first; only when it shows something to claim does a write job (which reads
        # again) run. Most claims find nothing (another session of a busy mailbox claimed first, or a SELECT
        # with no arrival): "nothing new" is true as of that read, and costs no write transaction.
        old, top = await self._engine.read(look, quick=True)
        if top <= old:
            return old, old

        return await self._engine.write(lambda tx: claim_recent_in(tx.conn, mailbox_id))

    async def recent_watermark(self, mailbox_id: int) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
            if row is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            return int(row[0])

        return await self._engine.read(q, quick=True)

    async def unseen_counts(self, user_id: int, limit: int = 1000) -> dict[int, int]:
        cap = max(0, limit)

        def q(conn: sqlite3.Connection) -> dict[int, int]:
            out = {}
            for (box,) in conn.execute("SELECT id FROM mailboxes WHERE user_id = ?", (user_id,)).fetchall():
                # At most `cap` entries of the partial index of unseen messages (schema 15): its own condition,
                # `flags & 1 = 0`, lets SQLite read the index alone, and the LIMIT bounds it.
                (n,) = conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM messages INDEXED BY messages_unseen"
                    " WHERE mailbox_id = ? AND flags & 1 = 0 LIMIT ?)", (box, cap)).fetchone()
                out[int(box)] = int(n)
            return out

        return await self._engine.read(q)

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        def q(conn: sqlite3.Connection) -> MailboxStatus:
            mbox = load_mailbox(conn, mailbox_id)
            count, unseen, deleted, size, first_unseen, recent, deleted_size = conn.execute(
                "SELECT count(*), total(flags & 1 = 0), total(flags & 8 <> 0), total(size),"
                " min(CASE WHEN flags & 1 = 0 THEN uid END),"
                " total(uid > (SELECT recent_uid FROM mailboxes WHERE id = ?1)),"
                " total(CASE WHEN flags & 8 <> 0 THEN size ELSE 0 END)"
                " FROM messages WHERE mailbox_id = ?1",
                (mailbox_id,),
            ).fetchone()
            return MailboxStatus(mbox, int(count), int(unseen), int(deleted), int(size), first_unseen, int(recent),
                                 int(deleted_size))

        return await self._read_mailbox(mailbox_id, q)

