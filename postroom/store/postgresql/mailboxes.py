"""Mailboxes in PostgreSQL: create, delete, rename, subscribe, list, status (the SQLite engine's mailboxes.py,
same invariants).

Concurrency: every write here locks the user's row first (`_lock_user`), so one user's mailbox hierarchy is
changed by one transaction at a time across nodes: CREATE's special-use check (invariant 8), RENAME's checks
of the names it moves to, the subscription limit. `claim_recent` locks the mailbox row it advances, so two
nodes never claim the same UID as \\Recent (invariant 5).
"""

from __future__ import annotations

import time

import asyncpg

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
from postroom.store.postgresql import acl
from postroom.store.postgresql.common import (
    MAILBOX_COLUMNS,
    MESSAGE_COLUMNS,
    Base,
    find_mailbox,
    load_mailbox,
    mailbox_from_row,
    message_from_row,
    release_blobs,
)
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx
from postroom.store.postgresql.messages import NewMessage, delete_messages, insert_messages
from postroom.store.sqlite.mailboxes import MAX_UIDVALIDITY, _special_use


async def _lock_user(conn: Conn, user_id: int) -> None:
    """NotFound if the user is gone; else their row is locked until the transaction ends (module doc)."""
    if await conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id) is None:
        raise NotFound(f"no user with id {user_id}")


async def insert_mailbox(tx: Tx, user_id: int, name: str, special_use: str | None, subscribe: bool) -> Mailbox:
    """A new mailbox row (and, with `subscribe`, its name among the user's subscriptions)."""
    uidvalidity = int(await tx.conn.fetchval(
        "UPDATE counters SET value = greatest(value + 1, $1) WHERE name = 'uidvalidity' RETURNING value",
        int(time.time())))
    if uidvalidity > MAX_UIDVALIDITY:
        raise StoreError("UIDVALIDITY counter exhausted")
    try:
        mailbox_id = int(await tx.conn.fetchval(
            "INSERT INTO mailboxes(user_id, name, uidvalidity, special_use) VALUES ($1, $2, $3, $4) RETURNING id",
            user_id, name, uidvalidity, special_use))
    except asyncpg.UniqueViolationError as e:
        raise AlreadyExists(f"mailbox exists: {name}") from e
    if subscribe:
        await tx.conn.execute("INSERT INTO subscriptions(user_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                              user_id, name)
    subscribed = await _is_subscribed(tx.conn, user_id, name)
    mbox = Mailbox(mailbox_id, user_id, name, uidvalidity, 1, 1, special_use, subscribed)
    tx.changes.append(Change(ChangeKind.MAILBOX_CREATED, user_id, mbox.id, name=name))
    return mbox


async def _is_subscribed(conn: Conn, user_id: int, name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM subscriptions WHERE user_id = $1 AND name = $2", user_id, name))


async def _create_parents(tx: Tx, user_id: int, name: str) -> None:
    for parent in names.parents(name):
        if await find_mailbox(tx.conn, user_id, parent) is None:
            await insert_mailbox(tx, user_id, parent, None, subscribe=False)


async def _need(conn: Conn, user_id: int, name: str) -> Mailbox:
    mbox = await find_mailbox(conn, user_id, name, lock=True)
    if mbox is None:
        raise NotFound(f"no such mailbox: {name}")
    return mbox


class MailboxesMixin(Base):
    async def list_mailboxes(self, user_id: int) -> list[Mailbox]:
        async def q(conn: Conn) -> list[Mailbox]:
            found = await conn.fetch(
                f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE user_id = $1 ORDER BY name <> 'INBOX', name",
                user_id)
            return [mailbox_from_row(tuple(r)) for r in found]

        return await self._engine.read(q)

    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None:
        try:
            name = names.mailbox(name)
        except Invalid:
            return None
        return await self._engine.read(lambda conn: find_mailbox(conn, user_id, name))

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        async def q(conn: Conn) -> Mailbox | None:
            try:
                return await load_mailbox(conn, mailbox_id)
            except NotFound:
                return None

        return await self._engine.read(q)

    async def create_mailbox(self, user_id: int, name: str, special_use: str | None = None, *,
                             as_user: int | None = None) -> Mailbox:
        name = names.mailbox(name)
        use = _special_use(special_use)

        async def op(tx: Tx) -> Mailbox:
            await _lock_user(tx.conn, user_id)
            parent = await acl.nearest_existing(tx.conn, user_id, name)
            if as_user is not None:
                await acl.require_parent(tx.conn, as_user, parent)
            if await find_mailbox(tx.conn, user_id, name) is not None:
                raise AlreadyExists(f"mailbox exists: {name}")
            if use is not None and await tx.conn.fetchval(
                    "SELECT 1 FROM mailboxes WHERE user_id = $1 AND special_use = $2", user_id, use):
                raise SpecialUseTaken(f"another mailbox is {use} already")
            mark = len(tx.changes)
            await _create_parents(tx, user_id, name)
            mbox = await insert_mailbox(tx, user_id, name, use, subscribe=False)
            await acl.inherit(tx, parent, [c.mailbox_id for c in tx.changes[mark:]])
            return mbox

        return await self._engine.write(op)

    async def delete_mailbox(self, user_id: int, name: str) -> WriteResult:
        name = names.mailbox(name)
        if name == "INBOX":
            raise Invalid("INBOX cannot be deleted")

        async def op(tx: Tx) -> WriteResult:
            await _lock_user(tx.conn, user_id)
            mbox = await _need(tx.conn, user_id, name)
            counts = {str(b): int(n) for b, n in await tx.conn.fetch(
                "SELECT blob_id, count(*) FROM messages WHERE mailbox_id = $1 GROUP BY blob_id", mbox.id)}
            await tx.conn.execute("DELETE FROM messages WHERE mailbox_id = $1", mbox.id)
            await tx.conn.execute("DELETE FROM mailboxes WHERE id = $1", mbox.id)  # cascades to expunged, acl
            await tx.conn.execute("DELETE FROM metadata WHERE mailbox_id = $1", mbox.id)  # every user's entries
            await release_blobs(tx, counts)
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

        async def op(tx: Tx) -> WriteResult:
            await _lock_user(tx.conn, user_id)
            src = await _need(tx.conn, user_id, old)
            if as_user is not None:  # RFC 4314 §4: "x" on the old name, "k" on the new one's parent
                if "x" not in await acl.rights_of(tx.conn, as_user, src.id):
                    raise Forbidden("no right to rename the mailbox")
                await acl.require_parent(tx.conn, as_user, await acl.nearest_existing(tx.conn, user_id, new))
            if await find_mailbox(tx.conn, user_id, new) is not None:
                raise AlreadyExists(f"mailbox exists: {new}")
            mark = len(tx.changes)
            if old == "INBOX":
                await self._rename_inbox(tx, src, new, now)
            else:
                await self._rename_tree(tx, src, new)
            return WriteResult(tuple(tx.changes[mark:]))

        now = self._clock()
        return await self._engine.write(op)

    @staticmethod
    async def _rename_tree(tx: Tx, src: Mailbox, new: str) -> None:
        old = src.name
        children = await tx.conn.fetch(
            "SELECT id, name FROM mailboxes WHERE user_id = $1 AND substr(name, 1, $2) = $3 ORDER BY name",
            src.user_id, len(old) + 1, old + "/")
        moves = [(src.id, old, new)] + [(int(cid), str(cname), new + str(cname)[len(old):]) for cid, cname in children]
        for _, _, target in moves[1:]:
            if await find_mailbox(tx.conn, src.user_id, target) is not None:
                raise AlreadyExists(f"mailbox exists: {target}")
        await _create_parents(tx, src.user_id, new)
        await tx.conn.executemany("UPDATE mailboxes SET name = $1 WHERE id = $2", [(t, i) for i, _, t in moves])
        tx.changes.extend(Change(ChangeKind.MAILBOX_RENAMED, src.user_id, i, name=t, old_name=o) for i, o, t in moves)

    @staticmethod
    async def _rename_inbox(tx: Tx, inbox: Mailbox, new: str, now: float) -> None:
        await _create_parents(tx, inbox.user_id, new)
        dest = await insert_mailbox(tx, inbox.user_id, new, None, subscribe=False)
        found = await tx.conn.fetch(
            f"SELECT {MESSAGE_COLUMNS}, thread_id FROM messages WHERE mailbox_id = $1 ORDER BY uid", inbox.id)
        msgs = [message_from_row(tuple(r)[:-1]) for r in found]
        threads = [int(r[-1]) for r in found]  # RFC 8474 §5.2: messages keep their thread
        await insert_messages(tx, dest, [NewMessage(m.internal_date, m.size, m.flags, m.keywords, m.blob_id, t)
                                         for m, t in zip(msgs, threads)], quota=False)
        await delete_messages(tx, inbox, msgs, now=now, release=False)

    async def set_subscribed(self, user_id: int, name: str, subscribed: bool) -> WriteResult:
        name = names.mailbox(name)

        async def op(tx: Tx) -> WriteResult:
            await _lock_user(tx.conn, user_id)
            if await _is_subscribed(tx.conn, user_id, name) == bool(subscribed):
                return WriteResult()
            if subscribed:
                count = await tx.conn.fetchval("SELECT count(*) FROM subscriptions WHERE user_id = $1", user_id)
                if count >= names.MAX_SUBSCRIPTIONS:
                    raise Invalid(f"too many subscriptions (at most {names.MAX_SUBSCRIPTIONS})")
                await tx.conn.execute("INSERT INTO subscriptions(user_id, name) VALUES ($1, $2)", user_id, name)
            else:
                await tx.conn.execute("DELETE FROM subscriptions WHERE user_id = $1 AND name = $2", user_id, name)
            mbox = await find_mailbox(tx.conn, user_id, name)
            kind = ChangeKind.MAILBOX_SUBSCRIBED if subscribed else ChangeKind.MAILBOX_UNSUBSCRIBED
            change = Change(kind, user_id, 0 if mbox is None else mbox.id, name=name)
            tx.changes.append(change)
            return WriteResult((change,))

        return await self._engine.write(op)

    async def list_subscriptions(self, user_id: int) -> list[str]:
        async def q(conn: Conn) -> list[str]:
            found = await conn.fetch("SELECT name FROM subscriptions WHERE user_id = $1 ORDER BY name", user_id)
            return [str(r[0]) for r in found]

        return await self._engine.read(q)

    async def claim_recent(self, mailbox_id: int) -> tuple[int, int]:
        async def look(conn: Conn) -> tuple[int, int]:
            row = await conn.fetchrow("SELECT recent_uid, uidnext FROM mailboxes WHERE id = $1", mailbox_id)
            if row is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            return int(row[0]), int(row[1]) - 1

        # A plain read first (as in the SQLite engine): only when it shows something to claim does the locking
        # write run (its FOR UPDATE and commit are a WAL flush even when nothing changes).
        old, top = await self._engine.read(look)
        if top <= old:
            return old, old

        async def op(tx: Tx) -> tuple[int, int]:
            row = await tx.conn.fetchrow("SELECT recent_uid, uidnext FROM mailboxes WHERE id = $1 FOR UPDATE",
                                         mailbox_id)
            if row is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            old, top = int(row[0]), int(row[1]) - 1
            if top <= old:
                return old, old
            await tx.conn.execute("UPDATE mailboxes SET recent_uid = $1 WHERE id = $2", top, mailbox_id)
            return old, top

        return await self._engine.write(op)

    async def recent_watermark(self, mailbox_id: int) -> int:
        async def q(conn: Conn) -> int:
            found = await conn.fetchval("SELECT recent_uid FROM mailboxes WHERE id = $1", mailbox_id)
            if found is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            return int(found)

        return await self._engine.read(q)

    async def unseen_counts(self, user_id: int, limit: int = 1000) -> dict[int, int]:
        cap = max(0, limit)

        async def q(conn: Conn) -> dict[int, int]:
            out = {}
            for (box,) in await conn.fetch("SELECT id FROM mailboxes WHERE user_id = $1", user_id):
                # At most `cap` entries of the partial index of unseen messages: the LIMIT bounds the work.
                out[int(box)] = int(await conn.fetchval(
                    "SELECT count(*) FROM (SELECT 1 FROM messages WHERE mailbox_id = $1 AND flags & 1 = 0"
                    " LIMIT $2) s", box, cap))
            return out

        return await self._engine.read(q)

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        async def q(conn: Conn) -> MailboxStatus:
            mbox = await load_mailbox(conn, mailbox_id)
            row = await conn.fetchrow(
                "SELECT count(*), count(*) FILTER (WHERE flags & 1 = 0), count(*) FILTER (WHERE flags & 8 <> 0),"
                " coalesce(sum(size), 0), min(uid) FILTER (WHERE flags & 1 = 0),"
                " count(*) FILTER (WHERE uid > (SELECT recent_uid FROM mailboxes WHERE id = $1)),"
                " coalesce(sum(size) FILTER (WHERE flags & 8 <> 0), 0)"
                " FROM messages WHERE mailbox_id = $1", mailbox_id)
            assert row is not None  # an aggregate without GROUP BY: always one row
            count, unseen, deleted, size, first_unseen, recent, deleted_size = row
            return MailboxStatus(mbox, int(count), int(unseen), int(deleted), int(size),
                                 None if first_unseen is None else int(first_unseen), int(recent), int(deleted_size))

        return await self._engine.read(q)
