"""The SQLite schema and its version.

`PRAGMA user_version` holds the schema version. `migrate()` brings a database from any older version to
`SCHEMA_VERSION` inside one write transaction (so two processes opening a fresh file at once cannot both create
it) and refuses a database written by a newer Postroom. A future change adds a step to `_STEPS`; it never edits
an existing step.

Versions: 1 is the first schema (every body a file under blobs/). 2 adds `blob_data`: bodies up to the store's
inline threshold live in the database, so storing one costs no fsync of its own (see engine.py). Bodies stored
as files by version 1 stay files and are still read; nothing is moved by the migration. 3 adds the outbound
issue's columns: a second DKIM key per domain (Ed25519 beside RSA, each with its selector) and, per queue
recipient, whether its one delay notice was sent. 4 adds `mailboxes.recent_uid`, the persistent IMAP \\Recent
watermark (invariant 6); mailboxes that already exist get `uidnext - 1`, so nothing old turns recent on upgrade.
5 (issue 15) adds `subscriptions(user_id, name)`: subscriptions are names, which outlive their mailbox (RFC 3501
§6.3.9); the rows marked `mailboxes.subscribed = 1` are copied into it, and that column is no longer read or
written (it stays: DROP COLUMN needs SQLite 3.35, newer than some distributions ship). It also adds
`mailboxes.keywords`, the keywords the mailbox's messages have carried (invariant 7), learnt from the messages
there are.
6 adds `auth_failures`: failed logins per client address and per (user, address) pair, so login throttling and
locks survive a restart (auth/authenticator.py; rows expire, and the table is bounded, authfail.py); and
`queue.from_checked`: whether the message's From was checked (submission) or came from a trusted source, which
decides whether DKIM may sign with the From domain (delivery/dkim.py). Entries queued before say 1, as they were
signed before.
7 adds `blobs.crlf_size`, the body's size with every line ended by CRLF (what POP3 LIST/STAT announce and RETR
sends, RFC 1939 §11), so a POP3 listing never reads bodies. Bodies stored before it get NULL ("not counted
yet"): the migration reads no bodies (it would hold the write lock for as long as reading the whole store takes);
`Store.crlf_sizes` counts such a body the first time it is asked and writes the number back (invariant 9).
8 keeps the expunged-UID record for QRESYNC (RFC 7162 §3.2.5, §3.2.6) for a limited time: `expunged.at` (when the
row was written; rows that exist get the time of the upgrade, so they are kept a full retention period from then),
`mailboxes.expunged_floor` (invariant 10) and two indexes, `expunged(mailbox_id, modseq)` for "expunged since
MODSEQ n" and `expunged(at)` for pruning, so neither reads more rows than it answers.
9 (issue 14) adds `acl`: the access control list entries of mailboxes (RFC 4314; invariant 11). Existing
mailboxes get none, so nothing is shared by the upgrade.
10 (issue 14) adds the full-text index (`store/sqlite/fts.py`, invariant 12): `fts_docs` (blob -> document id and the
version of the text derivation it was indexed with), the FTS5 tables `fts_head` and `fts_body`, and `fts_backlog`,
the bodies not indexed yet. The step indexes nothing: it names every stored body in the backlog (one INSERT ...
SELECT of ids, no bodies or metadata read), and the backlog is worked off in batches afterwards
(`Store.index_backlog`, driven by `postroom index` and by `postroom serve` in the background), while SEARCH scans
backlog bodies exactly.
11 (issue 16) adds `changes`: one row per change record a write made, in the write's transaction, read by the
other processes that have the store open (store/sqlite/feed.py), pruned by the writers; and the `counters` row
'changes_pruned', the highest seq pruning deleted. Nothing older is written into it: a process starts reading
at the newest change.
12 (issue 14, IMAP extras) adds `messages.save_date` (RFC 8514 SAVEDATE: when the message was saved to the mailbox
it is in; invariant 14). Rows that exist get NULL: their save date was never recorded, and the RFC's answer for a
save date the storage does not have is NIL in FETCH and the internal date in SEARCH (RFC 8514 §4.2, §4.3), not a
guess written now. It also adds `blobs.preview`, the RFC 8970 preview text of the body (invariant 15), NULL until
IMAP first computes it, and `metadata(user_id, mailbox_id, name, value)`: IMAP METADATA entries (RFC 5464) of a
user, on a mailbox or (mailbox_id 0) on the server (invariant 16).
13 (issue 14) adds what SORT, THREAD and OBJECTID read without parsing metadata: `message_keys`, one row per body
with its sort and thread keys (store/sqlite/threads.py; invariant 17), `messages.thread_id` (invariant 18) and
`thread_refs`, the per-user map from Message-IDs and base subjects to thread ids. Existing bodies get no row and
existing messages thread id 0: the migration parses no metadata (their metadata is of an older format anyway);
the first reader that recomputes a body's metadata writes it back with `write_metas`, which stores the keys and
gives the body's messages their thread (the lazy upgrade of `mime.meta` formats).
14 (issue 14) adds `shared_owners(domain_id, user_id)`: the owner of a domain's "Shared Folders" (RFC 2342 §5),
a `users` row made on demand by `Store.shared_folders_owner` (invariant 19). Nothing exists yet, so nothing is
made by the upgrade.
15 (issue 14) adds `sort_rows`: one narrow row per message, clustered by (mailbox_id, uid), with the message's
internal date and size and its body's sort and thread keys (invariant 20), so SORT and THREAD read a UID range of
one table instead of joining every message to `message_keys` by its body's id. The step fills it from `messages`
and `message_keys` in (mailbox, uid) order, logging its progress on large stores (one INSERT ... SELECT per
`FILL_BATCH` messages, no metadata parsed).
16 (issue 14) adds `fts_scan(docid, form)`: the scan form of each indexed body (`store/scanform.py`: its search
text case-folded and compressed, what SEARCH's exact check compares), keyed like the FTS5 rows (invariant 21).
The step writes none: it marks the index as of no version (`counters` 'fts_version' 0), so opening the store
empties it into the backlog (fts.py `check_version`), and `postroom index` or the server's background build
fills it again, forms included, with progress; until then those bodies are searched from their metadata.
17 (issue 10) adds `web_sessions`: the webmail's signed-in sessions (store/sqlite/websessions.py, invariant 22),
keyed by the SHA-256 of the session id (the id itself is only ever in the browser's cookie). None exist before.
It also adds `messages_unseen`, a partial index of the messages without \\Seen, so the webmail's folder tree counts
unread messages (up to 1,000 a mailbox) without reading the mailboxes (`Store.unseen_counts`); building it reads
the message rows once (no bodies).
18 (issue 13, quotas) adds `quota_usage`, one counter row per user (storage in octets, message count, the last
quota warning level sent; invariant 23), kept by triggers on `messages` and `users`, so every insert, copy,
move, expunge, mailbox and user removal updates it in its own transaction whatever code path made it; the
step computes it once for the messages that exist. It also adds `users.quota_messages` (a message-count limit)
and `domains.quota_bytes` (the total the domain's users may hold). Existing users and domains get 0: no new
limit appears on upgrade.
19 (issue 17) adds `imap_structure(blob_id, envelope, bodystructure, body)`: the IMAP-encoded ENVELOPE,
BODYSTRUCTURE and BODY of a body (invariant 24), so FETCH of those items over a whole mailbox reads one narrow row
per message instead of decoding each body's metadata (a JSON document that carries the search text too). Rows are
written with the metadata from then on; bodies stored before get theirs from the first FETCH that needs them
(`Store.write_structures`), so the step writes none and upgrades in no time.
20 (issue 13, web admin) adds `users.admin` (0 or 1): whether the user may use the web admin pages
(web/admin.py), and `domains.dkim_next`: DKIM keys made by a rotation and waiting to be published before the
switch (JSON of the four key columns' values; "" when no rotation is under way). Existing users get 0 (an
upgrade makes nobody an admin) and existing domains "".
21 (issue 17) adds `blobs_crlf`, an index of `blobs` on (id, crlf_size): POP3's login reads the octet count of
every message of the maildrop (RFC 1939 §11), and each `blobs` row carries the body's metadata, so a lookup by
primary key walked pages of metadata for one number (5,000 messages: ~70 ms of CPU per login; through the
index, ~6 ms). Building it reads each `blobs` row once.
22 (issue 12, trust) adds `sender_rules`: the allow and block lists of a user or of a hosted domain (one row per
scope and pattern; store/sqlite/senders.py, invariant 25), `spam_training`: the training signals a user's
moves into and out of Junk leave for rspamd's learning (invariant 26), and `dmarc_results`: the DMARC evaluation
of each message whose policy asks for aggregate reports (invariant 27). None exist before.
23 (issue 14) makes `fts_head` anew with positions (`detail=full`): a header-field key (SUBJECT, FROM, TO, CC,
BCC) is then one phrase lookup that answers exactly, so no body's scan form is read to confirm it (fts.py
invariant 5). The step fills the new table from the stored metadata of the indexed bodies, header fields only,
logging its progress; the body's index and scan forms are untouched.
24 (issue 10, webmail settings) adds `user_settings`: a user's display name, signature, identities and
out-of-office reply (store/sqlite/settings.py), and `auto_replies`: when an out-of-office reply last went to
each sender (RFC 3834 §2; delivery/autoreply.py; invariant 28). None exist before.
25 (issue 16 item 3) adds `held_posts`: moderated list posts with their claim (delivery/lists.py,
store/sqlite/nodes.py; invariant 29), moved in from `data_dir/held/` files by the server at start, not by the step;
`shared_values`: values made once by the first writer (invariant 30); and `mailbox_logins`, the latest mailbox
login per client address for POP-before-SMTP across nodes (used by the server on PostgreSQL only). Self-contained
(`IF NOT EXISTS`).
26 (issue 16 item 3) adds the queue leases, `queue_rcpt.lease_holder` and `lease_until` (invariant 31); every
recipient queued before starts free ("" and 0).
27 (issue 16 item 3) adds the cluster-wide job leases, `job_leases(name, holder, expires)` (invariant 32; jobs.py:
a periodic job runs on one node at a time), and the claims that make a DMARC report run send each row once:
`dmarc_results.claim` and `claimed_until` (invariant 27), every row recorded before unclaimed ("" and 0).
Self-contained (`IF NOT EXISTS`, and columns no other step adds).
28 (issue 17) adds the indexes the queue claim walks in its order (store/sqlite/queue.py, "Claims"):
`queue_claim_order` on `queue(created, id)` and `queue_rcpt_claim` on `queue_rcpt(queue_id, position)` for the
pending recipients only, so a claim reads the oldest entries first and stops when it has enough instead of
sorting every pending recipient. Self-contained (`IF NOT EXISTS`; indexes only, on step 1's columns).
29 (issue 17 row 1) makes `blobs` a rowid table (invariant 33): it was keyed by its random SHA-256 text in a
WITHOUT ROWID b-tree, and each row carries the body's metadata (~6 KB for a small message), so every new body
went into a random leaf of large cells and split it (the writer profile of SMTP ingest: 5.4 WAL pages of
`blobs` per message, ~0.18 ms of CPU for the probe and the insert). Now a new row goes at the end of the table,
and only the narrow unique index on `id` (the key every query and foreign key uses) takes a random leaf. The
columns are reordered so `meta` comes last: the small columns sit in the row's first page, ahead of the
metadata's overflow. The step copies every row as it is (`INSERT ... SELECT`, one pass, no metadata parsed),
drops the old table and renames the new one; it runs with foreign keys off (`migrate`), since dropping a parent
table with them on would delete every `blob_data`, `message_keys` and `imap_structure` row by cascade.

Invariants:
1. Domains, users, mailboxes and queue entries use AUTOINCREMENT ids, so an id is never handed out twice: a
   session holding the id of a deleted mailbox cannot end up looking at a new one.
2. `blobs.refcount` equals the number of `messages` plus `queue` rows naming the blob; a blob row with no
   references is deleted in the same transaction that dropped the last one.
3. `mailboxes.uidvalidity` is UNIQUE and comes from the `counters` row 'uidvalidity' (seeded with the clock).
4. `messages` is keyed (mailbox_id, uid) and clustered on it (WITHOUT ROWID): a UID range is one index scan.
5. A `blobs` row's body is read from its `blob_data` row if there is one, else from the file
   `blobs/ab/cd/<id>`. A `blob_data` row never outlives its `blobs` row (both go in one transaction; the foreign
   key cascades should any code forget). Bodies have their own table, not a column of `blobs`, so reading
   metadata (refcounts, meta) never pulls body pages through the cache; it is a rowid table because large
   rows do not belong in a WITHOUT ROWID b-tree.
6. `mailboxes.recent_uid` < `uidnext`: the highest UID some IMAP session has claimed as \\Recent (RFC 3501
   §2.3.2). It only grows, and only by `claim_recent`, which moves it to `uidnext - 1` in one write.
7. `mailboxes.keywords` (encoded as `messages.keywords` is: space-separated, sorted case-insensitively) holds
   every keyword of every message row of the mailbox, case-insensitively; it only grows (api invariant 9).
8. `subscriptions` rows belong to a user (cascade on user removal), never to a mailbox (api invariant 8).
9. `blobs.crlf_size` is NULL or `blobs.crlf_size(body)`: set when the row is inserted (schema 7 on), or filled
   in once from the body by `crlf_sizes` for rows older than that; never changed otherwise (bodies never are).
10. Every message removed from a mailbox with a MODSEQ above `mailboxes.expunged_floor` has its `expunged` row
   (messages.py invariant 3). Rows are only deleted by `prune_expunged`, which first raises the floor to the
   largest MODSEQ it deletes; the floor only grows (0: the record is complete since the mailbox was made).
11. An `acl` row grants (or, `negative` = 1, takes away) `rights` on one mailbox to one user of the owner's
   domain (`grantee_id`), or to every such user (`grantee_id` NULL: "anyone"); at most one row per (mailbox,
   grantee, sign), never one naming the owner, never empty rights. Rows go with their mailbox and with their
   grantee (cascades), so a removed user's entries never name a later one (ids are never reused, invariant 1).
12. A body referenced by messages is in exactly one of `fts_docs` (indexed: its text is in `fts_head` and
   `fts_body` under `fts_docs.docid`, as derived from `blobs.meta`) and `fts_backlog` (not indexed yet); the
   index rows go with the last reference (fts.py invariants).
13. `changes.seq` only grows and is given out in commit order: it is the rowid (max + 1 at each insert; not
   AUTOINCREMENT, whose `sqlite_sequence` row would be one more page written by every commit), and pruning,
   the only deletion, deletes from the oldest on and never the newest row, so the maximum never goes back.
   Every row belongs to a committed write; 'changes_pruned' is the highest seq pruning deleted.
14. `messages.save_date` is set when the row is inserted (an append, a delivery, a copy or move into the
   mailbox: RFC 8514 §3 "the current date and time at which the message is delivered to a mailbox") and never
   changed while the row exists (§3 "MUST NOT change as long as the message is contained within the same
   mailbox"); NULL only for rows older than schema 12.
15. `blobs.preview` is NULL ("not computed yet") or the preview text of the body (`mime.preview`), written once
   by `write_previews`: like the body, it never changes.
16. A `metadata` row belongs to a user (cascade on user removal) and to one of that user's mailboxes, to a
   mailbox another user shares with them (their "/private" entries on it: store/sqlite/metadata.py; kept, not
   readable, while they have no "r" on it), or to the server when `mailbox_id` is 0; deleting a mailbox deletes
   its rows, every user's, in the same transaction. Names are stored
   lower-case (entry names are case-insensitive); a user has at most `names.MAX_METADATA_ENTRIES` rows.
17. A `message_keys` row exists only with its `blobs` row (deleted in the same transaction) and holds the keys
   of that body's metadata (`MessageMeta.keys` and `sent_date`).
18. `messages.thread_id` is 0 only while its body has no `message_keys` row; once given it never changes (RFC
   8474 §5.2), and copies keep it.
19. A `shared_owners` row names the one owner of a domain's shared folders: a `users` row of that domain whose
   address is `names.shared_owner(domain)` (not an address: no lookup by address finds it), with an empty
   password hash and SCRAM verifier (nothing verifies against them), no default mailboxes, and no login.
20. Every `messages` row has exactly one `sort_rows` row under its (mailbox_id, uid), and there is no other:
   `arrival` and `size` are its internal date and size, the key columns those of its body's `message_keys` row,
   or (while the body has none, `messages.thread_id` 0) NULL `sent` and `message_id`, empty strings and 0. Every
   write that inserts or deletes message rows, or stores a body's keys, writes `sort_rows` in the same
   transaction (store/sqlite/threads.py invariant 7).
21. An `fts_scan` row belongs to the `fts_docs` row of the same docid (written and deleted with it, fts.py
   invariant 4); a document without one is searched from its body's metadata.
22. A `web_sessions` row belongs to a user (cascade on user removal) and is keyed by the SHA-256 hex of its
   session id, never the id; `last_seen` >= `created`.
23. Every `users` row has exactly one `quota_usage` row (made by a trigger on insert, gone by cascade), and its
   `storage` and `messages` equal the sum of `messages.size` and the count of `messages` rows over the user's
   mailboxes, at every commit: the triggers `quota_in` and `quota_out` change it in the statement that inserts
   or deletes a message row (no code path updates `messages.size` or `messages.mailbox_id`; a mailbox's rows
   are deleted before the mailbox is, so the trigger still finds its owner). Nothing else writes the two
   columns. `warned` (0, 80 or 95) only rises through `raise_quota_warned`, and falls to the level usage is
   at (the rule of `api.quota_level`) when `quota_out` removes a message or a limit changes.
24. An `imap_structure` row exists only with its `blobs` row (deleted in the same transaction, like
   `message_keys`) and holds exactly the `envelope`, `bodystructure` and `body` of that body's metadata of the
   current format: written from the metadata it is stored or replaced with, or by a
   reader that decoded that metadata.
25. A `sender_rules` row belongs to exactly one scope, a user or a domain (never both, never neither; it goes
   with its scope by cascade), has `kind` 'allow' or 'block' and a `pattern` in `names.sender_pattern` form;
   (scope, pattern) is unique, so one pattern is either allowed or blocked in a scope, never both.
26. A `spam_training` row belongs to a user (cascade) and names a body (`blob_id`, no foreign key: the body may
   be released before the signal is sent, which then drops it) and whether it is to be learnt as spam or ham;
   at most one row per (user, body): a newer verdict replaces a pending one (the user changed their mind before
   it was sent). Rows are deleted once sent, or dropped after `rspamd.learn_days` (inbound/learn.py).
27. A `dmarc_results` row is one message's DMARC evaluation (written with `inbound.dmarc_reports` on, for a policy
   with `rua`); its `claim` is '' or one report run's, valid until `claimed_until` (`claim_dmarc_results` takes
   only unclaimed or expired rows, so two runs never report one row at once); rows are only deleted by the run
   that holds their claim (`delete_dmarc_results`), after its report was queued.
28. A `user_settings` row and the `auto_replies` rows belong to a user (cascade); at most one `auto_replies` row
   per (user, sender key), and `claim_auto_reply` deletes the user's rows older than the window it is given.
29. A `held_posts` row is keyed by its 32-hex-digit token; its `claim` is '' or one handler's, valid until
   `claimed_until`; it is deleted only by the handler holding the claim (`drop_held_post`).
30. A `shared_values` row is written once (INSERT OR IGNORE) and never updated.
31. A `queue_rcpt` row is held by at most one claimer: `lease_holder` is "" (free) or the holder that claimed it
   with `lease_until` > 0; it changes only by a claim of a free or expired lease (lease_until <= now), a renewal
   or release by its holder, or the holder's own result (store/sqlite/queue.py).
32. A `job_leases` row names one periodic job and its holder until `expires` (the claimer's clock); it changes
   only by a claim when it is free, the claimer's own, or expired (`expires <= now`), or by its holder's
   release (store/sqlite/nodes.py, jobs.py).
33. (schema 29) `blobs` is a rowid table whose `id` is UNIQUE (the parent key of every `REFERENCES blobs(id)`);
   nothing refers to its rowid, which is only where a row sits (new rows at the end). Its columns are `id`,
   `size`, `refcount`, `crlf_size`, `preview`, `meta`, in that order: the metadata last (step 29).
34. `migrate` runs the steps with foreign keys off when a step that rebuilds a referenced table (`_REBUILDS`) is
   among them, and puts the setting back after; such a step copies every row with its key, so every reference
   holds as it did.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from postroom.store.api import StoreError

SCHEMA_VERSION = 29
FILL_BATCH = 50_000  # messages copied into `sort_rows` by one statement of step 15 (a progress line each)
log = logging.getLogger("postroom.store")

_V1 = """
CREATE TABLE counters(
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE domains(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    dkim_selector TEXT NOT NULL DEFAULT '',
    dkim_private_key TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);

CREATE TABLE users(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    address TEXT NOT NULL UNIQUE,
    domain_id INTEGER NOT NULL REFERENCES domains(id),
    password_hash TEXT NOT NULL,
    scram TEXT NOT NULL DEFAULT '',
    quota_bytes INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE INDEX users_domain ON users(domain_id);

CREATE TABLE aliases(
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    domain_id INTEGER NOT NULL REFERENCES domains(id),
    PRIMARY KEY(source, target)
) WITHOUT ROWID;
CREATE INDEX aliases_domain ON aliases(domain_id);

CREATE TABLE lists(
    address TEXT PRIMARY KEY,
    domain_id INTEGER NOT NULL REFERENCES domains(id),
    owner TEXT NOT NULL,
    policy TEXT NOT NULL,
    bounce_address TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX lists_domain ON lists(domain_id);

CREATE TABLE list_members(
    list_address TEXT NOT NULL REFERENCES lists(address) ON DELETE CASCADE,
    member TEXT NOT NULL,
    PRIMARY KEY(list_address, member)
) WITHOUT ROWID;

CREATE TABLE mailboxes(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL UNIQUE,
    uidnext INTEGER NOT NULL DEFAULT 1,
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    special_use TEXT,
    subscribed INTEGER NOT NULL DEFAULT 0,
    UNIQUE(user_id, name)
);

CREATE TABLE blobs(
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    refcount INTEGER NOT NULL,
    meta BLOB
) WITHOUT ROWID;

CREATE TABLE messages(
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    internal_date REAL NOT NULL,
    size INTEGER NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    keywords TEXT NOT NULL DEFAULT '',
    blob_id TEXT NOT NULL REFERENCES blobs(id),
    PRIMARY KEY(mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
CREATE INDEX messages_blob ON messages(blob_id);

CREATE TABLE expunged(
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY(mailbox_id, uid)
) WITHOUT ROWID;

CREATE TABLE queue(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    blob_id TEXT NOT NULL REFERENCES blobs(id),
    size INTEGER NOT NULL,
    mail_from TEXT NOT NULL,
    envid TEXT NOT NULL DEFAULT '',
    ret TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE INDEX queue_blob ON queue(blob_id);

CREATE TABLE queue_rcpt(
    queue_id INTEGER NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    rcpt TEXT NOT NULL,
    orcpt TEXT NOT NULL DEFAULT '',
    notify TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(queue_id, rcpt)
) WITHOUT ROWID;
CREATE INDEX queue_rcpt_due ON queue_rcpt(next_try) WHERE state IN ('queued', 'deferred');
"""


def _v1(conn: sqlite3.Connection) -> None:
    for statement in _V1.split(";\n"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO counters(name, value) VALUES ('uidvalidity', ?)", (int(time.time()) - 1,))


def _v2(conn: sqlite3.Connection) -> None:
    """Bodies up to the inline threshold in the database (schema invariant 5)."""
    conn.execute(
        "CREATE TABLE blob_data(id TEXT PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE, data BLOB NOT NULL)"
    )


def _v3(conn: sqlite3.Connection) -> None:
    """Ed25519 DKIM keys (RFC 8463) beside the RSA one; the delay-notice mark of a queue recipient."""
    conn.execute("ALTER TABLE domains ADD COLUMN dkim_ed25519_selector TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE domains ADD COLUMN dkim_ed25519_key TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE queue_rcpt ADD COLUMN delay_notified INTEGER NOT NULL DEFAULT 0")


def _v4(conn: sqlite3.Connection) -> None:
    """The persistent \\Recent watermark (invariant 6); what exists already counts as claimed."""
    conn.execute("ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE mailboxes SET recent_uid = uidnext - 1")


def _v5(conn: sqlite3.Connection) -> None:
    """Subscriptions by name in their own table (invariant 8), copied from `mailboxes.subscribed`; each mailbox's
    keyword set (invariant 7), learnt from its messages (one spelling per keyword, the first in UID order)."""
    conn.execute(
        "CREATE TABLE subscriptions(user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " name TEXT NOT NULL, PRIMARY KEY(user_id, name)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO subscriptions(user_id, name) SELECT user_id, name FROM mailboxes WHERE subscribed <> 0")
    conn.execute("ALTER TABLE mailboxes ADD COLUMN keywords TEXT NOT NULL DEFAULT ''")
    learnt: dict[int, dict[str, str]] = {}
    rows = conn.execute(
        "SELECT mailbox_id, keywords FROM messages WHERE keywords <> '' ORDER BY mailbox_id, uid"
    )
    for mailbox_id, text in rows:
        known = learnt.setdefault(int(mailbox_id), {})
        for keyword in str(text).split():
            known.setdefault(keyword.lower(), keyword)
    conn.executemany(
        "UPDATE mailboxes SET keywords = ? WHERE id = ?",
        [(" ".join(sorted(known.values(), key=str.lower)), mailbox_id) for mailbox_id, known in learnt.items()],
    )


def _v6(conn: sqlite3.Connection) -> None:
    """Failed-login records (auth/authenticator.py, store/sqlite/authfail.py), and the queue's from_checked mark
    (delivery/dkim.py) with 1 for what is queued already (signed as before)."""
    conn.execute(
        "CREATE TABLE auth_failures("
        "address TEXT NOT NULL, username TEXT NOT NULL, failures INTEGER NOT NULL, last_failure REAL NOT NULL,"
        " locked_since REAL NOT NULL, locked_until REAL NOT NULL, expires REAL NOT NULL,"
        " PRIMARY KEY(address, username)) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX auth_failures_expires ON auth_failures(expires)")
    conn.execute("ALTER TABLE queue ADD COLUMN from_checked INTEGER NOT NULL DEFAULT 1")


def _v7(conn: sqlite3.Connection) -> None:
    """The CRLF-normalised size of each body for POP3 (invariant 9). Existing rows stay NULL: they are counted
    from their body on first use, so the upgrade itself reads no bodies."""
    conn.execute("ALTER TABLE blobs ADD COLUMN crlf_size INTEGER")


def _v8(conn: sqlite3.Connection) -> None:
    """The expunged-UID record with a time of its own and a per-mailbox floor (invariant 10), for QRESYNC's
    VANISHED (RFC 7162 §3.2.5, §3.2.6) over a limited retention. Rows that exist are dated now, so a client that
    synchronised before the upgrade keeps its exact answers for a full retention period; nothing was pruned
    before, so every floor starts at 0."""
    conn.execute("ALTER TABLE expunged ADD COLUMN at REAL NOT NULL DEFAULT 0")
    conn.execute("UPDATE expunged SET at = ?", (time.time(),))
    conn.execute("ALTER TABLE mailboxes ADD COLUMN expunged_floor INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX expunged_modseq ON expunged(mailbox_id, modseq)")
    conn.execute("CREATE INDEX expunged_at ON expunged(at)")


def _v9(conn: sqlite3.Connection) -> None:
    """Mailbox access control lists (RFC 4314; invariant 11). `grantee_id` NULL is "anyone"; the unique index
    keeps one row per (mailbox, grantee, sign); `acl_grantee` finds what is shared with a user."""
    conn.execute(
        "CREATE TABLE acl(id INTEGER PRIMARY KEY,"
        " mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,"
        " grantee_id INTEGER REFERENCES users(id) ON DELETE CASCADE,"
        " negative INTEGER NOT NULL DEFAULT 0, rights TEXT NOT NULL)"
    )
    conn.execute("CREATE UNIQUE INDEX acl_entry ON acl(mailbox_id, ifnull(grantee_id, 0), negative)")
    conn.execute("CREATE INDEX acl_grantee ON acl(grantee_id)")



def _v10(conn: sqlite3.Connection) -> None:
    """The full-text index (invariant 12, store/sqlite/fts.py). FTS5's trigram tokenizer (SQLite 3.34) gives
    substring lookups; `case_sensitive 1` because the text is case-folded by Python before (textindex.py), as
    the exact check folds it. Contentless (`content=''`): the text is not stored again; rows are deleted with
    the values derived again from `blobs.meta` (fts.py invariant 2).
    Headers keep `detail=column` (SUBJECT, FROM, ... look in their own column); the body, most of the index,
    `detail=none` (no positions: a trigram lookup admits a few more candidates, which the exact check drops).
    Every stored body goes to the backlog; nothing is read or indexed here."""
    conn.execute(
        "CREATE TABLE fts_docs(docid INTEGER PRIMARY KEY AUTOINCREMENT, blob_id TEXT NOT NULL UNIQUE,"
        " version INTEGER NOT NULL)"
    )
    conn.execute("CREATE TABLE fts_backlog(blob_id TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute(
        "CREATE VIRTUAL TABLE fts_head USING fts5(h_subject, h_from, h_to, h_cc, h_bcc, h_headers, h_names,"
        " tokenize='trigram case_sensitive 1', detail=column, content='')"
    )
    conn.execute(
        "CREATE VIRTUAL TABLE fts_body USING fts5(body, tokenize='trigram case_sensitive 1', detail=none,"
        " content='')"
    )
    conn.execute("INSERT INTO fts_backlog(blob_id) SELECT id FROM blobs")


def _v11(conn: sqlite3.Connection) -> None:
    """The cross-process change feed (invariant 13, store/sqlite/feed.py): one row per committed change, with the
    process that wrote it (`origin`) and when (`created`, for pruning). No foreign keys: a change outlives what
    it names (a deleted mailbox's MAILBOX_DELETED row)."""
    conn.execute(
        "CREATE TABLE changes(seq INTEGER PRIMARY KEY, origin INTEGER NOT NULL, created REAL NOT NULL,"
        " user_id INTEGER NOT NULL, mailbox_id INTEGER NOT NULL, kind TEXT NOT NULL, uid INTEGER NOT NULL,"
        " modseq INTEGER NOT NULL, flags INTEGER NOT NULL, keywords TEXT NOT NULL, name TEXT NOT NULL,"
        " old_name TEXT NOT NULL)"
    )
    conn.execute("INSERT OR IGNORE INTO counters(name, value) VALUES ('changes_pruned', 0)")


def _v12(conn: sqlite3.Connection) -> None:
    """IMAP extras (issue 14): the save date of each message (RFC 8514, invariant 14), NULL for the rows that
    exist (not recorded: FETCH SAVEDATE answers NIL and SEARCH SAVED* uses the internal date for them); the
    preview text of each body (RFC 8970, invariant 15), NULL until first asked for; the METADATA entries
    (RFC 5464, invariant 16), none yet."""
    conn.execute("ALTER TABLE messages ADD COLUMN save_date REAL")
    conn.execute("ALTER TABLE blobs ADD COLUMN preview TEXT")  # invariant 15: computed on first ask
    conn.execute(
        "CREATE TABLE metadata(user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " mailbox_id INTEGER NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,"
        " PRIMARY KEY(user_id, mailbox_id, name)) WITHOUT ROWID"
    )  # invariant 16


def _v13(conn: sqlite3.Connection) -> None:
    """Sort and thread keys per body, a thread id per message, the per-user thread map (invariants 17, 18).
    Self-contained: existing rows get no keys and thread id 0, filled in lazily (module doc)."""
    conn.execute(
        "CREATE TABLE message_keys(blob_id TEXT PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE,"
        " sent REAL, subject TEXT NOT NULL, reply INTEGER NOT NULL, from_key TEXT NOT NULL, to_key TEXT NOT NULL,"
        " cc_key TEXT NOT NULL, display_from TEXT NOT NULL, display_to TEXT NOT NULL, message_id TEXT,"
        " refs TEXT NOT NULL)"
    )
    conn.execute("ALTER TABLE messages ADD COLUMN thread_id INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX messages_thread ON messages(thread_id, mailbox_id)")  # a thread; keys unknown (0)
    conn.execute(
        "CREATE TABLE thread_refs(user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " ref TEXT NOT NULL, thread_id INTEGER NOT NULL, PRIMARY KEY(user_id, ref)) WITHOUT ROWID"
    )
    conn.execute("INSERT OR IGNORE INTO counters(name, value) VALUES ('thread', 0)")


def _v14(conn: sqlite3.Connection) -> None:
    """The owners of the domains' shared folders (invariant 19), none yet: each is made on demand."""
    conn.execute(
        "CREATE TABLE shared_owners(domain_id INTEGER PRIMARY KEY REFERENCES domains(id) ON DELETE CASCADE,"
        " user_id INTEGER NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE)"
    )


def _v15(conn: sqlite3.Connection) -> None:
    """One narrow row per message with what SORT and THREAD read (invariant 20), clustered by (mailbox_id, uid);
    filled from `messages` and `message_keys` (what the store holds now; a body without keys gets the empty
    ones, as a new message without keys does), `FILL_BATCH` messages per statement with a progress line."""
    conn.execute(
        "CREATE TABLE sort_rows(mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,"
        " uid INTEGER NOT NULL, arrival REAL NOT NULL, size INTEGER NOT NULL, sent REAL, subject TEXT NOT NULL,"
        " reply INTEGER NOT NULL, from_key TEXT NOT NULL, to_key TEXT NOT NULL, cc_key TEXT NOT NULL,"
        " display_from TEXT NOT NULL, display_to TEXT NOT NULL, message_id TEXT, refs TEXT NOT NULL,"
        " PRIMARY KEY(mailbox_id, uid)) WITHOUT ROWID"
    )
    (total,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
    done = 0
    after = (-1, -1)  # (mailbox_id, uid) of the last message copied
    while done < total:
        row = conn.execute(
            "SELECT mailbox_id, uid FROM messages WHERE (mailbox_id, uid) > (?, ?) ORDER BY mailbox_id, uid"
            " LIMIT 1 OFFSET ?", (*after, FILL_BATCH - 1)).fetchone()
        last = (int(row[0]), int(row[1])) if row is not None else (2**63 - 1, 2**63 - 1)
        n = conn.execute(
            "INSERT INTO sort_rows SELECT m.mailbox_id, m.uid, m.internal_date, m.size, k.sent,"
            " COALESCE(k.subject, ''), COALESCE(k.reply, 0), COALESCE(k.from_key, ''), COALESCE(k.to_key, ''),"
            " COALESCE(k.cc_key, ''), COALESCE(k.display_from, ''), COALESCE(k.display_to, ''), k.message_id,"
            " COALESCE(k.refs, '') FROM messages m LEFT JOIN message_keys k ON k.blob_id = m.blob_id"
            " WHERE (m.mailbox_id, m.uid) > (?, ?) AND (m.mailbox_id, m.uid) <= (?, ?)"
            " ORDER BY m.mailbox_id, m.uid", (*after, *last)).rowcount
        if n <= 0:
            break
        done += n
        after = last
        if total > FILL_BATCH:
            log.info("schema 15: sort rows of %d of %d messages written", done, total)


def _v16(conn: sqlite3.Connection) -> None:
    """The scan form of each indexed body (invariant 21), none yet. A rowid table of its own, not a column of
    `fts_docs`: the forms are large, and `fts_docs` is read by narrowing lookups that never need them."""
    conn.execute("CREATE TABLE fts_scan(docid INTEGER PRIMARY KEY, form BLOB NOT NULL)")
    # Bodies indexed before have no scan form: the index is marked as of no version, so opening the store
    # empties it into the backlog (fts.py `check_version`) to be built again with the forms.
    conn.execute("UPDATE counters SET value = 0 WHERE name = 'fts_version'")


def _v17(conn: sqlite3.Connection) -> None:
    """The webmail's sessions (invariant 22), none yet; `web_sessions_user` finds a user's for "sign out
    everywhere", `web_sessions_seen` and `web_sessions_created` the expired ones for pruning."""
    conn.execute(
        "CREATE TABLE web_sessions(id_hash TEXT PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id)"
        " ON DELETE CASCADE, csrf TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL)"
        " WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX web_sessions_user ON web_sessions(user_id)")
    conn.execute("CREATE INDEX web_sessions_seen ON web_sessions(last_seen)")
    conn.execute("CREATE INDEX web_sessions_created ON web_sessions(created)")
    conn.execute("CREATE INDEX messages_unseen ON messages(mailbox_id) WHERE flags & 1 = 0")  # Store.unseen_counts


def _v18(conn: sqlite3.Connection) -> None:
    """Quotas (invariant 23): the per-user usage counters, the triggers that keep them, their values for what is
    stored (one grouped scan of `messages`, run once), a message-count limit per user and a quota per domain."""
    conn.execute(
        "CREATE TABLE quota_usage(user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,"
        " storage INTEGER NOT NULL DEFAULT 0, messages INTEGER NOT NULL DEFAULT 0, warned INTEGER NOT NULL DEFAULT 0)"
    )
    conn.execute(
        "INSERT INTO quota_usage(user_id, storage, messages)"
        " SELECT u.id, coalesce(s.storage, 0), coalesce(s.messages, 0) FROM users u LEFT JOIN"
        " (SELECT b.user_id AS user_id, sum(m.size) AS storage, count(*) AS messages FROM messages m"
        "  JOIN mailboxes b ON b.id = m.mailbox_id GROUP BY b.user_id) s ON s.user_id = u.id"
    )
    conn.execute("ALTER TABLE users ADD COLUMN quota_messages INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE domains ADD COLUMN quota_bytes INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "CREATE TRIGGER quota_user AFTER INSERT ON users BEGIN"
        " INSERT INTO quota_usage(user_id) VALUES (NEW.id); END"
    )
    conn.execute(
        "CREATE TRIGGER quota_in AFTER INSERT ON messages BEGIN"
        " UPDATE quota_usage SET storage = storage + NEW.size, messages = messages + 1"
        " WHERE user_id = (SELECT user_id FROM mailboxes WHERE id = NEW.mailbox_id); END"
    )
    # A removal also lowers `warned` to the level the usage is now at (invariant 23), so the next crossing of
    # 80 % or 95 % warns again ("once per crossing").
    conn.execute(
        "CREATE TRIGGER quota_out AFTER DELETE ON messages BEGIN"
        " UPDATE quota_usage SET storage = storage - OLD.size, messages = messages - 1"
        " WHERE user_id = (SELECT user_id FROM mailboxes WHERE id = OLD.mailbox_id);"
        " UPDATE quota_usage SET warned = min(warned, (SELECT CASE"
        "  WHEN (u.quota_bytes > 0 AND quota_usage.storage * 100 >= 95 * u.quota_bytes)"
        "   OR (u.quota_messages > 0 AND quota_usage.messages * 100 >= 95 * u.quota_messages) THEN 95"
        "  WHEN (u.quota_bytes > 0 AND quota_usage.storage * 100 >= 80 * u.quota_bytes)"
        "   OR (u.quota_messages > 0 AND quota_usage.messages * 100 >= 80 * u.quota_messages) THEN 80"
        "  ELSE 0 END FROM users u WHERE u.id = quota_usage.user_id))"
        " WHERE user_id = (SELECT user_id FROM mailboxes WHERE id = OLD.mailbox_id) AND warned > 0; END"
    )


def _v19(conn: sqlite3.Connection) -> None:
    """The IMAP structure items of each body (invariant 24): none written here (module doc, step 19)."""
    # A rowid table: a BODYSTRUCTURE can be kilobytes, too large a row for a WITHOUT ROWID b-tree (invariant 5).
    conn.execute(
        "CREATE TABLE imap_structure(blob_id TEXT PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE,"
        " envelope BLOB NOT NULL, bodystructure BLOB NOT NULL, body BLOB NOT NULL)"
    )


def _v20(conn: sqlite3.Connection) -> None:
    """The admin flag of users and the DKIM keys waiting for a switch (module doc, step 20). Self-contained: two
    added columns, which no other step touches."""
    conn.execute("ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE domains ADD COLUMN dkim_next TEXT NOT NULL DEFAULT ''")


def _v21(conn: sqlite3.Connection) -> None:
    """The narrow index of body octet counts POP3 reads (module doc, step 21)."""
    conn.execute("CREATE INDEX blobs_crlf ON blobs(id, crlf_size)")


def _v22(conn: sqlite3.Connection) -> None:
    """Sender allow/block rules (invariant 25), spam training signals (invariant 26) and DMARC results for
    aggregate reports (invariant 27), none yet. A rule belongs
    to exactly one scope, a user or a domain (gone with it, by cascade); `sender_rules_user` and
    `sender_rules_domain` make (scope, pattern) unique and find a scope's rules. `spam_training_due` finds the
    signals due to be sent; `spam_training_body` keeps one pending signal per (user, body)."""
    conn.execute(
        "CREATE TABLE sender_rules(id INTEGER PRIMARY KEY,"
        " user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,"
        " domain_id INTEGER REFERENCES domains(id) ON DELETE CASCADE,"
        " kind TEXT NOT NULL CHECK (kind IN ('allow', 'block')), pattern TEXT NOT NULL, created REAL NOT NULL,"
        " CHECK ((user_id IS NULL) != (domain_id IS NULL)))"
    )
    conn.execute("CREATE UNIQUE INDEX sender_rules_user ON sender_rules(user_id, pattern) WHERE user_id IS NOT NULL")
    conn.execute(
        "CREATE UNIQUE INDEX sender_rules_domain ON sender_rules(domain_id, pattern) WHERE domain_id IS NOT NULL")
    conn.execute(
        "CREATE TABLE spam_training(id INTEGER PRIMARY KEY,"
        " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " kind TEXT NOT NULL CHECK (kind IN ('spam', 'ham')), blob_id TEXT NOT NULL, created REAL NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX spam_training_due ON spam_training(next_try)")
    conn.execute("CREATE UNIQUE INDEX spam_training_body ON spam_training(user_id, blob_id)")
    conn.execute(
        "CREATE TABLE dmarc_results(id INTEGER PRIMARY KEY, at REAL NOT NULL, policy_domain TEXT NOT NULL,"
        " policy TEXT NOT NULL, source_ip TEXT NOT NULL, header_from TEXT NOT NULL, envelope_from TEXT NOT NULL,"
        " disposition TEXT NOT NULL, dkim_aligned INTEGER NOT NULL, spf_aligned INTEGER NOT NULL,"
        " auth TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX dmarc_results_at ON dmarc_results(at)")


def _v23(conn: sqlite3.Connection) -> None:
    """`fts_head` again, with positions (`detail=full`), so a SUBJECT, FROM, TO, CC or BCC key is answered by one
    phrase lookup in its column, exactly (fts.py invariant 5), instead of a superset confirmed on each body's scan
    form. A contentless table cannot change its detail: the step makes it anew and fills it from the stored
    metadata of every indexed body (the header fields only: no body text is indexed again), logging its progress
    on large stores."""
    from postroom.store.sqlite import fts  # (fts's helpers import the engine, which imports this module)

    conn.execute("DROP TABLE fts_head")
    conn.execute(fts.CREATE_HEAD)
    fts.refill_head(conn, lambda done, total: log.info("schema 23: header index of %d of %d bodies written",
                                                       done, total))


def _v24(conn: sqlite3.Connection) -> None:
    """User settings and the auto-reply record (invariant 28; store/sqlite/settings.py), none yet. Self-contained:
    two new tables, which no other step touches."""
    conn.execute(
        "CREATE TABLE user_settings(user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,"
        " display_name TEXT NOT NULL, signature TEXT NOT NULL, default_identity TEXT NOT NULL,"
        " identity_names TEXT NOT NULL, vacation INTEGER NOT NULL, vacation_subject TEXT NOT NULL,"
        " vacation_text TEXT NOT NULL, vacation_start REAL, vacation_end REAL, vacation_days INTEGER NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE auto_replies(user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " sender TEXT NOT NULL, sent REAL NOT NULL, PRIMARY KEY(user_id, sender)) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX auto_replies_sent ON auto_replies(user_id, sent)")


def _v25(conn: sqlite3.Connection) -> None:
    """Moderated list posts held in the store (delivery/lists.py: the token is the key; `claim` and
    `claimed_until` make approving or rejecting one handler's at a time), and values every node shares
    (`shared_value`: created once, never replaced). Self-contained: it needs no table of steps 23 or 24."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS held_posts(token TEXT PRIMARY KEY, list_address TEXT NOT NULL,"
        " mail_from TEXT NOT NULL, raw BLOB NOT NULL, held_at REAL NOT NULL,"
        " claim TEXT NOT NULL DEFAULT '', claimed_until REAL NOT NULL DEFAULT 0)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS held_posts_at ON held_posts(held_at)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS shared_values(name TEXT PRIMARY KEY, value BLOB NOT NULL, created REAL NOT NULL)"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS mailbox_logins(address TEXT PRIMARY KEY, at REAL NOT NULL)")
    conn.execute("CREATE INDEX IF NOT EXISTS mailbox_logins_at ON mailbox_logins(at)")


def _v26(conn: sqlite3.Connection) -> None:
    """Queue leases (queue.py, invariant 31): who is attempting a recipient and until when; every recipient that
    exists starts free. Self-contained: it touches only `queue_rcpt`."""
    conn.execute("ALTER TABLE queue_rcpt ADD COLUMN lease_holder TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE queue_rcpt ADD COLUMN lease_until REAL NOT NULL DEFAULT 0")


def _v27(conn: sqlite3.Connection) -> None:
    """Cluster-wide job leases (invariant 32) and DMARC result claims (invariant 27). Self-contained: a new table,
    and two columns of `dmarc_results` (step 22's table) that no other step adds."""
    conn.execute("CREATE TABLE IF NOT EXISTS job_leases(name TEXT PRIMARY KEY, holder TEXT NOT NULL,"
                 " expires REAL NOT NULL)")
    conn.execute("ALTER TABLE dmarc_results ADD COLUMN claim TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE dmarc_results ADD COLUMN claimed_until REAL NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX IF NOT EXISTS dmarc_results_claim ON dmarc_results(claim)")


def _v28(conn: sqlite3.Connection) -> None:
    """The queue claim's walk in its order (queue.py, "Claims"): the entries by (created, id), each entry's
    pending recipients by position. Self-contained: two indexes on step 1's columns. The partial index names the
    pending states as literals (queue.PENDING), as `queue_rcpt_due` does: a query uses it only when its WHERE
    repeats them."""
    conn.execute("CREATE INDEX IF NOT EXISTS queue_claim_order ON queue(created, id)")
    conn.execute("CREATE INDEX IF NOT EXISTS queue_rcpt_claim ON queue_rcpt(queue_id, position)"
                 " WHERE state IN ('queued', 'deferred')")


def _v29(conn: sqlite3.Connection) -> None:
    """`blobs` as a rowid table with the metadata last (invariant 33; module doc, step 29). Runs with foreign keys
    off (`_REBUILDS`): the old table is dropped, which with them on would cascade to every body and key row."""
    (total,) = conn.execute("SELECT count(*) FROM blobs").fetchone()
    if total > FILL_BATCH:
        log.info("schema 29: rebuilding the table of %d bodies' rows (their metadata copied, not parsed)", total)
    conn.execute(
        "CREATE TABLE blobs_v29(id TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, refcount INTEGER NOT NULL,"
        " crlf_size INTEGER, preview TEXT, meta BLOB)"
    )
    conn.execute("INSERT INTO blobs_v29(id, size, refcount, crlf_size, preview, meta)"
                 " SELECT id, size, refcount, crlf_size, preview, meta FROM blobs ORDER BY id")
    conn.execute("DROP TABLE blobs")  # and its index blobs_crlf (step 21), made again below
    conn.execute("ALTER TABLE blobs_v29 RENAME TO blobs")
    conn.execute("CREATE INDEX blobs_crlf ON blobs(id, crlf_size)")


# Steps that rebuild a table other tables reference (CREATE, copy, DROP, RENAME): run with foreign keys off.
_REBUILDS = frozenset({29})

_STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _v1, 2: _v2, 3: _v3, 4: _v4, 5: _v5, 6: _v6, 7: _v7, 8: _v8, 9: _v9, 10: _v10, 11: _v11, 12: _v12, 13: _v13,
    14: _v14, 15: _v15, 16: _v16, 17: _v17, 18: _v18, 19: _v19, 20: _v20, 21: _v21, 22: _v22, 23: _v23, 24: _v24,
    25: _v25, 26: _v26, 27: _v27, 28: _v28, 29: _v29,
}


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION. Returns the version found before. `conn` is in autocommit mode.

    When a step of `_REBUILDS` is due (by the version read before the transaction: another process may migrate
    meanwhile, which only makes this a transaction with foreign keys off that needed none), foreign keys are
    turned off for the transaction and put back as they were after it (invariant 34): SQLite ignores
    `PRAGMA foreign_keys` inside a transaction, and the rebuild drops a referenced table."""
    rebuild = int(conn.execute("PRAGMA user_version").fetchone()[0]) < max(_REBUILDS)
    keys_on = bool(conn.execute("PRAGMA foreign_keys").fetchone()[0])
    if rebuild and keys_on:
        conn.execute("PRAGMA foreign_keys = OFF")
    try:
        return _migrate(conn)
    finally:
        if rebuild and keys_on:
            conn.execute("PRAGMA foreign_keys = ON")


def _migrate(conn: sqlite3.Connection) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {found} is newer than this Postroom understands ({SCHEMA_VERSION})"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            _STEPS[version](conn)
        if found != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
