"""Sender allow/block rules, spam training signals and DMARC results in PostgreSQL (schema step 9): the SQLite
engine's senders.py, whose module doc tells what the three tables hold and whose invariants 1-6 hold here.

Theory of operation
-------------------
`sender_rules` keeps one row per (scope, pattern), the scope a user or a hosted domain; the partial unique
indexes make `add_sender_rule` an upsert. The limit of `names.MAX_SENDER_RULES` rules per scope is counted
under a lock of the scope's row (`users` or `domains`, FOR UPDATE), so two nodes adding rules at once cannot
both pass it. `spam_training` rows are written by `record_signals` in the transaction of the move or flag change
that judged the message (messages.py), replacing a pending signal for the same (user, body). `dmarc_results`
are grouped in SQL by `dmarc_aggregate` (a read) and by `claim_dmarc_results`, which marks the rows a report
run covers with its claim in the same transaction, so `delete_dmarc_results` removes exactly the reported rows
and two nodes' runs never report one row (schema step 13).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from postroom.store import names
from postroom.store.api import DmarcEvaluation, Invalid, NotFound, SenderRule, TrainingSignal
from postroom.store.postgresql.common import Base
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx, rowcount
from postroom.store.sqlite.senders import KINDS, SIGNALS


async def _scope(conn: Conn, scope: str, *, lock: bool = False) -> tuple[str, int | None, int | None]:
    """(the scope's spelling, user id, domain id) of a user's address or a domain's name; NotFound if unknown.
    `lock`: the scope's row FOR UPDATE (the rule count of `add_sender_rule`)."""
    suffix = " FOR UPDATE" if lock else ""
    if "@" in scope:
        address = names.address(scope)
        found = await conn.fetchval("SELECT id FROM users WHERE address = $1" + suffix, address)
        if found is None:
            raise NotFound(f"no such user: {address}")
        return address, int(found), None
    name = names.domain(scope)
    found = await conn.fetchval("SELECT id FROM domains WHERE name = $1" + suffix, name)
    if found is None:
        raise NotFound(f"no such domain: {name}")
    return name, None, int(found)


def _where(user_id: int | None, domain_id: int | None) -> tuple[str, int]:
    if user_id is not None:
        return "user_id = $1", user_id
    assert domain_id is not None
    return "domain_id = $1", domain_id


async def _rules(conn: Conn, scope: str, user_id: int | None, domain_id: int | None) -> list[SenderRule]:
    where, key = _where(user_id, domain_id)
    rows = await conn.fetch(
        f"SELECT id, kind, pattern, created FROM sender_rules WHERE {where} ORDER BY pattern COLLATE \"C\"", key)
    return [SenderRule(int(r[0]), scope, str(r[1]), str(r[2]), float(r[3]), user_id, domain_id) for r in rows]


async def record_signals(conn: Conn, user_id: int, kind: str, blob_ids: Iterable[str], now: float) -> int:
    """Write the user's verdict `kind` on each body, due at once, in the caller's transaction: a pending signal
    for the same (user, body) is replaced. Returns how many were written."""
    rows = [(user_id, kind, b, now) for b in dict.fromkeys(blob_ids)]
    await conn.executemany(
        "INSERT INTO spam_training(user_id, kind, blob_id, created, next_try) VALUES ($1, $2, $3, $4, $4)"
        " ON CONFLICT (user_id, blob_id) DO UPDATE SET kind = EXCLUDED.kind, created = EXCLUDED.created,"
        " attempts = 0, next_try = EXCLUDED.next_try", rows)
    return len(rows)


class SendersMixin(Base):
    async def list_sender_rules(self, scope: str) -> list[SenderRule]:
        async def q(conn: Conn) -> list[SenderRule]:
            spelled, user_id, domain_id = await _scope(conn, scope)
            return await _rules(conn, spelled, user_id, domain_id)

        return await self._engine.read(q)

    async def sender_rules(self, user_id: int) -> list[SenderRule]:
        async def q(conn: Conn) -> list[SenderRule]:
            row = await conn.fetchrow("SELECT u.address, d.id, d.name FROM users u JOIN domains d"
                                      " ON d.id = u.domain_id WHERE u.id = $1", user_id)
            if row is None:
                return []
            return (await _rules(conn, str(row[0]), user_id, None)
                    + await _rules(conn, str(row[2]), None, int(row[1])))

        return await self._engine.read(q)

    async def add_sender_rule(self, scope: str, kind: str, pattern: str) -> SenderRule:
        if kind not in KINDS:
            raise Invalid(f"a sender rule is 'allow' or 'block', not {kind!r}")
        spelled_pattern = names.sender_pattern(pattern)
        now = self._clock()

        async def op(tx: Tx) -> SenderRule:
            spelled, user_id, domain_id = await _scope(tx.conn, scope, lock=True)
            where, key = _where(user_id, domain_id)
            found = await tx.conn.fetchval(f"SELECT id FROM sender_rules WHERE {where} AND pattern = $2",
                                           key, spelled_pattern)
            if found is not None:
                await tx.conn.execute("UPDATE sender_rules SET kind = $1, created = $2 WHERE id = $3",
                                      kind, now, found)
                return SenderRule(int(found), spelled, kind, spelled_pattern, now, user_id, domain_id)
            count = await tx.conn.fetchval(f"SELECT count(*) FROM sender_rules WHERE {where}", key)
            if count >= names.MAX_SENDER_RULES:  # invariant 2, counted under the scope's row lock
                raise Invalid(f"{spelled} already has {names.MAX_SENDER_RULES} sender rules")
            new_id = await tx.conn.fetchval(
                "INSERT INTO sender_rules(user_id, domain_id, kind, pattern, created) VALUES ($1, $2, $3, $4, $5)"
                " RETURNING id", user_id, domain_id, kind, spelled_pattern, now)
            return SenderRule(int(new_id), spelled, kind, spelled_pattern, now, user_id, domain_id)

        return await self._engine.write(op)

    async def remove_sender_rule(self, scope: str, pattern: str) -> bool:
        spelled_pattern = names.sender_pattern(pattern)

        async def op(tx: Tx) -> bool:
            _, user_id, domain_id = await _scope(tx.conn, scope)
            where, key = _where(user_id, domain_id)
            status = await tx.conn.execute(f"DELETE FROM sender_rules WHERE {where} AND pattern = $2",
                                           key, spelled_pattern)
            return rowcount(status) > 0

        return await self._engine.write(op)

    async def add_training_signals(self, user_id: int, kind: str, blob_ids: Sequence[str], now: float) -> int:
        if kind not in SIGNALS:
            raise Invalid(f"a training signal is 'spam' or 'ham', not {kind!r}")
        if not blob_ids:
            return 0

        async def op(tx: Tx) -> int:
            # FOR SHARE: the user cannot be removed before this commits (the row's foreign key would fail)
            if await tx.conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR SHARE", user_id) is None:
                return 0
            return await record_signals(tx.conn, user_id, kind, blob_ids, now)

        return await self._engine.write(op)

    async def due_training_signals(self, now: float, limit: int = 50) -> list[TrainingSignal]:
        async def q(conn: Conn) -> list[TrainingSignal]:
            rows = await conn.fetch(  # invariant 3
                "SELECT id, user_id, kind, blob_id, created, attempts FROM spam_training WHERE next_try <= $1"
                " ORDER BY next_try, id LIMIT $2", now, limit)
            return [TrainingSignal(int(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]), int(r[5])) for r in rows]

        return await self._engine.read(q)

    async def claim_training_signals(self, now: float, limit: int, lease_seconds: float) -> list[TrainingSignal]:
        async def op(tx: Tx) -> list[TrainingSignal]:
            # Two senders at once (two nodes): FOR UPDATE SKIP LOCKED gives each rows the other does not hold, and
            # a row the other claimed and committed meanwhile is re-checked against `next_try <= now` (SQLite's
            # senders.py invariant 6).
            rows = await tx.conn.fetch(
                "WITH due AS (SELECT id, next_try FROM spam_training WHERE next_try <= $1 ORDER BY next_try, id"
                " LIMIT $2 FOR UPDATE SKIP LOCKED) UPDATE spam_training s SET next_try = $3 FROM due"
                " WHERE s.id = due.id RETURNING s.id, s.user_id, s.kind, s.blob_id, s.created, s.attempts,"
                " due.next_try", now, limit, now + lease_seconds)
            rows = sorted(rows, key=lambda r: (float(r[6]), int(r[0])))
            return [TrainingSignal(int(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]), int(r[5])) for r in rows]

        return await self._engine.write(op)

    async def finish_training_signal(self, signal_id: int, retry_at: float | None = None, *,
                                     created: float | None = None) -> None:
        async def op(tx: Tx) -> None:
            # `created` NULL: any verdict; else the one sent, not a newer one that replaced it (api.py)
            if retry_at is None:
                await tx.conn.execute("DELETE FROM spam_training WHERE id = $1"
                                      " AND ($2::double precision IS NULL OR created = $2)", signal_id, created)
            else:
                await tx.conn.execute("UPDATE spam_training SET attempts = attempts + 1, next_try = $1 WHERE id = $2"
                                      " AND ($3::double precision IS NULL OR created = $3)", retry_at, signal_id,
                                      created)

        await self._engine.write(op)

    async def add_dmarc_result(self, evaluation: DmarcEvaluation) -> None:
        e = evaluation

        async def op(tx: Tx) -> None:
            await tx.conn.execute(
                "INSERT INTO dmarc_results(at, policy_domain, policy, source_ip, header_from, envelope_from,"
                " disposition, dkim_aligned, spf_aligned, auth) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                e.at, e.policy_domain, e.policy, e.source_ip, e.header_from, e.envelope_from, e.disposition,
                bool(e.dkim_aligned), bool(e.spf_aligned), e.auth)

        await self._engine.write(op)

    async def dmarc_aggregate(self, before: float) -> tuple[list[DmarcEvaluation], int]:
        async def q(conn: Conn) -> tuple[list[DmarcEvaluation], int]:
            top = await conn.fetchval("SELECT max(id) FROM dmarc_results WHERE at < $1", before)
            if top is None:
                return [], 0
            # invariant 5: grouped by the server, so memory holds one row per distinct outcome, not per message;
            # each policy domain's policy is its newest row's among those covered
            rows = await conn.fetch(
                "SELECT max(at), policy_domain, (SELECT policy FROM dmarc_results p WHERE p.policy_domain ="
                " r.policy_domain AND p.id <= $1 ORDER BY p.id DESC LIMIT 1), source_ip, header_from,"
                " envelope_from, disposition, dkim_aligned, spf_aligned, auth, count(*) FROM dmarc_results r"
                " WHERE id <= $1 AND at < $2 GROUP BY policy_domain, source_ip, header_from, envelope_from,"
                " disposition, dkim_aligned, spf_aligned, auth"
                " ORDER BY policy_domain COLLATE \"C\", source_ip COLLATE \"C\"", top, before)
            return [DmarcEvaluation(float(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]),
                                    bool(r[7]), bool(r[8]), str(r[9]), int(r[10])) for r in rows], int(top)

        return await self._engine.read(q)

    async def claim_dmarc_results(self, before: float, claim: str, lease_seconds: float,
                                  now: float) -> list[DmarcEvaluation]:
        async def op(tx: Tx) -> list[DmarcEvaluation]:
            # The claim and the rows it reports in one transaction (SQLite's senders.py invariant 5). A row another
            # run claims at the same moment is locked by its UPDATE; ours waits, re-checks the WHERE on the
            # committed row (claimed now, not expired) and leaves it.
            await tx.conn.execute(
                "UPDATE dmarc_results SET claim = $1, claimed_until = $2 WHERE at < $3"
                " AND (claim = '' OR claimed_until <= $4)", claim, now + lease_seconds, before, now)
            rows = await tx.conn.fetch(
                "SELECT max(at), policy_domain, (SELECT policy FROM dmarc_results p WHERE p.policy_domain ="
                " r.policy_domain AND p.claim = $1 ORDER BY p.id DESC LIMIT 1), source_ip, header_from,"
                " envelope_from, disposition, dkim_aligned, spf_aligned, auth, count(*) FROM dmarc_results r"
                " WHERE claim = $1 GROUP BY policy_domain, source_ip, header_from, envelope_from,"
                " disposition, dkim_aligned, spf_aligned, auth"
                " ORDER BY policy_domain COLLATE \"C\", source_ip COLLATE \"C\"", claim)
            return [DmarcEvaluation(float(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]),
                                    bool(r[7]), bool(r[8]), str(r[9]), int(r[10])) for r in rows]

        return await self._engine.write(op)

    async def delete_dmarc_results(self, claim: str, policy_domain: str) -> int:
        async def op(tx: Tx) -> int:
            return rowcount(await tx.conn.execute(
                "DELETE FROM dmarc_results WHERE claim = $1 AND policy_domain = $2", claim, policy_domain))

        return await self._engine.write(op)

    async def release_dmarc_results(self, claim: str, policy_domain: str) -> None:
        async def op(tx: Tx) -> None:
            await tx.conn.execute("UPDATE dmarc_results SET claim = '', claimed_until = 0 WHERE claim = $1"
                                  " AND policy_domain = $2", claim, policy_domain)

        await self._engine.write(op)
