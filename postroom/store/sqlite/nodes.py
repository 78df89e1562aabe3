"""The SQLite side of what nodes share (postgresql/nodes.py): one machine, so the cheaper local ways stay.

Theory of operation
-------------------
SQLite serves one machine (its worker processes, admin commands): nothing here needs to cross machines, and
`shared_by_nodes` is False, so the server secret and the generated certificate stay files in the data folder
(auth/secret.py, net/tls.py); `shared_value` works all the same (one row per name, first writer wins).

The POP3 maildrop lock (RFC 1939 §8) is an `fcntl.flock` on `pop3-locks/<user id>.lock` beside the database,
so every process of the machine that opens the store (the workers of one `postroom serve`) grants it once
between them, and the kernel drops the lock of a process that dies: no lease to wait out, no renewal to do
(`lock_maildrop` for the holder that has it just says True). The LOGIN-DELAY clock (RFC 2449 §6.8) is the lock
file's modification time, set at each login: one across processes too.

Held list posts are rows of `held_posts` (schema step 25), their claim a column, as on PostgreSQL: claiming is
one UPDATE in the single writer (invariant 1).

Job leases (`job_leases`, schema step 27; jobs.py) are rows too, with the same semantics as on PostgreSQL: on one
machine they keep an admin command or a second server on the same database file from running a periodic job
at the same moment as the server, and the conformance suite holds both engines to one behaviour.

Invariants:
1. `claim_held_post` takes a post only when it has no claim or its claim ran out (the store's clock), in one
   write transaction: two processes never both get it.
2. A maildrop lock is held by at most one holder of this store object, and by at most one process of the
   machine (the flock).
3. `claim_job` is one upsert in the single writer: the row changes only when it is the claimer's own or its
   lease ran out (`expires <= now`), so two claimers of a free lease get it once between them.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import sqlite3
import time
from pathlib import Path

from postroom.store.api import AlreadyExists, HeldPost
from postroom.store.sqlite.common import Base
from postroom.store.sqlite.engine import Tx

_POST = "token, list_address, mail_from, raw, held_at"


def _post(r: tuple[object, ...]) -> HeldPost:
    return HeldPost(str(r[0]), str(r[1]), str(r[2]), bytes(r[3]), float(r[4]))  # type: ignore[call-overload,arg-type]


class NodesMixin(Base):
    shared_by_nodes = False
    path: Path
    _maildrops: dict[int, tuple[str, int]]  # user id -> (holder, descriptor holding its flock)

    def _maildrop_table(self) -> dict[int, tuple[str, int]]:
        table = self.__dict__.get("_maildrops")
        if table is None:
            table = self._maildrops = {}
        return table

    def _maildrop_path(self, user_id: int) -> Path:
        return self.path.parent / "pop3-locks" / f"{int(user_id)}.lock"

    async def shared_value(self, name: str, candidate: bytes) -> bytes:
        def op(tx: Tx) -> bytes:
            tx.conn.execute("INSERT OR IGNORE INTO shared_values(name, value, created) VALUES (?, ?, ?)",
                            (name, candidate, self._clock()))
            return bytes(tx.conn.execute("SELECT value FROM shared_values WHERE name = ?", (name,)).fetchone()[0])

        return await self._engine.write(op)

    async def lock_maildrop(self, user_id: int, holder: str, lease_seconds: float) -> bool:
        table = self._maildrop_table()
        if user_id in table:  # invariant 2: this object's holder, or another's
            return table[user_id][0] == holder
        path = self._maildrop_path(user_id)

        def take() -> int:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            try:  # a new file says "never logged in": its mtime is the epoch until a login is noted
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.utime(fd, (0, 0))
            except FileExistsError:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return -1
            return fd

        fd = await asyncio.to_thread(take)
        if fd < 0:
            return False
        if user_id in table:  # another holder of this object got there while we opened the file
            os.close(fd)
            return table[user_id][0] == holder
        table[user_id] = (holder, fd)
        return True

    def drop_maildrop_locks(self) -> None:
        """Release every maildrop lock this object holds (the store closes: its sessions are over)."""
        table = self._maildrop_table()
        for _, fd in table.values():
            os.close(fd)
        table.clear()

    async def unlock_maildrop(self, user_id: int, holder: str) -> None:
        table = self._maildrop_table()
        held = table.get(user_id)
        if held is not None and held[0] == holder:
            del table[user_id]
            os.close(held[1])  # drops the flock

    async def maildrop_login(self, user_id: int, note: bool) -> float:
        path = self._maildrop_path(user_id)

        def run() -> float:
            try:
                last = os.stat(path).st_mtime
                if note:
                    os.utime(path)
            except FileNotFoundError:
                return math.inf
            return math.inf if last <= 0 else max(0.0, time.time() - last)  # mtime 0: never logged in

        return await asyncio.to_thread(run)

    async def note_mailbox_login(self, address: str, when: float, keep_seconds: float) -> None:
        def op(tx: Tx) -> None:
            tx.conn.execute("INSERT INTO mailbox_logins(address, at) VALUES (?, ?) ON CONFLICT (address)"
                            " DO UPDATE SET at = max(at, excluded.at)", (address, when))
            tx.conn.execute("DELETE FROM mailbox_logins WHERE at < ?", (when - keep_seconds,))

        await self._engine.write(op)

    async def mailbox_login(self, address: str) -> float:
        def q(conn: sqlite3.Connection) -> float:
            r = conn.execute("SELECT at FROM mailbox_logins WHERE address = ?", (address,)).fetchone()
            return 0.0 if r is None else float(r[0])

        return await self._engine.read(q, quick=True)

    async def hold_post(self, post: HeldPost) -> None:
        row = (post.token, post.list_address, post.mail_from, post.raw, post.held_at or self._clock())

        def op(tx: Tx) -> None:
            try:
                tx.conn.execute(f"INSERT INTO held_posts({_POST}) VALUES (?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                raise AlreadyExists("a held post with that token exists") from None

        await self._engine.write(op, size=len(post.raw))

    async def get_held_post(self, token: str) -> HeldPost | None:
        def q(conn: sqlite3.Connection) -> HeldPost | None:
            r = conn.execute(f"SELECT {_POST} FROM held_posts WHERE token = ?", (token,)).fetchone()
            return None if r is None else _post(r)

        return await self._engine.read(q)

    async def list_held_posts(self) -> list[HeldPost]:
        def q(conn: sqlite3.Connection) -> list[HeldPost]:
            return [_post(r) for r in conn.execute(f"SELECT {_POST} FROM held_posts ORDER BY held_at, token")]

        return await self._engine.read(q)

    async def claim_held_post(self, token: str, claim: str, lease_seconds: float) -> HeldPost | None:
        def op(tx: Tx) -> HeldPost | None:
            now = self._clock()
            r = tx.conn.execute(
                f"UPDATE held_posts SET claim = ?, claimed_until = ? WHERE token = ?"
                f" AND (claim = '' OR claimed_until < ?) RETURNING {_POST}",
                (claim, now + lease_seconds, token, now)).fetchone()  # invariant 1
            return None if r is None else _post(r)

        return await self._engine.write(op)

    async def claim_job(self, name: str, holder: str, seconds: float, now: float) -> bool:
        def op(tx: Tx) -> bool:
            got = tx.conn.execute(  # invariant 3
                "INSERT INTO job_leases AS j(name, holder, expires) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET holder = excluded.holder, expires = excluded.expires WHERE j.holder = excluded.holder"
                " OR j.expires <= ? RETURNING 1", (name, holder, now + seconds, now)).fetchone()
            return got is not None

        return bool(await self._engine.write(op))

    async def release_job(self, name: str, holder: str) -> None:
        def op(tx: Tx) -> None:
            tx.conn.execute("DELETE FROM job_leases WHERE name = ? AND holder = ?", (name, holder))

        await self._engine.write(op)

    async def drop_held_post(self, token: str, claim: str) -> bool:
        def op(tx: Tx) -> bool:
            return tx.conn.execute("DELETE FROM held_posts WHERE token = ? AND claim = ?", (token, claim)).rowcount > 0

        return bool(await self._engine.write(op))

    async def release_held_post(self, token: str, claim: str) -> None:
        def op(tx: Tx) -> None:
            tx.conn.execute("UPDATE held_posts SET claim = '', claimed_until = 0 WHERE token = ? AND claim = ?",
                            (token, claim))

        await self._engine.write(op)


