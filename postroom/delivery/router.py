"""The router: the one door every message comes through (`Router.accept`), whatever protocol brought it.

Theory of operation
-------------------
A recipient address resolves to destinations:

    local user            its INBOX (`user+detail@dom` too: the detail is dropped, the mail lands in INBOX)
    alias                 each target, recursively (local users, lists, other aliases, or external: a forward)
    catch-all `@dom`      used when nothing else in a local domain matches
    list                  a post: copies to members (lists.py), or held for the owner when moderated (the
                          owner's own posts are never held; members-only lists take the owner's posts too)
    list bounce address   the list owner
    list+approve-<tok>    distribute a held post (lists.py); list+reject-<tok>: drop it
    anything in a domain that is not local   the outbound queue (only if the caller may relay)

Lookup order for an address in a local domain: aliases of the exact address, the user, the list, the list
actions; then the same for the address without its `+detail`; then the catch-all. Aliases come first so an
operator can redirect a user's mail; an alias that leads back to an address already being expanded resolves
that address without its aliases (so `alice -> alice, alice@elsewhere` keeps a local copy and forwards one).
An alias of a user's (or list's) own address therefore shadows that mailbox, as Postfix's virtual_alias_maps
win over its mailbox maps: legitimate (forwarding a user's mail), so it is allowed, and `postroom user add`,
`alias add` and `list create` warn when it happens (`explain` is how they see it).

postmaster (RFC 5321 §4.5.1: every domain MUST accept it; §2.4: its local part is case-insensitive) needs no
configuration. When none of the above names `postmaster@dom`, `postmaster_route` decides: the domain's first
user (the oldest account), else the server's administrator, which is the first user of the first domain that
has one (oldest domain, oldest account). Both are local mailboxes, so postmaster mail is never forwarded and
cannot bounce-loop. Only a server with no user at all has nowhere to put it: RCPT answers `451 4.3.5`, so the
sender keeps it and retries (nothing is lost) until a user exists. `postroom domain list|show` print the route
as `explain` finds it (the same code delivery runs), and say when the chosen mailbox's own mail is aliased
elsewhere (then postmaster mail still lands in that INBOX, which its owner may not read).

`check_recipient` is called at RCPT time (so unknown users get `550 5.1.1` in the SMTP dialogue, never a
bounce later) and `accept` after the data: it expands again (the store may have changed; cheap), then runs
every write concurrently: one `store.deliver` for all local INBOXes, one `store.enqueue` for all remote
recipients, one per list distribution; and returns only when every one is durable.

Invariants
1. `accept` returns only after every accepted recipient's copy is durable (delivered, queued or held); if any
   write fails it raises, and the caller must not acknowledge (SMTP answers 451).
2. A domain that is not local is reached only through the queue, and only when `may_relay` was true at RCPT
   time: the router never relays on its own. Address literals and source routes are never local.
3. Expansion is bounded: at most `MAX_DEPTH` alias levels and `MAX_TARGETS` destinations per recipient.
4. The message bytes are never re-serialised: local delivery prepends Return-Path, list copies prepend their
   headers, and the body that follows is byte-exact.
5. A message with more than `smtp.max_received` Received header fields is refused as a loop (554 5.4.6).
6. Who may send as whom is decided in one place, `may_send_as`: submission asks it for MAIL FROM and for every
   From and Sender header address. A catch-all never makes an address anyone's to send as.
7. Resolving never raises for the address's form: any address a client can send (quoted local parts, RFC 5321
   §4.1.2, included) is normalised to the store's one spelling (`names.address_as_given`) and resolves to
   destinations or to none (550 5.1.1), never to `451` with a traceback.
8. Content with a bare CR, a bare LF or a NUL (`mime.lineends.stray`) is refused at this door (550 5.6.0),
   whoever the caller: nothing the router stores or queues can smuggle a message into a receiver downstream.
   Callers repair or refuse earlier (SMTP refuses in the core, `postroom sendmail` normalises).
9. A message the caller staged in a file (`Envelope.staged`, SMTP bodies over `store.api.STAGING_THRESHOLD`)
   is stored and queued from the file (`deliver_file`, `enqueue_file`), never read whole on the event loop.
   What needs the bytes reads them once, in a thread, bounded by `limits.message_size`: the metadata of the
   local copy (`compute_meta` scans bytes) and list copies or held posts (rare for large messages).
10. A local part keeps its case wherever the address goes onward (RFC 5321 §2.4: only the receiving host may
   treat it case-insensitively): a `Remote` destination, hence the queue's RCPT TO and a DSN's
   Final-Recipient, is spelt as the sender, alias target or list member spelt it; only the domain is
   lower-cased. Local names (users, alias sources, lists, postmaster, list actions) are looked up and compared
   by their lower-case key, so `Alice@EXAMPLE.org` is alice's.
11. Success reports for what this server delivers (RFC 3461 §6.2.7; RFC 3464 §2.3.3). A recipient that asked
    for NOTIFY=SUCCESS and resolves here gets, once every copy is durable and before `accept` returns (so
    before the SMTP 250), one report to the envelope sender (never the null sender), made by `dsn.build_dsn`
    with its ORCPT, ENVID and NOTIFY: "delivered" when it resolves to one local destination (a mailbox, through
    `+detail` or a one-target alias; a list, whose exploder is its final delivery, §2.3.3: the list copies go
    out from the list's bounce address); "expanded" when an alias or catch-all leads to several destinations,
    and then SUCCESS is taken out of the NOTIFY passed on to remote targets (the sender has had its report;
    FAILURE and DELAY still come from further on). A recipient that only leads elsewhere (a forward: one remote
    target, or a remote domain) gets no report here: its DSN parameters go into the queue, which reports
    "relayed" or passes them on (queue.py). The report is itself mail from the null sender through this door:
    stored in a local sender's INBOX or queued (durable, retried). If writing it fails, `accept` raises
    (invariant 1): the client retries, so the sender may get a duplicate message, never a lost report.
12. Forwards are sent with an SRS envelope sender (srs.py), so SPF of the original sender's domain does not fail
    at the next hop: a copy for a remote address reached through a local address (an alias, a catch-all, the
    address an SRS bounce stands for) is queued with `SRS0=...@<that local address's domain>` as MAIL FROM,
    unless the sender is null, already in a local domain, or too long to rewrite. Direct relays (submission,
    relay networks) keep their sender. A recipient `SRS0=...@<local domain>` (or SRS1) takes mail from the null
    sender only (else 550 5.7.1: bounces are what comes back to a forward) and resolves to the address it stands
    for only if its hash (8 characters) and age check out (else 550 5.1.1); that copy keeps its null sender. So
    bounces of forwards reach the original sender, and nobody can relay through the form.
13. Quotas (delivery/quota.py). At RCPT a recipient whose every destination is a local user who cannot take
    the message (already full, or the declared SIZE does not fit) is refused, `452 4.2.2`, or `552 5.2.2`
    when the message could never fit. After the data the stored size is known: a local user it does not fit
    is left out, and if that leaves no recipient anything the message is refused the same way; otherwise the
    others get it, the sender gets one failure DSN (5.2.2) for the users left out (there is no local retry
    queue: after 250 a copy that cannot be stored can only bounce), and a list member over quota misses the
    post. Every refusal is one `refused ... reason=over-quota` log line. The store still checks in the
    transaction; a race past the early check is `452 4.2.2` for the message. After a delivery each user who
    got it may get a warning mail at 80 % / 95 % (delivery/quota.py); moderation notices and warnings are
    exempt from the quota (the server's own mail about the account). A user whose quota, as read for this
    message's check, has no limit of their own is not asked again after the delivery: no level can be due
    (`quota_level`); a limit set meanwhile counts from the next message.
14. What this server sends on for others carries an ARC Set (RFC 8617, delivery/arc.py) when the forwarding
    domain has a DKIM key: the list copies for remote members (sealed by the list's domain after the list's
    fields are prepended, so the seal covers them) and the SRS-rewritten forwards (sealed by the domain of the
    local address that forwarded). The AAR repeats the Authentication-Results this server added at the MX.
    Local copies and direct relays get none; a forward whose sender stays as it came (null, or in a local
    domain) is queued with the direct relays and is not sealed either. Sealing never stops a copy.
15. Sender rules (inbound/senders.py). `blocked_at_rcpt` finds the block rule that refuses an envelope sender
    at RCPT: only when every destination of the recipient is a local user whose rules block it (else the others
    would lose their copy). At `accept` each local user's rules are read once and decide where their copy goes:
    blocked (envelope sender or a From address) -> Junk with `$Junk`; else a DMARC quarantine (`Envelope.junk`)
    -> Junk; else spam by score (`Envelope.spam`) -> Junk unless an allow rule counts (an authenticated
    sender, `Envelope.authenticated`); else the INBOX. A copy filed by a rule gets one `junk` log line naming
    the rule, its scope and the user.
16. Out-of-office replies (delivery/autoreply.py, RFC 3834). After the local copies are durable, each local user
   whose copy went to the INBOX (never Junk) and whose auto-reply is on may get one reply sent: only past
   `autoreply.skip_reason` (the null sender, automatic, list, bulk and robot mail, and mail not addressed to one
   of the user's `identities`, get none) and `Store.claim_auto_reply` (once per sender per the user's window).
   The reply goes through this door from the null sender (`Auto-Submitted: auto-replied`), stored or queued like
   any message; a failure to send it is logged and never fails the delivery it answers. One `auto-reply` log
   line per reply sent or skipped for a reason other than "off".
17. A message in two pieces (`Envelope.body`: the SMTP session's trace fields in `raw`, the received body
    after them) reaches the store as the local copies' prefix and body (`deliver_local(prefix=...)`, the
    store's `AppendRequest.prefix`): the body is never copied to put the fields in front (issue 17 item 5). The
    checks read the pieces as one (`_stray`, `Envelope.head`); the rare paths that take the bytes whole (the
    queue, lists, forwards, reports) get one joined copy (`Envelope.whole`).
18. Whether a domain is local is asked of the store once per turn of the event loop (`is_local_domain`), and
    an address is resolved once per turn (`_explain`, a `Route` of immutable destinations): the answers of one
    turn are kept until a `call_soon` queued by its first lookup runs, as the SQLite engine's quick reads share
    one snapshot per turn (sqlite/engine.py invariant 8). So one RCPT or one message asks once per domain, the
    RCPTs and end-of-data of the sessions one turn serves (SMTP answers them from the connection's callbacks,
    smtp/session.py invariant 13) resolve a recipient they share once, and a change made between two commands
    (`postroom domain add|remove`, `alias add`) is seen by the second. A resolution that failed is not kept.
19. What delivery decides a local user's copy by (quota, sender rules, INBOX, settings) is one store read per
    user per turn (`facts`, `Store.recipient_facts`), kept like invariant 18's answers: the quota check at RCPT
    and the block rule the session asks for next share it, and so do the quota check, the Junk decision and the
    INBOX of a message. What `accept` read before its write is what it delivers by afterwards (the INBOX ids
    for `deliver_local`, the settings for the auto-replies, invariant 16): the reads of one message, made for it
    after its data arrived, never answers of an earlier command. The quota in it carries the domain's total only
    when the domain has a limit (all `quota.refusal` needs); the store still checks every limit in the
    transaction (invariant 13).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postroom.auth.secret import for_store as store_secret
from postroom.config import Config
from postroom.delivery import autoreply, srs
from postroom.delivery.dsn import RecipientReport, build_dsn, wanted
from postroom.inbound.senders import Senders, SenderVerdict, deciding_rule, verdict
from postroom.mime.address import MISSING_DOMAIN, MISSING_MAILBOX, sender_addresses
from postroom.mime.headers import Field, split_fields
from postroom.mime.lineends import Checker, stray
from postroom.net.listener import logfmt
from postroom.store import names
from postroom.store.api import (
    Alias,
    Invalid,
    ListPolicy,
    MailingList,
    OverQuota,
    QueueEntry,
    QueueRecipient,
    RecipientFacts,
    SenderRule,
    Store,
    StoreError,
    UserSettings,
)

from .arc import Sealer
from .lists import ACTION_RE, HeldPosts, list_headers, moderation_notice
from .local import deliver_local, deliver_local_file, return_path
from .quota import Refusal, refusal, warn

log = logging.getLogger("postroom.delivery")

MAX_DEPTH = 10
MAX_TARGETS = 1000
MAX_IDENTITIES = 200  # aliases followed back from one user (`identities`)
MAX_HEADER_SENDERS = 100  # From + Sender addresses checked in one submitted message
HEAD_LIMIT = 256 * 1024  # bytes of a staged message read to find its header (Received count)
_RECEIVED = re.compile(rb"(?im)^received[ \t]*:")


class RouteError(Exception):
    """A recipient or message is refused. The SMTP session sends `code esc text`."""

    def __init__(self, code: int, esc: str, text: str) -> None:
        super().__init__(f"{code} {esc} {text}")
        self.code = code
        self.esc = esc
        self.text = text


NO_SUCH_USER = RouteError(550, "5.1.1", "No such user here")
RELAY_DENIED = RouteError(550, "5.7.1", "Relaying denied")
MEMBERS_ONLY = RouteError(550, "5.7.1", "Only members may post to this list")
NOT_OWNER = RouteError(550, "5.7.1", "Only the list owner may approve or reject held posts")
NULL_SENDER_TO_LIST = RouteError(550, "5.7.1", "Lists do not accept mail from the null sender")
LOOP = RouteError(554, "5.4.6", "Too many Received headers: mail loop detected")
TOO_MANY_TARGETS = RouteError(550, "5.4.6", "Alias expansion too large or too deep")
# RFC 3463 X.3.5 "system incorrectly configured": temporary, so the sender keeps the message and retries.
NO_POSTMASTER_YET = RouteError(451, "4.3.5", "No mailbox for postmaster yet (the server has no user); try later")
POSTMASTER = "postmaster"
STRAY_CONTENT = RouteError(550, "5.6.0", "Message refused: bare CR or LF, or NUL, in the content")
BAD_SRS = RouteError(550, "5.1.1", "No such user here (an SRS address that was not made here, or has expired)")
SRS_BOUNCES_ONLY = RouteError(550, "5.7.1", "An SRS address takes bounces only (the null sender <>)")


@dataclass(frozen=True)
class Rcpt:
    address: str
    orcpt: str = ""  # RFC 3461, as given
    notify: str = ""


@dataclass(frozen=True)
class Envelope:
    mail_from: str  # "" for the null reverse-path
    recipients: tuple[Rcpt, ...]
    # The message as it will be stored (with this hop's Received header); with `staged` or `body`, its start.
    raw: bytes
    envid: str = ""
    ret: str = ""
    may_relay: bool = False  # the client may send to non-local domains (authenticated, relay network)
    # The From header was checked to be the sender's (submission) or the source is trusted: the queue's DKIM
    # signer may then sign with the From domain (dkim.py invariant 3). False: relayed for others.
    from_checked: bool = False
    staged: Path | None = None  # a file in the store's staging directory holding the rest of the message
    junk: bool = False  # DMARC quarantine (inbound/check.py): local copies go to each user's Junk, not INBOX
    # Spam by score (inbound/score.py, rspamd's add header): Junk, except for users who allow an authenticated
    # sender (invariant 15).
    spam: bool = False
    authenticated: frozenset[str] = frozenset()  # sender addresses the checks authenticated (inbound/senders.py)
    # The rest of the message after `raw`, in memory (never with `staged`): the SMTP session's received body,
    # its trace fields in `raw`, so local delivery stores the two as prefix and body and the body is never
    # copied to join them (invariant 17; issue 17 item 5).
    body: bytes = b""

    def head(self, limit: int = HEAD_LIMIT) -> bytes:
        """The start of the message holding its whole header (the header parsers' input): with `body`, `raw`
        and the body's header up to its empty line (at most `limit` bytes of it); else at least the first
        `limit` bytes (all of it if shorter), reading the staged file's start (blocking: in a thread)."""
        if self.body:
            end = self.body.find(b"\r\n\r\n", 0, limit)
            return self.raw + self.body[:limit if end < 0 else end + 4]
        if self.staged is None or len(self.raw) >= limit:
            return self.raw
        with open(self.staged, "rb") as f:
            return self.raw + f.read(limit - len(self.raw))

    def whole(self) -> Envelope:
        """This envelope with `raw` the whole message in memory (`raw` + `body`: one copy), for the paths that
        take the bytes whole (queue, lists, forwards, reports); itself when there is no `body`."""
        return dataclasses.replace(self, raw=self.raw + self.body, body=b"") if self.body else self


@dataclass(frozen=True)
class Accepted:
    local: int  # INBOX copies written
    queued: int  # recipients in the outbound queue
    queue_ids: tuple[int, ...]  # outbound queue entries created
    held: int  # moderated posts held


# Destinations ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalUser:
    user_id: int
    address: str


@dataclass(frozen=True)
class Remote:
    address: str


@dataclass(frozen=True)
class ListPost:
    ml: MailingList


@dataclass(frozen=True)
class ListAction:
    ml: MailingList
    action: str  # "approve" | "reject"
    token: str


Destination = LocalUser | Remote | ListPost | ListAction


@dataclass(frozen=True)
class Route:
    """What `Router.explain` found for one address: its normalised spelling, the rule of the lookup order that
    decided ("alias", "user", "list", "list action", "list bounce address", "catch-all", the postmaster's
    "first user" or "administrator", "remote"; "" when nothing matched) and the destinations. No destinations
    is a refusal at RCPT (550 5.1.1; 451 4.3.5 for postmaster), also when a rule matched (an alias whose
    targets do not exist)."""
    address: str
    rule: str
    destinations: tuple[Destination, ...]


def split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


def header_sender_fields(raw: bytes) -> list[tuple[str, list[str]]]:
    """("From" | "Sender", [address, ...]) for each such field in the header of `raw`, in order; group syntax
    contributes its members; a mailbox without a local part or domain makes the list empty (not checkable)."""
    end = raw.find(b"\r\n\r\n")
    fields, _ = split_fields(raw, 0, len(raw) if end < 0 else end + 2)
    out: list[tuple[str, list[str]]] = []
    for f in fields:
        if f.name not in ("from", "sender"):
            continue
        addresses: list[str] = []
        found = sender_addresses(f.value)  # None: too long to check on the event loop (refused, as broken)
        broken = found is None
        for a in found or ():
            if not a.mailbox or MISSING_DOMAIN in (a.mailbox, a.host) or MISSING_MAILBOX in (a.mailbox, a.host):
                broken = True
                continue
            # the parser gives a quoted local part's content; the store spells it quoted (names invariant 5)
            addresses.append(f"{names.quote_local(a.mailbox)}@{a.host}".lower())
        out.append(("From" if f.name == "from" else "Sender", [] if broken else addresses))
    return out


def _base(address: str) -> str:
    """An address's lookup key without its +detail (the key alias chains are walked by)."""
    local, _, domain = address.lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def _printable(text: str, limit: int = 100) -> str:
    return "".join(c if 32 < ord(c) < 127 else "?" for c in text[:limit])


def _without_detail(local: str) -> list[str]:
    """`user+detail` -> ["user"]; [] without a detail. A quoted local part has no detail: `"a+b"` is one name
    (cutting inside the quotes would make a local part that is not even syntax)."""
    if "+" not in local or local.startswith('"'):
        return []
    return [local.split("+", 1)[0]]


def _stray(raw: bytes, body: bytes) -> str | None:
    """`mime.lineends.stray` of `raw` + `body` without joining them (a CRLF split between the two is one)."""
    if not body:
        return stray(raw)
    checker = Checker()
    checker.feed(raw)
    checker.feed(body)
    return checker.finish()


def file_stray(path: Path, chunk: int = 1 << 20) -> str | None:
    """`mime.lineends.stray` of a file's content, read in `chunk`-byte pieces (blocking: run it in a thread)."""
    checker = Checker()
    with open(path, "rb") as f:
        while piece := f.read(chunk):
            if checker.feed(piece) is not None:
                return checker.fault
    return checker.finish()


def received_count(raw: bytes) -> int:
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[:end + 2]
    return len(_RECEIVED.findall(head))


class Router:
    def __init__(self, store: Store, config: Config, held: HeldPosts | None = None,
                 on_queued: Callable[[], None] | None = None) -> None:
        self.store = store
        self.config = config
        # May a caller begin `check_recipient` and the sender checks outside a task (the SMTP session's inline
        # answers, smtp/session.py invariant 13)? Only on a store whose reads need none (api.Store).
        self.reads_without_task: bool = getattr(store, "reads_without_task", False)
        self.held = held or HeldPosts(store)
        self._ids = itertools.count(1)
        # Called after mail was queued, so the outbound scheduler starts on it now rather than at its next poll.
        self.on_queued = on_queued
        self._secret: bytes | None = None  # the server secret (auth/secret.py), keying SRS addresses
        self._turn_domains: dict[str, bool] = {}  # invariant 18: what this turn of the loop looked up ...
        self._turn_routes: dict[str, Route] = {}  # ... and resolved ...
        self._turn_facts: dict[int, RecipientFacts | None] = {}  # ... and read of local users (invariant 19) ...
        self._turn_loop: asyncio.AbstractEventLoop | None = None  # ... on this loop (None: no turn holds it)
        self.sealer = Sealer(store, config.server.hostname)  # invariant 14: ARC sets on what we send on

    async def secret(self) -> bytes:
        """The server secret, read (or made) once, off the loop."""
        if self._secret is None:
            self._secret = await store_secret(self.store, Path(self.config.data_path))
        return self._secret

    def staging_dir(self) -> Path:
        """Where a session writes a large message body before `accept` (`Envelope.staged`; store/api.py)."""
        return self.store.staging_dir()

    # --- resolution ----------------------------------------------------------------------------------------
    async def is_local_domain(self, domain: str) -> bool:
        """Is `domain` (lower-case) one of the store's domains? Asked of the store once per turn of the event loop
        (invariant 18). Raises what the store raises when it cannot be reached (StoreUnavailable)."""
        if not domain or domain.startswith("[") or "@" in domain:  # invariant 2: literals are never local
            return False
        loop = asyncio.get_running_loop()
        if self._turn_loop is not loop:  # this turn's first lookup (or answers a stopped loop left behind)
            self._start_turn(loop)
        turn = self._turn_domains
        known = turn.get(domain)
        if known is not None:
            return known
        try:
            local = await self.store.get_domain(domain) is not None
        except (Invalid, ValueError):  # a malformed name (or one the database cannot encode) is simply not ours
            local = False
        # Any other failure (the store unreachable) propagates: "not ours" would refuse local mail for good
        # (550 5.7.1) where the session answers 451 4.3.0 and the sender retries (RFC 5321 §4.2.1).
        turn[domain] = local
        return local

    def _start_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """The first lookup of a turn (invariant 18): fresh answers, forgotten when this turn ends."""
        self._turn_domains = {}
        self._turn_routes = {}
        self._turn_facts = {}
        self._turn_loop = loop
        loop.call_soon(self._end_turn)

    def _end_turn(self) -> None:
        """Forget this turn's domain answers (invariant 18): queued with `call_soon` by the turn's first lookup,
        so it runs before the callbacks of any I/O the next turn polls, as the SQLite engine ends its snapshot. A
        loop that stopped before it ran leaves them to the next loop's first lookup, which starts afresh."""
        self._turn_domains = {}
        self._turn_routes = {}
        self._turn_facts = {}
        self._turn_loop = None

    async def normalize(self, address: str) -> str:
        """One spelling of the local part (`names.address_as_given`: `"john"@x` is `john@x`, RFC 5321 §4.1.2),
        its case kept (invariant 10), the domain lower-cased; `postmaster` without a domain (RFC 5321
        §4.1.1.3, any case) becomes postmaster@<a local domain>. An address the store cannot name is returned
        with its domain lower-cased; it then resolves to nothing."""
        a = address.strip()
        if "@" in a:
            try:
                a = names.address_as_given(a)
            except Invalid:
                local, _, domain = a.rpartition("@")
                a = f"{local}@{domain.lower()}"
        if "@" not in a and a.lower() == "postmaster":
            host = self.config.server.hostname.lower()
            if await self.is_local_domain(host):
                return f"postmaster@{host}"
            domains = await self.store.list_domains()
            return f"postmaster@{domains[0].name}" if domains else f"postmaster@{host}"
        return a

    async def resolve(self, address: str) -> list[Destination]:
        """Destinations of one address; [] for an unknown address in a local domain."""
        return list((await self.explain(address)).destinations)

    async def explain(self, address: str) -> Route:
        """Where mail for `address` goes and which rule of the lookup order decided (module docstring): the one
        resolution delivery uses, so `postroom domain list|show` and the CLI's shadowing warnings cannot
        disagree with it. Raises only RouteError (TOO_MANY_TARGETS), as `resolve`."""
        return await self._explain(await self.normalize(address))

    async def _explain(self, a: str) -> Route:
        """`explain` of an address `normalize` already returned (it is idempotent: not spelt again); resolved
        once per turn of the event loop (invariant 18): the RCPTs and messages one turn carries out for the same
        address share the answer."""
        loop = asyncio.get_running_loop()
        if self._turn_loop is not loop:
            self._start_turn(loop)
        turn = self._turn_routes
        known = turn.get(a)
        if known is not None:
            return known
        out: list[Destination] = []
        rule = await self._expand(a, 0, set(), out)
        # de-duplicate, keeping order
        seen: set[Destination] = set()
        dests = [d for d in out if not (d in seen or seen.add(d))]  # type: ignore[func-returns-value]
        route = Route(a, rule, tuple(dests))
        turn[a] = route  # the dict of the turn it began in: one that ended meanwhile is no one's any more
        return route

    async def _expand(self, a: str, depth: int, expanding: set[str], out: list[Destination]) -> str:
        """Append the destinations of `a` (as given: a Remote keeps it, invariant 10) to `out`; return the rule
        that matched (`Route.rule`), "" for none. `expanding` holds the lower-case keys of the addresses being
        expanded (loops)."""
        if depth > MAX_DEPTH or len(out) > MAX_TARGETS:
            raise TOO_MANY_TARGETS
        local, domain = split(a)
        if not await self.is_local_domain(domain):
            out.append(Remote(a))
            return "remote"
        if srs.is_srs(local):  # a bounce (or reply) to an address a forward of ours left with (invariant 12)
            try:
                out.append(Remote(srs.reverse(local, await self.secret())))
            except srs.SRSError as exc:
                log.info("srs refused address=%s reason=%r", _printable(a), str(exc))
                raise BAD_SRS from None
            return "srs"
        # From here on `a` is a local name: its lower-case key is what the store and the loop check compare.
        a = a.lower()
        local = local.lower()
        candidates = [a] + [f"{base}@{domain}" for base in _without_detail(local)]
        for cand in candidates:
            if rule := await self._expand_exact(cand, a, depth, expanding, out):
                return rule
        if a not in expanding:
            catch_all = await self._aliases(f"@{domain}")
            if catch_all:
                expanding = expanding | {a}
                for alias in catch_all:
                    await self._expand(alias.target, depth + 1, expanding, out)
                return "catch-all"
        if local == POSTMASTER:
            how, dests = await self.postmaster_route(domain)
            out.extend(dests)
            return how if dests else ""
        return ""

    async def postmaster_route(self, domain: str) -> tuple[str, list[Destination]]:
        """Where `postmaster@domain` goes when no alias, user, list or catch-all names it (module docstring):
        ("first user", [the domain's oldest account]) or ("administrator", [the first user of the first domain
        that has one]); ("none", []) when the server has no user. `domain` is a local domain, lower-case."""
        users = await self.store.list_users(domain)
        if users:
            first = min(users, key=lambda u: u.id)
            return "first user", [LocalUser(first.id, first.address)]
        everyone = await self.store.list_users()
        if not everyone:
            return "none", []
        admin = min(everyone, key=lambda u: (u.domain_id, u.id))  # ids only grow: the oldest domain, account
        return "administrator", [LocalUser(admin.id, admin.address)]

    async def _expand_exact(self, cand: str, original: str, depth: int, expanding: set[str],
                            out: list[Destination]) -> str:
        if cand not in expanding:
            aliases = await self._aliases(cand)
            if aliases:
                inner = expanding | {cand, original}
                for alias in aliases:
                    await self._expand(alias.target, depth + 1, inner, out)
                return "alias"
        user = await self.store.get_user(cand)
        if user is not None:
            out.append(LocalUser(user.id, user.address))
            return "user"
        ml = await self.store.get_list(cand)
        if ml is not None:
            out.append(ListPost(ml))
            return "list"
        m = ACTION_RE.match(names.unquote_local(split(original)[0])) if cand == original else None
        if m is not None:
            ml = await self.store.get_list(f"{names.quote_local(m['base'])}@{split(cand)[1]}")
            if ml is not None:
                out.append(ListAction(ml, m["action"], m["token"]))
                return "list action"
        for ml in await self._lists_in(split(cand)[1]):
            if ml.bounce_address == cand:
                await self._expand(ml.owner, depth + 1, expanding | {cand}, out)
                return "list bounce address"
        return ""

    async def _aliases(self, source: str) -> list[Alias]:
        """The aliases of `source`; none for a name the store refuses (`Invalid`), so an address a client
        may send (any RFC 5321 §4.1.2 form) resolves to a definite answer, never an exception (invariant 7)."""
        try:
            return await self.store.list_aliases(source)
        except Invalid:
            return []

    async def _lists_in(self, domain: str) -> list[MailingList]:
        return [ml for ml in await self.store.list_lists() if split(ml.address)[1] == domain]

    # --- RCPT time ---------------------------------------------------------------------------------------------
    async def check_recipient(self, address: str, mail_from: str, may_relay: bool,
                              size: int | None = None) -> list[Destination]:
        """Raise RouteError if `address` must be refused at RCPT time; else its destinations. `size`: the
        message size the client declared (RFC 1870 SIZE), checked against the quotas (invariant 13)."""
        a = await self.normalize(address)
        local, domain = split(a)
        if not await self.is_local_domain(domain):
            if may_relay:
                return [Remote(a)]
            raise RELAY_DENIED  # invariant 2
        if srs.is_srs(local) and mail_from:
            # invariant 12: what comes back to a forward is a bounce (RFC 5321 §4.5.5: from the null sender); any
            # other sender could use a valid SRS address to relay to its original sender.
            raise SRS_BOUNCES_ONLY
        dests = list((await self._explain(a)).destinations)
        if not dests:
            raise NO_POSTMASTER_YET if local.lower() == POSTMASTER else NO_SUCH_USER
        sender = mail_from.lower()  # compared by key: members and owners keep their case (invariant 10)
        for d in dests:
            if isinstance(d, ListPost):
                if not sender:
                    raise NULL_SENDER_TO_LIST
                # The owner may post to a members-only list without being a member (they run it).
                if d.ml.policy is ListPolicy.MEMBERS and sender != d.ml.owner.lower() \
                        and sender not in {m.lower() for m in d.ml.members}:
                    raise MEMBERS_ONLY
            elif isinstance(d, ListAction):
                if sender != d.ml.owner.lower():
                    raise NOT_OWNER
                post = await self.held.get(d.token)
                if post is None or post.list_address != d.ml.address:
                    raise NO_SUCH_USER  # lists.py invariant 2
            elif isinstance(d, Remote) and not may_relay and a == d.address:
                raise RELAY_DENIED
        if all(isinstance(d, LocalUser) for d in dests):  # invariant 13: only when every copy would be refused
            refusals = [await self._quota_refusal(d, size) for d in dests if isinstance(d, LocalUser)]
            if all(refusals):
                worst = next((r for r in refusals if r and r.permanent), refusals[0])
                assert worst is not None
                self._log_refused(a, mail_from, worst, "rcpt")
                raise _quota_error(worst)
        return dests

    async def _quota_refusal(self, d: LocalUser, size: int | None) -> Refusal | None:
        """Why quota keeps the message (of `size` octets; None: not declared) from `d`, or None."""
        return _refusal_of(await self.facts(d.user_id), size)

    async def facts(self, user_id: int) -> RecipientFacts | None:
        """What delivery decides a local user's copy by (`Store.recipient_facts`: quota, sender rules, INBOX,
        settings), read once per turn of the event loop (invariant 19); None for a user removed meanwhile.
        Raises what the store raises when it cannot be reached."""
        loop = asyncio.get_running_loop()
        if self._turn_loop is not loop:
            self._start_turn(loop)
        turn = self._turn_facts
        if user_id in turn:
            return turn[user_id]
        facts = await self.store.recipient_facts(user_id)
        turn[user_id] = facts  # the dict of the turn it began in, as `_explain`
        return facts

    async def _rules(self, user_id: int) -> tuple[SenderRule, ...]:
        """The sender rules that apply to mail for the user (theirs, their domain's), from `facts`."""
        facts = await self.facts(user_id)
        return () if facts is None else facts.sender_rules

    @staticmethod
    def _log_refused(rcpt: str, mail_from: str, why: Refusal, stage: str) -> None:
        code, esc = why.code
        log.info("%s", logfmt("refused", [("rcpt", rcpt), ("from", mail_from or "<>"), ("stage", stage),
                                          ("reason", "over-quota"), ("code", f"{code} {esc}"),
                                          ("detail", why.reason)]))

    async def may_send_as(self, user_address: str, address: str) -> bool:
        """May the authenticated user `user_address` present `address` as its sender? The one rule behind
        submission's MAIL FROM and every From/Sender header address (RFC 6409 §6.1; invariant 6). Yes for the
        user's own address and its `+detail` forms, an address whose explicit aliases lead to the user (directly
        or through other aliases, at most `MAX_DEPTH` levels), and a list the user owns. Never for an address
        that only a catch-all `@domain` would deliver to them: owning every unknown name of a domain is not
        owning its other users' names. Never raises; an address that is no address is False."""
        u = user_address.strip().lower()
        try:
            a = names.address(address)
        except StoreError:
            return False
        local, domain = split(a)
        candidates = [a] + [f"{base}@{domain}" for base in _without_detail(local)]
        if u in candidates:
            return True
        for cand in candidates:
            if await self._aliases_lead_to(cand, u, 0, set()):
                return True
            ml = await self.store.get_list(cand)
            if ml is not None and ml.owner.lower() == u:
                return True
        return False

    async def check_header_senders(self, user_address: str, raw: bytes) -> None:
        """Submission: raise RouteError `553 5.7.1` unless every address of every From and Sender header field
        of `raw` passes `may_send_as` (RFC 5322 §3.6.2 allows several From addresses, with a Sender). A message
        without From is left alone (nothing is claimed); a From or Sender field with no address that can be
        checked is refused, as are more than MAX_HEADER_SENDERS addresses (the checks are store lookups)."""
        fields = header_sender_fields(raw)
        checked: set[str] = set()
        for name, addresses in fields:
            if not addresses:
                raise RouteError(553, "5.7.1", f"The {name} header field has no address that can be checked")
            for address in addresses:
                if address in checked:
                    continue
                if len(checked) >= MAX_HEADER_SENDERS:
                    raise RouteError(553, "5.7.1", "Too many From/Sender addresses to check")
                checked.add(address)
                if not await self.may_send_as(user_address, address):
                    raise RouteError(553, "5.7.1", f"{name} address <{_printable(address)}> does not belong to "
                                     f"the authenticated user")

    async def _aliases_lead_to(self, source: str, user: str, depth: int, seen: set[str]) -> bool:
        if depth > MAX_DEPTH or source in seen or source.startswith("@"):
            return False
        seen.add(source)
        for al in await self._aliases(source):
            target = al.target.lower()
            t_local, t_domain = split(target)
            if user == target or user in [f"{base}@{t_domain}" for base in _without_detail(t_local)]:
                return True
            if await self._aliases_lead_to(target, user, depth + 1, seen):
                return True
        return False

    # --- the door ------------------------------------------------------------------------------------------------
    async def accept(self, env: Envelope) -> Accepted:
        """Deliver, queue or hold for every recipient; return once all of it is durable (invariant 1)."""
        if env.staged is not None:
            head = await asyncio.to_thread(env.head)  # a file read: off the loop
        else:
            head = env.head() if env.body else env.raw
        if received_count(head) > self.config.smtp.max_received:
            raise LOOP  # invariant 5
        if _stray(env.raw, env.body) is not None or (env.staged is not None
                                                     and await asyncio.to_thread(file_stray, env.staged) is not None):
            raise STRAY_CONTENT  # invariant 8
        users: dict[int, str] = {}
        remote: dict[str, Rcpt] = {}  # relayed with the envelope sender as it came
        forwarded: dict[str, dict[str, Rcpt]] = {}  # SRS sender -> recipients (invariant 12)
        sender_local: bool | None = None  # is the envelope sender ours? Asked only for a forward (invariant 12)
        lists: dict[str, MailingList] = {}
        actions: list[ListAction] = []
        successes: list[RecipientReport] = []
        expanded: list[tuple[Rcpt, str, Sequence[Destination]]] = []
        for rcpt in env.recipients:
            a = await self.normalize(rcpt.address)
            _, domain = split(a)
            dests: Sequence[Destination] = (await self._explain(a)).destinations \
                if await self.is_local_domain(domain) else [Remote(a)]
            expanded.append((rcpt, a, dests))
            action = success_action(dests)  # invariant 11
            notify_on = without_success(rcpt.notify) if action == "expanded" else rcpt.notify
            if action is not None and env.mail_from and wanted(rcpt.notify, action):
                successes.append(RecipientReport(a, action, "2.0.0", orcpt=rcpt.orcpt, notify=rcpt.notify,
                                                 explanation=_EXPLAINED[action]))
            for d in dests:
                if isinstance(d, LocalUser):
                    users[d.user_id] = d.address
                elif isinstance(d, Remote):
                    if not env.may_relay and d.address == a:
                        raise RELAY_DENIED  # invariant 2, checked again at the door
                    if sender_local is None and d.address != a and env.mail_from:
                        sender_local = await self.is_local_domain(split(env.mail_from)[1])
                    sender = await self._forward_sender(env.mail_from, bool(sender_local), a, d)
                    target = remote if sender is None else forwarded.setdefault(sender, {})
                    target.setdefault(d.address, Rcpt(d.address, rcpt.orcpt, notify_on))
                elif isinstance(d, ListPost):
                    lists[d.ml.address] = d.ml
                else:
                    actions.append(d)
        # Invariant 19: each local user read once for this message; the quota check, the Junk decision, the
        # INBOX and the auto-reply settings all go by it.
        known = {uid: f for uid in users if (f := await self.facts(uid)) is not None}
        # users this message's quota read found without a limit (no warning due, invariant 13)
        unlimited = {uid for uid, f in known.items() if not (f.quota.storage_limit or f.quota.message_limit)}
        failures = await self._over_quota(env, users, expanded, known) if users else []
        if failures:
            failed = {f.rcpt for f in failures}
            successes = [r for r in successes if r.rcpt not in failed]
        if env.body and (lists or actions or remote or forwarded or successes or failures):
            env = env.whole()  # invariant 17: only local copies take the message in two pieces
        if env.staged is not None and (lists or actions):
            # List copies and held posts take the bytes (invariant 9): one copy of the message, in a thread.
            staged = env.staged
            env = dataclasses.replace(env, raw=await asyncio.to_thread(lambda: env.raw + staged.read_bytes()),
                                      staged=None)
        limits = self.config.limits
        queue_rcpts = [QueueRecipient(r.address, r.orcpt, r.notify) for r in remote.values()]
        junk = self._junk_users(env, head, users, known) if users else frozenset()
        inboxes = {uid: f.inbox_id for uid, f in known.items() if f.inbox_id is not None}
        if env.staged is None:
            # invariant 17: `raw` (the trace fields) and `body` are stored as prefix and body, never joined
            local_job = deliver_local(self.store, limits, users, env.mail_from, env.body or env.raw,
                                      junk=junk, prefix=env.raw if env.body else b"",
                                      inboxes=inboxes) if users else _zero()
            queue_job = self.store.enqueue(env.raw, env.mail_from, queue_rcpts, envid=env.envid, ret=env.ret,
                                           from_checked=env.from_checked) if remote else None
        else:  # invariant 9: from the file
            local_job = deliver_local_file(self.store, limits, users, env.mail_from, env.raw,
                                           env.staged, junk=junk, inboxes=inboxes) if users else _zero()
            queue_job = self.store.enqueue_file(env.staged, env.mail_from, queue_rcpts, prefix=env.raw,
                                                envid=env.envid, ret=env.ret,
                                                from_checked=env.from_checked) if remote else None
        # The owner approves held posts, so the owner's own post is not held for them (lists.py).
        others = [self._hold(ml, env.mail_from, env.raw)
                  if ml.policy is ListPolicy.MODERATED and env.mail_from.lower() != ml.owner.lower()
                  else self.distribute(ml, env.raw, env.from_checked) for ml in lists.values()]
        others += [self._enqueue_forward(env, sender, list(rcpts.values())) for sender, rcpts in forwarded.items()]
        others += [self._act(act) for act in actions]
        try:
            local, entry, parts = await _all(local_job, queue_job, others)
        except OverQuota as exc:  # quota.py invariant 1: a race past the early check; the sender retries
            log.info("%s", logfmt("refused", [("from", env.mail_from or "<>"), ("stage", "data"),
                                              ("reason", "over-quota"), ("code", "452 4.2.2"), ("detail", exc)]))
            raise RouteError(452, "4.2.2", "Mailbox full (over quota), try again later") from exc
        await self._warn({u: a for u, a in users.items() if u not in unlimited} if unlimited else users)
        if users and len(junk) < len(users):
            await self._auto_replies(env, head, {u: a for u, a in users.items() if u not in junk},
                                     {u: f.settings for u, f in known.items()})
        queue_ids: tuple[int, ...] = (entry.id,) if entry is not None else ()
        held = 0
        for part in parts:
            local += part.local
            queue_ids += part.queue_ids
            held += part.held
        if queue_ids and self.on_queued is not None:
            self.on_queued()
        if successes:
            await self._report_success(env, successes)  # invariant 11: after every copy is durable
        if failures:
            await self._report_failures(env, failures)  # invariant 13
        return Accepted(local, len(remote) + sum(map(len, forwarded.values())), queue_ids, held)

    async def blocked_at_rcpt(self, dests: Sequence[Destination], mail_from: str) -> SenderRule | None:
        """The block rule that refuses `mail_from` for a recipient with `dests` at RCPT (invariant 15), or None.
        The null sender is never blocked (bounces must reach their sender)."""
        if not mail_from or not dests or not all(isinstance(d, LocalUser) for d in dests):
            return None
        found: SenderRule | None = None
        for d in dests:
            assert isinstance(d, LocalUser)
            rule = deciding_rule(await self._rules(d.user_id), mail_from)
            if rule is None or rule.kind != "block":
                return None
            found = found or rule
        return found

    async def allows(self, dests: Sequence[Destination], mail_from: str) -> bool:
        """Whether some local user among `dests` has an allow rule deciding for `mail_from` (the session then
        checks SPF before it lets that skip greylisting: inbound/senders.py)."""
        for d in dests:
            if isinstance(d, LocalUser) and mail_from:
                rule = deciding_rule(await self._rules(d.user_id), mail_from)
                if rule is not None and rule.kind == "allow":
                    return True
        return False

    @staticmethod
    def _junk_users(env: Envelope, head: bytes, users: dict[int, str],
                    known: dict[int, RecipientFacts]) -> frozenset[int]:
        """The users whose copy goes to Junk (invariant 15) by their rules as `known` holds them (invariant 19);
        one `junk` log line per copy a rule filed."""
        senders: Senders | None = None  # the header's From is parsed only for a user who has rules
        out: set[int] = set()
        for uid, address in users.items():
            facts = known.get(uid)
            rules = facts.sender_rules if facts is not None else ()
            if rules and senders is None:
                header_from = tuple(a for name, found in header_sender_fields(head) if name == "From" for a in found)
                senders = Senders(env.mail_from.lower(), header_from, env.authenticated)
            v: SenderVerdict = verdict(rules, senders) if senders is not None else SenderVerdict()
            if v.blocked is not None:
                out.add(uid)
                log.info("%s", logfmt("junk", [("rcpt", address), ("from", env.mail_from or "<>"),
                                               ("reason", "sender-blocked"), ("scope", v.blocked.scope),
                                               ("rule", v.blocked.pattern)]))
            elif env.junk or (env.spam and v.allowed is None):
                out.add(uid)
            elif env.spam and v.allowed is not None:
                log.info("%s", logfmt("inbox", [("rcpt", address), ("from", env.mail_from or "<>"),
                                                ("reason", "sender-allowed"), ("scope", v.allowed.scope),
                                                ("rule", v.allowed.pattern)]))
        return frozenset(out)

    async def identities(self, user_id: int) -> list[str]:
        """The addresses the user may send as, and that are theirs for an auto-reply's "addressed to" test: their
        own, then the explicit aliases that lead to them (`may_send_as`; a catch-all never, invariant 6)."""
        user = await self.store.get_user_by_id(user_id)
        if user is None:
            return []
        # Walk the alias table backwards from the user (one read of it): only sources whose chain can reach them
        # are asked of `may_send_as`, the one rule, so the store lookups grow with the user's aliases alone.
        sources: dict[str, list[str]] = {}
        for alias in await self.store.list_aliases():
            if not alias.source.startswith("@"):
                sources.setdefault(_base(alias.target), []).append(alias.source)
        out = [user.address]
        todo = [_base(user.address)]
        seen = set(todo)
        while todo and len(seen) <= MAX_IDENTITIES:
            for source in sources.get(todo.pop(), []):
                if _base(source) not in seen:
                    seen.add(_base(source))
                    todo.append(_base(source))
                    if await self.may_send_as(user.address, source):
                        out.append(source)
        return out

    async def _auto_replies(self, env: Envelope, head: bytes, users: dict[int, str],
                            settings: dict[int, UserSettings]) -> None:
        """Invariant 16: the out-of-office replies the INBOX copies to `users` call for, each sent (durable) or
        its failure logged. `settings`: the users' settings as this message's reads found them (invariant 19;
        a user missing there is asked of the store)."""
        now = time.time()
        fields: list[Field] = []
        for uid, address in users.items():
            try:
                await self._auto_reply(env, head, uid, address, now, fields, settings.get(uid))
            except (RouteError, StoreError, ValueError) as exc:  # the copies are durable: the delivery stands
                # (invariant 16); ValueError: a reply the email package refused to build
                log.warning("%s", logfmt("auto-reply", [("user", address), ("to", env.mail_from or "<>"),
                                                        ("result", "failed"), ("reason", str(exc)[:200])]))

    async def _auto_reply(self, env: Envelope, head: bytes, uid: int, address: str, now: float,
                          fields: list[Field], settings: UserSettings | None = None) -> None:
        """One user's out-of-office reply to `env`, if one is due (invariant 16); `fields` caches the header's
        fields across the users of one delivery (filled on first need); `settings` the user's, if read already."""
        if settings is None:
            settings = await self.store.get_user_settings(uid)
        if not autoreply.active(settings, now):
            return
        if not fields:
            fields.extend(autoreply.header_fields(head))
        own = await self.identities(uid)
        reason = autoreply.skip_reason(env.mail_from, fields, own)
        if reason is None and await self._list_address(env.mail_from):
            reason = "list-sender"  # RFC 3834 §2: no responses to list traffic, our own lists' included
        if reason is None and not await self.store.claim_auto_reply(uid, env.mail_from, now,
                                                                    autoreply.window_start(settings, now)):
            reason = "replied-recently"
        if reason is not None:
            log.info("%s", logfmt("auto-reply", [("user", address), ("to", env.mail_from or "<>"),
                                                 ("result", "skipped"), ("reason", reason)]))
            return
        raw = autoreply.build(settings, from_address=autoreply.addressed_as(fields, own), to=env.mail_from,
                              fields=fields, hostname=self.config.server.hostname, now=now)
        # RFC 3834 §3: from the null reverse-path
        sent = await self.accept(Envelope("", (Rcpt(env.mail_from),), raw, may_relay=True, from_checked=True))
        log.info("%s", logfmt("auto-reply", [("user", address), ("to", env.mail_from), ("result", "sent"),
                                             ("local", sent.local), ("queued", sent.queued)]))

    async def _list_address(self, address: str) -> bool:
        """Is `address` one of this server's mailing lists, or an address of one (its bounce address, a
        moderation action address)? Mail from them is list traffic whatever its header says."""
        local, domain = split(address)
        if not domain or not await self.is_local_domain(domain):
            return False
        key = address.lower()
        if await self.store.get_list(key) is not None:
            return True
        m = ACTION_RE.match(names.unquote_local(local))
        if m is not None and await self.store.get_list(f"{names.quote_local(m['base'])}@{domain}".lower()):
            return True
        return any(ml.bounce_address == key for ml in await self._lists_in(domain))

    async def _forward_sender(self, mail_from: str, sender_local: bool, a: str, d: Remote) -> str | None:
        """The SRS envelope sender for `d`, a remote destination reached through the local address `a`; None when
        the sender stays as it is: a direct relay, the null sender, a sender in a local domain, or one too long
        to rewrite (invariant 12)."""
        if d.address == a or not mail_from or sender_local or srs.is_srs(split(a)[0]):
            return None
        try:
            return srs.forward(mail_from, split(a)[1].lower(), await self.secret())
        except srs.SRSError as exc:
            log.info("srs not rewritten sender=%s reason=%r", _printable(mail_from), str(exc))
            return None

    async def _enqueue_forward(self, env: Envelope, sender: str, rcpts: list[Rcpt]) -> Accepted:
        """Queue forwarded copies under their SRS sender (from the staged file when there is one, invariant 9),
        ARC-sealed by the forwarding domain (the SRS sender's, invariant 14)."""
        queue_rcpts = [QueueRecipient(r.address, r.orcpt, r.notify) for r in rcpts]
        arc_set = await self.sealer.seal(env.raw, split(sender)[1], staged=env.staged, submitted=env.from_checked)
        if env.staged is None:
            entry = await self.store.enqueue(arc_set + env.raw, sender, queue_rcpts, envid=env.envid, ret=env.ret,
                                             from_checked=env.from_checked)
        else:
            entry = await self.store.enqueue_file(env.staged, sender, queue_rcpts, prefix=arc_set + env.raw,
                                                  envid=env.envid, ret=env.ret, from_checked=env.from_checked)
        return Accepted(0, 0, (entry.id,), 0)

    async def _stored_size(self, env: Envelope) -> int:
        """The octets the local copy will hold: Return-Path, the message (and its staged rest)."""
        size = len(return_path(env.mail_from)) + len(env.raw) + len(env.body)
        if env.staged is not None:
            size += (await asyncio.to_thread(env.staged.stat)).st_size
        return size

    async def _over_quota(self, env: Envelope, users: dict[int, str],
                          expanded: list[tuple[Rcpt, str, Sequence[Destination]]],
                          known: dict[int, RecipientFacts]) -> list[RecipientReport]:
        """Invariant 13: take the users the message does not fit out of `users` (logged), and return the failure
        reports for them. `known`: the users' facts read for this message (invariant 19). RouteError when no
        recipient gets anything at all: 552 5.2.2 if the message could never fit any of them, else 452 4.2.2 (the
        whole message is refused in the dialogue)."""
        size = await self._stored_size(env)
        refused: dict[int, Refusal] = {}
        for user_id in users:
            why = _refusal_of(known.get(user_id), size)
            if why is not None:
                refused[user_id] = why
        if not refused:
            return []
        nothing_left = all(all(isinstance(d, LocalUser) and d.user_id in refused for d in dests)
                           for _, _, dests in expanded)
        for user_id, why in refused.items():
            self._log_refused(users[user_id], env.mail_from, why, "data")
        if nothing_left:
            whys = list(refused.values())
            raise _quota_error(Refusal(True, whys[0].reason) if all(w.permanent for w in whys)
                               else next(w for w in whys if not w.permanent))
        reports = []
        for rcpt, a, dests in expanded:
            for d in dests:
                if isinstance(d, LocalUser) and d.user_id in refused:
                    # Accepted in the dialogue for its other recipients: this copy can only bounce (RFC 3464
                    # "failed"; RFC 3463 X.2.2 mailbox full).
                    one = len(dests) == 1
                    reports.append(RecipientReport(a if one else d.address, "failed", "5.2.2",
                                                   orcpt=rcpt.orcpt if one else "", notify=rcpt.notify,
                                                   explanation=refused[d.user_id].reason))
        for user_id in refused:
            del users[user_id]
        return reports

    async def _report_failures(self, env: Envelope, reports: list[RecipientReport]) -> None:
        """One failure DSN about the recipients quota kept out (invariant 13), durable on return."""
        original = env.raw if env.staged is None else await asyncio.to_thread(env.head)
        dsn = build_dsn(reporting_mta=self.config.server.hostname, mail_from=env.mail_from, envid=env.envid,
                        ret="HDRS", arrival=time.time(), reports=reports, original=original)
        if dsn is None:
            return
        try:
            sent = await self.accept(Envelope("", (Rcpt(env.mail_from),), dsn, may_relay=True, from_checked=True))
        except RouteError as exc:  # the sender's own mailbox is full too: the other copies are delivered
            log.warning("quota failure dsn to %s refused: %s", _printable(env.mail_from), exc)
            return
        if not (sent.local or sent.queued):
            log.warning("quota failure dsn to %s had nowhere to go", _printable(env.mail_from))

    async def _warn(self, users: dict[int, str]) -> None:
        """Quota warnings (delivery/quota.py) for the users who just received mail."""
        for user_id, address in users.items():
            try:
                await warn(self.store, self.config.limits, self.config.server.hostname, user_id, address)
            except StoreError:
                log.exception("quota warning for %s failed", _printable(address))

    async def _report_success(self, env: Envelope, reports: list[RecipientReport]) -> None:
        """Invariant 10: one success DSN about `reports` to the envelope sender, durable on return."""
        # Success reports return the header only (RFC 3461 §4.3), which the start of a staged message holds.
        original = env.raw if env.staged is None else await asyncio.to_thread(env.head)
        dsn = build_dsn(reporting_mta=self.config.server.hostname, mail_from=env.mail_from, envid=env.envid,
                        ret=env.ret, arrival=time.time(), reports=reports, original=original)
        if dsn is None:
            return
        # From the null sender, so no report is ever made about this one (dsn.py invariant 3).
        try:
            sent = await self.accept(Envelope("", (Rcpt(env.mail_from),), dsn, may_relay=True, from_checked=True))
        except RouteError as exc:  # a local sender over quota (invariant 13): the copies are delivered already
            log.warning("success dsn to %s refused: %s", _printable(env.mail_from), exc)
            return
        if not (sent.local or sent.queued):
            log.warning("success dsn to %s had nowhere to go (no such local address)", _printable(env.mail_from))

    # --- lists ---------------------------------------------------------------------------------------------------
    async def distribute(self, ml: MailingList, raw: bytes, from_checked: bool = False) -> Accepted:
        """One copy per member, list headers prepended, envelope sender = the list's bounce address.
        `from_checked`: the post's From was checked (see `Envelope`); an approved held post counts as unchecked."""
        copy = list_headers(ml) + raw
        users: dict[int, str] = {}
        remote: list[str] = []
        for member in ml.members:
            dests: list[Destination] = []
            await self._expand(member, 1, {ml.address}, dests)
            for d in dests:
                if isinstance(d, LocalUser):
                    users[d.user_id] = d.address
                elif isinstance(d, Remote):
                    remote.append(d.address)
                # a list inside a list, or an action address, is not expanded further (loops)
        size = len(return_path(ml.bounce_address)) + len(copy)
        for user_id, address in list(users.items()):  # invariant 13: a full member misses this post, logged
            why = await self._quota_refusal(LocalUser(user_id, address), size)
            if why is not None:
                self._log_refused(address, ml.bounce_address, why, "list")
                del users[user_id]
        local_job = deliver_local(self.store, self.config.limits, users, ml.bounce_address, copy)
        queue_job = None
        if remote:
            # Invariant 14: the remote copies are sealed after the list's own fields, so the seal covers them.
            arc_set = await self.sealer.seal(copy, split(ml.address)[1], submitted=from_checked)
            queue_job = self.store.enqueue(arc_set + copy, ml.bounce_address,
                                           [QueueRecipient(r) for r in dict.fromkeys(remote)],
                                           from_checked=from_checked)
        local, entry, _ = await _all(local_job, queue_job, [])
        await self._warn(users)
        return Accepted(local, len(set(remote)), (entry.id,) if entry is not None else (), 0)

    async def _hold(self, ml: MailingList, mail_from: str, raw: bytes) -> Accepted:
        token = await self.held.hold(ml.address, mail_from, raw)
        notice = moderation_notice(ml, token, mail_from, raw, self.config.server.hostname)
        owner = await self.resolve(ml.owner)
        users = {d.user_id: d.address for d in owner if isinstance(d, LocalUser)}
        remote = [d.address for d in owner if isinstance(d, Remote)]
        # Our own notice: exempt from the owner's quota, or a full owner would refuse the post after it was held.
        local = await deliver_local(self.store, self.config.limits, users, ml.bounce_address, notice,
                                    enforce_quota=False)
        ids: tuple[int, ...] = ()
        if remote:
            entry = await self.store.enqueue(notice, ml.bounce_address, [QueueRecipient(r) for r in remote],
                                             from_checked=True)  # our own notice
            ids = (entry.id,)
        log.info("list post held list=%s token=%s from=%s", ml.address, token[:8], mail_from)
        return Accepted(local, len(remote), ids, 1)

    async def moderate(self, token: str, approve: bool) -> Accepted | None:
        """Approve (distribute) or reject the held post `token`, as its owner's mail to `list+approve-TOKEN` /
        `list+reject-TOKEN` would (the web admin's moderation queue); None when no such post is held (handled
        already: lists.py invariant 2) or its list is gone."""
        post = await self.held.get(token)
        if post is None:
            return None
        ml = await self.store.get_list(post.list_address)
        if ml is None:
            return None
        result = await self._handle_held(ListAction(ml, "approve" if approve else "reject", token))
        if result is None:
            return None  # another handler (a double click, another node) took it first
        if result.queue_ids and self.on_queued is not None:
            self.on_queued()
        return result

    async def _act(self, act: ListAction) -> Accepted:
        return await self._handle_held(act) or Accepted(0, 0, (), 0)

    async def _handle_held(self, act: ListAction) -> Accepted | None:
        """Approve or reject as the one handler of the post (None: not held, or another handler has it)."""
        # One handler at a time per post, across requests, worker processes and nodes (two approvals at once, a
        # double click, the owner's mail beside the web admin): the others find it taken (lists.py invariant 2).
        claimed = await self.held.claim(act.token)
        if claimed is None:
            return None  # already handled, or being handled (lists.py invariant 2)
        post, claim = claimed
        if post.list_address != act.ml.address:
            await self.held.release(act.token, claim)
            return None
        try:
            result = Accepted(0, 0, (), 0)
            if act.action == "approve":
                result = await self.distribute(act.ml, post.raw)
        except BaseException:
            await asyncio.shield(self.held.release(act.token, claim))  # not handled: the next approval may
            raise
        if not await self.held.drop(act.token, claim):
            log.warning("list post %s list=%s token=%s: the claim ran out while it was handled (another handler "
                        "may handle it again)", act.action, act.ml.address, act.token[:8])
        log.info("list post %s list=%s token=%s", "approved" if act.action == "approve" else "rejected",
                 act.ml.address, act.token[:8])
        return result


_EXPLAINED = {"delivered": "delivered", "expanded": "delivered to an alias of several recipients; their own "
              "delivery is reported only if it fails or is delayed"}


def success_action(dests: Sequence[Destination]) -> str | None:
    """The RFC 3464 §2.3.3 action this server reports for a recipient with these destinations (invariant 11):
    "delivered" for one local destination (a mailbox, a list exploder, a list robot address); "expanded" for
    several (RFC 3461 §6.2.7: an alias of several recipients); None when the one destination is remote (a
    forward or a remote domain: the DSN parameters travel on with it and the queue reports)."""
    if not dests:
        return None
    if len(dests) > 1:
        return "expanded"
    return None if isinstance(dests[0], Remote) else "delivered"


def without_success(notify: str) -> str:
    """NOTIFY for the targets of an expanded recipient: its own list less SUCCESS, already reported (RFC 3461
    §6.2.7; Postfix does the same); NEVER if nothing is left, since an empty NOTIFY would mean the default
    FAILURE,DELAY, which the sender did not ask for. "" (the default) stays ""."""
    kinds = [k.strip() for k in notify.split(",") if k.strip()]
    if not kinds:
        return notify
    kept = [k for k in kinds if k.upper() != "SUCCESS"]
    return ",".join(kept) if kept else "NEVER"


def _refusal_of(facts: RecipientFacts | None, size: int | None) -> Refusal | None:
    """`quota.refusal` of a user's quota as `facts` holds it (its domain total summed when the domain has a limit:
    all `refusal` reads, invariant 19); None for a user removed meanwhile (delivery finds no INBOX and says so)."""
    return None if facts is None else refusal(facts.quota, size)


def _quota_error(why: Refusal) -> RouteError:
    """The SMTP answer for a recipient quota keeps out (delivery/quota.py): 452 4.2.2 or 552 5.2.2."""
    code, esc = why.code
    text = "Mailbox full (over quota), try again later" if code == 452 else \
        "Message larger than the recipient's quota allows"
    if "domain" in why.reason:
        text = text.replace("Mailbox full", "Domain full").replace("recipient's quota", "domain's quota")
    return RouteError(code, esc, text)


async def _zero() -> int:
    return 0


async def _all(local: Coroutine[Any, Any, int], queue: Coroutine[Any, Any, QueueEntry] | None,
               others: list[Coroutine[Any, Any, Accepted]]) -> tuple[int, QueueEntry | None, list[Accepted]]:
    """Run every write concurrently (they share group commits); wait for all; raise the first failure only
    after all have finished, so nothing is left running behind an error reply (invariant 1)."""
    if queue is None and not others:  # the usual delivery: one write, awaited here (no task, no extra turn)
        return int(await local), None, []
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(local)]
    if queue is not None:
        tasks.append(asyncio.ensure_future(queue))
    tasks += [asyncio.ensure_future(o) for o in others]
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for r in outcomes:
        if isinstance(r, BaseException):
            raise r
    results: list[Any] = list(outcomes)
    entry: QueueEntry | None = results[1] if queue is not None else None
    rest: list[Accepted] = results[2:] if queue is not None else results[1:]
    return int(results[0]), entry, rest
