"""The router: the one door every message comes through (`Router.accept`), whatever protocol brought it.

Theory of operation
-------------------
A recipient address resolves to destinations:

    local user            its INBOX (`user+detail@dom` too: the detail is dropped, the mail lands in INBOX)
    alias                 each target, recursively (local users, lists, other aliases, or external: a forward)
    catch-all `@dom`      used when nothing else in a local domain matches
    list                  a post: copies to members (lists.py), or held for the owner when moderated
    list bounce address   the list owner
    list+approve-<tok>    distribute a held post (lists.py); list+reject-<tok>: drop it
    anything in a domain that is not local   the outbound queue (only if the caller may relay)

Lookup order for an address in a local domain: aliases of the exact address, the user, the list, the list
actions; then the same for the address without its `+detail`; then the catch-all. Aliases come first so an
operator can redirect a user's mail; an alias that leads back to an address already being expanded resolves
that address without its aliases (so `alice -> alice, alice@elsewhere` keeps a local copy and forwards one).

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
6. Content with a bare CR, a bare LF or a NUL (`mime.lineends.stray`) is refused at this door (550 5.6.0),
   whoever the caller: nothing the router stores or queues can smuggle a message into a receiver downstream.
   Callers repair or refuse earlier (SMTP refuses in the core, `postroom sendmail` normalises).
7. A message the caller staged in a file (`Envelope.staged`, SMTP bodies over `store.api.STAGING_THRESHOLD`)
   is stored and queued from the file (`deliver_file`, `enqueue_file`), never read whole on the event loop.
   What needs the bytes reads them once, in a thread, bounded by `limits.message_size`: the metadata of the
   local copy (`compute_meta` scans bytes) and list copies or held posts (rare for large messages).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postroom.config import Config
from postroom.mime.lineends import Checker, stray
from postroom.store.api import ListPolicy, MailingList, QueueEntry, QueueRecipient, Store

from .lists import ACTION_RE, HeldPosts, list_headers, moderation_notice
from .local import deliver_local, deliver_local_file

log = logging.getLogger("postroom.delivery")

MAX_DEPTH = 10
MAX_TARGETS = 1000
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
STRAY_CONTENT = RouteError(550, "5.6.0", "Message refused: bare CR or LF, or NUL, in the content")


@dataclass(frozen=True)
class Rcpt:
    address: str
    orcpt: str = ""  # RFC 3461, as given
    notify: str = ""


@dataclass(frozen=True)
class Envelope:
    mail_from: str  # "" for the null reverse-path
    recipients: tuple[Rcpt, ...]
    raw: bytes  # the message as it will be stored (with this hop's Received header); with `staged`, its start
    envid: str = ""
    ret: str = ""
    may_relay: bool = False  # the client may send to non-local domains (authenticated, relay network)
    staged: Path | None = None  # a file in the store's staging directory holding the rest of the message

    def head(self, limit: int = HEAD_LIMIT) -> bytes:
        """At least the first `limit` bytes of the message (all of it if shorter). Reads the staged file's start."""
        if self.staged is None or len(self.raw) >= limit:
            return self.raw
        with open(self.staged, "rb") as f:
            return self.raw + f.read(limit - len(self.raw))


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


def split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


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
        self.held = held or HeldPosts(Path(config.data_path) / "held")
        self._ids = itertools.count(1)
        # Called after mail was queued, so the outbound scheduler starts on it now rather than at its next poll.
        self.on_queued = on_queued

    def staging_dir(self) -> Path:
        """Where a session writes a large message body before `accept` (`Envelope.staged`; store/api.py)."""
        return self.store.staging_dir()

    # --- resolution ----------------------------------------------------------------------------------------
    async def is_local_domain(self, domain: str) -> bool:
        if not domain or domain.startswith("[") or "@" in domain:  # invariant 2: literals are never local
            return False
        try:
            return await self.store.get_domain(domain) is not None
        except Exception:  # a malformed name is simply not ours
            return False

    async def normalize(self, address: str) -> str:
        """Lower-case; `postmaster` without a domain (RFC 5321 §4.1.1.3) becomes postmaster@<a local domain>."""
        a = address.strip().lower()
        if "@" not in a and a == "postmaster":
            host = self.config.server.hostname.lower()
            if await self.is_local_domain(host):
                return f"postmaster@{host}"
            domains = await self.store.list_domains()
            return f"postmaster@{domains[0].name}" if domains else f"postmaster@{host}"
        return a

    async def resolve(self, address: str) -> list[Destination]:
        """Destinations of one address; [] for an unknown address in a local domain."""
        a = await self.normalize(address)
        out: list[Destination] = []
        await self._expand(a, 0, set(), out)
        # de-duplicate, keeping order
        seen: set[Destination] = set()
        return [d for d in out if not (d in seen or seen.add(d))]  # type: ignore[func-returns-value]

    async def _expand(self, a: str, depth: int, expanding: set[str], out: list[Destination]) -> bool:
        if depth > MAX_DEPTH or len(out) > MAX_TARGETS:
            raise TOO_MANY_TARGETS
        local, domain = split(a)
        if not await self.is_local_domain(domain):
            out.append(Remote(a))
            return True
        candidates = [a]
        if "+" in local:
            candidates.append(f"{local.split('+', 1)[0]}@{domain}")
        for cand in candidates:
            if await self._expand_exact(cand, a, depth, expanding, out):
                return True
        if a not in expanding:
            catch_all = await self.store.list_aliases(f"@{domain}")
            if catch_all:
                expanding = expanding | {a}
                for alias in catch_all:
                    await self._expand(alias.target, depth + 1, expanding, out)
                return True
        return False

    async def _expand_exact(self, cand: str, original: str, depth: int, expanding: set[str],
                            out: list[Destination]) -> bool:
        if cand not in expanding:
            aliases = await self.store.list_aliases(cand)
            if aliases:
                inner = expanding | {cand, original}
                for alias in aliases:
                    await self._expand(alias.target, depth + 1, inner, out)
                return True
        user = await self.store.get_user(cand)
        if user is not None:
            out.append(LocalUser(user.id, user.address))
            return True
        ml = await self.store.get_list(cand)
        if ml is not None:
            out.append(ListPost(ml))
            return True
        m = ACTION_RE.match(split(original)[0]) if cand == original else None
        if m is not None:
            ml = await self.store.get_list(f"{m['base']}@{split(cand)[1]}")
            if ml is not None:
                out.append(ListAction(ml, m["action"], m["token"]))
                return True
        for ml in await self._lists_in(split(cand)[1]):
            if ml.bounce_address == cand:
                await self._expand(ml.owner, depth + 1, expanding | {cand}, out)
                return True
        return False

    async def _lists_in(self, domain: str) -> list[MailingList]:
        return [ml for ml in await self.store.list_lists() if split(ml.address)[1] == domain]

    # --- RCPT time ---------------------------------------------------------------------------------------------
    async def check_recipient(self, address: str, mail_from: str, may_relay: bool) -> list[Destination]:
        """Raise RouteError if `address` must be refused at RCPT time; else its destinations."""
        a = await self.normalize(address)
        local, domain = split(a)
        if not await self.is_local_domain(domain):
            if may_relay:
                return [Remote(a)]
            raise RELAY_DENIED  # invariant 2
        dests = await self.resolve(a)
        if not dests:
            raise NO_SUCH_USER
        sender = mail_from.lower()
        for d in dests:
            if isinstance(d, ListPost):
                if not sender:
                    raise NULL_SENDER_TO_LIST
                if d.ml.policy is ListPolicy.MEMBERS and sender not in d.ml.members:
                    raise MEMBERS_ONLY
            elif isinstance(d, ListAction):
                if sender != d.ml.owner:
                    raise NOT_OWNER
                post = await self.held.get(d.token)
                if post is None or post.list_address != d.ml.address:
                    raise NO_SUCH_USER  # lists.py invariant 2
            elif isinstance(d, Remote) and not may_relay and a == d.address:
                raise RELAY_DENIED
        return dests

    async def sender_allowed(self, user_address: str, mail_from: str) -> bool:
        """Submission: may the user `user_address` send as `mail_from`? Their own address (with any
        +detail), or an address whose alias (exact or catch-all) leads to them."""
        m = mail_from.strip().lower()
        u = user_address.lower()
        if not m:
            return False
        local, domain = split(m)
        candidates = [m] + ([f"{local.split('+', 1)[0]}@{domain}"] if "+" in local else [])
        if u in candidates:
            return True
        for cand in candidates:
            if any(al.target == u for al in await self.store.list_aliases(cand)):
                return True
        if domain and await self.is_local_domain(domain):
            catch = await self.store.list_aliases(f"@{domain}")
            if any(al.target == u for al in catch) and await self.store.get_user(m) is None:
                return True
        return False

    # --- the door ------------------------------------------------------------------------------------------------
    async def accept(self, env: Envelope) -> Accepted:
        """Deliver, queue or hold for every recipient; return once all of it is durable (invariant 1)."""
        if received_count(env.head() if env.staged is None else await asyncio.to_thread(env.head)) \
                > self.config.smtp.max_received:
            raise LOOP  # invariant 5
        if stray(env.raw) is not None or (env.staged is not None
                                          and await asyncio.to_thread(file_stray, env.staged) is not None):
            raise STRAY_CONTENT  # invariant 6
        users: dict[int, str] = {}
        remote: dict[str, Rcpt] = {}
        lists: dict[str, MailingList] = {}
        actions: list[ListAction] = []
        for rcpt in env.recipients:
            a = await self.normalize(rcpt.address)
            _, domain = split(a)
            dests: Sequence[Destination] = (await self.resolve(a)) if await self.is_local_domain(domain) \
                else [Remote(a)]
            for d in dests:
                if isinstance(d, LocalUser):
                    users[d.user_id] = d.address
                elif isinstance(d, Remote):
                    if not env.may_relay and d.address == a:
                        raise RELAY_DENIED  # invariant 2, checked again at the door
                    remote.setdefault(d.address, Rcpt(d.address, rcpt.orcpt, rcpt.notify))
                elif isinstance(d, ListPost):
                    lists[d.ml.address] = d.ml
                else:
                    actions.append(d)
        if env.staged is not None and (lists or actions):
            # List copies and held posts take the bytes (invariant 7): one copy of the message, in a thread.
            staged = env.staged
            env = dataclasses.replace(env, raw=await asyncio.to_thread(lambda: env.raw + staged.read_bytes()),
                                      staged=None)
        limits = self.config.limits
        queue_rcpts = [QueueRecipient(r.address, r.orcpt, r.notify) for r in remote.values()]
        if env.staged is None:
            local_job = deliver_local(self.store, limits, users, env.mail_from, env.raw) if users else _zero()
            queue_job = self.store.enqueue(env.raw, env.mail_from, queue_rcpts, envid=env.envid,
                                           ret=env.ret) if remote else None
        else:  # invariant 7: from the file
            local_job = deliver_local_file(self.store, limits, users, env.mail_from, env.raw,
                                           env.staged) if users else _zero()
            queue_job = self.store.enqueue_file(env.staged, env.mail_from, queue_rcpts, prefix=env.raw,
                                                envid=env.envid, ret=env.ret) if remote else None
        others = [self._hold(ml, env.mail_from, env.raw) if ml.policy is ListPolicy.MODERATED
                  else self.distribute(ml, env.raw) for ml in lists.values()]
        others += [self._act(act) for act in actions]
        local, entry, parts = await _all(local_job, queue_job, others)
        queue_ids: tuple[int, ...] = (entry.id,) if entry is not None else ()
        held = 0
        for part in parts:
            local += part.local
            queue_ids += part.queue_ids
            held += part.held
        if queue_ids and self.on_queued is not None:
            self.on_queued()
        return Accepted(local, len(remote), queue_ids, held)

    # --- lists ---------------------------------------------------------------------------------------------------
    async def distribute(self, ml: MailingList, raw: bytes) -> Accepted:
        """One copy per member, list headers prepended, envelope sender = the list's bounce address."""
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
        local_job = deliver_local(self.store, self.config.limits, users, ml.bounce_address, copy)
        queue_job = self.store.enqueue(copy, ml.bounce_address,
                                       [QueueRecipient(r) for r in dict.fromkeys(remote)]) if remote else None
        local, entry, _ = await _all(local_job, queue_job, [])
        return Accepted(local, len(set(remote)), (entry.id,) if entry is not None else (), 0)

    async def _hold(self, ml: MailingList, mail_from: str, raw: bytes) -> Accepted:
        token = await self.held.hold(ml.address, mail_from, raw)
        notice = moderation_notice(ml, token, mail_from, raw, self.config.server.hostname)
        owner = await self.resolve(ml.owner)
        users = {d.user_id: d.address for d in owner if isinstance(d, LocalUser)}
        remote = [d.address for d in owner if isinstance(d, Remote)]
        local = await deliver_local(self.store, self.config.limits, users, ml.bounce_address, notice)
        ids: tuple[int, ...] = ()
        if remote:
            entry = await self.store.enqueue(notice, ml.bounce_address, [QueueRecipient(r) for r in remote])
            ids = (entry.id,)
        log.info("list post held list=%s token=%s from=%s", ml.address, token[:8], mail_from)
        return Accepted(local, len(remote), ids, 1)

    async def _act(self, act: ListAction) -> Accepted:
        post = await self.held.get(act.token)
        if post is None or post.list_address != act.ml.address:
            return Accepted(0, 0, (), 0)  # already handled (lists.py invariant 2)
        result = Accepted(0, 0, (), 0)
        if act.action == "approve":
            result = await self.distribute(act.ml, post.raw)
        await self.held.drop(act.token)
        log.info("list post %s list=%s token=%s", "approved" if act.action == "approve" else "rejected",
                 act.ml.address, act.token[:8])
        return result


async def _zero() -> int:
    return 0


async def _all(local: Coroutine[Any, Any, int], queue: Coroutine[Any, Any, QueueEntry] | None,
               others: list[Coroutine[Any, Any, Accepted]]) -> tuple[int, QueueEntry | None, list[Accepted]]:
    """Run every write concurrently (they share group commits); wait for all; raise the first failure only
    after all have finished, so nothing is left running behind an error reply (invariant 1)."""
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
