"""The storage interface: everything the server keeps, behind one `typing.Protocol`.

Accounts, domains, aliases, mailing lists, mailboxes, messages (flags, keywords, UIDs, MODSEQ), the outbound
queue and the change feed all live here. SQLite (`store/sqlite/`) is the embedded default; PostgreSQL will be
the second engine. One conformance suite (`tests/store/`) runs against every engine. No SQL outside `store/`.

Invariants every engine keeps:
1. **An awaited write is durable.** When a write coroutine returns, its transaction is committed and synced to
   disk, and so are the message bodies it stored: written in that transaction, or (kept outside the database)
   written and fsync'd before that commit. Concurrent writers share one commit (group commit), so N concurrent
   deliveries of small messages cost about one fsync.
2. **Commit, then broadcast.** The changes a write made are returned to the caller *and* published on
   `store.hub` after the commit, never before: on the hub of the writing process at once, and on the hub of
   every other process that has the store open within about 100 ms, in commit order (`publish_lost()` where
   a process fell too far behind to know them).
3. **UIDs strictly increase** within a mailbox and are never reused, across restarts and after expunges.
   UIDVALIDITY differs for every mailbox ever created (a deleted and re-created name gets a new one).
4. **MODSEQ strictly increases** per mailbox on every change to a message in it (append, flags, expunge);
   `Mailbox.highestmodseq` is the largest MODSEQ given out.
5. **Message bytes are sacred.** `read_message` returns exactly the bytes given to `append` (or held by the
   file given to `append_file`).
6. **One user's data is keyed by user id; another user's mailbox is reached only through its ACL.** Every
   mailbox call takes a mailbox id obtained from the user's own listing, or from `get_shared_mailbox` /
   `get_shared_folder` / `list_shared_mailboxes`, which resolve a mailbox of another user of the same domain
   only when its ACL (RFC 4314) grants the asking user at least one right, and say which rights. Engines never
   resolve names across users otherwise. The caller checks the returned rights before each use of such an id
   (imap/acl.py), and `copy_messages` / `move_messages` with `as_user` check them again in their transaction.
7. **\\Recent is claimed once.** Each mailbox keeps a watermark that only `claim_recent` moves (to UIDNEXT - 1,
   atomically); a UID is handed out as recent to at most one caller, ever, restarts included.
8. **Subscriptions are names.** A user's subscriptions are a set of mailbox names kept apart from the mailboxes:
   deleting or renaming a mailbox leaves them as they are (RFC 3501 §6.3.9: the server "MUST NOT unilaterally
   remove" one; RFC 9051 §6.3.6: RENAME "doesn't update subscription information"), and a name may be
   subscribed while no mailbox has it (RFC 9051 §6.3.7). At most `names.MAX_SUBSCRIPTIONS` per user.
9. **A mailbox's keyword set only grows.** `Mailbox.keywords` holds every keyword a message of the mailbox has
   carried (as Dovecot keeps it; IMAP's FLAGS response, RFC 9051 §7.3.5). The write that brings a keyword the
   mailbox has not had adds it and returns (and publishes) a `MAILBOX_KEYWORDS` change after the message
   changes of the same write. At most `names.MAX_MAILBOX_KEYWORDS` per mailbox: a write that would bring more
   is Invalid (and changes nothing).
10. **Removals are remembered until pruned.** Every message leaving a mailbox (expunge, move, INBOX rename) is
   answered by `vanished` with its UID for any MODSEQ below its removal, until `prune_expunged` forgets it; from
   then on `vanished` says it is not complete for such a MODSEQ, never silently leaves a UID out.
11. **An ACL names users of the owner's domain.** `set_acl` takes `anyone` (every user of the owner's domain)
   or the address of such a user, optionally prefixed with `-` (negative rights, RFC 4314 §2), never the
   owner, whose rights are always all of `RIGHTS`; at most `names.MAX_ACL_ENTRIES` entries per mailbox. A
   user's rights on a mailbox of another user are the union of the positive entries naming them or `anyone`,
   minus the union of the negative ones (RFC 4314 §2). A user removed loses their entries with them.
12. **Quotas hold.** A user's usage (`get_quota`: octets as the sum of RFC822.SIZE, and messages) is kept
   exactly, in the transaction of every write that adds or removes a message, never summed per check. Every
   write that adds messages (append, deliver, copy, move to another user) fails with `OverQuota`, storing
   nothing, if it would take the owner past a limit (`User.quota_bytes`, `User.quota_messages`), or the
   owner's domain past `Domain.quota_bytes` (the total of its users); a limit of 0 is none. A move within one
   user changes no usage and is never refused for it; `deliver(..., enforce_quota=False)` is for the server's
   own notices about quota.
13. **Sender rules have one scope and one kind per pattern.** A `SenderRule` belongs to a user or to a hosted
   domain and goes with it; a pattern is an address, "@domain" or "@.domain" (`names.sender_pattern`), and a
   scope holds at most one rule per pattern (adding the other kind replaces it) and at most
   `names.MAX_SENDER_RULES` rules. The store keeps them; what they mean is inbound/senders.py's.
14. **A training signal is kept until it is sent or given up.** With `training_signals` on, the write that moves,
   copies or flags a message as the user's verdict (`training_signals` says which) records it in the same
   transaction; `add_training_signals` is durable when it returns; a signal leaves only by
   `finish_training_signal` without a retry time (or with its user). `claim_training_signals` hands a due
   signal to one sender at a time, across nodes.
15. **A DMARC evaluation is kept until a report covered it, and is reported once.** A report run claims the rows
   it reports in the transaction that reads them (`claim_dmarc_results`), so two runs (two nodes) never report
   one row; only `delete_dmarc_results`, under that claim, removes them.
16. **A user's settings and auto-reply record are the user's.** `UserSettings` (web/settings.py writes them,
   delivery/autoreply.py reads them) and the record of auto-replies sent (`claim_auto_reply`) are keyed by the
   user id and go with the user; a user without a settings row has `UserSettings()`. `claim_auto_reply` is one
   atomic step in every engine, so two deliveries (two worker processes, two nodes) to the same user from the
   same sender claim the reply once.
17. **A periodic job's lease has one holder at a time** (`claim_job`), across processes and nodes, until it runs
   out or is released: the node that holds it runs the job (jobs.py).

Names are case-insensitive where mail is: domain names, and the addresses Postroom itself answers for (users,
alias sources, lists), are stored lower-case and found whatever the case (RFC 5321 §2.4 lets the receiving host
decide; Postroom, like Postfix and Dovecot by default, is case-insensitive). Addresses kept to be sent onward
(alias targets, list owners and members) keep the case of their local part (§2.4: a host "MUST take care to
preserve the case of mailbox local-parts"), and are compared by their lower-case key (`names.address`).
Mailbox names are case-sensitive except INBOX (RFC 9051 §5.1).
"""

from __future__ import annotations

import enum
import errno
import logging
import sqlite3
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from postroom.flags import FLAG_BY_NAME as FLAG_BY_NAME  # re-exported: the store's API names them
from postroom.flags import FLAG_NAMES as FLAG_NAMES
from postroom.flags import Flag as Flag
from postroom.flags import flags_to_names as flags_to_names

if TYPE_CHECKING:
    from postroom.mime.meta import MessageMeta
    from postroom.store.scanform import ScanTest
    from postroom.store.textindex import TextFilter

# --------------------------------------------------------------------------------------------------------
# Errors


class StoreError(Exception):
    """Base of the errors a store raises for a request that cannot be done (not for I/O failures)."""


class NotFound(StoreError):
    """The thing named (domain, user, list, mailbox, message body, queue entry...) does not exist, or no
    longer does. IMAP answers it `NO [NONEXISTENT]` (RFC 5530 §3); callers that race an expunge (a FETCH of a
    body released since its listing: imap/fetch.py) catch it and skip the message."""


class AlreadyExists(StoreError):
    """The name is taken (domain, user, mailbox, list member). IMAP answers it `NO [ALREADYEXISTS]` (RFC 5530 §3)."""


class Invalid(StoreError):
    """The request breaks a rule (bad name, INBOX rename target taken, deleting a mailbox with children...)."""


class LeaseLost(StoreError):
    """A queue holder wrote results for recipients it no longer holds (its lease expired and another holder
    claimed them, or an admin removed them meanwhile): nothing of that write was stored. `rcpts` names the
    recipients that were not held."""

    def __init__(self, queue_id: int, rcpts: Sequence[str]) -> None:
        super().__init__(f"queue entry {queue_id}: the lease on {', '.join(rcpts)} is no longer held")
        self.queue_id = queue_id
        self.rcpts = tuple(rcpts)


class Forbidden(StoreError):
    """The mailbox's ACL (RFC 4314) does not give the asking user the right the request needs. IMAP answers it
    `NO [NOPERM]` (RFC 5530 §3)."""


class SpecialUseTaken(Invalid):
    """Another mailbox of the user already has that special use (`create_mailbox`: one mailbox per special use
    per user)."""


class MetadataTooMany(Invalid):
    """`set_metadata` would give the user more than `names.MAX_METADATA_ENTRIES` entries (RFC 5464 TOOMANY)."""


class InsufficientStorage(StoreError):
    """The disk (or the database) is full: ENOSPC or EDQUOT from a file write, SQLITE_FULL from SQLite. Nothing
    was stored. Each protocol answers it with its own code: SMTP `452 4.3.1` (RFC 3463 §3.4 "mail system
    full"), IMAP `NO [LIMIT]` (RFC 5530 §3), POP3 `-ERR [SYS/TEMP]` (RFC 3206). Engines raise it for every
    write that fails for lack of space, never `OSError` or `sqlite3.OperationalError`."""

    @classmethod
    def from_os_error(cls, exc: OSError) -> InsufficientStorage:
        """The error for an ENOSPC / EDQUOT `OSError` (`is_out_of_space`), its text kept."""
        return cls(f"insufficient storage: {exc.strerror or exc}")


class OverQuota(StoreError):
    """The write would take a user's usage, or their domain's, past its quota (invariant 12). Nothing was
    stored. `resource` is the RFC 9208 §5 resource name, "STORAGE" (octets; reported in units of 1024) or
    "MESSAGE"; `scope` is "user" or "domain"; `alone` is true when the write could never fit, even into an
    empty mailbox (one message larger than the limit). IMAP answers it `NO [OVERQUOTA]` (RFC 9208 §4.3, RFC 5530
    §3); SMTP `452 4.2.2` or, `alone`, `552 5.2.2` (RFC 3463 §3.3 "mailbox full")."""

    def __init__(self, message: str, *, resource: str = "STORAGE", scope: str = "user", alone: bool = False) -> None:
        super().__init__(message)
        self.resource = resource
        self.scope = scope
        self.alone = alone


class StoreUnavailable(StoreError):
    """The store cannot be reached now, through no fault of the request: the PostgreSQL server refuses or
    dropped the connection (stopped, restarting, failing over, out of connection slots), or SQLite's disk or
    database file is gone (an I/O error, the file unopenable). Nothing is known to have been stored; the same
    request may succeed later. Engines raise it only for those causes, never for a bug or a broken schema.
    Each protocol answers it with its standard temporary failure: IMAP `NO [UNAVAILABLE]` (RFC 5530 §3,
    "a subsystem is down"), POP3 `-ERR [SYS/TEMP]` (RFC 3206 §4), SMTP `451 4.3.0` (RFC 5321 §4.2.1,
    RFC 3463 §3.4), the web a 503 with Retry-After (RFC 9110 §15.6.4). Engines log it through
    `OutageLog` (one line per interval), so callers answer it without a traceback of their own."""


class OutageLog:
    """Counts the store's `StoreUnavailable` failures of one process and logs them as one line per `interval`
    seconds, never a line per failure: the first failure of an outage is logged at once ("store unreachable:
    <error>"), later ones are counted, and the first failure after `interval` seconds logs "store unreachable
    (N failures in the last S s): <error>"; the first success after failures logs "store reachable again
    (N failures over S s)". `what` and `back` replace those subjects (`back` None: no end line).
    `now` is a monotonic clock in seconds (tests give their own). Not thread-safe by design: each engine calls it
    from its event-loop thread."""

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0, now: Callable[[], float] = time.monotonic,
                 what: str = "store unreachable", back: str | None = "store reachable again") -> None:
        self.logger = logger
        self.what = what  # the lines' subject
        self.back = back  # the end-of-outage line's subject; None: none (the caller says it its own way)
        self.interval = interval
        self.now = now
        self.since: float | None = None  # when the current outage's first failure came; None: no outage
        self.last_logged = 0.0
        self.unlogged = 0  # failures since the last line
        self.total = 0  # failures since the outage began

    def failed(self, exc: BaseException) -> None:
        """One more failure; logs a line if it is the outage's first or `interval` passed since the last."""
        now = self.now()
        self.total += 1
        self.unlogged += 1
        if self.since is None:
            self.since = self.last_logged = now
            self.unlogged = 0
            self.logger.error("%s: %s", self.what, exc)
        elif now - self.last_logged >= self.interval:
            self.logger.error("%s (%d failures in the last %.0f s): %s", self.what, self.unlogged,
                              now - self.last_logged, exc)
            self.last_logged = now
            self.unlogged = 0

    def succeeded(self) -> None:
        """A request went through: if an outage was on, log its end and forget it. Cheap when none was."""
        if self.since is None:
            return
        if self.back is not None:
            self.logger.warning("%s (%d failures over %.0f s)", self.back, self.total, self.now() - self.since)
        self.since = None
        self.unlogged = self.total = 0


def is_out_of_space(exc: BaseException) -> bool:
    """True for the errors `InsufficientStorage` stands for: ENOSPC / EDQUOT, SQLite's SQLITE_FULL."""
    if isinstance(exc, InsufficientStorage):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return False


QUOTA_WARNING_LEVELS = (80, 95)
"""Percent of a limit at which a user is warned once per crossing (invariant 12, `Store.raise_quota_warned`)."""


def quota_level(storage: int, messages: int, storage_limit: int, message_limit: int) -> int:
    """The highest of QUOTA_WARNING_LEVELS that a usage (octets, messages) has reached on one of its limits
    (0 = none); 0 when it reached none or there are no limits. SQLite's schema step 15 computes the same."""
    for percent in sorted(QUOTA_WARNING_LEVELS, reverse=True):
        if (storage_limit and storage * 100 >= percent * storage_limit) or (
                message_limit and messages * 100 >= percent * message_limit):
            return percent
    return 0


STAGING_THRESHOLD = 1 << 20
"""Bytes: a message body larger than this is written to a file in `Store.staging_dir()` as it arrives (SMTP DATA
and BDAT, IMAP APPEND literals), never held whole in a session's memory."""
MAX_SCAN_BODIES = 2000  # bodies one `Store.scan_texts` call checks: one reader-thread job of at most ~0.1-0.5 s


# --------------------------------------------------------------------------------------------------------
# System flags: a bitmask in storage. \Recent is per-session (RFC 9051 dropped it) and never stored.


# (Flag, FLAG_NAMES, FLAG_BY_NAME and flags_to_names live in postroom/flags.py, shared with the protocol cores.)


def flags_allowed(rights: str) -> int:
    """The system flags a user with the RFC 4314 `rights` may set or clear (§4: STORE, APPEND, COPY): \\Seen
    with "s", \\Deleted with "t", the others with "w" (keywords need "w" too)."""
    mask = 0
    if "s" in rights:
        mask |= Flag.SEEN
    if "t" in rights:
        mask |= Flag.DELETED
    if "w" in rights:
        mask |= Flag.ANSWERED | Flag.FLAGGED | Flag.DRAFT
    return int(mask)


class StoreMode(enum.Enum):
    """How `store_flags` combines the given flags with the present ones (IMAP STORE FLAGS / +FLAGS / -FLAGS)."""

    REPLACE = "replace"
    ADD = "add"
    REMOVE = "remove"


SPECIAL_USE_DEFAULTS: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
"""Mailboxes every new user gets, with their RFC 6154 special-use attribute."""

HIERARCHY_SEPARATOR = "/"

RIGHTS = "lrswipkxtea"
"""The access rights of RFC 4314 §2.1, in its order: lookup, read, seen, write, insert, post, create (k), delete
mailbox (x), delete messages (t), expunge (e), administer. A mailbox's owner has all of them (invariant 11)."""
ANYONE = "anyone"  # RFC 4314 §2: the identifier every user matches (here: every user of the owner's domain)


class ListPolicy(enum.Enum):
    """Who may post to a mailing list (delivery/lists.py)."""

    OPEN = "open"  # anyone may post
    MEMBERS = "members"  # only members may post
    MODERATED = "moderated"  # every post waits for the owner's approval


class RcptState(enum.Enum):
    """Where one recipient of a queued message stands (delivery/queue.py; RFC 3461 §6 actions for its DSN)."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"


# --------------------------------------------------------------------------------------------------------
# Records (frozen values handed out by the store)


@dataclass(frozen=True)
class Domain:
    """A hosted domain. Times are seconds since the epoch; DKIM keys as RFC 6376 / RFC 8463 use them."""
    id: int
    name: str
    created: float
    dkim_selector: str = ""
    dkim_private_key: str = ""  # RSA 2048, PKCS#8 PEM; "" if none (DKIM signing off for the domain)
    dkim_ed25519_selector: str = ""  # RFC 8463: a second signature with its own selector
    dkim_ed25519_key: str = ""  # Ed25519, PKCS#8 PEM; "" if none
    quota_bytes: int = 0  # octets all the domain's users may hold together; 0: no domain quota
    # DKIM keys of a rotation under way (published first, switched to by `Store.switch_dkim`): JSON of
    # {"selector", "private_key", "ed25519_selector", "ed25519_key"}; "" when none
    dkim_next: str = ""


@dataclass(frozen=True)
class User:
    """A mailbox user (a login). Times are seconds since the epoch; quotas as in invariant 12."""
    id: int
    address: str  # full address, lower-case; also the login name
    domain_id: int
    password_hash: str  # argon2id, PHC string
    scram: str  # SCRAM-SHA-256 verifier (auth/passwords.py), "" if none
    quota_bytes: int  # octets of messages (sum of RFC822.SIZE) the user may hold; 0: no quota
    created: float
    quota_messages: int = 0  # messages the user may hold; 0: no limit
    admin: bool = False  # may use the web admin pages (web/admin.py)


@dataclass(frozen=True)
class QuotaUsage:
    """A user's usage and limits (invariant 12), as one read saw them. Sizes are octets (the sum of the messages'
    RFC822.SIZE; IMAP reports STORAGE in units of 1024 octets, RFC 9208 §5.1); a limit of 0 is "none".
    `warned` is the highest quota warning level (percent: 0, 80 or 95) sent to the user since usage was last
    below it (`Store.raise_quota_warned`)."""
    user_id: int
    storage: int
    messages: int
    storage_limit: int
    message_limit: int
    domain_storage: int  # octets held by all the users of the user's domain
    domain_storage_limit: int
    warned: int = 0


@dataclass(frozen=True)
class Alias:
    """One target of an alias source (the case of names: module doc)."""
    source: str  # "user@domain" or "@domain" (catch-all)
    target: str  # one local or external address, its local part as given (module doc: names)


@dataclass(frozen=True)
class MailingList:
    """A mailing list of a hosted domain and its members (delivery/lists.py)."""
    address: str  # lower-case (a local name)
    owner: str  # local part as given
    policy: ListPolicy
    bounce_address: str  # envelope sender of list copies
    members: tuple[str, ...] = ()  # local parts as given; one per lower-case key


@dataclass(frozen=True)
class Mailbox:
    """One mailbox of a user, as one read saw it: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ as RFC 9051 §2.3.1.1 and
    RFC 7162 §3.1.1 define them (invariants 3, 4)."""
    id: int
    user_id: int
    name: str  # full hierarchical name with "/" separators, e.g. "Archive/2024"
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None  # "\\Sent", ... or None
    subscribed: bool  # the name is among the user's subscriptions (invariant 8)
    keywords: frozenset[str] = frozenset()  # every keyword its messages have carried, first spelling (invariant 9)


@dataclass(frozen=True)
class AclEntry:
    """One entry of a mailbox's access control list (RFC 4314 §2)."""

    identifier: str  # "anyone" or a user's address (lower-case), "-" before it for negative rights
    rights: str  # letters of RIGHTS, in that order


@dataclass(frozen=True)
class SharedMailbox:
    """A mailbox of another user as the asking user may use it (invariant 6)."""

    mailbox: Mailbox  # the owner's record: `name` is the owner's name for it
    owner: str  # the owner's address (lower-case)
    rights: str  # the asking user's rights on it (RFC 4314 §2), letters of RIGHTS in order; never empty


@dataclass(frozen=True)
class MailboxStatus:
    """What IMAP STATUS / SELECT need, computed by the engine without reading bodies."""

    mailbox: Mailbox
    messages: int
    unseen: int  # messages without \\Seen
    deleted: int  # messages with \\Deleted (RFC 9051 STATUS DELETED)
    size: int  # total octets (RFC 8438 STATUS SIZE)
    first_unseen_uid: int | None
    recent: int = 0  # messages past the mailbox's \Recent watermark: no session has been told of them (RECENT)
    deleted_size: int = 0  # octets (sum of RFC822.SIZE) of the messages with \\Deleted (RFC 9208 DELETED-STORAGE)


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message in one mailbox, without its body. (Slots: a listing makes one per message, and a frozen
    dataclass with slots is made about three times faster than one without.)"""

    mailbox_id: int
    uid: int
    modseq: int
    internal_date: float  # seconds since the epoch (UTC)
    size: int  # octets of the stored bytes
    flags: int  # Flag bitmask
    keywords: frozenset[str]  # IMAP keywords, case preserved as first set
    blob_id: str  # sha256 hex of the bytes
    save_date: float | None = None  # RFC 8514: when it was saved to this mailbox (append, copy, move); None: unknown


@dataclass(frozen=True)
class MessageColumns:
    """The records of a UID range column by column, for listings of the whole mailbox (SELECT, FETCH FLAGS,
    SEARCH on flags, UIDs, sizes or dates): index i of every column is the i-th message in UID order. No
    object is made per message; keywords, which few messages have, are kept only for those that do."""

    uids: Sequence[int]
    modseqs: Sequence[int]
    flags: Sequence[int]  # Flag bitmask
    sizes: Sequence[int]
    internal_dates: Sequence[float]
    blob_ids: Sequence[str]
    keywords: dict[int, frozenset[str]]  # index -> keywords, only for messages with at least one
    save_dates: Sequence[float | None] = ()  # RFC 8514 save dates (`MessageInfo.save_date`)
    # With `list_columns(structure=True)`: each body's kept ENVELOPE, BODYSTRUCTURE and BODY values
    # (`ImapStructure`), None for a body whose row is not kept yet (stored before schema 19, or without metadata).
    envelopes: Sequence[bytes | None] = ()
    bodystructures: Sequence[bytes | None] = ()
    bodies: Sequence[bytes | None] = ()
    # (UIDVALIDITY, HIGHESTMODSEQ) of the mailbox, read before the rows: while the mailbox still has this pair,
    # no row of it has changed since (every append, flag change and removal takes a new MODSEQ: invariant 4), so
    # the columns are still its rows (imap/fetch.py `FlagCache`).
    stamp: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.uids)

    def keywords_at(self, i: int) -> frozenset[str]:
        """The keywords of message i (empty for most)."""
        return self.keywords.get(i, _NO_KEYWORDS)


_NO_KEYWORDS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class MailboxView:
    """What IMAP SELECT reads of a mailbox's messages (`Store.select_view`), as one read saw them: the UIDs
    ascending (a 4-byte array, RFC 9051 §2.3.1.1), the lowest UID without \\Seen (0: none; RFC 3501 §7.1's
    UNSEEN), and every keyword some message carries (RFC 9051 §7.3.5: SELECT announces them in FLAGS)."""

    uids: array[int]
    first_unseen_uid: int
    keywords: frozenset[str]


class SortRow(NamedTuple):
    """One message as SORT and THREAD read it (`Store.list_sort_rows`): its record's columns and its body's sort
    keys (`mime.sortkeys.SortKeys`, strings as i;unicode-casemap collation keys; "" where the field is
    missing). `known` is 0 while the body's keys are not stored yet (a body stored by an older version, or
    without metadata): the key fields are then empty and the caller computes them from the metadata, whose
    write-back (`write_metas`) stores them."""

    uid: int
    internal_date: float
    size: int
    blob_id: str
    thread_id: int  # RFC 8474 THREADID; 0 while the keys are not known
    known: int
    sent: float | None  # the Date field's instant (RFC 5256 §2.2), None without a valid one
    subject: str  # base subject (RFC 5256 §2.1)
    reply: int  # 1 if the base subject extraction removed a reply / forward marker
    from_: str  # addr-mailbox of the first From address (RFC 5256 §3)
    to: str
    cc: str
    display_from: str  # RFC 5957
    display_to: str
    message_id: str | None
    references: str  # msg-ids (without <>) separated by spaces, RFC 5256 §3 REFERENCES step 1


class ImapStructure(NamedTuple):
    """What FETCH answers from a body's structure alone, already encoded as IMAP data (RFC 9051 §7.4.2, §7.5.2):
    the ENVELOPE, BODYSTRUCTURE and BODY values (without the item names), as `mime.meta.MessageMeta` holds them.
    Kept per body (`Store.read_structures`) so a FETCH of these items over a mailbox decodes no metadata."""

    envelope: bytes
    bodystructure: bytes
    body: bytes


class ThreadSummary(NamedTuple):
    """A thread's messages in one mailbox (`Store.thread_summaries`)."""

    messages: int  # how many are in this mailbox
    newest_uid: int
    newest_date: float  # the latest internal date, seconds since the epoch
    unseen: int  # how many lack \\Seen


@dataclass(slots=True)
class ThreadColumns:
    """Messages as THREAD reads them (`Store.thread_rows`), one list per column, index i the i-th message in UID
    order: the `SortRow` fields the RFC 5256 §3 algorithms use, the sent date already falling back to the internal
    date (RFC 5256 §2.2). Columns, not an object per message: 100,000 messages make six lists, so nothing here
    grows the garbage collector's work (ints, floats and strings are not tracked by it)."""

    uids: list[int] = field(default_factory=list)
    dates: list[float] = field(default_factory=list)  # the Date field's instant, else the internal date
    subjects: list[str] = field(default_factory=list)  # base subject (RFC 5256 §2.1), i;unicode-casemap key
    replies: list[int] = field(default_factory=list)  # 1 if the base subject extraction removed a reply marker
    message_ids: list[str | None] = field(default_factory=list)
    references: list[str] = field(default_factory=list)  # msg-ids (no <>) separated by spaces, §3 step 1

    def __len__(self) -> int:
        return len(self.uids)

    def add(self, uid: int, date: float, subject: str, reply: int, message_id: str | None, references: str) -> None:
        """Append one message (the next in UID order)."""
        self.uids.append(uid)
        self.dates.append(date)
        self.subjects.append(subject)
        self.replies.append(reply)
        self.message_ids.append(message_id)
        self.references.append(references)

    def set(self, i: int, uid: int, date: float, subject: str, reply: int, message_id: str | None,
            references: str) -> None:
        """Replace message i."""
        self.uids[i], self.dates[i], self.subjects[i] = uid, date, subject
        self.replies[i], self.message_ids[i], self.references[i] = reply, message_id, references

    def row(self, i: int) -> tuple[int, float, str, int, str | None, str]:
        """Message i as the arguments of `add`."""
        return (self.uids[i], self.dates[i], self.subjects[i], self.replies[i], self.message_ids[i],
                self.references[i])


@dataclass(frozen=True)
class AppendRequest:
    """One message to store: its exact bytes (invariant 5), system flags (`Flag` bitmask), keywords, internal
    date (seconds since the epoch) and precomputed metadata.

    The message is `prefix` + `raw`: trace fields added at delivery (Return-Path, Received...) ride in `prefix`
    so the body is never copied to put them in front (issue 17 item 5). Engines store exactly the joined bytes
    (same blob id, size and body as an `AppendRequest(prefix + raw)`), writing the two pieces one after the
    other (SQLite joins a body of at most `common.JOIN_MAX`, 16 KiB, that it stores in the database: one INSERT
    costs less than two writes into the row).

    `parsed` is `meta` decoded, when the caller has it (it computed the metadata itself: `metapool.meta_pair`):
    it must equal `MessageMeta.from_bytes(meta)` (mime/meta.py invariant 2), and an engine then derives a new
    body's index rows, keys and structure from it instead of decoding `meta` again in its writer (issue 17 row
    1). It changes nothing stored: `meta` is stored as given. None: the engine decodes `meta` when it needs it."""
    raw: bytes
    flags: int = 0
    keywords: frozenset[str] = frozenset()
    internal_date: float | None = None  # None: now
    meta: bytes | None = None  # parsed metadata (mime/), stored with the blob; opaque to the store
    prefix: bytes = b""  # stored before `raw` (above)
    parsed: MessageMeta | None = field(default=None, compare=False, repr=False)  # `meta` decoded (above)

    @property
    def size(self) -> int:
        """Octets of the message stored: `len(prefix) + len(raw)`."""
        return len(self.prefix) + len(self.raw)

    def joined(self) -> bytes:
        """`prefix` + `raw` as one bytes object (a copy when there is a prefix): for the rare paths that need
        the message whole in memory."""
        return self.prefix + self.raw if self.prefix else self.raw


@dataclass(frozen=True)
class TextCandidates:
    """What `Store.search_text` found: the messages that may match (UID order), how many of them are there
    only because their body is not indexed yet, and whether exactly these messages match the filter (`exact`:
    every one of them does, so the caller need not confirm them; an engine that cannot vouch says False)."""

    messages: list[MessageInfo]
    unindexed: int
    exact: bool = False


@dataclass(frozen=True)
class TextScan:
    """What `Store.scan_texts` found: blob id -> bit mask of the tests that hold on that body (bit i: tests[i]),
    for each body it could answer from its scan form, and the characters of text compared (what
    `imap.search.MAX_SEARCH_WORK` bounds; past the caller's `max_chars` the scan stopped early)."""

    hits: dict[str, int]
    compared: int


@dataclass(frozen=True)
class IndexProgress:
    """One step of `Store.index_backlog`: bodies looked at, bodies indexed, bodies whose metadata must be computed
    first (missing or of an older format: the caller computes it and stores it with `write_metas`, which indexes
    them), the last blob id looked at (the next step's `after`), and how many are left in the backlog after it."""

    looked: int
    indexed: int
    needs_meta: list[str]
    last: str
    remaining: int


@dataclass(frozen=True)
class StagedAppend:
    """One message of `Store.append_multi` whose body is the file `path` in `Store.staging_dir()` (as
    `append_file` takes it); the other fields as in `AppendRequest`."""

    path: Path
    flags: int = 0
    keywords: frozenset[str] = frozenset()
    internal_date: float | None = None  # None: now
    meta: bytes | None = None


@dataclass(frozen=True)
class QueueRecipient:
    """One recipient of a queued message and its delivery state. Times are seconds since the epoch."""
    rcpt: str
    orcpt: str = ""  # RFC 3461 ORCPT, as given ("rfc822;user@example.org"), "" if none
    notify: str = ""  # RFC 3461 NOTIFY: "" (default), "NEVER" or a comma list of SUCCESS,FAILURE,DELAY
    state: RcptState = RcptState.QUEUED
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""
    delay_notified: bool = False  # the one delay DSN for this recipient was sent (delivery/queue.py)
    # The claim (`Store.queue_claim`): who is attempting this recipient now ("" nobody) and until when (seconds
    # since the epoch) unless renewed; a lease with lease_until <= now is free to be claimed again.
    lease_holder: str = ""
    lease_until: float = 0.0


@dataclass(frozen=True)
class QueueEntry:
    """A message waiting in the outbound queue (delivery/queue.py): its body's blob, size in octets, envelope
    (RFC 5321 §3.3) and DSN parameters (RFC 3461 §4), and its recipients."""
    id: int
    blob_id: str
    size: int
    mail_from: str  # "" for the null reverse-path
    envid: str  # RFC 3461 ENVID, "" if none
    ret: str  # RFC 3461 RET: "", "FULL" or "HDRS"
    created: float
    recipients: tuple[QueueRecipient, ...]
    from_checked: bool = True  # the From header was checked or the source is trusted: DKIM may align with it


@dataclass(frozen=True)
class QueueClaim:
    """What `Store.queue_claim` took. `claimed`: (queue id, recipient) of each recipient this claim took;
    `entries`: each entry with a recipient claimed, oldest first, with all its recipients as they are now (the
    claimed ones carry the claimer's `lease_holder`); `taken_over`: (queue id, recipient, previous holder) for
    each claimed recipient whose previous holder's lease had expired."""

    claimed: list[tuple[int, str]]
    entries: list[QueueEntry]
    taken_over: list[tuple[int, str, str]]


@dataclass(frozen=True, slots=True)
class AuthFailures:
    """Failed logins of one client address (`username` "") or of one user from one address, as the
    Authenticator (auth/authenticator.py) keeps them. Times are seconds since the epoch."""

    address: str  # the client's address as the Authenticator keys it (IPv6: the /64)
    username: str  # lower-case login name, "" for the address's own record
    failures: int  # counted since the first failure of the current window
    last_failure: float
    locked_since: float  # a (user, address) pair's lock began here; 0: never locked
    locked_until: float  # refused until then; 0: not locked
    expires: float  # after this the record means nothing: the store may drop it


@dataclass(frozen=True, slots=True)
class WebSession:
    """A signed-in webmail session (postroom/web/sessions.py). The session id itself is never stored: the row is
    keyed by its SHA-256 (hex), so a copy of the store signs nobody in."""

    id_hash: str  # SHA-256 hex of the 256-bit session id carried by the cookie
    user_id: int
    csrf: str  # the per-session synchronizer token every state-changing request carries
    created: float  # seconds since the epoch: the absolute expiry counts from here
    last_seen: float  # the idle expiry counts from here (refreshed at most once a minute)


@dataclass(frozen=True)
class HeldPost:
    """A moderated list post waiting for its owner (delivery/lists.py): the 128-bit token (32 lower-case hex
    digits) the approve/reject addresses carry, the list, the original envelope sender, the message, and when it
    was held (seconds since the epoch)."""

    token: str
    list_address: str
    mail_from: str
    raw: bytes
    held_at: float = 0.0


@dataclass(frozen=True)
class SenderRule:
    """One allow or block rule (invariant 13). `scope` is the user's address or the domain's name (the one with
    no "@"); exactly one of `user_id` and `domain_id` is set. `pattern` is in `names.sender_pattern` form."""

    id: int
    scope: str
    kind: str  # "allow" | "block"
    pattern: str
    created: float  # seconds since the epoch
    user_id: int | None = None
    domain_id: int | None = None


@dataclass(frozen=True)
class UserSettings:
    """A user's webmail settings (invariant 16): the display name and signature of their mail, the default
    From identity and a display name per identity, and the out-of-office auto-reply (RFC 3834,
    delivery/autoreply.py). Times are seconds since the epoch; `vacation_days` the least number of days between
    two replies to one sender (RFC 3834 §2 suggests 7)."""

    display_name: str = ""
    signature: str = ""
    default_identity: str = ""  # "" (or one no longer the user's): their own address
    identity_names: Mapping[str, str] = field(default_factory=dict)  # address (lower case) -> display name
    vacation: bool = False
    vacation_subject: str = ""  # "" : "Auto: <the original subject>"
    vacation_text: str = ""
    vacation_start: float | None = None  # replies from this time on (None: from now)
    vacation_end: float | None = None  # replies before this time (None: until turned off)
    vacation_days: int = 7


@dataclass(frozen=True)
class RecipientFacts:
    """What delivery decides a local recipient's copy by, from one read (`Store.recipient_facts`; router
    invariant 19): the user's quota, the sender rules that apply (theirs, then their domain's, as
    `sender_rules`), their INBOX's id (None if they have none) and their settings (the auto-reply's).
    `quota.domain_storage` is summed only when the domain has a limit: it is 0 when `quota.domain_storage_limit`
    is 0 (there is nothing to check it against; `get_quota` always sums it, for the reports that show it)."""

    quota: QuotaUsage
    sender_rules: tuple[SenderRule, ...]
    inbox_id: int | None
    settings: UserSettings


@dataclass(frozen=True)
class TrainingSignal:
    """A user's verdict on a message, to be sent to the spam filter's learning (invariant 14): `kind` "spam" (moved
    into Junk or marked $Junk) or "ham" (moved out of Junk), the body's `blob_id`, when it was `created` and
    how many `attempts` to send it failed."""

    id: int
    user_id: int
    kind: str
    blob_id: str
    created: float
    attempts: int = 0


@dataclass(frozen=True)
class DmarcEvaluation:
    """One message's DMARC evaluation, kept for an aggregate report (RFC 7489 §7.2, Appendix C; invariant 15).
    `policy` holds the published record's tags as JSON ({"adkim", "aspf", "p", "sp", "pct", "fo", "rua"}), `auth`
    the raw results as JSON ({"dkim": [[domain, selector, result], ...], "spf": [domain, scope, result]}).
    `count` is 1 for a message, the number of messages for an aggregated row (`Store.dmarc_aggregate`)."""

    at: float  # seconds since the epoch
    policy_domain: str  # where the record was found
    policy: str
    source_ip: str
    header_from: str
    envelope_from: str
    disposition: str  # "none" | "quarantine" | "reject": what was done
    dkim_aligned: bool
    spf_aligned: bool
    auth: str
    count: int = 1


# --------------------------------------------------------------------------------------------------------
# Change feed


class ChangeKind(enum.Enum):
    """What a `Change` record says happened (invariant 2; style habit 8)."""

    APPEND = "append"  # a message arrived (uid, modseq, flags, keywords set)
    FLAGS = "flags"  # a message's flags or keywords changed
    EXPUNGE = "expunge"  # a message left the mailbox
    MAILBOX_CREATED = "mailbox_created"
    MAILBOX_DELETED = "mailbox_deleted"
    MAILBOX_RENAMED = "mailbox_renamed"  # name is the new name, old_name the old
    MAILBOX_SUBSCRIBED = "mailbox_subscribed"  # name subscribed; mailbox_id 0 if no such mailbox
    MAILBOX_UNSUBSCRIBED = "mailbox_unsubscribed"  # name unsubscribed; mailbox_id 0 if no such mailbox
    MAILBOX_KEYWORDS = "mailbox_keywords"  # the mailbox's keyword set grew by `keywords` (invariant 9)
    MAILBOX_ACL = "mailbox_acl"  # the mailbox's ACL changed (user_id is the owner's; name the identifier)
    METADATA = "metadata"  # entry `name` of mailbox_id (0: the server) was set or removed; user_id is whose
    # row it is: the setter's for "/private" and server entries, the mailbox owner's for its "/shared" ones


@dataclass(frozen=True)
class Change:
    """One change a write made, returned to the writer and published on the hub after the commit (invariant 2).
    Which fields mean something depends on `kind` (`ChangeKind`); `flags` is a `Flag` bitmask."""
    kind: ChangeKind
    user_id: int
    mailbox_id: int
    uid: int = 0
    modseq: int = 0
    flags: int = 0
    keywords: frozenset[str] = frozenset()
    name: str = ""
    old_name: str = ""


@dataclass(frozen=True)
class AppendResult:
    """What an append stored: the message's UID and MODSEQ, the mailbox's UIDVALIDITY (UIDPLUS APPENDUID, RFC 4315
    §3), and the changes; `recent`: what `append(..., claim_recent=True)` claimed, as `claim_recent` returns it
    ((0, 0) when not asked)."""
    uid: int
    modseq: int
    uidvalidity: int
    changes: tuple[Change, ...]
    recent: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class CopyResult:
    """UIDPLUS COPYUID: source UIDs and the UIDs they got in the destination, in the same order."""

    uidvalidity: int
    source_uids: tuple[int, ...]
    dest_uids: tuple[int, ...]
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class WriteResult:
    """The changes a write made (invariant 2), and for STORE UNCHANGEDSINCE the UIDs it left alone."""
    changes: tuple[Change, ...] = ()
    modified: tuple[int, ...] = ()  # store_flags with unchanged_since: the UIDs it left alone (RFC 7162 §3.1.3)


@dataclass(frozen=True)
class Vanished:
    """What `Store.vanished` answers: the UIDs removed from a mailbox after a MODSEQ (RFC 7162 §3.2.5, §3.2.6)."""

    uids: Sequence[int]  # ascending; empty when not `complete`
    complete: bool  # False: records of removals after that MODSEQ were pruned, `uids` cannot be given
    uidnext: int  # the mailbox's UIDNEXT as of the same read


class Subscription(Protocol):
    """A live subscription to the change feed: iterate, or `get()` one change; `close()` when done."""

    def get_nowait(self) -> Change | None:
        """The next change if one is queued, else None (never waits)."""

    def watch(self, mailbox_id: int | None) -> None:
        """Receive the changes of this one mailbox of another user too (a shared mailbox the subscriber has
        selected, resolved through its ACL: invariant 6), instead of any mailbox watched before; None: none."""

    async def get(self) -> Change:
        """The next change, waiting for one."""

    def close(self) -> None:
        """Stop receiving; the hub drops the subscription."""


class ChangeHub(Protocol):
    """The change feed of one process (invariant 2): subscribers get the changes of one user's mailboxes, in commit
    order."""

    def subscribe(self, user_id: int) -> Subscription:
        """A new subscription to the changes of `user_id`'s mailboxes (and of a watched mailbox, `watch`)."""

    def publish(self, changes: Iterable[Change]) -> None:
        """Deliver committed changes to the subscribers of their users (invariant 2: only after the commit)."""

    def publish_lost(self) -> None:
        """Changes were committed that cannot be delivered (another process's, pruned before this process read
        them): every subscriber must resync from the store."""


# --------------------------------------------------------------------------------------------------------
# The interface


class Store(Protocol):
    """Every engine implements this (module doc: the invariants). Errors: a request that cannot be done raises a
    `StoreError` subclass (NotFound, AlreadyExists, Invalid, Forbidden, OverQuota, InsufficientStorage), never
    an engine's own exception type. Times are seconds since the epoch, sizes octets."""

    hub: ChangeHub
    # True when a read of a few rows runs on the calling thread until it first waits and needs no current task
    # (SQLite: its point lookups are synchronous calls). False where a read may first open a connection inside
    # `asyncio.timeout` (asyncpg), which raises RuntimeError outside a task. SMTP begins MAIL and RCPT from the
    # connection's callback, outside any task, only on a store where this is True (smtp/session.py invariant 13).
    reads_without_task: bool

    async def open(self) -> None:
        """Create or migrate the schema; start writer tasks. Idempotent."""

    async def close(self) -> None:
        """Finish pending writes and release everything."""

    # ---- domains
    async def add_domain(self, name: str) -> Domain:
        """A new hosted domain (`name` normalised to lower case, `names.domain`). AlreadyExists if hosted already;
        Invalid for a name that is not a domain name."""

    async def get_domain(self, name: str) -> Domain | None:
        """The hosted domain `name` (any case), or None."""

    async def list_domains(self) -> list[Domain]:
        """Every hosted domain, by name."""

    async def remove_domain(self, name: str) -> None:
        """Refuses (Invalid) while the domain still has users, aliases or lists."""

    async def set_dkim(self, name: str, selector: str, private_key_pem: str, ed25519_selector: str = "",
                       ed25519_key_pem: str = "") -> None:
        """Replace the domain's DKIM keys (all four values; "" clears one)."""

    async def set_dkim_next(self, name: str, selector: str, private_key_pem: str, ed25519_selector: str,
                            ed25519_key_pem: str) -> bool:
        """Keep new DKIM keys beside the ones in use (`Domain.dkim_next`), not signing yet: True. False, and
        nothing written, while keys kept before wait for their switch (they may be published already: two
        rotations at once must not replace one another's keys). NotFound for an unknown domain."""

    async def switch_dkim(self, name: str) -> bool:
        """In one transaction, make the kept keys (`set_dkim_next`) the ones in use and clear them: True; False
        (nothing changed) when none were kept. NotFound for an unknown domain."""

    # ---- users
    async def add_user(self, address: str, password_hash: str, scram: str = "", quota_bytes: int = 0) -> User:
        """The domain must exist (NotFound otherwise). Creates SPECIAL_USE_DEFAULTS mailboxes, subscribed."""

    async def get_user(self, address: str) -> User | None:
        """The user whose address is `address` (any case, module doc), or None."""

    async def get_user_by_id(self, user_id: int) -> User | None:
        """The user with that id, or None (removed since)."""

    async def list_users(self, domain: str | None = None) -> list[User]:
        """Every user, or those of the hosted domain `domain`, by address."""

    async def set_password(self, address: str, password_hash: str, scram: str = "") -> None:
        """Replace the user's password hash and SCRAM verifier, and end every webmail session of the user in the
        same transaction (a reset is what follows a stolen password: whoever signed in with the old one is out at
        their next request). NotFound for an unknown user."""

    async def set_admin(self, address: str, admin: bool) -> None:
        """Give or take the user's admin flag (`User.admin`). NotFound for an unknown user."""

    async def remove_user(self, address: str) -> None:
        """Removes the user, their mailboxes and messages (blobs lose a reference)."""

    # ---- aliases
    async def add_alias(self, source: str, targets: Sequence[str]) -> None:
        """`source` is an address or "@domain" (catch-all) of a local domain. Targets keep their local part's case;
        adding a target the source has already (compared case-insensitively) is a no-op."""

    async def remove_alias(self, source: str, target: str | None = None) -> None:
        """Remove one target, or every target of `source` when `target` is None. NotFound if nothing matched."""

    async def list_aliases(self, source: str | None = None) -> list[Alias]:
        """Every alias target, or those of one `source` (an address or "@domain", any case), by source and target."""

    # ---- mailing lists
    async def create_list(self, address: str, owner: str, policy: ListPolicy, bounce_address: str = "") -> MailingList:
        """`bounce_address` defaults to "<local>-bounces@<domain>"."""

    async def get_list(self, address: str) -> MailingList | None:
        """The mailing list at `address` (any case), or None."""

    async def list_lists(self) -> list[MailingList]:
        """Every mailing list, by address."""

    async def set_list_policy(self, address: str, policy: ListPolicy) -> None:
        """Change who may post to the list (`ListPolicy`). NotFound for an unknown list."""

    async def add_list_member(self, address: str, member: str) -> None:
        """`member` is kept with its local part's case; AlreadyExists if the list has it in any case."""

    async def remove_list_member(self, address: str, member: str) -> None:
        """Removes the member whatever the case it is given in; NotFound if the list has no such member."""

    async def delete_list(self, address: str) -> None:
        """Remove the list and its members. NotFound for an unknown list."""

    # ---- mailboxes
    async def list_mailboxes(self, user_id: int) -> list[Mailbox]:
        """Every mailbox of the user (their own, not shared ones: invariant 6): INBOX first, then by name."""

    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None:
        """`name` "inbox" in any case means INBOX."""

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        """The mailbox with that id (of any user: callers hold only ids they resolved, invariant 6), or None."""

    async def create_mailbox(self, user_id: int, name: str, special_use: str | None = None, *,
                             as_user: int | None = None) -> Mailbox:
        """Creates missing parents too (RFC 9051 §6.3.4). AlreadyExists if taken. `special_use` is one RFC 6154
        attribute ("\\Sent", any case) or None; Invalid for an unknown one, SpecialUseTaken when another mailbox
        of the user has it already (one mailbox per special use per user: what a client finds with
        LIST (SPECIAL-USE) is then never ambiguous). With `as_user` (another user acting through the ACL, RFC
        4314 §4) that user needs "k" on the nearest existing parent, checked in the transaction: Forbidden
        otherwise, also when there is no parent. A new mailbox gets a copy of the nearest existing parent's ACL
        (§4 SHOULD), whoever creates it."""

    async def delete_mailbox(self, user_id: int, name: str) -> WriteResult:
        """Deletes the mailbox and its messages; children stay (RFC 9051 §6.3.5). INBOX cannot be deleted."""

    async def rename_mailbox(self, user_id: int, old: str, new: str, *, as_user: int | None = None) -> WriteResult:
        """Renames with its children. Renaming INBOX moves its messages to a new mailbox and leaves INBOX
        empty (RFC 9051 §6.3.6). With `as_user` (RFC 4314 §4) that user needs "x" on `old` and "k" on the nearest
        existing parent of `new`, checked in the transaction (Forbidden otherwise)."""

    async def set_subscribed(self, user_id: int, name: str, subscribed: bool) -> WriteResult:
        """Add `name` to the user's subscriptions, or remove it (invariant 8), whether or not a mailbox has that
        name. A change (MAILBOX_SUBSCRIBED, or MAILBOX_UNSUBSCRIBED when removing) only when the set changed.
        Invalid for a bad name, or when adding would make more than `names.MAX_SUBSCRIPTIONS`; NotFound for an
        unknown user."""

    async def list_subscriptions(self, user_id: int) -> list[str]:
        """The user's subscribed names, sorted by code point (IMAP LSUB, LIST (SUBSCRIBED))."""

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        """The counts of `MailboxStatus` for one mailbox, as one read saw them, reading no bodies (IMAP STATUS,
        RFC 9051 §6.3.11; SELECT). NotFound if the mailbox is gone."""

    async def unseen_counts(self, user_id: int, limit: int = 1000) -> dict[int, int]:
        """Mailbox id -> how many of its messages lack \\Seen, counted up to `limit` (a mailbox with more answers
        `limit`: "1000+"), for every mailbox of the user (0s included). The work is at most `limit` index entries
        per mailbox, whatever the mailboxes' size (the webmail's folder tree on every page)."""

    # ---- IMAP METADATA (RFC 5464)
    async def get_metadata(self, user_id: int, mailbox_id: int, names: Sequence[str],
                           depth: int = 0) -> list[tuple[str, bytes]]:
        """The stored entries (name, value) of `user_id` on the mailbox `mailbox_id` (0: the server) among
        `names` (entry names, any case), sorted by name and each once: with `depth` 0 the named entries, 1 also
        their children (one "/" level deeper), -1 every descendant (RFC 5464 §4.2.2 DEPTH). Names come back
        lower-case (entry names are case-insensitive). Entries not stored are left out."""

    async def set_metadata(self, user_id: int, mailbox_id: int, entries: Sequence[tuple[str, bytes | None]]) -> None:
        """Set (or, for a None value, remove) entries of `user_id` on the mailbox `mailbox_id` (0: the server), in
        one transaction: all or none (RFC 5464 §4.3). NotFound if the mailbox is not the user's or is gone;
        Invalid for a name that is not a valid entry name (`names.metadata_entry`) or a value over
        `names.MAX_METADATA_VALUE` octets; MetadataTooMany if the user would have more than
        `names.MAX_METADATA_ENTRIES` entries. A mailbox's entries are deleted with it."""

    async def claim_recent(self, mailbox_id: int) -> tuple[int, int]:
        """IMAP \\Recent (RFC 3501 §2.3.2): atomically move the mailbox's watermark (the highest UID some session
        has claimed as recent; it survives restarts) up to UIDNEXT - 1 and return (old, new). UIDs in
        old+1..new are recent for the caller's session alone; old == new when there is nothing new. NotFound
        if the mailbox is gone. A new mailbox starts at 0."""

    async def recent_watermark(self, mailbox_id: int) -> int:
        """The watermark `claim_recent` would start from, without claiming (EXAMINE, STATUS RECENT)."""

    # ---- messages
    async def append(self, mailbox_id: int, message: AppendRequest, *, claim_recent: bool = False) -> AppendResult:
        """Store one message (IMAP APPEND, RFC 9051 §6.3.12) with the next UID and MODSEQ; durable when it returns
        (invariant 1). NotFound if the mailbox is gone; Invalid for bad flags or keywords or past the mailbox's
        keyword limit (invariant 9); OverQuota (invariant 12); InsufficientStorage for a full disk.
        `claim_recent`: then also what `claim_recent(mailbox_id)` does, its answer in `AppendResult.recent` (an
        APPEND to the mailbox a read-write IMAP4rev1 session has selected: the message is \\Recent to it, RFC
        3501 §6.3.11); the SQLite engine does both in one write transaction."""

    def staging_dir(self) -> Path:
        """A directory for `append_file` bodies, on the same file system as the store's message files. Callers
        create a file of their own in it (e.g. `tempfile.mkstemp(dir=...)`); nothing else may live there. Files
        older than an hour are garbage (a crash left them): `open()` may remove them, and every file when no
        other process has the store open."""

    async def append_file(
        self,
        mailbox_id: int,
        path: Path,
        *,
        flags: int = 0,
        keywords: frozenset[str] = frozenset(),
        internal_date: float | None = None,
        meta: bytes | None = None,
    ) -> AppendResult:
        """`append` of a body already written to the file `path`, a file in `staging_dir()` (Invalid otherwise,
        and the file is left alone): large messages (IMAP APPEND literals) never have to be held in memory.
        The caller need not fsync it. The store takes the file over: once this returns or raises, `path` is
        gone (the body moved into the store without a copy, or was read and stored inline if small, or the
        append failed). The same invariants hold: durable once awaited, bytes exactly as in the file,
        deduplicated by SHA-256 with every other body."""

    async def append_many(self, mailbox_id: int, messages: Sequence[AppendRequest]) -> list[AppendResult]:
        """Like append for each, in one transaction (imports)."""

    async def append_multi(self, mailbox_id: int,
                           messages: Sequence[AppendRequest | StagedAppend]) -> list[AppendResult]:
        """IMAP MULTIAPPEND (RFC 3502 §3: "all or nothing"): every message appended in one transaction, in order
        (consecutive UIDs), or none of them. A `StagedAppend` body is a staging file as `append_file` takes it,
        never read into memory (stored as a file whatever its size). Every staging file named is gone once this
        returns or raises; a path outside `staging_dir()` is Invalid before anything is stored (that file is
        left alone, the others removed). NotFound if the mailbox is gone; Invalid for bad flags or keywords."""

    async def deliver(self, mailbox_ids: Sequence[int], message: AppendRequest, *,
                      enforce_quota: bool = True,
                      box_keywords: Mapping[int, frozenset[str]] | None = None) -> list[AppendResult]:
        """One message into several mailboxes (of one or many users) in one transaction, one blob. OverQuota
        (nothing stored for anyone) if one owner would pass a limit, unless `enforce_quota` is False
        (invariant 12). `box_keywords`: keywords added to the copy in some of the mailboxes (`$Junk` for the
        users whose copy goes to Junk), still in the one transaction."""

    async def deliver_file(self, mailbox_ids: Sequence[int], path: Path, *, prefix: bytes = b"",
                           meta: bytes | None = None, keywords: frozenset[str] = frozenset(),
                           enforce_quota: bool = True,
                           box_keywords: Mapping[int, frozenset[str]] | None = None) -> list[AppendResult]:
        """`deliver` of the message `prefix` + the bytes of the file `path` (in `staging_dir()`, Invalid
        otherwise), with no flags, the `keywords` given (`$Junk` for a quarantine) and the time of delivery: a
        large message received by SMTP is stored without being held in memory (the prefix, e.g. Return-Path, is
        copied with the body into a new file in bounded pieces; without one the file is linked, not copied).
        Unlike `append_file`, `path` stays the caller's: it is left in place, so one staged body can be delivered
        and queued."""

    async def list_messages(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None) -> list[MessageInfo]:
        """UID order; reads no bodies."""

    async def list_columns(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None, *,
                           flags_only: bool = False, structure: bool = False) -> MessageColumns:
        """What `list_messages` returns, as columns (`MessageColumns`): one query, no object per message, for
        listings of a large mailbox. With `flags_only`, only `uids`, `modseqs`, `flags` and `keywords` are
        filled (the others are empty): what SELECT, a resynchronisation and FETCH FLAGS read, at about half the
        cost of the whole rows (no body id string per message). With `structure`, also `envelopes`,
        `bodystructures` and `bodies`, the kept `ImapStructure` of each body in the same query (`read_structures`'
        values; None where no row is kept), and `blob_ids` holds a body's id only where no row is kept ("" for
        the others): a whole-mailbox FETCH ENVELOPE BODYSTRUCTURE reads one range, not a listing and then a batch
        of ids. NotFound for an unknown mailbox."""

    async def select_view(self, mailbox_id: int) -> MailboxView:
        """The mailbox's UIDs, lowest unseen UID and keywords in use (`MailboxView`), in one read transaction: what
        IMAP SELECT needs (RFC 9051 §6.3.2), without a row per message crossing into Python. The UIDs come as one
        value (SQLite `group_concat`, PostgreSQL `array_agg`): the driver steps once, not once per message (the
        SQLite module releases and retakes the GIL around every step, which under load costs more than the row).
        NotFound for an unknown mailbox."""

    async def uids_with_flag(self, mailbox_id: int, uid_min: int, uid_max: int, flag: int, present: bool) -> list[int]:
        """UIDs of the range whose system flags have `flag` (present) or lack it, ascending: one indexed query
        answering IMAP SEARCH SEEN / UNSEEN / DELETED ... without a row per message in Python. NotFound for an
        unknown mailbox."""

    async def get_message(self, mailbox_id: int, uid: int) -> MessageInfo | None:
        """The message with that UID in the mailbox, or None (never had, or expunged)."""

    async def page_messages(self, mailbox_id: int, limit: int, *, below: int | None = None,
                            above: int | None = None) -> list[MessageInfo]:
        """One page of a mailbox, newest (highest UID) first: the `limit` highest UIDs below `below`, or, with
        `above`, the `limit` lowest UIDs above it (the page before, for a "newer" link), still newest first;
        neither: the newest `limit`. One index range scan of at most `limit` rows, whatever the mailbox's size
        (the webmail's message list). NotFound if the mailbox is gone."""

    async def list_sort_rows(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None, *,
                             unknown_only: bool = False) -> list[SortRow]:
        """The messages of a UID range with their sort keys (`SortRow`), UID order, one query (no metadata is
        parsed): what a SORT context's update and FETCH THREADID read for a few messages, and, with
        `unknown_only`, only those whose body's keys are not stored (`known` 0: found through an index, so none
        costs no row read). NotFound if the mailbox is gone."""

    async def sort_uids(self, mailbox_id: int, criteria: Sequence[tuple[str, bool]], uid_min: int = 1,
                        uid_max: int | None = None) -> list[int]:
        """The UIDs of a range in SORT order (RFC 5256 §3), sorted by the engine: `criteria` is (key, reversed)
        with key one of "arrival" (internal date), "date" (sent date, else internal date, RFC 5256 §2.2),
        "size", "subject", "from", "to", "cc", "display_from", "display_to" (the `SortRow` keys, strings in
        code point order), and ties are broken by UID, ascending, whatever is reversed. A body whose keys are not
        stored sorts with empty strings and its internal date (callers fill them first: `list_sort_rows` with
        `unknown_only`). Invalid for an unknown key; NotFound if the mailbox is gone."""

    async def thread_rows(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None) -> ThreadColumns:
        """The `ThreadColumns` of a UID range, UID order, one range read of narrow rows (what THREAD reads; no
        metadata parsed). A body whose keys are not stored gives empty keys and its internal date (callers fill
        them first: `list_sort_rows` with `unknown_only`). NotFound if the mailbox is gone."""

    async def content_version(self, mailbox_id: int) -> tuple[int, ...]:
        """A value that changes whenever the set of messages of the mailbox or the sort keys of any body change:
        an arrival (UIDNEXT), a removal (the newest expunge's MODSEQ, the expunged-record floor), keys stored or
        replaced later (`write_metas`). Flag changes leave it alone. Equal values mean SORT and THREAD over the
        same UIDs give the same answer, so callers may keep answers keyed by it. A point lookup (cheap enough for
        the event loop). NotFound if the mailbox is gone."""

    async def thread_ids(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None) -> dict[int, int]:
        """uid -> thread id (RFC 8474 THREADID) of the messages of a UID range. A message's thread is given in the
        transaction that stores it, from its Message-ID, References / In-Reply-To and base subject, and per user:
        messages that share a Message-ID, or (RFC 5256 §3 step 6) a base subject, share a thread; copies and
        moved messages keep theirs; it never changes. 0 for a message whose body's keys are not known yet
        (stored by an older version or without metadata): `write_metas` of its metadata gives it one. NotFound
        if the mailbox is gone."""

    async def thread_summaries(self, mailbox_id: int, thread_ids: Sequence[int]) -> dict[int, ThreadSummary]:
        """For each thread id (`thread_ids`; 0 is no thread and is left out), its messages in this mailbox as a
        `ThreadSummary`, through the thread index: work in proportion to those messages, not to the mailbox (the
        webmail's conversation list). A thread without messages here is left out. NotFound if the mailbox is
        gone."""

    async def thread_uids(self, mailbox_id: int, thread_id: int, limit: int) -> list[int]:
        """The UIDs of the thread's messages in this mailbox, ascending, at most `limit`, through the thread
        index (the webmail's conversation page). [] for thread 0. NotFound if the mailbox is gone."""

    async def read_message(self, blob_id: str) -> bytes:
        """The exact bytes stored for the body `blob_id` (invariant 5; sha256 hex, `MessageInfo.blob_id`). NotFound
        when there is no such body (e.g. expunged and released since the caller listed it: imap/fetch.py skips
        that message); Invalid for a string that is not a blob id."""

    async def read_messages(self, blob_ids: Iterable[str]) -> dict[str, bytes]:
        """`read_message` of several bodies at once: blob id -> its exact bytes, in one query where the engine
        can (POP3 reads the bodies of pipelined and upcoming RETRs this way, pop3/session.py). A blob id with no
        stored body is left out (expunged and released since it was listed); a repeated id is answered once.
        Everything asked for is held in memory together: the caller bounds the total (the listing gives each
        size). Invalid for a string that is not a blob id, before anything is read."""

    async def read_message_range(self, blob_id: str, start: int, length: int) -> bytes:
        """At most `length` octets of a body from octet `start` (fewer at its end, b"" past it), so a large body
        can be read in pieces and never held whole (IMAP CATENATE, RFC 4469). NotFound if there is no such
        body."""

    async def read_meta(self, blob_id: str) -> bytes | None:
        """The metadata stored with the body (`AppendRequest.meta`, opaque bytes: mime/meta.py's format), or None
        when none was stored. NotFound when there is no such body."""

    async def crlf_sizes(self, blob_ids: Iterable[str]) -> dict[str, int]:
        """The size in octets of each body with every line ended by CRLF (`store.blobs.crlf_size`: a bare LF
        counts 2, an unterminated last line gets its CRLF): what POP3 sends, so what LIST and STAT announce
        (RFC 1939 §11). Counted when the body was stored, so a listing reads no bodies; a body stored before
        engines kept the number is counted from its bytes on first ask and the number kept. A blob id that is
        not stored is left out."""

    async def list_octets(self, mailbox_id: int) -> list[tuple[int, str, int]]:
        """(uid, blob id, octets) of every message of the mailbox, ascending UID, where octets is `crlf_sizes`'s
        number for the body (what POP3 announces and sends, RFC 1939 §11): the POP3 listing at login in one
        query, without a `MessageInfo` per message. NotFound if the mailbox is gone."""

    async def read_metas(self, blob_ids: Iterable[str]) -> dict[str, bytes | None]:
        """`read_meta` of many bodies at once (FETCH ENVELOPE or SEARCH over a range): a few queries, not one
        per body. A blob id that is not stored (its message was expunged meanwhile) is left out; None means
        stored without metadata."""

    async def write_metas(self, metas: Mapping[str, bytes]) -> None:
        """Replace the stored metadata of bodies (blob id -> serialised `MessageMeta`), in one transaction: a
        reader that found metadata of an older format recomputed it and stores it back, so each body is
        upgraded once. Bodies no longer stored are skipped; no change records (metadata is derived from the
        body, which does not change). The sort keys kept beside the metadata are replaced too, and messages of
        these bodies that had no thread id get one (`thread_ids`)."""

    async def read_structures(self, blob_ids: Iterable[str]) -> dict[str, ImapStructure]:
        """The kept `ImapStructure` of bodies (FETCH ENVELOPE / BODYSTRUCTURE / BODY over a range): a few queries,
        not one per body. Kept for every body stored with metadata of the current format, and for older ones once
        `write_structures` stored theirs; a body without one (or no longer stored) is left out, and the caller
        decodes its metadata instead."""

    async def write_structures(self, items: Mapping[str, ImapStructure]) -> None:
        """Keep the `ImapStructure` of bodies stored before it was kept (blob id -> items, from metadata of the
        current format a reader decoded anyway), in one transaction; bodies no longer stored are skipped, and a
        body that has one keeps it (the same values: they derive from the body). No change records."""

    async def search_text(self, mailbox_id: int, uid_min: int, uid_max: int,
                          flt: TextFilter) -> TextCandidates | None:
        """Narrow a SEARCH by the full-text index (`store/textindex.py`): the messages with UIDs in [uid_min,
        uid_max] whose text may satisfy `flt`, a superset of those whose decoded text does (textindex invariant
        1), including every message whose body is not indexed yet; None when the index cannot narrow `flt`
        (e.g. a string under an OR too short to look up). The caller confirms each candidate exactly. Raises
        NotFound for an unknown mailbox."""

    async def scan_texts(self, blob_ids: Sequence[str], tests: Sequence[ScanTest], max_chars: int) -> TextScan:
        """The exact check of SEARCH string keys (RFC 9051 §6.4.4, `store/scanform.py`) on the bodies `blob_ids`,
        at most `MAX_SCAN_BODIES` of them, done off the event loop on each body's scan form: bit i of
        `hits[blob]` is set when `tests[i]` holds, as `imap.search` would find from the metadata (scanform
        invariant 1). A body without a usable scan form (not indexed yet, or a form of another format) is left
        out of `hits`: the caller checks it from its metadata. Stops after the body that took the characters
        compared past `max_chars`. Invalid for more than `MAX_SCAN_BODIES` bodies."""

    async def index_backlog(self, limit: int, after: str = "") -> IndexProgress:
        """Index up to `limit` bodies of the backlog (bodies stored before the index existed) with blob ids
        above `after`, in one write transaction, so a large store is indexed in short steps while the server
        runs. Bodies no message references leave the backlog unindexed."""

    async def read_previews(self, blob_ids: Iterable[str]) -> dict[str, str]:
        """The stored preview text (RFC 8970; `mime.preview`) of each body that has one, in one or a few queries.
        A body whose preview was never written, or that is not stored, is left out."""

    async def write_previews(self, previews: Mapping[str, str]) -> None:
        """Keep the preview text of bodies (blob id -> text of at most 256 characters), in one transaction, so the
        next FETCH PREVIEW reads it instead of the body. Bodies no longer stored are skipped; Invalid for a text
        over 1,024 characters (a preview is small); no change records (derived from the body, like metadata)."""

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: StoreMode,
        flags: int = 0,
        keywords: Iterable[str] = (),
        unchanged_since: int | None = None,
    ) -> WriteResult:
        """Changes flags of the given UIDs (missing UIDs ignored). Only messages whose flags or keywords really
        change get a new MODSEQ and a Change. With `unchanged_since` (RFC 7162 §3.1.3), messages with a larger
        MODSEQ are left alone, and so are UIDs no longer in the mailbox (their removal is a change after any
        MODSEQ the caller can hold); both are listed in `WriteResult.modified`, ascending."""

    async def list_changed(self, mailbox_id: int, modseq: int, uid_min: int = 1,
                           uid_max: int | None = None) -> MessageColumns:
        """The messages of a UID range whose MODSEQ is above `modseq` (RFC 7162 CHANGEDSINCE, QRESYNC), as
        columns in UID order. Found through an index on (mailbox, MODSEQ): the work is proportional to the
        messages changed since `modseq`, not to the mailbox. NotFound if the mailbox is gone."""

    async def vanished(self, mailbox_id: int, modseq: int) -> Vanished:
        """The UIDs removed from the mailbox (expunge, move, INBOX rename) with a MODSEQ above `modseq`
        (RFC 7162 VANISHED), through an index, proportional to their number. The record of removals is kept for
        a limited time (`prune_expunged`); when removals after `modseq` may have been forgotten, the answer
        says it is not `complete` and the caller falls back (RFC 7162 §3.2.5.2, §3.2.6). NotFound if the
        mailbox is gone."""

    async def prune_expunged(self, before: float) -> int:
        """Forget the records of removals made before `before` (seconds since the epoch), in bounded batches;
        each mailbox then answers `vanished` as not complete for a MODSEQ below the newest one forgotten.
        Returns how many records went."""

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> WriteResult:
        """Removes the given UIDs that carry \\Deleted; with uids=None, every \\Deleted message. Raises NotFound
        if the mailbox does not exist. A large removal may commit in steps (SQLite: 500 messages per transaction,
        sqlite/messages.py invariant 9); a failure midway leaves the earlier steps done."""

    async def remove_messages(self, mailbox_id: int, uids: Sequence[int]) -> WriteResult:
        """Removes the given messages whatever their flags (POP3 UPDATE state, admin), in steps as `expunge`.
        Raises NotFound if the mailbox does not exist."""

    async def copy_messages(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int, *,
                            as_user: int | None = None) -> CopyResult:
        """Copy the messages (flags, keywords and dates with them) into `dest_mailbox_id`. Without `as_user` both
        mailboxes must be one user's (Invalid otherwise). With `as_user` (RFC 4314 §4) they may be different
        users' and the rights of `as_user` are checked in the transaction: `r` on the source and `i` on the
        destination (Forbidden otherwise), and the copies get \\Seen only with `s`, \\Deleted only with `t`
        and the other flags and keywords only with `w` on the destination."""

    async def move_messages(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int, *,
                            as_user: int | None = None) -> CopyResult:
        """Copy then remove from the source, in one transaction (RFC 6851). `as_user` as for `copy_messages`;
        the source needs `t` and `e` too (the move expunges there)."""

    # ---- access control (RFC 4314; invariants 6 and 10)
    async def get_acl(self, mailbox_id: int) -> list[AclEntry]:
        """The mailbox's ACL entries (not the owner's implicit one), sorted by identifier. NotFound if the
        mailbox is gone."""

    async def set_acl(self, mailbox_id: int, identifier: str, rights: str, modify: str = "") -> WriteResult:
        """Replace the rights of `identifier` (invariant 11: "anyone" or a user of the owner's domain, "-" before
        it for negative rights) on the mailbox; "" removes the entry. Rights are letters of RIGHTS in any
        order. `modify` "+" adds them to the entry's rights, "-" removes them (RFC 4314 §3.1), read and written
        in the same transaction. One MAILBOX_ACL change for the owner's mailbox when something changed. Invalid
        for an unknown right, the owner, a user of another domain or an unknown user, or an entry past
        `names.MAX_ACL_ENTRIES`; NotFound if the mailbox is gone."""

    # quotas (invariant 12) ----------------------------------------------------------------------------------
    async def get_quota(self, user_id: int) -> QuotaUsage:
        """The user's usage and limits, and their domain's (invariant 12). NotFound for an unknown user id."""

    async def recipient_facts(self, user_id: int) -> RecipientFacts | None:
        """In one read, what delivery needs of a local recipient (`RecipientFacts`): the answers `get_quota` (but
        `domain_storage` summed only when the domain has a limit), `sender_rules`, `get_mailbox(user_id, "INBOX")`
        and `get_user_settings` would give, as one snapshot saw them. A point lookup per table (a quick read),
        never a scan of the domain unless it has a limit. None for an unknown user id."""

    async def set_user_quota(self, address: str, *, storage: int | None = None,
                             messages: int | None = None) -> None:
        """Set the user's storage limit (octets) and/or message limit (None: unchanged; 0: none). Lowering a
        limit below the usage removes nothing; further inserts are refused. NotFound, Invalid (negative)."""

    async def set_domain_quota(self, name: str, storage: int) -> None:
        """Set the octets all the domain's users may hold together (0: none). NotFound, Invalid (negative)."""

    async def raise_quota_warned(self, user_id: int, percent: int) -> bool:
        """Mark the quota warning of `percent` (80 or 95; Invalid otherwise) as sent to the user, if the mark
        was lower: True for the one caller that raised it (who then sends the warning), False if it was already
        there. The mark falls by itself when removals (or a raised limit) take usage below it."""

    async def my_rights(self, user_id: int, mailbox_id: int) -> str:
        """The rights of the user on the mailbox (invariant 11), letters of RIGHTS in order: all of them for the
        owner, "" for a mailbox that is gone or of another domain."""

    async def get_shared_mailbox(self, user_id: int, owner: str, name: str) -> SharedMailbox | None:
        """The mailbox `name` of the user `owner` (an address), for `user_id`: None unless it exists, the owner
        is another user of the same domain and `user_id` has at least one right on it (invariant 6)."""

    async def list_shared_mailboxes(self, user_id: int, right: str = "l") -> list[SharedMailbox]:
        """The mailboxes of other users of the user's domain on which the user has `right` (LIST: "l"), sorted
        by owner and name; at most `names.MAX_SHARED_LISTED`."""

    async def shared_folders_owner(self, domain: str, create: bool = False) -> int | None:
        """The user id of the owner of `domain`'s shared folders (RFC 2342 §5 "Shared Folders"), made first
        when `create` (a user row no login or delivery can reach: `names.shared_owner`); None if there is none.
        Its mailboxes are made and deleted with the mailbox calls, their ACL with `set_acl`. NotFound for an
        unknown domain when `create`."""

    async def get_shared_folder(self, user_id: int, name: str) -> SharedMailbox | None:
        """The shared folder `name` of the user's domain, for `user_id`: None unless it exists and `user_id`
        has at least one right on it (invariant 6; its `owner` is `names.shared_owner(domain)`)."""

    # ---- outbound queue
    async def enqueue(
        self,
        raw: bytes,
        mail_from: str,
        recipients: Sequence[QueueRecipient],
        envid: str = "",
        ret: str = "",
        from_checked: bool = True,
    ) -> QueueEntry:
        """`from_checked`: the From header's addresses were checked to be the sender's (submission) or the source
        is trusted (sendmail, relay networks, the server's own DSNs and notices); False for mail relayed on
        behalf of others (forwards, list copies of outside posts). The DKIM signer only aligns with a From domain
        for checked entries."""

    async def enqueue_file(
        self,
        path: Path,
        mail_from: str,
        recipients: Sequence[QueueRecipient],
        *,
        prefix: bytes = b"",
        envid: str = "",
        ret: str = "",
        from_checked: bool = True,
    ) -> QueueEntry:
        """`enqueue` of `prefix` + the bytes of the staging file `path`, as `deliver_file` stores them (the file
        stays the caller's); `from_checked` as for `enqueue`."""

    async def queue_get(self, queue_id: int) -> QueueEntry | None:
        """The queue entry with that id, or None (delivered or removed)."""

    async def queue_list(self) -> list[QueueEntry]:
        """Every queue entry, oldest first (by creation time)."""

    async def queue_due(self, now: float, limit: int = 100) -> list[QueueEntry]:
        """Entries with at least one QUEUED/DEFERRED recipient whose next_try <= now, oldest first (leases are
        not looked at: this is a read; the scheduler claims with `queue_claim`)."""

    async def queue_claim(self, now: float, holder: str, lease_seconds: float, limit: int = 100) -> QueueClaim:
        """Claim up to `limit` recipients that are QUEUED/DEFERRED with next_try <= now and whose lease is free
        (lease_until <= now: never claimed, released, or expired), oldest entry first: each gets
        lease_holder = `holder` and lease_until = now + `lease_seconds` (seconds since the epoch), in one write
        transaction (PostgreSQL: `FOR UPDATE SKIP LOCKED` inside the claiming UPDATE), so claimers in any number
        of processes get disjoint sets. Invalid for an empty holder or a lease that is not positive."""

    async def queue_renew(self, holder: str, keys: Sequence[tuple[int, str]], until: float) -> set[tuple[int, str]]:
        """Set lease_until = `until` on those (queue id, recipient) `keys` that `holder` still holds; returns
        those keys (the others were taken over, finished or deleted). `until` 0 gives the leases up."""

    async def queue_free_leases(self, node: str) -> int:
        """Free every lease whose holder is `node` + "#" + anything (the leases of a node's earlier process,
        which is known to be gone); returns how many. Invalid for an empty node."""

    async def queue_update(self, queue_id: int, recipients: Sequence[QueueRecipient], holder: str = "") -> None:
        """Replace the state (state, attempts, next_try, last_error, delay_notified) of the named recipients.
        An entry whose recipients are all final is removed. With `holder` (the scheduler writing an attempt's
        result) every named recipient must be held by `holder`, else LeaseLost and nothing is written; the
        write also releases those leases. Without it (an administrator: `queue retry`) leases are left as they
        are. NotFound for an entry that does not exist, Invalid for a recipient it does not have."""

    async def queue_delete(self, queue_id: int) -> None:
        """Remove the queue entry and release its body. NotFound for an unknown id."""

    async def queue_length(self) -> int:
        """Recipients not yet final."""

    # ---- webmail sessions (web/sessions.py)
    async def add_web_session(self, session: WebSession) -> None:
        """Store a new session (its id hash must be new: AlreadyExists otherwise). NotFound for an unknown user."""

    async def get_web_session(self, id_hash: str) -> WebSession | None:
        """The session with that id hash, or None (a point lookup, cheap enough for every request)."""

    async def touch_web_session(self, id_hash: str, now: float) -> None:
        """Set the session's `last_seen` to `now` (the idle expiry starts again); nothing if it is gone."""

    async def delete_web_sessions(self, *, id_hash: str | None = None, user_id: int | None = None) -> int:
        """Delete one session (`id_hash`: sign-out) or every session of a user (`user_id`: sign out everywhere);
        returns how many went. Invalid unless exactly one of them is given."""

    async def prune_web_sessions(self, idle_before: float, created_before: float) -> int:
        """Delete every session last seen before `idle_before` or created before `created_before` (both seconds
        since the epoch); returns how many went."""

    # ---- what several nodes on one store share (issue 16 item 3; docs/ARCHITECTURE.md "Several nodes")
    shared_by_nodes: bool
    """True when several machines may serve from this store (PostgreSQL): the server secret and the generated
    TLS certificate then come from `shared_value` (auth/secret.py, net/tls.py); False (SQLite, one machine):
    they stay files in the data folder."""

    async def shared_value(self, name: str, candidate: bytes) -> bytes:
        """The value stored under `name`, storing `candidate` first if there is none: the first caller wins,
        atomically, and every caller (every node) gets the same bytes back. Never replaced once stored."""

    async def lock_maildrop(self, user_id: int, holder: str, lease_seconds: float) -> bool:
        """Take (or, for the same `holder`, renew) the POP3 maildrop lock of the user (RFC 1939 §8) for
        `lease_seconds`: False when another holder has it. `holder` names one session uniquely across every
        process and node. A lock whose holder died is free again: on PostgreSQL when its lease ran out without
        a renewal; on SQLite (one machine) when the holding process is gone (a file lock the kernel drops)."""

    async def unlock_maildrop(self, user_id: int, holder: str) -> None:
        """Release the lock if `holder` has it; nothing otherwise."""

    async def maildrop_login(self, user_id: int, note: bool) -> float:
        """RFC 2449 §6.8 LOGIN-DELAY: seconds since the user's last POP3 login (`math.inf`: none known), on the
        store's clock (PostgreSQL: the database's, so nodes' clocks do not matter); with `note`, set the last
        login to now after reading (call it so while holding the lock)."""

    async def note_mailbox_login(self, address: str, when: float, keep_seconds: float) -> None:
        """POP-before-SMTP across nodes: a mailbox (POP3/IMAP) login from the client IP `address` at `when`
        (seconds since the epoch); records older than `keep_seconds` before `when` are deleted on the way."""

    async def mailbox_login(self, address: str) -> float:
        """The time of the latest mailbox login `note_mailbox_login` recorded from `address`; 0.0: none."""

    async def hold_post(self, post: HeldPost) -> None:
        """Keep a moderated post, durable when it returns (lists.py invariant 1). AlreadyExists for a token in use."""

    async def get_held_post(self, token: str) -> HeldPost | None:
        """The held post with that token, claimed or not; None if there is none."""

    async def list_held_posts(self) -> list[HeldPost]:
        """Every held post, oldest first, `raw` included (the moderation page shows subject and size)."""

    async def claim_held_post(self, token: str, claim: str, lease_seconds: float) -> HeldPost | None:
        """Take the post for handling as `claim` (a value unique to this handler), atomically across processes and
        nodes: None when there is no such post or another claim on it has not run out yet (lists.py invariant 2).
        A handler that dies leaves its claim to run out after `lease_seconds`: the post can then be handled
        again (at least once, never twice at the same time)."""

    async def drop_held_post(self, token: str, claim: str) -> bool:
        """Delete the post if `claim` still holds it (approved or rejected); False otherwise."""

    async def release_held_post(self, token: str, claim: str) -> None:
        """Give up `claim` on the post without handling it (the handler failed): it may be handled again at once."""

    async def claim_job(self, name: str, holder: str, seconds: float, now: float) -> bool:
        """Take, or (for the same `holder`) renew, the cluster-wide lease on the periodic job `name` (jobs.py: a
        DMARC report run, the rspamd learning sender, ...) until `now + seconds` (seconds since the epoch, the
        caller's clock: keep nodes' clocks in step). True when `holder` has it now; False when another holder's
        lease has not run out (`expires > now`). Atomic across processes and nodes: of two callers racing for a
        free or expired lease, exactly one gets True. A holder that dies loses it when it runs out."""

    async def release_job(self, name: str, holder: str) -> None:
        """Give up the lease on `name` if `holder` has it (another node may take it at once); nothing otherwise."""

    # ---- sender allow and block lists (invariant 13; inbound/senders.py)
    async def list_sender_rules(self, scope: str) -> list[SenderRule]:
        """The rules of one scope, sorted by pattern: `scope` a user's address or a domain's name (no "@").
        NotFound for an unknown user or domain."""

    async def sender_rules(self, user_id: int) -> list[SenderRule]:
        """Every rule that applies to mail for the user: theirs and their domain's (one read; what RCPT and
        delivery decide by). Empty for an unknown user id."""

    async def add_sender_rule(self, scope: str, kind: str, pattern: str) -> SenderRule:
        """Allow ("allow") or block ("block") senders matching `pattern` (`names.sender_pattern`: an address,
        "@domain" or "@.domain") for `scope` (as `list_sender_rules`). A rule for the same pattern in the scope
        is replaced (invariant 13: one kind per pattern). NotFound for an unknown scope; Invalid for a bad kind
        or pattern, or past `names.MAX_SENDER_RULES` rules in the scope."""

    async def remove_sender_rule(self, scope: str, pattern: str) -> bool:
        """Remove the scope's rule for `pattern`; False if there was none. NotFound for an unknown scope."""

    # ---- user settings and the auto-reply record (invariant 16; web/settings.py, delivery/autoreply.py)
    async def get_user_settings(self, user_id: int) -> UserSettings:
        """The user's settings (a point lookup); `UserSettings()` for a user who never saved any, or an unknown id."""

    async def set_user_settings(self, user_id: int, settings: UserSettings) -> None:
        """Replace the user's settings, all fields at once. NotFound for an unknown user id."""

    async def claim_auto_reply(self, user_id: int, sender: str, now: float, since: float) -> bool:
        """Whether the user may send an auto-reply to `sender` (an address, compared by its lower-case key) now:
        True, and `now` recorded as the last reply, when no reply to that sender is recorded at or after `since`
        (seconds since the epoch); else False and nothing changes. Atomic (invariant 16). The same write deletes
        the user's records older than `since` (they can no longer refuse anything), so the table holds at most one
        row per sender replied to within the window. False for an unknown user id."""

    # ---- spam training signals (invariant 14; inbound/learn.py)
    training_signals: bool
    """When true, the store records a training signal in the transaction of each user move that judges a message
    (invariant 14): a copy or move into the user's Junk mailbox (special use \\Junk, else named "Junk") or
    `$Junk` added by a flag change: "spam"; a move out of Junk into any mailbox but Trash: "ham". False (the
    default): nothing is recorded (no learner to send them)."""

    async def add_training_signals(self, user_id: int, kind: str, blob_ids: Sequence[str], now: float) -> int:
        """Record that the user judged these bodies "spam" or "ham" (Invalid otherwise); returns how many rows
        were written (unknown users: none). Each row is due at once; a pending signal for the same body is
        replaced."""

    async def due_training_signals(self, now: float, limit: int = 50) -> list[TrainingSignal]:
        """Signals whose next try is at or before `now`, oldest first, at most `limit`."""

    async def claim_training_signals(self, now: float, limit: int, lease_seconds: float) -> list[TrainingSignal]:
        """Take the signals due at `now` (as `due_training_signals`, at most `limit`, oldest first) for sending:
        in the same transaction each is made due again only at `now + lease_seconds`, so another sender (another
        node) does not get it meanwhile; the sender then finishes each (`finish_training_signal`). A sender that
        dies leaves them to come due again when the lease runs out (sent at least once, never twice at once)."""

    async def finish_training_signal(self, signal_id: int, retry_at: float | None = None, *,
                                     created: float | None = None) -> None:
        """Delete the signal (sent, or given up: `retry_at` None), or count a failed attempt and make it due
        again at `retry_at`. With `created` (the `TrainingSignal.created` the sender sent), only while the row
        still holds that verdict: a newer one that replaced it meanwhile (same id) is left to be sent."""

    # ---- DMARC aggregate reports (invariant 15; inbound/dmarc_reports.py)
    async def add_dmarc_result(self, evaluation: DmarcEvaluation) -> None:
        """Keep one message's evaluation until the report that covers it (durable when it returns)."""

    async def dmarc_aggregate(self, before: float) -> tuple[list[DmarcEvaluation], int]:
        """The evaluations made before `before`, claimed or not, aggregated: one row per distinct (policy domain,
        policy, source address, From domain, envelope domain, disposition, alignments, results) with its `count`
        and the newest `at`; and the highest row id they cover (0: none). A read: what a report run takes is
        `claim_dmarc_results`'s."""

    async def claim_dmarc_results(self, before: float, claim: str, lease_seconds: float,
                                  now: float) -> list[DmarcEvaluation]:
        """Claim for one report run (`claim`: a value unique to the run) every evaluation made before `before`
        that is unclaimed or whose claim ran out (`claimed_until <= now`), until `now + lease_seconds`, and return
        what this claim holds, aggregated as `dmarc_aggregate` (each policy domain's policy its newest claimed
        row's). One transaction: two runs at once (two nodes) claim disjoint rows, so no row is reported twice."""

    async def delete_dmarc_results(self, claim: str, policy_domain: str) -> int:
        """Delete the evaluations of `policy_domain` that `claim` holds (its report was queued, or it has no usable
        destination); returns how many. Rows whose claim ran out and were taken by another run are not touched."""

    async def release_dmarc_results(self, claim: str, policy_domain: str) -> None:
        """Give up `claim` on the evaluations of `policy_domain` (their report could not be queued): the next run
        takes them again."""

    # ---- login throttling (auth/authenticator.py)
    async def load_auth_failures(self, now: float, limit: int) -> list[AuthFailures]:
        """The records with `expires` > now, at most `limit` of them (those that expire last). Records expired
        or beyond the limit are deleted, so the table never holds more than the caller keeps in memory."""

    async def read_auth_failures(self, keys: Sequence[tuple[str, str]], now: float) -> list[AuthFailures]:
        """The records of the (address, username) `keys` whose `expires` > now (fewer when some have none): what
        another process using the same store has counted (`server.workers`: auth/authenticator.py)."""

    async def save_auth_failures(self, records: Sequence[AuthFailures], remove: Sequence[tuple[str, str]],
                                 now: float) -> None:
        """Insert or replace `records` (keyed by address and username), delete the (address, username) keys in
        `remove`, and delete every record whose `expires` <= now."""
