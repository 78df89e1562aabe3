"""The POP3 session: drives `protocol.POP3Core` over a `net.Connection`, the store and the Authenticator.

Theory of operation
-------------------
`pop3_handler(services, listener)` returns the `Handler` a listener runs for each connection. The session
greets, then loops: ask the core for its next event; on `NEED_DATA` flush what was written and read whatever
the client sent (up to 64 KiB), feeding it to the core; otherwise carry the event out (check a password, run a
SASL exchange, upgrade to TLS, read a message body, remove messages at QUIT) and hand the core the outcome,
which answers with the reply bytes. Pipelined commands (RFC 2449 §6.6) are all answered from the buffer; the
session waits for the client's output to drain only when it runs out of input or a reply is large, so a batch
of 100 RETRs costs one read and a few drains, not 100 round trips. In TRANSACTION the loop's read is
`read_some(inline=_answer_inline)` (net/connection.py invariant 12): commands that arrive while it waits and
whose reply is ready (`_ready`: every `Send` that does not close; RETR/TOP of a body read ahead) are answered
from the connection's callback, every reply of one received chunk in one write, without waking the loop's task;
the first command that needs waiting (a store read, QUIT) is kept in `_held` and the read returns, so the loop
carries it out next. One RETR at a time then costs one trip round the event loop, not two, and no future or
timer. Bodies are read a run at a time: a RETR or
TOP whose body was not read ahead reads it with those of the RETR/TOP lines already buffered and, when the
client goes through the maildrop in order (RETR n after RETR n-1, one at a time or pipelined), of the messages
after them, in one `Store.read_messages` call (invariant 6 bounds it); the next RETRs find theirs in memory.
When such a client takes the last body read ahead one RETR at a time, the next run is read right after that
reply is written, while it travels and the client reads it (invariant 10), not between the next RETR and its
reply (that RETR still waits in the socket if it arrives before the read is done). A chunk that is exactly
one "RETR n" line skips the core's line buffer and command table (`POP3Core.quick_retr`).

Login: password (USER/PASS, SASL PLAIN/LOGIN) and SCRAM checks go through `Authenticator` (lockout, argon2 in a
thread). After a good login: take the maildrop lock (or `-ERR [IN-USE]`), enforce LOGIN-DELAY if configured
(`-ERR [LOGIN-DELAY]`), list INBOX without bodies (`Store.list_octets`, one query), enter TRANSACTION, and open
the POP-before-SMTP window (`auth.note_login`).

Exclusive access (RFC 1939 §8: "the POP3 server then acquires an exclusive-access lock on the maildrop") is
`MaildropLocks`, one per store, shared by the pop3 and pop3s listeners. Besides its in-process table it takes
the lock in the store (`Store.lock_maildrop`), so every worker process (`server.workers`, workers.py) and every
node on one PostgreSQL database grants it once between them: a session anywhere else gets `-ERR [IN-USE]`
(RFC 2449 §8.1.1, RFC 3206 §4). On SQLite (one machine) the store takes an `fcntl.flock` per user, which the
kernel drops with a process that dies; on PostgreSQL a lease row of LEASE_SECONDS that a task renews every
RENEW_SECONDS while the session holds it, so a dead node's locks run out within a minute
(store/postgresql/nodes.py says why a lease and not an advisory lock). The LOGIN-DELAY clock (RFC 2449 §6.8) is
the store's last-login time of the user (`Store.maildrop_login`), one across processes and nodes too.

Deletions: the core collects the UIDs marked with DELE; at QUIT (UPDATE state) they are removed with one
`store.remove_messages` call, which is one durable transaction; only then is `+OK` sent (ARCHITECTURE
principle 4). The store publishes the expunges on the hub, so IMAP sessions of the same user see them.

Invariants
1. Nothing is removed from the store unless the client sent QUIT in TRANSACTION; an idle timeout, a shutdown,
   a dropped connection or an error deletes nothing.
2. `+OK` after QUIT is written only after `remove_messages` returned (durable).
3. The maildrop lock is held from the successful login to the end of the session, and released in every
   case (`finally`); after QUIT, as soon as the UPDATE transaction is done, before its reply is sent.
4. No password or SASL payload reaches `conn.log` or any log line; `conn.log` gets user, auth mechanism,
   retrieved and deleted counts.
5. An unexpected exception in one command is logged with its traceback and answered with `-ERR [SYS/TEMP]`;
   the session goes on (STYLE habit 4).
6. Read-ahead only reads: besides the body being sent, at most READ_AHEAD_COUNT bodies of at most
   READ_AHEAD_OCTETS in all (by the listing's sizes) are held (READ_AHEAD_COUNT + 1 of at most
   READ_AHEAD_OCTETS when read after a reply, invariant 10), and only until the client asks for one that is
   not among them (then they are dropped). Replies are still produced one command at a time, in order. A body
   read ahead is served even if another session expunges its message before the RETR: bodies never change,
   and the maildrop is the one fixed at login (RFC 1939 §8); only a body gone before it was read is
   `-ERR ... removed`.
7. A session whose lock renewal found the lock taken by another (its lease ran out while the store was out of
   reach) deletes nothing at QUIT: `-ERR` instead (RFC 1939 §6 lets UPDATE fail).
8. A store that cannot be reached (`StoreUnavailable`: the database down) is answered `-ERR [SYS/TEMP]` (RFC 3206
   §4) for the command that needed it, PASS included, with no traceback (the engine logs the outage once per
   interval); the session stays in its state and the next command tries again.
9. Commands are answered in order whichever path answers them: `_answer_inline` stops at the first event it
   may not answer and leaves it in `_held`, and the loop takes `_held` before asking the core for the next
   event; the replies written inline precede it. Output stays bounded: one inline pass writes at most
   DRAIN_ABOVE bytes plus one reply and then hands over, the connection offers no chunk while its output is
   paused, and the loop drains past DRAIN_ABOVE, so at most about twice DRAIN_ABOVE is written before a drain.
   Inline answers never end the session: a reply that closes it (too many errors) and QUIT go through the loop.
10. Reading ahead after a reply: when an inline pass has answered every buffered line, no body read ahead is
   left and the last RETR/TOP it served asked for the message after the one before (the client goes in
   order), it names the next messages (`POP3Core.read_ahead(last, READ_AHEAD_COUNT + 1, ...)`) in `_prefetch`,
   leaves `_PREFETCH` in `_held` and hands over; the loop reads them and answers nothing. The replies of that
   pass were written before (invariant 9's order is kept: this read has no reply). A failed read is only
   logged: the RETR that wanted one of those bodies reads it itself and its reply says what went wrong.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from postroom.auth.authenticator import Exchange, Step
from postroom.net.connection import (
    Connection,
    DeadlineExceeded,
    IdleTimeout,
    NetError,
    PlaintextAfterStartTLS,
    ShuttingDown,
)
from postroom.net.listener import log_refusal
from postroom.store.api import InsufficientStorage, Store, StoreUnavailable, User

from .protocol import (
    NEED_DATA,
    CheckPassword,
    Entry,
    Options,
    POP3Core,
    Retrieve,
    SaslResponse,
    Send,
    StartSasl,
    StartTls,
    State,
    Update,
    err,
    make_uidl,
)

if TYPE_CHECKING:
    from postroom.net.listener import Handler
    from postroom.services import Services

_PREFETCH = object()  # in `Session._held`: read the bodies named in `_prefetch`, answer nothing (invariant 10)

log = logging.getLogger("postroom.pop3")

READ_CHUNK = 64 * 1024
# Message bodies read with the one a RETR/TOP asks for (pipelined or next in order): 64 in one read, which the
# SQLite engine serves on the loop's thread (its QUICK_BODIES) and which halves the reads of 33 ...
READ_AHEAD_COUNT = 63
READ_AHEAD_OCTETS = 1 << 20  # ... and at most this many bytes of them in all (by the listing's sizes)
DRAIN_ABOVE = 256 * 1024  # drain after a reply this large even while more commands are buffered


LEASE_SECONDS = 60.0  # a maildrop lock's lease in a store shared by nodes (store/postgresql/nodes.py) ...
RENEW_SECONDS = LEASE_SECONDS / 3  # ... renewed this often while the session runs: two renewals may fail


class MaildropLocks:
    """The POP3 maildrop locks of one store (module doc): which sessions of this process hold one, each lock
    taken in the store (`Store.lock_maildrop`) under a holder name unique across processes and nodes, and kept
    alive by a renewal task while held. `node` names this process (default: host, PID and a random part)."""

    def __init__(self, store: Store, node: str = "") -> None:
        self.store = store
        self.node = node or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._held: dict[int, tuple[str, asyncio.Task[None]]] = {}  # user id -> (session id, renewal)

    def _holder(self, session_id: str) -> str:
        return f"{self.node}:{session_id}"

    async def acquire(self, user_id: int, session_id: str, on_lost: Callable[[], None] | None = None) -> bool:
        """Take the maildrop lock of `user_id` for `session_id`; False when any session of any process or node
        holds it (RFC 2449 §8.1.1 [IN-USE]). While held it is renewed every RENEW_SECONDS; `on_lost` is called
        if a renewal finds it taken by another (the lease ran out while the store was unreachable)."""
        if user_id in self._held:
            return False
        holder = self._holder(session_id)
        if not await self.store.lock_maildrop(user_id, holder, LEASE_SECONDS):
            return False
        if user_id in self._held:  # another session of this process won while we waited (SQLite says True
            return False  # to the same holder only, so this cannot be ours)
        task = asyncio.create_task(self._renew(user_id, holder, on_lost), name=f"pop3-lock-{user_id}")
        self._held[user_id] = (session_id, task)
        return True

    async def _renew(self, user_id: int, holder: str, on_lost: Callable[[], None] | None) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                kept = await self.store.lock_maildrop(user_id, holder, LEASE_SECONDS)
            except Exception as exc:  # the store is unreachable: try again at the next beat, the lease may last
                log.warning("pop3 maildrop lock of user id %d: renewal failed: %s", user_id, exc)
                continue
            if not kept:
                log.error("pop3 maildrop lock of user id %d lost to another session (its lease ran out)", user_id)
                if on_lost is not None:
                    on_lost()
                return

    async def release(self, user_id: int, session_id: str) -> None:
        held = self._held.get(user_id)
        if held is None or held[0] != session_id:
            return
        del self._held[user_id]
        held[1].cancel()
        try:
            await self.store.unlock_maildrop(user_id, self._holder(session_id))
        except Exception as exc:  # the store is closing or out of reach: the lease runs out by itself
            log.warning("pop3 maildrop lock of user id %d: release failed: %s", user_id, exc)

    def holder(self, user_id: int) -> str | None:
        held = self._held.get(user_id)
        return None if held is None else held[0]

    async def too_soon(self, user_id: int, delay: float) -> bool:
        """RFC 2449 §6.8: True if the user logged in less than `delay` seconds ago (on any node)."""
        if delay <= 0:
            return False
        return await self.store.maildrop_login(user_id, note=False) < delay

    async def note_login(self, user_id: int) -> None:
        await self.store.maildrop_login(user_id, note=True)


_LOCKS: weakref.WeakKeyDictionary[Store, MaildropLocks] = weakref.WeakKeyDictionary()


def locks_for(store: Store) -> MaildropLocks:
    """The lock table of one store, shared by every POP3 listener serving it."""
    locks = _LOCKS.get(store)
    if locks is None:
        locks = _LOCKS[store] = MaildropLocks(store)
    return locks


def pop3_handler(services: Services, listener: str) -> Handler:
    """The session handler of a POP3 listener (`pop3`: plain with STLS; `pop3s`: implicit TLS)."""
    from postroom.config import IMPLICIT_TLS

    implicit = listener in IMPLICIT_TLS
    locks = locks_for(services.store)

    async def handler(conn: Connection) -> None:
        await Session(services, conn, locks, implicit_tls=implicit).run()

    return handler


class Session:
    def __init__(self, services: Services, conn: Connection, locks: MaildropLocks, *, implicit_tls: bool) -> None:
        self.services = services
        self.conn = conn
        self.locks = locks
        cfg = services.config
        auth = services.auth
        self.options = Options(
            user_without_tls=auth.plaintext_allowed(False),
            mechanisms_without_tls=tuple(auth.mechanisms(False)),
            mechanisms_with_tls=tuple(auth.mechanisms(True)),
            stls=services.tls is not None,
            tls=implicit_tls or conn.tls,
            expire=cfg.pop3.expire.upper(),
            login_delay=cfg.pop3.login_delay_seconds,
            line_limit=cfg.limits.line_length,
            max_errors=cfg.limits.errors_per_session,
            hostname=cfg.server.hostname,
        )
        self.core = POP3Core(self.options)
        self.user: User | None = None
        self.mailbox_id = 0
        self.exchange: Exchange | None = None
        self.mechanism = ""
        self.retrieved = 0
        self._ahead: dict[str, bytes] = {}  # blob id -> body read ahead (invariant 6)
        self._last_number = 0  # the message the last RETR/TOP asked for
        self._in_order = False  # ... and it was the one after the one before it (the client goes in order)
        self._prefetch: list[str] = []  # blob ids `_answer_inline` left to the loop to read ahead (invariant 10)
        self._held: object = None  # an event `_answer_inline` took from the core and left to the loop (invariant 9)
        self.lock_lost = False  # a renewal found the maildrop lock taken by another session (MaildropLocks)

    # --- the loop -------------------------------------------------------------------------------------
    async def run(self) -> None:
        conn, core = self.conn, self.core
        conn.write(core.greeting())
        try:
            await self._loop()
        except DeadlineExceeded:
            conn.write(err("command not received in time"))  # net invariant 7; no UPDATE either
            conn.end = "timeout"
        except IdleTimeout:
            # RFC 1939 §3: the autologout timer; the session ends without entering UPDATE (invariant 1).
            conn.write(err("autologout: idle for too long"))
            conn.end = "timeout"
        except ShuttingDown:
            conn.write(err("[SYS/TEMP] server shutting down, try again later"))
            conn.end = "shutdown"
        finally:
            self._ahead.clear()
            if self.retrieved:
                conn.log["retrieved"] = self.retrieved
            if self.user is not None:
                await asyncio.shield(self.locks.release(self.user.id, conn.session_id))

    async def _loop(self) -> None:
        conn, core = self.conn, self.core
        # Replies to pipelined commands are gathered and handed to the connection together (at most
        # DRAIN_ABOVE bytes, plus one reply, wait here): one send for many small replies, as a corked socket
        # would, instead of one system call each.
        pending: list[bytes] = []
        unflushed = 0
        while True:
            event = self._held
            if event is None:
                event = core.next_event()
            else:
                self._held = None
                if event is _PREFETCH:  # invariant 10: the replies are out; read the next bodies, answer nothing
                    await self._read_ahead()
                    continue
            if event is NEED_DATA:
                if pending:
                    conn.writelines(pending)
                    pending = []
                await conn.drain()
                unflushed = 0
                # In TRANSACTION, what the commands that arrive while this read waits need is usually at hand:
                # `_answer_inline` answers them as they arrive, and the read returns only when one needs more.
                inline = self._answer_inline if core.state is State.TRANSACTION else None
                data = await conn.read_some(READ_CHUNK, interruptible=core.between_commands, inline=inline)
                core.receive_data(data)  # b"" when `_answer_inline` handed over
                continue
            chunks = self._ready(event)
            if chunks is None:  # it needs waiting: a store read, a login, STLS or QUIT
                if pending and type(event) is not Retrieve:
                    conn.writelines(pending)  # a login, STLS or QUIT may write itself or take a while: in order
                    pending = []
                try:
                    chunks = await self._handle(event)
                except NetError:
                    raise
                except StoreUnavailable:  # invariant 8: -ERR [SYS/TEMP] (RFC 3206 §4), no traceback: the store logs it
                    chunks = [core.unavailable()]
                    conn.log["store"] = "unavailable"
                except InsufficientStorage as exc:  # disk full: no traceback, the same -ERR [SYS/TEMP] (RFC 3206)
                    log.warning("pop3 session %s: %s", conn.session_id, exc)
                    chunks = [core.internal_error()]
                except Exception:  # invariant 5
                    log.exception("pop3 session %s: %s failed", conn.session_id, type(event).__name__)
                    chunks = [core.internal_error()]
            if chunks:
                pending += chunks
                unflushed += sum(map(len, chunks))
                if unflushed > DRAIN_ABOVE:
                    conn.writelines(pending)
                    pending = []
                    await conn.drain()
                    unflushed = 0
            if core.closed:
                if pending:
                    conn.writelines(pending)
                if conn.end is None:
                    conn.end = "quit" if core.quit else "errors"
                await conn.drain()
                return

    def _ready(self, event: object) -> Sequence[bytes] | None:
        """The reply to `event` when it needs no waiting (a `Send` that does not close the session; a RETR/TOP
        whose body was read ahead, invariant 6), else None: the loop carries it out (`_handle`)."""
        if isinstance(event, Retrieve):
            try:
                return self._from_ahead(event)
            except Exception:  # invariant 5
                log.exception("pop3 session %s: Retrieve failed", self.conn.session_id)
                return [self.core.internal_error()]
        if isinstance(event, Send) and not event.close:
            return event.chunks
        return None

    def _answer_inline(self, data: bytes) -> bool:
        """Answer commands straight from the connection's callback while the loop's read waits (net/connection.py
        invariant 12; invariant 9): feed `data` to the core and answer, in order, every command `_ready` can, all
        replies in one write (RFC 2449 §6.6 PIPELINING). True: every complete line was answered, the read goes on
        waiting. False: the first event that needs waiting is left in `_held`, or more than DRAIN_ABOVE bytes
        were written, or the next bodies are to be read ahead (invariant 10); the loop carries on from there."""
        core = self.core
        retr = core.quick_retr(data)
        if retr is not None:  # one RETR at a time, the commonest chunk (protocol.py invariant 7)
            try:
                reply = self._from_ahead(retr)
            except Exception:  # invariant 5
                log.exception("pop3 session %s: Retrieve failed", self.conn.session_id)
                reply = [core.internal_error()]
            if reply is None:
                self._held = retr
                return False
            self.conn.writelines(reply)
            return True if self._ahead or not self._in_order else self._wait_for_read_ahead()
        core.receive_data(data)
        out: list[bytes] = []
        size = 0
        while size <= DRAIN_ABOVE:
            event = core.next_event()
            if event is NEED_DATA:
                if out:
                    self.conn.writelines(out)
                return True if self._ahead or not self._in_order else self._wait_for_read_ahead()
            chunks = self._ready(event)
            if chunks is None:
                self._held = event
                break
            out += chunks
            size += sum(map(len, chunks))
        if out:
            self.conn.writelines(out)
        return False

    def _wait_for_read_ahead(self) -> bool:
        """Invariant 10: a client going through the maildrop in order took the last body read ahead, and its reply
        is out. Name the next bodies for the loop to read now, while the reply travels and the client reads it,
        rather than when the next RETR arrives, before its reply. False (the loop is to read them) or True
        (nothing left to read: the read goes on waiting)."""
        self._prefetch = [e.blob_id for e in self.core.read_ahead(
            self._last_number, READ_AHEAD_COUNT + 1, READ_AHEAD_OCTETS, sequential=True)]
        if not self._prefetch:  # the end of the maildrop, or a next body over READ_AHEAD_OCTETS: its RETR reads it
            self._in_order = False  # not looked for again at every command
            return True
        self._held = _PREFETCH
        return False

    async def _handle(self, event: object) -> list[bytes]:
        if isinstance(event, Retrieve):
            return await self._retrieve(event)
        if isinstance(event, Send):
            return list(event.chunks)
        if isinstance(event, CheckPassword):
            self.mechanism = "USER"
            user = await self.services.auth.check_password(event.username, event.password, self.conn.peer[0])
            self._failure = "wrong user name or password (or too many failures)"
            return [await self._logged_in(user, event.username)]
        if isinstance(event, StartSasl):
            return [await self._sasl_start(event)]
        if isinstance(event, SaslResponse):
            return [await self._sasl_step(event)]
        if isinstance(event, StartTls):
            return await self._stls()
        if isinstance(event, Update):
            reply = await self._update(event)
            if self.user is not None:  # RFC 1939 §6: done with the maildrop; free before the reply, so a client
                # that logs in again at once (on any node) is not refused (invariant 3)
                await asyncio.shield(self.locks.release(self.user.id, self.conn.session_id))
            return [reply]
        raise RuntimeError(f"unexpected event {event!r}")

    # --- login ----------------------------------------------------------------------------------------
    async def _logged_in(self, user: User | None, name: str) -> bytes:
        """After a credential check: lock, LOGIN-DELAY, list, enter TRANSACTION; or the right -ERR."""
        core, conn = self.core, self.conn
        self.exchange = None
        if user is None:
            conn.log["auth_failed"] = int(conn.log.get("auth_failed", 0)) + 1
            log_refusal(conn, "login", self._failure or "authentication failed",
                        [("mechanism", self.mechanism or "-"), ("user", name[:100] or "-")])
            return core.login_failed("AUTH", "Authentication failed")
        if not await self.locks.acquire(user.id, conn.session_id, self._lock_lost):
            # RFC 1939 §8 / RFC 2449 §8.1.1: authenticated, but another POP3 session has the maildrop.
            log_refusal(conn, "login", "maildrop in use by another POP3 session", [("user", user.address)])
            return core.login_failed("IN-USE", "maildrop is locked by another POP3 session")
        try:
            if await self.locks.too_soon(user.id, self.options.login_delay):
                return await _release_and(self.locks, user.id, conn.session_id,
                                          core.login_failed("LOGIN-DELAY", f"wait {self.options.login_delay} s "
                                                            "between logins"))
            store = self.services.store
            mailbox = await store.get_mailbox(user.id, "INBOX")
            if mailbox is None:
                return await _release_and(self.locks, user.id, conn.session_id,
                                          core.login_failed("SYS/PERM", "this account has no INBOX"))
            # RFC 1939 §11: announce the octets RETR will send (line ends as CRLF), kept per body at delivery.
            listing = await store.list_octets(mailbox.id)
        except BaseException:
            await asyncio.shield(self.locks.release(user.id, conn.session_id))
            raise
        validity = mailbox.uidvalidity
        entries = [Entry(uid, octets, blob_id, make_uidl(validity, uid)) for uid, blob_id, octets in listing]
        self.user = user
        self.mailbox_id = mailbox.id
        await self.locks.note_login(user.id)
        await self.services.auth.note_login(conn.peer[0])  # POP-before-SMTP window
        conn.log["user"] = user.address
        conn.log["auth"] = self.mechanism
        return core.login_ok(user.address, entries)

    def _lock_lost(self) -> None:
        self.lock_lost = True

    async def _sasl_start(self, event: StartSasl) -> bytes:
        auth = self.services.auth
        self.mechanism = event.mechanism
        self.exchange = auth.start(event.mechanism, self.conn.peer[0], self.core.tls)
        return await self._sasl_answer(await self.exchange.begin(event.initial))

    async def _sasl_step(self, event: SaslResponse) -> bytes:
        exchange = self.exchange
        if exchange is None:  # the empty response after SCRAM's server-final (RFC 4422 §5): we are done
            return await self._finish_sasl(event.data)
        return await self._sasl_answer(await exchange.respond(event.data))

    _final_user: User | None = None
    _failure = ""  # why the last credential check failed, for the refusal log line

    async def _sasl_answer(self, step: Step) -> bytes:
        exchange = self.exchange
        name = exchange.username if exchange is not None else ""
        self._failure = step.error
        if not step.done:
            return self.core.sasl_challenge(step.challenge)
        if step.ok and step.server_final:
            # RFC 4422 §5 / RFC 5034 §4: additional data with success goes out as a challenge; the client
            # answers with an empty line, then we answer +OK.
            self.exchange = None
            self._final_user = step.user
            return self.core.sasl_challenge(step.server_final)
        return await self._logged_in(step.user, name)

    async def _finish_sasl(self, data: bytes) -> bytes:
        user, self._final_user = self._final_user, None
        if data:
            log_refusal(self.conn, "login", "a non-empty response after SASL success",
                        [("mechanism", self.mechanism or "-")])
            return self.core.login_failed("AUTH", "Authentication failed (expected an empty response)")
        return await self._logged_in(user, user.address if user else "")

    # --- STLS -----------------------------------------------------------------------------------------
    async def _stls(self) -> list[bytes]:
        conn, core = self.conn, self.core
        if conn.pending or core.buffered:
            # CVE-2011-0411: commands pipelined after STLS must not be read as if they came over TLS.
            return [core.tls_refused()]
        conn.write(core.tls_go_ahead())
        try:
            await conn.start_tls()
        except PlaintextAfterStartTLS:
            conn.end = "stls-injection"  # bytes arrived while the reply was sent: close without reading them
            core.closed = True
            return []
        core.tls_started()
        return []

    # --- RETR / TOP -----------------------------------------------------------------------------------
    def _from_ahead(self, event: Retrieve) -> list[bytes] | None:
        """The reply to a RETR/TOP whose body was read ahead, or None when it was not (invariant 6)."""
        raw = self._ahead.pop(event.entry.blob_id, None)
        if raw is None:
            return None
        self._in_order = event.number == self._last_number + 1
        self._last_number = event.number
        if event.lines is None:
            self.retrieved += 1
        return self.core.message_reply(event.number, raw, event.lines)

    async def _retrieve(self, event: Retrieve) -> list[bytes]:
        chunks = self._from_ahead(event)
        if chunks is not None:
            return chunks
        # A miss: what was read ahead is not what the client asks for next, so it goes (invariant 6). Read this
        # body together with those of the RETR/TOP lines already buffered (RFC 2449 §6.6 PIPELINING) and, when
        # the client goes through the maildrop in order, of the messages after them: one store call for a run of
        # messages instead of one each.
        core, entry = self.core, event.entry
        sequential = event.number == self._last_number + 1
        self._ahead.clear()
        batch = [entry.blob_id, *(e.blob_id for e in core.read_ahead(
            event.number, READ_AHEAD_COUNT, READ_AHEAD_OCTETS, sequential=sequential))]
        self._ahead = await self.services.store.read_messages(batch)
        chunks = self._from_ahead(event)
        if chunks is None:
            self._last_number = event.number
            self._in_order = False
            return [core.message_gone(event.number)]
        return chunks

    async def _read_ahead(self) -> None:
        """Read the bodies `_answer_inline` named in `_prefetch` (invariant 10). Nothing is answered here: a
        failure (the store out of reach) only logs, and the RETR that wanted one of them reads it itself, so its
        reply says what went wrong."""
        batch, self._prefetch = self._prefetch, []
        try:
            self._ahead = await self.services.store.read_messages(batch)
        except StoreUnavailable:
            self._ahead = {}  # the engine logs the outage (invariant 8)
        except Exception:
            log.exception("pop3 session %s: reading ahead failed", self.conn.session_id)
            self._ahead = {}
        if not self._ahead:
            self._in_order = False  # not again at every command: the next RETR's miss reads what it needs

    # --- QUIT in TRANSACTION ----------------------------------------------------------------------------
    async def _update(self, event: Update) -> bytes:
        core = self.core
        if not event.uids:
            return core.update_done(0)
        if self.lock_lost:  # invariant 7: another session may have the maildrop now; its view wins
            log.warning("pop3 session %s: UPDATE refused: the maildrop lock was lost", self.conn.session_id)
            return core.update_failed()
        try:
            await self.services.store.remove_messages(self.mailbox_id, event.uids)  # durable when it returns
        except (InsufficientStorage, StoreUnavailable) as exc:
            log.warning("pop3 session %s: UPDATE failed: %s", self.conn.session_id, exc)
            return core.update_failed()
        except Exception:
            log.exception("pop3 session %s: UPDATE failed for user %s", self.conn.session_id,
                          self.user.address if self.user else "?")
            return core.update_failed()
        self.conn.log["deleted"] = len(event.uids)
        return core.update_done(len(event.uids))


async def _release_and(locks: MaildropLocks, user_id: int, session_id: str, reply: bytes) -> bytes:
    await locks.release(user_id, session_id)
    return reply
