"""`postroom migrate --to postgresql://...` (issue 16 item 4): a whole SQLite store copied into an empty
PostgreSQL database, then verified.

Theory of operation
-------------------
Both schemas hold the same rows under the same names (postgresql/schema.py follows the SQLite schema's invariants),
so the copy is table by table, rows as they are, ids included: every mailbox keeps its id, UIDVALIDITY, UIDNEXT,
HIGHESTMODSEQ and \\Recent watermark, every message its UID, MODSEQ, flags, keywords, dates and thread id, and the
expunged record stays, so clients resynchronise nothing (no re-download, QRESYNC still answers). The account
settings come too (the admin flag, DKIM keys with a rotation's kept keys, sender allow and block rules), and the
pending spam training signals, DMARC results, IMAP structure rows and moderated list posts still held (with
their tokens, so the owner's approve and reject addresses keep working). `shared_values` is not copied: a
SQLite server keeps its secret and generated certificate as files, and the first node on the new database
offers those files' (auth/secret.py, net/tls.py), so they survive the move. Bodies are read from `blob_data` or their
file and written as chunk rows; each is checked against its content address (its SHA-256) on the way. The quota
counters are made again by the target's triggers as the messages go in (then compared), the identity sequences are
set past the source's highest ids (SQLite's AUTOINCREMENT marks included, so no id is ever handed out twice), and
the full-text index is left to the backlog (`postroom index`, or the server in the background): every body is put
in it.

Everything is one PostgreSQL transaction: a failure leaves the target empty. The source is only read (one read
transaction: a consistent snapshot); the caller stops the server first, or the copy misses what arrives later.

Verification, after the commit, reading the target back: the row count of every table, a SHA-256 digest of every
mailbox's and every message's identifying columns on both sides, and of the admin flags, DKIM keys and sender
rules, every body's bytes hashed again against its id, and each user's quota usage.

Invariants:
1. The target must be empty (no domain, user, mailbox or body): a second run never mixes two stores.
2. Nothing is committed unless every body matched its address.
3. `verify` reads only the target and the source; a mismatch is reported, never repaired.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from postroom.store.api import StoreError
from postroom.store.blobs import BlobStore, blob_id_of
from postroom.store.postgresql.common import chunks_of

Progress = Callable[[str, int, int], None]
"""Called with (what, done, total) as the copy goes on."""

BATCH = 2000  # rows per COPY
# (table, columns) in an order that satisfies the foreign keys; bodies (`blobs`) are copied on their own.
TABLES: tuple[tuple[str, str], ...] = (
    ("domains", "id, name, dkim_selector, dkim_private_key, dkim_ed25519_selector, dkim_ed25519_key, quota_bytes,"
                " created, dkim_next"),
    ("users", "id, address, domain_id, password_hash, scram, quota_bytes, quota_messages, created, admin"),
    ("aliases", "source, target, domain_id"),
    ("lists", "address, domain_id, owner, policy, bounce_address"),
    ("list_members", "list_address, member"),
    ("shared_owners", "domain_id, user_id"),
    ("mailboxes", "id, user_id, name, uidvalidity, uidnext, highestmodseq, special_use, keywords, recent_uid,"
                  " expunged_floor"),
    ("subscriptions", "user_id, name"),
    ("BODIES", ""),
    ("imap_structure", "blob_id, envelope, bodystructure, body"),
    ("message_keys", "blob_id, sent, subject, reply, from_key, to_key, cc_key, display_from, display_to,"
                     " message_id, refs"),
    ("messages", "mailbox_id, uid, modseq, internal_date, size, flags, keywords, blob_id, save_date, thread_id"),
    ("expunged", "mailbox_id, uid, modseq, at"),
    ("acl", "id, mailbox_id, grantee_id, negative, rights"),
    ("metadata", "user_id, mailbox_id, name, value"),
    ("thread_refs", "user_id, ref, thread_id"),
    ("queue", "id, blob_id, size, mail_from, envid, ret, created, from_checked"),
    ("queue_rcpt", "queue_id, position, rcpt, orcpt, notify, state, attempts, next_try, last_error,"
                   " delay_notified"),
    ("web_sessions", "id_hash, user_id, csrf, created, last_seen"),
    ("auth_failures", "address, username, failures, last_failure, locked_since, locked_until, expires"),
    ("sender_rules", "id, user_id, domain_id, kind, pattern, created"),
    ("spam_training", "id, user_id, kind, blob_id, created, attempts, next_try"),
    ("dmarc_results", "id, at, policy_domain, policy, source_ip, header_from, envelope_from, disposition,"
                      " dkim_aligned, spf_aligned, auth"),
    ("user_settings", "user_id, display_name, signature, default_identity, identity_names, vacation, vacation_subject,"
                      " vacation_text, vacation_start, vacation_end, vacation_days"),
    ("auto_replies", "user_id, sender, sent"),
    ("held_posts", "token, list_address, mail_from, raw, held_at, claim, claimed_until"),
)
IDENTITIES = ("domains", "users", "mailboxes", "acl", "queue", "sender_rules", "spam_training", "dmarc_results")
COUNTERS = ("uidvalidity", "thread", "sort_keys")
FLOATS = {"created", "internal_date", "save_date", "at", "sent", "next_try", "last_seen", "last_failure",
          "locked_since", "locked_until", "expires", "vacation_start", "vacation_end", "held_at", "claimed_until"}
BOOLS = {"admin", "dkim_aligned", "spf_aligned", "vacation"}  # SQLite's 0 / 1, PostgreSQL's boolean
# What identifies a mailbox and a message to a client: compared on both sides by digest (module doc).
MAILBOX_DIGEST = "SELECT id, user_id, name, uidvalidity, uidnext, highestmodseq FROM mailboxes ORDER BY id"
MESSAGE_DIGEST = ("SELECT mailbox_id, uid, modseq, flags, keywords, blob_id, thread_id FROM messages"
                  " ORDER BY mailbox_id, uid")
# Account settings a copy must keep, compared likewise: (what, the source's query, the copy's query), booleans
# read as 0 / 1 on both sides.
SETTINGS_DIGESTS = (
    ("users' admin flags", "SELECT id, address, admin FROM users ORDER BY id",
     "SELECT id, address, admin::int FROM users ORDER BY id"),
    ("domains' DKIM keys", "SELECT id, name, dkim_selector, dkim_private_key, dkim_ed25519_selector,"
     " dkim_ed25519_key, dkim_next FROM domains ORDER BY id", None),
    ("sender rules", "SELECT id, user_id, domain_id, kind, pattern FROM sender_rules ORDER BY id", None),
    ("user settings", "SELECT user_id, display_name, signature, default_identity, vacation, vacation_text"
     " FROM user_settings ORDER BY user_id", "SELECT user_id, display_name, signature, default_identity,"
     " vacation::int, vacation_text FROM user_settings ORDER BY user_id"),
)


@dataclass
class Report:
    """What `copy_store` copied and what `verify` found: rows per table, and the mismatches (none: a good copy)."""

    rows: dict[str, int] = field(default_factory=dict)
    bodies: int = 0
    body_bytes: int = 0
    problems: list[str] = field(default_factory=list)


def _convert(columns: list[str], row: tuple[Any, ...]) -> tuple[Any, ...]:
    out = []
    for name, value in zip(columns, row):
        if value is not None and name in FLOATS:
            value = float(value)
        elif value is not None and name in BOOLS:
            value = bool(value)
        elif isinstance(value, memoryview):
            value = bytes(value)
        out.append(value)
    return tuple(out)


def _batches(conn: sqlite3.Connection, sql: str) -> Iterator[list[tuple[Any, ...]]]:
    cur = conn.execute(sql)
    while rows := cur.fetchmany(BATCH):
        yield rows


def _digest(rows: Iterator[tuple[Any, ...]] | list[Any]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(repr(tuple(r)).encode())
    return h.hexdigest()


async def copy_store(source_db: Path, blobs: BlobStore, url: str, progress: Progress) -> Report:
    """Copy the SQLite store `source_db` (bodies larger than its inline threshold under `blobs`) into the empty
    database at `url`, whose schema the caller made (by opening a `PostgreSQLStore` on it). StoreError if the
    target is not empty or a body does not match its address (invariants 1, 2)."""
    report = Report()
    src = sqlite3.connect(f"file:{source_db}?mode=ro", uri=True)
    dst = await asyncpg.connect(url)
    try:
        src.execute("BEGIN")  # one snapshot of the source
        for table in ("domains", "users", "mailboxes", "blobs"):
            if await dst.fetchval(f"SELECT count(*) FROM {table}"):
                raise StoreError(f"the target database is not empty ({table} has rows): nothing was copied")
        async with dst.transaction():
            for table, columns in TABLES:
                if table == "BODIES":
                    await _copy_bodies(src, dst, blobs, report, progress)
                    continue
                names = [c.strip() for c in columns.split(",")]
                total = int(src.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                done = 0
                progress(table, 0, total)
                for rows in _batches(src, f"SELECT {columns} FROM {table}"):
                    await dst.copy_records_to_table(table, records=[_convert(names, r) for r in rows], columns=names)
                    done += len(rows)
                    progress(table, done, total)
                report.rows[table] = done
            for name, value in src.execute(
                    f"SELECT name, value FROM counters WHERE name IN ({','.join('?' * len(COUNTERS))})", COUNTERS):
                await dst.execute("INSERT INTO counters(name, value) VALUES ($1, $2)"
                                  " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", name, int(value))
            marks = dict(src.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
            for table in IDENTITIES:  # past every id the source handed out, deleted ones included
                top = max(int(marks.get(table) or 0),
                          int(src.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]))
                if top:
                    await dst.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), $1)", top)
            await dst.executemany("UPDATE quota_usage SET warned = $1 WHERE user_id = $2",
                                  [(int(w), int(u)) for u, w in src.execute("SELECT user_id, warned FROM quota_usage")])
            await dst.execute("INSERT INTO fts_backlog(blob_id) SELECT DISTINCT blob_id FROM messages"
                              " ON CONFLICT DO NOTHING")  # the index is built afterwards (module doc)
    finally:
        src.close()
        await dst.close()
    return report


async def _copy_bodies(src: sqlite3.Connection, dst: asyncpg.Connection, blobs: BlobStore, report: Report,
                       progress: Progress) -> None:
    total = int(src.execute("SELECT count(*) FROM blobs").fetchone()[0])
    progress("bodies", 0, total)
    cur = src.execute("SELECT b.id, b.size, b.refcount, b.meta, b.crlf_size, b.preview, d.data"
                      " FROM blobs b LEFT JOIN blob_data d ON d.id = b.id ORDER BY b.id")
    while rows := cur.fetchmany(200):
        records: list[tuple[Any, ...]] = []
        chunks: list[tuple[str, int, bytes]] = []
        for blob_id, size, refcount, meta, crlf, preview, data in rows:
            raw = bytes(data) if data is not None else blobs.read(str(blob_id))
            if blob_id_of(raw) != blob_id or len(raw) != int(size):
                raise StoreError(f"body {blob_id} does not match its address: nothing was copied")  # invariant 2
            records.append((blob_id, int(size), int(refcount), None if meta is None else bytes(meta),
                            None if crlf is None else int(crlf), preview))
            chunks.extend((blob_id, n, part) for n, part in chunks_of(raw))
            report.body_bytes += len(raw)
        await dst.copy_records_to_table("blobs", records=records,
                                        columns=["id", "size", "refcount", "meta", "crlf_size", "preview"])
        await dst.copy_records_to_table("blob_chunks", records=chunks, columns=["id", "n", "data"])
        report.bodies += len(records)
        progress("bodies", report.bodies, total)
    report.rows["blobs"] = report.bodies


async def verify(source_db: Path, url: str, report: Report, progress: Progress) -> Report:
    """Compare the copy with its source (module doc); the mismatches go to `report.problems`."""
    src = sqlite3.connect(f"file:{source_db}?mode=ro", uri=True)
    dst = await asyncpg.connect(url)
    try:
        for table, _ in (*TABLES, ("blobs", "")):
            if table == "BODIES":
                continue
            theirs = int(src.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            ours = int(await dst.fetchval(f"SELECT count(*) FROM {table}"))
            if theirs != ours:
                report.problems.append(f"{table}: {theirs} rows in the source, {ours} in the copy")
        for what, sql in (("mailboxes", MAILBOX_DIGEST), ("messages", MESSAGE_DIGEST)):
            if _digest(src.execute(sql)) != _digest(await dst.fetch(sql)):
                report.problems.append(f"{what}: the copy differs from the source")
        for what, theirs_sql, ours_sql in SETTINGS_DIGESTS:
            if _digest(src.execute(theirs_sql)) != _digest(await dst.fetch(ours_sql or theirs_sql)):
                report.problems.append(f"{what}: the copy differs from the source")
        usage_sql = "SELECT user_id, storage, messages, warned FROM quota_usage ORDER BY user_id"
        if _digest(src.execute(usage_sql)) != _digest(await dst.fetch(usage_sql)):
            report.problems.append("quota usage: the copy differs from the source")
        total = int(await dst.fetchval("SELECT count(*) FROM blobs"))
        done = 0
        after = ""
        while True:  # every body read back and hashed against its address, a batch at a time
            found = await dst.fetch(
                "SELECT b.id, string_agg(c.data, ''::bytea ORDER BY c.n) FROM blobs b JOIN blob_chunks c"
                " ON c.id = b.id WHERE b.id > $1 GROUP BY b.id ORDER BY b.id LIMIT 200", after)
            if not found:
                break
            for blob_id, data in found:
                if blob_id_of(bytes(data)) != blob_id:
                    report.problems.append(f"body {blob_id}: its bytes do not match its address")
            done += len(found)
            after = str(found[-1][0])
            progress("verified bodies", done, total)
        if done != total:
            report.problems.append(f"bodies: {total} in the copy, {done} with their bytes")
    finally:
        src.close()
        await dst.close()
    return report
