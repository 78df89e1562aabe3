"""The PostgreSQL schema and its version.

The table `schema_version` holds one row, the schema version. `migrate()` brings a database from any older
version to `SCHEMA_VERSION` in one transaction under an advisory lock (two nodes opening a fresh database at
once cannot both create it), and refuses a database written by a newer Postroom. A change adds a step to
`_STEPS`; it never edits an existing step. The numbering is this engine's own: it does not follow SQLite's.

Versions: 1 is the core: domains, users, aliases, lists, mailboxes, subscriptions, bodies, messages, the expunged
record, the shared-folders owners, access control lists and the change feed (the SQLite schema's invariants 1-11,
13, 14, 19 hold here in the same words; the tables of the concerns not on this engine yet, queue, full-text
index, metadata, sort and thread keys, quotas, come as later steps). 2 adds `web_sessions` and `auth_failures`
(the SQLite schema's invariant 22 and version 6's table). 3 adds the outbound queue, `queue` and `queue_rcpt`
(schema invariant 1 then counts `queue` rows among a body's references). 4 adds IMAP METADATA (`metadata`, the
SQLite schema's invariant 16) and quotas: `quota_usage` and the triggers that keep it (the SQLite schema's
invariant 23, in PL/pgSQL). 5 adds sort and thread keys: `message_keys` (one row per body, removed with it),
`thread_refs` and the `messages_thread` index (threads.py; the SQLite schema's invariants 17, 18; no `sort_rows`
copy: threads.py says why). 6 adds the full-text index: the pg_trgm extension, `fts_text` (the indexed text,
scan form and version of each indexed body, with a trigram GIN index per text column) and `fts_backlog` (fts.py;
the SQLite schema's invariants 12 and 21); every body messages name goes to the backlog. 7 adds
`imap_structure`, the IMAP-encoded ENVELOPE, BODYSTRUCTURE and BODY of each body (structure.py; the SQLite
schema's step 19 and invariant 24), none written by the step. 8 adds `users.admin` (false for every existing
user) and `domains.dkim_next` ("" for every existing domain): SQLite's step 20. 9 adds `sender_rules`,
`spam_training` and `dmarc_results` (senders.py; SQLite's step 22 and invariants 25-27), empty. 10 adds
`user_settings` and `auto_replies` (settings.py; SQLite's step 24), empty. SQLite's step 21 (an index
of body octet counts, for rows that carry the metadata) has no counterpart: PostgreSQL reads `blobs.crlf_size`
by the primary key index and the row alone. 11 adds what several nodes share (issue 16 item 3): `held_posts` (moderated
list posts with their claim, lists.py), `shared_values` (the server secret and the generated certificate, made once
by the first node), `pop3_locks` (maildrop lease rows and the last login, pop3/session.py) and `mailbox_logins`
(POP-before-SMTP's latest login per client address), empty (SQLite's step 25). 12 adds the queue leases,
`queue_rcpt.lease_holder` and `lease_until` (SQLite's step 26 and invariant 31; queue.py claims with them), every
recipient queued before free. 13 adds the cluster-wide job leases, `job_leases` (jobs.py: a periodic job runs on
one node at a time), and `dmarc_results.claim` / `claimed_until` (a report run claims the rows it reports, so two
runs never report one row); SQLite's step 27 and invariants 27 and 32. 14 adds the indexes a queue claim walks in
claim order (issue 17; queue.py "What a claim reads"): `queue_claim_order` on queue(created, id) and
`queue_rcpt_claim` on queue_rcpt(queue_id, position) for the pending recipients; SQLite's step 28.

Bodies: `blobs` is the body's record (id = sha256 hex, size, refcount, meta, crlf_size, preview), and the
bytes are `blob_chunks` rows of at most `CHUNK_SIZE` bytes each, numbered from 0: a small body is one row (bytea
"inline"), a large one several, so a range read fetches only the chunks it needs and no row is ever larger than
a chunk. The column is STORAGE EXTERNAL: mail bodies are mostly compressed or base64 already, and PostgreSQL's
pglz pass on every write would cost CPU for little.

Invariants:
1. `blobs.refcount` equals the number of `messages` and `queue` rows naming the blob; the row goes (its chunks
   by cascade) in the transaction that drops the last reference (common.py).
2. A `blobs` row has chunks 0..n-1 whose lengths add up to `size` (written in the transaction that inserts it).
3. `mailboxes.uidvalidity` is UNIQUE and comes from the `counters` row 'uidvalidity' (seeded with the clock).
4. Identity columns hand out ids that are never reused (PostgreSQL sequences never go back).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from postroom.store.api import StoreError
from postroom.store.postgresql.dbtypes import Conn

SCHEMA_VERSION = 14
CHUNK_SIZE = 256 * 1024
MIGRATE_LOCK = 0x706F7374726F6F6D  # "postroom": the advisory lock key of `migrate`

_V1 = """
CREATE TABLE counters(name text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE domains(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    dkim_selector text NOT NULL DEFAULT '',
    dkim_private_key text NOT NULL DEFAULT '',
    dkim_ed25519_selector text NOT NULL DEFAULT '',
    dkim_ed25519_key text NOT NULL DEFAULT '',
    quota_bytes bigint NOT NULL DEFAULT 0,
    created double precision NOT NULL
);
CREATE TABLE users(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    address text NOT NULL UNIQUE,
    domain_id bigint NOT NULL REFERENCES domains(id),
    password_hash text NOT NULL,
    scram text NOT NULL DEFAULT '',
    quota_bytes bigint NOT NULL DEFAULT 0,
    quota_messages bigint NOT NULL DEFAULT 0,
    created double precision NOT NULL
);
CREATE INDEX users_domain ON users(domain_id);
CREATE TABLE aliases(
    source text NOT NULL,
    target text NOT NULL,
    domain_id bigint NOT NULL REFERENCES domains(id),
    PRIMARY KEY(source, target)
);
CREATE INDEX aliases_domain ON aliases(domain_id);
CREATE TABLE lists(
    address text PRIMARY KEY,
    domain_id bigint NOT NULL REFERENCES domains(id),
    owner text NOT NULL,
    policy text NOT NULL,
    bounce_address text NOT NULL
);
CREATE INDEX lists_domain ON lists(domain_id);
CREATE TABLE list_members(
    list_address text NOT NULL REFERENCES lists(address) ON DELETE CASCADE,
    member text NOT NULL,
    PRIMARY KEY(list_address, member)
);
CREATE TABLE shared_owners(
    domain_id bigint PRIMARY KEY REFERENCES domains(id) ON DELETE CASCADE,
    user_id bigint NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE
);
CREATE TABLE mailboxes(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name text NOT NULL,
    uidvalidity bigint NOT NULL UNIQUE,
    uidnext bigint NOT NULL DEFAULT 1,
    highestmodseq bigint NOT NULL DEFAULT 1,
    special_use text,
    keywords text NOT NULL DEFAULT '',
    recent_uid bigint NOT NULL DEFAULT 0,
    expunged_floor bigint NOT NULL DEFAULT 0,
    UNIQUE(user_id, name)
);
CREATE TABLE subscriptions(
    user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name text NOT NULL,
    PRIMARY KEY(user_id, name)
);
CREATE TABLE blobs(
    id text PRIMARY KEY,
    size bigint NOT NULL,
    refcount bigint NOT NULL,
    meta bytea,
    crlf_size bigint,
    preview text
);
CREATE TABLE blob_chunks(
    id text NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    n integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY(id, n)
);
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE messages(
    mailbox_id bigint NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    internal_date double precision NOT NULL,
    size bigint NOT NULL,
    flags integer NOT NULL DEFAULT 0,
    keywords text NOT NULL DEFAULT '',
    blob_id text NOT NULL REFERENCES blobs(id),
    save_date double precision,
    thread_id bigint NOT NULL DEFAULT 0,
    PRIMARY KEY(mailbox_id, uid)
);
CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
CREATE INDEX messages_blob ON messages(blob_id);
CREATE INDEX messages_unseen ON messages(mailbox_id) WHERE flags & 1 = 0;
CREATE TABLE expunged(
    mailbox_id bigint NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    at double precision NOT NULL,
    PRIMARY KEY(mailbox_id, uid)
);
CREATE INDEX expunged_modseq ON expunged(mailbox_id, modseq);
CREATE INDEX expunged_at ON expunged(at);
CREATE TABLE acl(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailbox_id bigint NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    grantee_id bigint REFERENCES users(id) ON DELETE CASCADE,
    negative integer NOT NULL DEFAULT 0,
    rights text NOT NULL
);
CREATE UNIQUE INDEX acl_entry ON acl(mailbox_id, coalesce(grantee_id, 0), negative);
CREATE INDEX acl_grantee ON acl(grantee_id);
CREATE TABLE changes(
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin text NOT NULL,
    token bigint NOT NULL,
    created double precision NOT NULL,
    user_id bigint NOT NULL,
    mailbox_id bigint NOT NULL,
    kind text NOT NULL,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    flags integer NOT NULL,
    keywords text NOT NULL,
    name text NOT NULL,
    old_name text NOT NULL
);
CREATE INDEX changes_write ON changes(origin, token);
CREATE INDEX changes_created ON changes(created);
"""


async def _v1(conn: Conn) -> None:
    await conn.execute(_V1)
    await conn.execute("INSERT INTO counters(name, value) VALUES ('uidvalidity', $1)", int(time.time()) - 1)


async def _v2(conn: Conn) -> None:
    """Webmail sessions (websessions.py) and failed-login records (authfail.py), none yet."""
    await conn.execute("""
CREATE TABLE web_sessions(
    id_hash text PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf text NOT NULL,
    created double precision NOT NULL,
    last_seen double precision NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions(user_id);
CREATE INDEX web_sessions_seen ON web_sessions(last_seen);
CREATE INDEX web_sessions_created ON web_sessions(created);
CREATE TABLE auth_failures(
    address text NOT NULL,
    username text NOT NULL,
    failures bigint NOT NULL,
    last_failure double precision NOT NULL,
    locked_since double precision NOT NULL,
    locked_until double precision NOT NULL,
    expires double precision NOT NULL,
    PRIMARY KEY(address, username)
);
CREATE INDEX auth_failures_expires ON auth_failures(expires);
""")


async def _v3(conn: Conn) -> None:
    """The outbound queue (queue.py), empty."""
    await conn.execute("""
CREATE TABLE queue(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    blob_id text NOT NULL REFERENCES blobs(id),
    size bigint NOT NULL,
    mail_from text NOT NULL,
    envid text NOT NULL DEFAULT '',
    ret text NOT NULL DEFAULT '',
    created double precision NOT NULL,
    from_checked integer NOT NULL DEFAULT 1
);
CREATE INDEX queue_blob ON queue(blob_id);
CREATE TABLE queue_rcpt(
    queue_id bigint NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
    position integer NOT NULL,
    rcpt text NOT NULL,
    orcpt text NOT NULL DEFAULT '',
    notify text NOT NULL DEFAULT '',
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_try double precision NOT NULL DEFAULT 0,
    last_error text NOT NULL DEFAULT '',
    delay_notified integer NOT NULL DEFAULT 0,
    PRIMARY KEY(queue_id, rcpt)
);
CREATE INDEX queue_rcpt_due ON queue_rcpt(next_try) WHERE state IN ('queued', 'deferred');
""")


async def _v4(conn: Conn) -> None:
    """METADATA entries (metadata.py) and the per-user quota counters with their triggers (quota.py): the
    counters of the users and messages that exist are computed once."""
    await conn.execute("""
CREATE TABLE metadata(
    user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    mailbox_id bigint NOT NULL,
    name text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY(user_id, mailbox_id, name)
);
CREATE INDEX metadata_mailbox ON metadata(mailbox_id);
CREATE TABLE quota_usage(
    user_id bigint PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    storage bigint NOT NULL DEFAULT 0,
    messages bigint NOT NULL DEFAULT 0,
    warned integer NOT NULL DEFAULT 0
);
INSERT INTO quota_usage(user_id, storage, messages)
    SELECT u.id, coalesce(s.storage, 0), coalesce(s.messages, 0) FROM users u LEFT JOIN
    (SELECT b.user_id AS user_id, sum(m.size) AS storage, count(*) AS messages FROM messages m
     JOIN mailboxes b ON b.id = m.mailbox_id GROUP BY b.user_id) s ON s.user_id = u.id;
CREATE FUNCTION quota_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO quota_usage(user_id) VALUES (NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER quota_user AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION quota_user();
CREATE FUNCTION quota_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE quota_usage SET storage = storage + NEW.size, messages = messages + 1
        WHERE user_id = (SELECT user_id FROM mailboxes WHERE id = NEW.mailbox_id);
    RETURN NULL;
END $$;
CREATE TRIGGER quota_in AFTER INSERT ON messages FOR EACH ROW EXECUTE FUNCTION quota_in();
CREATE FUNCTION quota_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE owner bigint;
BEGIN
    SELECT user_id INTO owner FROM mailboxes WHERE id = OLD.mailbox_id;
    UPDATE quota_usage SET storage = storage - OLD.size, messages = messages - 1 WHERE user_id = owner;
    -- the warning level falls to the level usage is now at, so the next crossing warns again
    UPDATE quota_usage SET warned = least(warned, (SELECT CASE
        WHEN (u.quota_bytes > 0 AND quota_usage.storage * 100 >= 95 * u.quota_bytes)
          OR (u.quota_messages > 0 AND quota_usage.messages * 100 >= 95 * u.quota_messages) THEN 95
        WHEN (u.quota_bytes > 0 AND quota_usage.storage * 100 >= 80 * u.quota_bytes)
          OR (u.quota_messages > 0 AND quota_usage.messages * 100 >= 80 * u.quota_messages) THEN 80
        ELSE 0 END FROM users u WHERE u.id = quota_usage.user_id))
        WHERE user_id = owner AND warned > 0;
    RETURN NULL;
END $$;
CREATE TRIGGER quota_out AFTER DELETE ON messages FOR EACH ROW EXECUTE FUNCTION quota_out();
""")


async def _v5(conn: Conn) -> None:
    """Sort and thread keys (threads.py): none yet, filled as bodies are stored or their metadata written back."""
    await conn.execute("""
CREATE TABLE message_keys(
    blob_id text PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE,
    sent double precision,
    subject text NOT NULL,
    reply integer NOT NULL,
    from_key text NOT NULL,
    to_key text NOT NULL,
    cc_key text NOT NULL,
    display_from text NOT NULL,
    display_to text NOT NULL,
    message_id text,
    refs text NOT NULL
);
CREATE TABLE thread_refs(
    user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    ref text NOT NULL,
    thread_id bigint NOT NULL,
    PRIMARY KEY(user_id, ref)
);
CREATE INDEX messages_thread ON messages(thread_id, mailbox_id);
""")


async def _v6(conn: Conn) -> None:
    """The full-text index (fts.py): the bodies messages name go to the backlog; nothing is read here."""
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # a trusted extension: the database owner may
    columns = ("h_subject", "h_from", "h_to", "h_cc", "h_bcc", "h_headers", "h_names", "body")
    await conn.execute(
        "CREATE TABLE fts_text(blob_id text PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE,"
        " version bigint NOT NULL, form bytea NOT NULL, "
        + ", ".join(f"{c} text NOT NULL" for c in columns) + ")")
    await conn.execute("ALTER TABLE fts_text ALTER COLUMN form SET STORAGE EXTERNAL")  # compressed already
    for c in columns:
        await conn.execute(f"CREATE INDEX fts_text_{c} ON fts_text USING gin ({c} gin_trgm_ops)")
    await conn.execute("CREATE TABLE fts_backlog(blob_id text PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE)")
    await conn.execute("INSERT INTO fts_backlog(blob_id) SELECT DISTINCT blob_id FROM messages")


async def _v7(conn: Conn) -> None:
    """The IMAP structure items of each body (structure.py): none written here; bodies stored before get theirs
    from the first FETCH that decodes their metadata (`Store.write_structures`)."""
    await conn.execute("""
CREATE TABLE imap_structure(
    blob_id text PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE,
    envelope bytea NOT NULL,
    bodystructure bytea NOT NULL,
    body bytea NOT NULL
);
""")


async def _v8(conn: Conn) -> None:
    """The admin flag of users (nobody becomes one by an upgrade) and the DKIM keys kept for a switch."""
    await conn.execute("""
ALTER TABLE users ADD COLUMN admin boolean NOT NULL DEFAULT false;
ALTER TABLE domains ADD COLUMN dkim_next text NOT NULL DEFAULT '';
""")


async def _v9(conn: Conn) -> None:
    """Sender allow/block rules, spam training signals and DMARC results (senders.py), none yet. A rule belongs to
    exactly one scope, gone with it by cascade; the partial unique indexes make (scope, pattern) unique and find
    a scope's rules. A training signal names its body without a foreign key (the body may go first)."""
    await conn.execute("""
CREATE TABLE sender_rules(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint REFERENCES users(id) ON DELETE CASCADE,
    domain_id bigint REFERENCES domains(id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('allow', 'block')),
    pattern text NOT NULL,
    created double precision NOT NULL,
    CHECK ((user_id IS NULL) <> (domain_id IS NULL))
);
CREATE UNIQUE INDEX sender_rules_user ON sender_rules(user_id, pattern) WHERE user_id IS NOT NULL;
CREATE UNIQUE INDEX sender_rules_domain ON sender_rules(domain_id, pattern) WHERE domain_id IS NOT NULL;
CREATE TABLE spam_training(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('spam', 'ham')),
    blob_id text NOT NULL,
    created double precision NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_try double precision NOT NULL
);
CREATE INDEX spam_training_due ON spam_training(next_try);
CREATE UNIQUE INDEX spam_training_body ON spam_training(user_id, blob_id);
CREATE TABLE dmarc_results(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at double precision NOT NULL,
    policy_domain text NOT NULL,
    policy text NOT NULL,
    source_ip text NOT NULL,
    header_from text NOT NULL,
    envelope_from text NOT NULL,
    disposition text NOT NULL,
    dkim_aligned boolean NOT NULL,
    spf_aligned boolean NOT NULL,
    auth text NOT NULL
);
CREATE INDEX dmarc_results_at ON dmarc_results(at);
""")


async def _v10(conn: Conn) -> None:
    """User settings and the auto-reply record (settings.py; SQLite's step 24 and invariant 28), none yet."""
    await conn.execute("""
CREATE TABLE user_settings(
    user_id bigint PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    display_name text NOT NULL,
    signature text NOT NULL,
    default_identity text NOT NULL,
    identity_names text NOT NULL,
    vacation boolean NOT NULL,
    vacation_subject text NOT NULL,
    vacation_text text NOT NULL,
    vacation_start double precision,
    vacation_end double precision,
    vacation_days integer NOT NULL
);
CREATE TABLE auto_replies(
    user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    sender text NOT NULL,
    sent double precision NOT NULL,
    PRIMARY KEY(user_id, sender)
);
CREATE INDEX auto_replies_sent ON auto_replies(user_id, sent);
""")



async def _v11(conn: Conn) -> None:
    """What several nodes share (module doc, version 11); self-contained. `pop3_locks` keeps one row per user
    that ever logged in by POP3: the lease (holder, expiry on the database's clock) and the last login."""
    await conn.execute("""
CREATE TABLE IF NOT EXISTS held_posts(
    token text PRIMARY KEY,
    list_address text NOT NULL,
    mail_from text NOT NULL,
    raw bytea NOT NULL,
    held_at double precision NOT NULL,
    claim text NOT NULL DEFAULT '',
    claimed_until double precision NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS held_posts_at ON held_posts(held_at);
CREATE TABLE IF NOT EXISTS shared_values(
    name text PRIMARY KEY,
    value bytea NOT NULL,
    created double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS mailbox_logins(address text PRIMARY KEY, at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS mailbox_logins_at ON mailbox_logins(at);
CREATE TABLE IF NOT EXISTS pop3_locks(
    user_id bigint PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    holder text NOT NULL DEFAULT '',
    expires double precision NOT NULL DEFAULT 0,
    last_login double precision NOT NULL DEFAULT 0
);
""")


async def _v12(conn: Conn) -> None:
    """Queue leases (queue.py): who is attempting a recipient and until when; touches only `queue_rcpt`."""
    await conn.execute("""
ALTER TABLE queue_rcpt ADD COLUMN lease_holder text NOT NULL DEFAULT '';
ALTER TABLE queue_rcpt ADD COLUMN lease_until double precision NOT NULL DEFAULT 0;
""")


async def _v13(conn: Conn) -> None:
    """Cluster-wide job leases and DMARC result claims (module doc, version 13); self-contained: a new table and
    two columns of `dmarc_results` (version 9's table) that no other step adds."""
    await conn.execute("""
CREATE TABLE IF NOT EXISTS job_leases(
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires double precision NOT NULL
);
ALTER TABLE dmarc_results ADD COLUMN IF NOT EXISTS claim text NOT NULL DEFAULT '';
ALTER TABLE dmarc_results ADD COLUMN IF NOT EXISTS claimed_until double precision NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS dmarc_results_claim ON dmarc_results(claim);
""")


async def _v14(conn: Conn) -> None:
    """The queue claim's walk in its order (queue.py, "What a claim reads"): the entries by (created, id), each
    entry's pending recipients by position; self-contained: two indexes on version 3's columns. The partial
    index names the pending states as literals, as `queue_rcpt_due` does: a query uses it only when its WHERE
    repeats them."""
    await conn.execute("""
CREATE INDEX IF NOT EXISTS queue_claim_order ON queue(created, id);
CREATE INDEX IF NOT EXISTS queue_rcpt_claim ON queue_rcpt(queue_id, position) WHERE state IN ('queued', 'deferred');
""")


_STEPS: list[Callable[[Conn], Awaitable[None]]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10, _v11,
                                                 _v12, _v13, _v14]
assert len(_STEPS) == SCHEMA_VERSION


async def migrate(conn: Conn) -> int:
    """Bring the database to `SCHEMA_VERSION`; return the version it had. StoreError if it is newer."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version(version integer NOT NULL)")
        version = await conn.fetchval("SELECT version FROM schema_version")
        if version is None:
            await conn.execute("INSERT INTO schema_version(version) VALUES (0)")
            version = 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"the database has schema {version}, newer than this Postroom's ({SCHEMA_VERSION})")
        for step in range(version, SCHEMA_VERSION):
            await _STEPS[step](conn)
        if version != SCHEMA_VERSION:
            await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION)
        return int(version)
