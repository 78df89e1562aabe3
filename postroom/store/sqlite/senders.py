"""Sender allow/block rules, spam training signals and DMARC results in SQLite (schema step 22, schema invariants
25 to 27).

Theory of operation
-------------------
`sender_rules` holds one row per (scope, pattern): the scope is a user (`user_id`) or a hosted domain
(`domain_id`), never both; the partial unique indexes `sender_rules_user` and `sender_rules_domain` keep one
row per pattern in a scope, so `add_sender_rule` is an upsert (a pattern changes kind in place). What a rule
means for a message (which one wins, when an allow counts) is inbound/senders.py's; this module only keeps rows.

`spam_training` holds the signals a user's moves into and out of Junk leave (recorded here, in the move's own
transaction, invariant 4; inbound/learn.py sends them). A row names the body by its blob id; the body may be
released before the signal goes out, and the sender then drops the row.

Invariants
1. `sender_rules(user_id)` is two index range reads (the user's rules, their domain's), never a scan.
2. A scope never holds more than `names.MAX_SENDER_RULES` rules: an insert past it is refused in the same
   transaction that counts them.
3. `due_training_signals` reads the `spam_training_due` index range up to `now`, at most `limit` rows.
4. With `training_signals` on, the message writes record the user's verdicts in their own transaction
   (messages.py `_copy` and `store_flags` call `record_signals`): a copy or move into Junk, or `$Junk` added, is
   "spam"; a move out of Junk into anything but Trash is "ham" (`copy_verdict`). A crash can lose neither the
   move nor its signal without the other. Deliveries into Junk (the filters' own verdicts) record nothing.
5. `dmarc_aggregate` and `claim_dmarc_results` group in SQL (one row per distinct outcome, with its count).
   `claim_dmarc_results` marks the rows a report run covers with the run's claim in the write transaction that
   aggregates them, and `delete_dmarc_results` deletes only rows under that claim: a message evaluated while a
   report is made is neither lost nor reported twice, and two runs (two processes) never share a row.
6. `claim_training_signals` pushes each signal it returns to `now + lease` in the write that reads it: two
   senders never get one signal at once.

`dmarc_results` holds one row per message whose DMARC policy asks for aggregate reports (inbound/dmarc_reports.py
writes them and reports them daily).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence

from postroom.store import names
from postroom.store.api import DmarcEvaluation, Invalid, Mailbox, NotFound, SenderRule, TrainingSignal
from postroom.store.sqlite.common import Base
from postroom.store.sqlite.engine import Tx

KINDS = ("allow", "block")
SIGNALS = ("spam", "ham")


def _scope(conn: sqlite3.Connection, scope: str) -> tuple[str, int | None, int | None]:
    """(the scope's spelling, user id, domain id) of a user's address or a domain's name; NotFound if unknown."""
    if "@" in scope:
        address = names.address(scope)
        row = conn.execute("SELECT id FROM users WHERE address = ?", (address,)).fetchone()
        if row is None:
            raise NotFound(f"no such user: {address}")
        return address, int(row[0]), None
    name = names.domain(scope)
    row = conn.execute("SELECT id FROM domains WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no such domain: {name}")
    return name, None, int(row[0])


def _where(user_id: int | None, domain_id: int | None) -> tuple[str, int]:
    if user_id is not None:
        return "user_id = ?", user_id
    assert domain_id is not None
    return "domain_id = ?", domain_id


def _rules(conn: sqlite3.Connection, scope: str, user_id: int | None, domain_id: int | None) -> list[SenderRule]:
    where, key = _where(user_id, domain_id)
    rows = conn.execute(f"SELECT id, kind, pattern, created FROM sender_rules WHERE {where} ORDER BY pattern",
                        (key,)).fetchall()
    return [SenderRule(int(r[0]), scope, str(r[1]), str(r[2]), float(r[3]), user_id, domain_id) for r in rows]


def record_signals(conn: sqlite3.Connection, user_id: int, kind: str, blob_ids: Iterable[str], now: float) -> int:
    """Write the user's verdict `kind` on each body, due at once, in the caller's transaction (invariant 4): a
    pending signal for the same (user, body) is replaced (schema invariant 26). Returns how many were written."""
    rows = [(user_id, kind, b, now, now) for b in dict.fromkeys(blob_ids)]
    conn.executemany(
        "INSERT INTO spam_training(user_id, kind, blob_id, created, next_try) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(user_id, blob_id) DO UPDATE SET kind = excluded.kind, created = excluded.created,"
        " attempts = 0, next_try = excluded.next_try", rows)
    return len(rows)


def is_junk(box: Mailbox) -> bool:
    """The user's Junk mailbox: special use \\Junk (RFC 6154), else named "Junk" (delivery/local.py's rule)."""
    return box.special_use == "\\Junk" or (box.special_use is None and box.name == "Junk")


def is_trash(box: Mailbox) -> bool:
    """The user's Trash: special use \\Trash, else named "Trash"."""
    return box.special_use == "\\Trash" or (box.special_use is None and box.name == "Trash")


def copy_verdict(src: Mailbox, dest: Mailbox, move: bool) -> str | None:
    """The training signal a copy or move from `src` to `dest` is (invariant 4): into Junk "spam"; a move out
    of Junk into anything but Trash "ham" (deleting spam is not calling it ham); else None."""
    if is_junk(dest) and not is_junk(src):
        return "spam"
    if move and is_junk(src) and not is_junk(dest) and not is_trash(dest):
        return "ham"
    return None


class SendersMixin(Base):
    async def list_sender_rules(self, scope: str) -> list[SenderRule]:
        def q(conn: sqlite3.Connection) -> list[SenderRule]:
            spelled, user_id, domain_id = _scope(conn, scope)
            return _rules(conn, spelled, user_id, domain_id)

        return await self._engine.read(q, quick=True)

    async def sender_rules(self, user_id: int) -> list[SenderRule]:
        def q(conn: sqlite3.Connection) -> list[SenderRule]:
            row = conn.execute("SELECT u.address, d.id, d.name FROM users u JOIN domains d ON d.id = u.domain_id"
                               " WHERE u.id = ?", (user_id,)).fetchone()
            if row is None:
                return []
            return _rules(conn, str(row[0]), user_id, None) + _rules(conn, str(row[2]), None, int(row[1]))

        return await self._engine.read(q, quick=True)  # invariant 1

    async def add_sender_rule(self, scope: str, kind: str, pattern: str) -> SenderRule:
        if kind not in KINDS:
            raise Invalid(f"a sender rule is 'allow' or 'block', not {kind!r}")
        spelled_pattern = names.sender_pattern(pattern)
        now = time.time()

        def op(tx: Tx) -> SenderRule:
            spelled, user_id, domain_id = _scope(tx.conn, scope)
            where, key = _where(user_id, domain_id)
            row = tx.conn.execute(f"SELECT id FROM sender_rules WHERE {where} AND pattern = ?",
                                  (key, spelled_pattern)).fetchone()
            if row is not None:
                tx.conn.execute("UPDATE sender_rules SET kind = ?, created = ? WHERE id = ?", (kind, now, row[0]))
                return SenderRule(int(row[0]), spelled, kind, spelled_pattern, now, user_id, domain_id)
            count = tx.conn.execute(f"SELECT count(*) FROM sender_rules WHERE {where}", (key,)).fetchone()[0]
            if count >= names.MAX_SENDER_RULES:  # invariant 2
                raise Invalid(f"{spelled} already has {names.MAX_SENDER_RULES} sender rules")
            cur = tx.conn.execute(
                "INSERT INTO sender_rules(user_id, domain_id, kind, pattern, created) VALUES (?, ?, ?, ?, ?)",
                (user_id, domain_id, kind, spelled_pattern, now))
            assert cur.lastrowid is not None
            return SenderRule(cur.lastrowid, spelled, kind, spelled_pattern, now, user_id, domain_id)

        return await self._engine.write(op)

    async def remove_sender_rule(self, scope: str, pattern: str) -> bool:
        spelled_pattern = names.sender_pattern(pattern)

        def op(tx: Tx) -> bool:
            _, user_id, domain_id = _scope(tx.conn, scope)
            where, key = _where(user_id, domain_id)
            cur = tx.conn.execute(f"DELETE FROM sender_rules WHERE {where} AND pattern = ?", (key, spelled_pattern))
            return cur.rowcount > 0

        return bool(await self._engine.write(op))

    async def add_training_signals(self, user_id: int, kind: str, blob_ids: Sequence[str], now: float) -> int:
        if kind not in SIGNALS:
            raise Invalid(f"a training signal is 'spam' or 'ham', not {kind!r}")
        if not blob_ids:
            return 0

        def op(tx: Tx) -> int:
            if tx.conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                return 0
            return record_signals(tx.conn, user_id, kind, blob_ids, now)

        return int(await self._engine.write(op))

    async def due_training_signals(self, now: float, limit: int = 50) -> list[TrainingSignal]:
        def q(conn: sqlite3.Connection) -> list[TrainingSignal]:
            rows = conn.execute(  # invariant 3
                "SELECT id, user_id, kind, blob_id, created, attempts FROM spam_training WHERE next_try <= ?"
                " ORDER BY next_try, id LIMIT ?", (now, limit)).fetchall()
            return [TrainingSignal(int(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]), int(r[5])) for r in rows]

        return await self._engine.read(q, quick=True)

    async def claim_training_signals(self, now: float, limit: int, lease_seconds: float) -> list[TrainingSignal]:
        def op(tx: Tx) -> list[TrainingSignal]:
            rows = tx.conn.execute(  # invariants 3 and 6
                "SELECT id, user_id, kind, blob_id, created, attempts FROM spam_training WHERE next_try <= ?"
                " ORDER BY next_try, id LIMIT ?", (now, limit)).fetchall()
            tx.conn.executemany("UPDATE spam_training SET next_try = ? WHERE id = ?",
                                [(now + lease_seconds, r[0]) for r in rows])
            return [TrainingSignal(int(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]), int(r[5])) for r in rows]

        return await self._engine.write(op)

    async def finish_training_signal(self, signal_id: int, retry_at: float | None = None, *,
                                     created: float | None = None) -> None:
        same = "" if created is None else " AND created = ?"  # the verdict sent, not a newer one (api.py)
        extra: tuple[float, ...] = () if created is None else (created,)

        def op(tx: Tx) -> None:
            if retry_at is None:
                tx.conn.execute(f"DELETE FROM spam_training WHERE id = ?{same}", (signal_id, *extra))
            else:
                tx.conn.execute(f"UPDATE spam_training SET attempts = attempts + 1, next_try = ? WHERE id = ?{same}",
                                (retry_at, signal_id, *extra))

        await self._engine.write(op)

    async def add_dmarc_result(self, evaluation: DmarcEvaluation) -> None:
        e = evaluation

        def op(tx: Tx) -> None:
            tx.conn.execute(
                "INSERT INTO dmarc_results(at, policy_domain, policy, source_ip, header_from, envelope_from,"
                " disposition, dkim_aligned, spf_aligned, auth) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.at, e.policy_domain, e.policy, e.source_ip, e.header_from, e.envelope_from, e.disposition,
                 int(e.dkim_aligned), int(e.spf_aligned), e.auth))

        await self._engine.write(op)

    async def dmarc_aggregate(self, before: float) -> tuple[list[DmarcEvaluation], int]:
        def q(conn: sqlite3.Connection) -> tuple[list[DmarcEvaluation], int]:
            top = conn.execute("SELECT max(id) FROM dmarc_results WHERE at < ?", (before,)).fetchone()[0]
            if top is None:
                return [], 0
            # invariant 5: grouped by SQLite, so memory holds one row per distinct outcome, not per message
            rows = conn.execute(
                "SELECT max(at), policy_domain, (SELECT policy FROM dmarc_results p WHERE p.policy_domain ="
                " r.policy_domain AND p.id <= ? ORDER BY p.id DESC LIMIT 1), source_ip, header_from,"
                " envelope_from, disposition, dkim_aligned, spf_aligned, auth, count(*) FROM dmarc_results r"
                " WHERE id <= ? AND at < ? GROUP BY policy_domain, source_ip, header_from, envelope_from,"
                " disposition, dkim_aligned, spf_aligned, auth ORDER BY policy_domain, source_ip",
                (top, top, before)).fetchall()
            return [DmarcEvaluation(float(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]),
                                    bool(r[7]), bool(r[8]), str(r[9]), int(r[10])) for r in rows], int(top)

        return await self._engine.read(q)

    async def claim_dmarc_results(self, before: float, claim: str, lease_seconds: float,
                                  now: float) -> list[DmarcEvaluation]:
        def op(tx: Tx) -> list[DmarcEvaluation]:
            tx.conn.execute(  # invariant 5: the claim and the rows it reports, in one write
                "UPDATE dmarc_results SET claim = ?, claimed_until = ? WHERE at < ?"
                " AND (claim = '' OR claimed_until <= ?)", (claim, now + lease_seconds, before, now))
            rows = tx.conn.execute(
                "SELECT max(at), policy_domain, (SELECT policy FROM dmarc_results p WHERE p.policy_domain ="
                " r.policy_domain AND p.claim = ? ORDER BY p.id DESC LIMIT 1), source_ip, header_from,"
                " envelope_from, disposition, dkim_aligned, spf_aligned, auth, count(*) FROM dmarc_results r"
                " WHERE claim = ? GROUP BY policy_domain, source_ip, header_from, envelope_from,"
                " disposition, dkim_aligned, spf_aligned, auth ORDER BY policy_domain, source_ip",
                (claim, claim)).fetchall()
            return [DmarcEvaluation(float(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]),
                                    bool(r[7]), bool(r[8]), str(r[9]), int(r[10])) for r in rows]

        return await self._engine.write(op)

    async def delete_dmarc_results(self, claim: str, policy_domain: str) -> int:
        def op(tx: Tx) -> int:
            return tx.conn.execute("DELETE FROM dmarc_results WHERE claim = ? AND policy_domain = ?",
                                   (claim, policy_domain)).rowcount

        return int(await self._engine.write(op))

    async def release_dmarc_results(self, claim: str, policy_domain: str) -> None:
        def op(tx: Tx) -> None:
            tx.conn.execute("UPDATE dmarc_results SET claim = '', claimed_until = 0 WHERE claim = ?"
                            " AND policy_domain = ?", (claim, policy_domain))

        await self._engine.write(op)
