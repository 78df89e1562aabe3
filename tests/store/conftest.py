"""The store conformance suite's plumbing: one `store` fixture per engine, and `async def` tests without plugins.

Tests are plain `async def test_...(store)`: the hook below runs each in its own event loop (asyncio.run), opens
every store the fixtures made before the test and closes them after. To add an engine, add its name to
`BACKENDS` and a branch to `make_store`; every test then runs against it too.

"sqlite" is the engine as deployed: the tests' small bodies live in the database. "sqlite-files" is the same
engine with every body a file; the modules where bodies matter (messages, queue, durability, user removal) run
against it too, through `pytestmark = BODY_BACKENDS`, so both ways of storing a body meet the same suite.

"postgresql" is the PostgreSQL engine (postroom/store/postgresql/) on a real server started once per session
(tests/pgcluster.py, the `pg_cluster` fixture), an empty database per test (new, or one a finished test gave
back, emptied); its URL is written to
`data_dir/postgresql.url` so that `make_store` (also run by the kill -9 tests' child processes) finds it. A test
of something only one engine has (SQLite's files, its `sort_rows` copy, its row-bounded change table) skips
the other, saying why.

Engine-specific checks (where bodies are) go through `stored_bodies()`, which returns None where it does not
apply.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from postroom.store import open_store
from postroom.store.api import AppendRequest, Mailbox, Store, User

BACKENDS = ["sqlite", "postgresql"]
BODY_BACKENDS = pytest.mark.parametrize("backend", [*BACKENDS, "sqlite-files"], indirect=True)
TEST_TIMEOUT = 30.0

_STORES = pytest.StashKey[list[Any]]()


def make_store(backend: str, data_dir: Path) -> Store:
    if backend == "postgresql":
        from postroom.store.postgresql import PostgreSQLStore

        return PostgreSQLStore((data_dir / "postgresql.url").read_text().strip(), data_dir / "blobs")
    if backend == "sqlite":
        return open_store(f"sqlite:///{data_dir / 'postroom.db'}", data_dir)
    if backend == "sqlite-files":
        from postroom.store.sqlite import SQLiteStore

        return SQLiteStore(data_dir / "postroom.db", data_dir / "blobs", inline_max=-1)
    raise ValueError(backend)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    name = str(request.param)
    if name != "postgresql":
        yield name
        return
    cluster = request.getfixturevalue("pg_cluster")
    url = cluster.create_database()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "postgresql.url").write_text(url + "\n")
    yield name
    cluster.release_database(url)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(request: pytest.FixtureRequest, backend: str, data_dir: Path) -> Store:
    """A store, opened before the test body runs and closed after it."""
    s = make_store(backend, data_dir)
    request.node.stash.setdefault(_STORES, []).append(s)
    return s


@pytest.fixture
def store_factory(backend: str, data_dir: Path) -> Callable[[], Store]:
    """New, unopened stores over the same data (for close/reopen tests). The test opens and closes them."""
    return lambda: make_store(backend, data_dir)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    stores = pyfuncitem.stash.get(_STORES, [])

    async def main() -> None:
        for s in stores:
            await s.open()
        try:
            await asyncio.wait_for(fn(**kwargs), TEST_TIMEOUT)
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())
    return True


# ---- helpers the tests share


def blob_files(store: Store) -> list[Path] | None:
    """The message files of a file-backed engine (None if the engine keeps bodies elsewhere)."""
    blobs = getattr(store, "blobs", None)
    if blobs is None:
        return None
    root: Path = blobs.root
    staging = root / "staging"  # bodies on their way in (append_file), not stored ones
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith(".tmp.") and staging not in p.parents)


def inline_bodies(store: Store) -> list[str] | None:
    """The ids of the bodies an SQLite store keeps in its database (None for other engines)."""
    path = getattr(store, "path", None)
    if getattr(store, "blobs", None) is None or path is None:
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sorted(r[0] for r in conn.execute("SELECT id FROM blob_data"))
    finally:
        conn.close()


def stored_bodies(store: Store) -> list[str] | None:
    """The ids of every body the engine keeps (files and rows), sorted; None where it cannot tell."""
    files, rows = blob_files(store), inline_bodies(store)
    if files is None or rows is None:
        return None
    return sorted([p.name for p in files] + rows)


async def new_user(store: Store, address: str = "alice@example.org") -> User:
    domain = address.rpartition("@")[2]
    if await store.get_domain(domain) is None:
        await store.add_domain(domain)
    return await store.add_user(address, "$argon2id$fake")


async def inbox(store: Store, user: User) -> Mailbox:
    mbox = await store.get_mailbox(user.id, "INBOX")
    assert mbox is not None
    return mbox


def msg(n: int = 0, size: int = 0, **kw: Any) -> AppendRequest:
    body = b"From: a@example.org\r\nSubject: test %d\r\n\r\nbody %d\r\n" % (n, n)
    if size > len(body):
        body += b"x" * (size - len(body))
    return AppendRequest(raw=body, **kw)


# What each schema step added, undone (newest last). A migration test that fills a store with the current code
# and then needs exactly an older schema calls `downgrade`; a new schema step adds its undo here, once.
SCHEMA_UNDO: dict[int, tuple[str, ...]] = {
    7: ("ALTER TABLE blobs DROP COLUMN crlf_size",),
    8: (
        "DROP INDEX expunged_modseq",
        "DROP INDEX expunged_at",
        "ALTER TABLE expunged DROP COLUMN at",
        "ALTER TABLE mailboxes DROP COLUMN expunged_floor",
    ),
    9: ("DROP TABLE acl",),
    10: (
        "DROP TABLE fts_docs",
        "DROP TABLE fts_backlog",
        "DROP TABLE fts_head",
        "DROP TABLE fts_body",
        "DELETE FROM counters WHERE name = 'fts_version'",
    ),
    11: ("DROP TABLE changes", "DELETE FROM counters WHERE name = 'changes_pruned'"),
    12: ("ALTER TABLE messages DROP COLUMN save_date", "ALTER TABLE blobs DROP COLUMN preview", "DROP TABLE metadata"),
    13: (
        "DROP TABLE message_keys",
        "DROP TABLE thread_refs",
        "DROP INDEX messages_thread",
        "ALTER TABLE messages DROP COLUMN thread_id",
        "DELETE FROM counters WHERE name = 'thread'",
    ),
    14: ("DROP TABLE shared_owners",),
    15: ("DROP TABLE sort_rows",),
    16: ("DROP TABLE fts_scan",),
    17: ("DROP TABLE web_sessions", "DROP INDEX messages_unseen"),
    18: (
        "DROP TRIGGER quota_user",
        "DROP TRIGGER quota_in",
        "DROP TRIGGER quota_out",
        "DROP TABLE quota_usage",
        "ALTER TABLE users DROP COLUMN quota_messages",
        "ALTER TABLE domains DROP COLUMN quota_bytes",
    ),
    19: ("DROP TABLE imap_structure",),
    20: ("ALTER TABLE users DROP COLUMN admin", "ALTER TABLE domains DROP COLUMN dkim_next"),
    21: ("DROP INDEX blobs_crlf",),
    22: ("DROP TABLE sender_rules", "DROP TABLE spam_training", "DROP TABLE dmarc_results"),
    # The header index without positions, as step 12 made it, and empty: the store rebuilds its index on open.
    23: ("DROP TABLE fts_head",
         "CREATE VIRTUAL TABLE fts_head USING fts5(h_subject, h_from, h_to, h_cc, h_bcc, h_headers, h_names,"
         " tokenize='trigram case_sensitive 1', detail=column, content='')",
         "UPDATE counters SET value = 0 WHERE name = 'fts_version'"),
    24: ("DROP TABLE user_settings", "DROP TABLE auto_replies"),
    25: ("DROP TABLE held_posts", "DROP TABLE shared_values", "DROP TABLE mailbox_logins"),
    26: ("ALTER TABLE queue_rcpt DROP COLUMN lease_until", "ALTER TABLE queue_rcpt DROP COLUMN lease_holder"),
    27: ("DROP TABLE job_leases", "DROP INDEX dmarc_results_claim",
         "ALTER TABLE dmarc_results DROP COLUMN claimed_until", "ALTER TABLE dmarc_results DROP COLUMN claim"),
    28: ("DROP INDEX queue_rcpt_claim", "DROP INDEX queue_claim_order"),
    # `blobs` keyed by its id again (WITHOUT ROWID, step 1's column order and the columns steps 7 and 12 added),
    # with step 21's index; `downgrade` runs with foreign keys off (sqlite3's default), so nothing cascades.
    29: ("CREATE TABLE blobs_v28(id TEXT PRIMARY KEY, size INTEGER NOT NULL, refcount INTEGER NOT NULL, meta BLOB,"
         " crlf_size INTEGER, preview TEXT) WITHOUT ROWID",
         "INSERT INTO blobs_v28(id, size, refcount, meta, crlf_size, preview)"
         " SELECT id, size, refcount, meta, crlf_size, preview FROM blobs",
         "DROP TABLE blobs",
         "ALTER TABLE blobs_v28 RENAME TO blobs",
         "CREATE INDEX blobs_crlf ON blobs(id, crlf_size)"),
}


def downgrade(db: Path, version: int) -> None:
    """Turn the SQLite database `db` (at the current schema) into exactly schema `version` (>= 6), keeping its
    rows: each later step's additions are dropped, newest first, and `user_version` is set."""
    from postroom.store.sqlite.schema import SCHEMA_VERSION

    assert set(SCHEMA_UNDO) == set(range(7, SCHEMA_VERSION + 1)), "a schema step without its undo in SCHEMA_UNDO"
    conn = sqlite3.connect(db)
    try:
        for step in range(SCHEMA_VERSION, version, -1):
            for statement in SCHEMA_UNDO[step]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()
