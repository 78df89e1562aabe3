"""The IMAP session: the state machine over one connection (RFC 9051 §3, RFC 3501 §3).

Theory of operation
-------------------
`imap_handler(services, listener)` returns the `net` handler; each connection runs `Session.run()`. The loop
reads bytes into the sans-I/O `Framer`, answers literal announcements (`+` continuation, RFC 9051 §7.5, or a
refusal), parses each command (`parser.parse_command`) and dispatches it through `commands.COMMANDS`, a
table `{wire name: (allowed states, handler)}` checked in one place. Handlers live in one module per command
family (`auth`, `mailboxes`, `fetch`, `search`, `messages`, `idle`, ...); they write untagged data with
`write()` and return the tagged OK's response code and text, or raise (errors.py):

* `Bad` (and `parser.ParseError`): the command is malformed or not allowed in this state -> tagged BAD;
* `No`: the command failed (with a response code such as TRYCREATE) -> tagged NO;
* a store error: mapped to NO with NONEXISTENT / ALREADYEXISTS / CANNOT / NOPERM, and UNAVAILABLE when the
  store cannot be reached (invariant 7);
* anything else: logged with its traceback, tagged `NO [SERVERBUG]`; the session goes on.

Large APPEND messages: an APPEND literal over `STREAM_LITERAL_MIN` bytes, announced after login, is not
buffered by the framer; nor is one that would take the command's memory past `STREAM_LITERAL_MIN` plus the
command size (the later messages of a MULTIAPPEND, RFC 3502). `_stream_literal` writes it from the connection
in chunks of at most `STREAM_CHUNK` bytes straight into a file in the store's staging directory
(`Store.staging_dir`), the command text keeps an empty literal in its place (its offset is `StagedLiteral.at`,
so a CATENATE TEXT part, RFC 4469, finds its file), and the APPEND handler hands the files to
`Store.append_file` / `append_multi`, which move them into the store without a copy. A file is removed
whatever happens: by the store, by the handler, after a command that did not take it (`_drop_staged`), or when
the connection fails mid-literal.

Change notification (RFC 9051 §7.5.1, §5.2): after login the session subscribes to the user's change feed.
Before every tagged response the queued changes of the selected mailbox are reported (`notify`): EXISTS,
RECENT, FETCH FLAGS always; EXPUNGE except after FETCH, STORE and SEARCH (the UID forms excepted). IDLE
reports them as they come. A selected mailbox of another user (ACL, RFC 4314) is watched on the feed, and its
rights are read again before each command and when its ACL changes (`acl.guard`, `acl.refresh`).
`report_selected` writes them and then the ADDTO / REMOVEFROM of the RFC 5267 UPDATE contexts for the same
changes (update.py), so an ADDTO follows the EXISTS it names.

CONDSTORE and QRESYNC (RFC 7162) are per connection: `condstore` is set by the first CONDSTORE enabling command
(`enable_condstore`: ENABLE CONDSTORE or QRESYNC, SELECT/EXAMINE (CONDSTORE), STATUS HIGHESTMODSEQ, FETCH MODSEQ
or CHANGEDSINCE, SEARCH MODSEQ, STORE UNCHANGEDSINCE; §3.1) and `qresync` by ENABLE QRESYNC (§3.2.3); both
stay on until the connection ends (or UNAUTHENTICATE, RFC 8437 §3) and are copied into each `Selected`
(state.py), which writes accordingly.
UIDONLY (RFC 9586) likewise: `uidonly` is set by ENABLE UIDONLY, copied into `Selected`, and from then on every
command that takes message numbers is refused with `BAD [UIDREQUIRED]` in `_dispatch` (`uidonly.refusal`).

Once the client used NOTIFY (RFC 5465, `notify.py`), every change goes through its
`Notifier` instead (`take_change`), which also queues STATUS and LIST responses for other mailboxes, and
`read_more` waits on the feed as well as the client between commands, so those go out at once.
UNAUTHENTICATE (RFC 8437) drops all of it with the user (`forget_user`).

Invariants
1. Only the session writes tagged responses: `_dispatch` for every command that reached its handler, `_bad`
   for one that could not be framed or parsed, and the refusals of a literal before it is sent (`_literal`,
   `_over_quota_early`: TOOBIG, LIMIT, OVERQUOTA). A handler writes none itself, except STARTTLS, whose OK must
   precede the handshake (it raises `Silent`); handlers write only untagged data and the continuation requests
   of AUTHENTICATE and IDLE.
2. Every read has a limit: the command size in the framer (`limits.imap_command_length`, for the command's
   text and so for any one line of it), the literal size (`limits.literal_size`, APPEND:
   `limits.message_size`) before the `+` is sent, an AUTHENTICATE response line (`sasl_line_max()`: the
   command limit, since the same bytes may come as a SASL-IR argument inside the command), IDLE's `DONE`
   line (`IDLE_LINE_MAX`), and the bytes one command holds in memory (`STREAM_LITERAL_MIN` + the command
   size): only APPEND literals streamed to files (at most `MAX_STAGED_LITERALS` per command) lie beyond it,
   and only after login.
3. A BAD never drops the connection; after `limits.errors_per_session` of them the server says BYE.
4. Output is buffered and written with one `writelines` per response batch; a long FETCH flushes (and
   drains) every `FLUSH_BYTES`, so memory per session stays bounded by the largest single message.
5. Passwords never reach the log (`conn.log` gets the user name only).
6. At most `MAX_STAGED_LITERALS` staged APPEND files per command, and none outlives the command it came with.
7. A store that cannot be reached (`StoreUnavailable`: the database down or restarting) never ends the session:
   any command that needs it, LOGIN included, is answered `NO [UNAVAILABLE]` (RFC 5530 §3, "a subsystem is
   down") with no traceback (the engine logs the outage once per interval), and the next command tries again.
   A failed resync after the change feed was lost stays pending (`overflowed`), so the first report once the
   store answers again tells the client what it missed; until then a command's own answer stands, except NOOP
   and CHECK, whose work is that report (RFC 9051 §6.1.2, §6.4.1): they get `NO [UNAVAILABLE]`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postroom.fsutil import write_all
from postroom.net.connection import (
    Connection,
    ConnectionClosed,
    DeadlineExceeded,
    IdleTimeout,
    PlaintextAfterStartTLS,
    ShuttingDown,
)
from postroom.net.listener import logfmt
from postroom.store.api import (
    STAGING_THRESHOLD,
    AlreadyExists,
    Change,
    ChangeKind,
    Forbidden,
    InsufficientStorage,
    Invalid,
    NotFound,
    OverQuota,
    StoreError,
    StoreUnavailable,
    User,
    is_out_of_space,
)
from postroom.store.hub import SubscriptionOverflow

from . import parser as P
from .errors import Bad, Bye, No, Silent
from .state import AUTHED, LOGOUT, NOT_AUTH, Selected
from .syntax import Cursor

if TYPE_CHECKING:
    from postroom.services import Services

    from .notify import Notifier

log = logging.getLogger("postroom.imap")

FLUSH_BYTES = 256 * 1024
STREAM_LITERAL_MIN = STAGING_THRESHOLD  # APPEND literals larger than this go to a staging file (store/api.py)
STREAM_CHUNK = 256 * 1024  # largest read from the connection while streaming a literal to its file
IDLE_LINE_MAX = 1024  # IDLE's "DONE" line (RFC 2177 §3), line end included; a longer line is BAD
MAX_STAGED_LITERALS = 16  # staging files of one APPEND (MULTIAPPEND): disk and the metadata computed per message
# are held until the one store transaction (RFC 3502 §3), so both are bounded; more is `NO [LIMIT]`


@dataclass(frozen=True, slots=True)
class StagedLiteral:
    """An APPEND literal read into a file of the store's staging directory (module doc)."""

    path: Path | None  # None only with `error`
    size: int
    binary: bool  # literal8
    error: InsufficientStorage | None = None  # the file could not be written (disk full); its bytes were read
    at: int = -1  # offset in the command text of the empty literal left in its place (parser `CatPart.at`)


def base_capabilities(limits_message_size: int) -> list[str]:
    """The extensions that are complete here (issue 5's list); AUTH=, STARTTLS, LOGINDISABLED are added per
    connection."""
    return ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE",
            "UNSELECT", "CHILDREN", "LIST-EXTENDED", "LIST-STATUS", "SPECIAL-USE", "ESEARCH", "SEARCHRES",
            "BINARY", f"APPENDLIMIT={limits_message_size}", "STATUS=SIZE", "CONDSTORE", "QRESYNC",
            "ACL", "RIGHTS=texk", "LIST-MYRIGHTS",  # RFC 4314 §2.1 (RIGHTS=: the rights after RFC 2086), RFC 8440
            "COMPRESS=DEFLATE", "UNAUTHENTICATE", "NOTIFY", "WITHIN", "MULTIAPPEND", "CATENATE", "CREATE-SPECIAL-USE",
            "SAVEDATE", "PREVIEW", "METADATA", "METADATA-SERVER", "SORT", "SORT=DISPLAY",
            "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "ESORT", "OBJECTID", "UIDONLY",
            "CONTEXT=SEARCH", "CONTEXT=SORT",  # RFC 5267 §4
            "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"]  # RFC 9208 §6 (quota.py; no QUOTASET)


class Service:
    """What every IMAP session of one listener shares."""

    def __init__(self, services: Services, listener: str) -> None:
        from .commands import COMMANDS  # (the command modules import this one)

        self.commands = COMMANDS
        self.services = services
        self.listener = listener
        self.hostname = services.config.server.hostname
        self.capabilities = base_capabilities(services.config.limits.message_size)


class Session:
    """One IMAP connection's state (module doc). Slots: an idle session holds nothing it does not use."""

    __slots__ = ("service", "services", "store", "auth", "limits", "conn", "framer", "state", "user", "sel", "sub",
                 "rev2", "condstore", "qresync", "uidonly", "errors", "out", "out_size", "overflowed", "staged",
                 "notifier")

    def __init__(self, service: Service, conn: Connection) -> None:
        self.service = service
        self.services = service.services
        self.store = service.services.store
        self.auth = service.services.auth
        self.limits = service.services.config.limits
        self.conn = conn
        # Invariant 2: IMAP limits the whole command (limits.imap_command_length), so one line may be that long;
        # limits.line_length is SMTP's and POP3's.
        command_length = self.limits.imap_command_length
        self.framer = P.Framer(max_line=command_length, max_command=command_length)
        self.state = NOT_AUTH
        self.user: User | None = None
        self.sel: Selected | None = None
        self.sub: Any = None  # HubSubscription once logged in
        self.rev2 = False
        self.condstore = False  # RFC 7162 §3.1: a CONDSTORE enabling command was seen (module doc)
        self.qresync = False  # RFC 7162 §3.2.3: ENABLE QRESYNC was answered
        self.uidonly = False  # RFC 9586 §3.1: ENABLE UIDONLY was answered (uidonly.py)
        self.errors = 0
        self.out: list[bytes] = []
        self.out_size = 0
        self.overflowed = False
        self.staged: list[StagedLiteral] = []  # invariant 6: this command's files, in literal order
        self.notifier: Notifier | None = None  # NOTIFY (RFC 5465, notify.py) once the client used it

    # ---- output
    def write(self, *chunks: bytes) -> None:
        self.out.extend(chunks)
        for c in chunks:
            self.out_size += len(c)

    async def flush(self) -> None:
        if self.out:
            self.conn.writelines(self.out)
            self.out = []
            self.out_size = 0
        await self.conn.drain()

    async def maybe_flush(self) -> None:
        if self.out_size >= FLUSH_BYTES:
            await self.flush()

    def capability_list(self) -> list[str]:
        caps = list(self.service.capabilities)
        if self.state == NOT_AUTH:
            tls = self.conn.tls
            if not tls and self.conn.tls_context is not None:
                caps.append("STARTTLS")
            if not self.auth.plaintext_allowed(tls):
                caps.append("LOGINDISABLED")  # RFC 9051 §6.2.3
            caps.append("SASL-IR")
            caps.extend("AUTH=" + m for m in self.auth.mechanisms(tls))
        return caps

    def sasl_line_max(self) -> int:
        """The longest AUTHENTICATE response line (RFC 9051 §6.2.2): as long as a command may be, since a client
        may send the same response inside the command instead (RFC 4959 SASL-IR)."""
        return self.framer.max_command

    def capability_code(self) -> str:
        return "CAPABILITY " + " ".join(self.capability_list())

    # ---- reading
    async def read_more(self, between_commands: bool = False) -> None:
        await self.flush()
        self.conn.data_phase(self.framer.in_literal)  # net invariant 7: literals by rate, lines by deadline
        self.conn.command_span(self.framer.in_command)  # ... and a command across literals by one deadline
        if between_commands and self.notifier is not None and self.notifier.pushes:
            data = await self.notifier.read_or_push(self)  # RFC 5465 §3: notifications while no command runs
        else:
            data = await self.conn.read_some(interruptible=between_commands)
        self.framer.feed(data)

    async def read_line(self, limit: int) -> bytes:
        """One bare line of at most `limit` bytes, line end included (AUTHENTICATE responses: `SASL_LINE_MAX`).
        Raises Bad("Line too long") for a longer one, whose bytes are dropped."""
        while True:
            line = self.framer.next_line(limit)
            if isinstance(line, bytes):
                return line
            if isinstance(line, P.FramingError):
                raise Bad(line.text)
            await self.read_more()

    # ---- CONDSTORE (RFC 7162 §3.1)
    def enable_condstore(self) -> None:
        """A CONDSTORE enabling command: from now on FETCH responses carry MODSEQ. If a mailbox is selected, its
        HIGHESTMODSEQ is announced at once (as Dovecot does), so a client that enabled mid-session has a
        value to start from; it is the session's, below any change not reported yet (state.py)."""
        if self.condstore:
            return
        self.condstore = True
        sel = self.sel
        if sel is not None:
            sel.condstore = True
            self.write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % max(sel.modseq, 1))

    # ---- change feed
    def subscribe(self, user: User) -> None:
        self.sub = self.store.hub.subscribe(user.id)

    def forget_user(self) -> None:
        """Back to the not-authenticated state (UNAUTHENTICATE, RFC 8437): the selected mailbox is closed without
        expunging, the change feed subscription closed, and everything the user or ENABLE set is dropped, so
        the next login, of any user, starts as on a new connection. TLS and COMPRESS stay (they are the
        connection's)."""
        if self.sub is not None:
            self.sub.close()
        self.sub = None
        self.sel = None
        self.user = None
        self.rev2 = False
        self.condstore = False  # RFC 8437 §3: what ENABLE (or a CONDSTORE enabling command) turned on goes too
        self.qresync = False
        self.uidonly = False
        self.overflowed = False
        self.notifier = None
        self.state = NOT_AUTH
        self.conn.log.pop("user", None)

    def take_change(self, ch: Change) -> None:
        """One change from the feed: to NOTIFY's filters once the client used NOTIFY, else to the selected
        mailbox's queue."""
        if self.notifier is not None:
            self.notifier.take(self, ch)
        elif self.sel is not None:
            self.sel.absorb(ch)

    def drain_changes(self) -> None:
        sub = self.sub
        if sub is None:
            return
        try:
            while True:
                ch = sub.get_nowait()
                if ch is None:
                    return
                self.take_change(ch)
        except SubscriptionOverflow:
            self.overflowed = True

    async def notify(self, allow_expunge: bool) -> None:
        """Report what changed in the selected mailbox (module doc), and what NOTIFY has queued."""
        self.drain_changes()
        if self.sel is not None and self.sel.acl_changed:
            from .acl import refresh  # (acl.py imports this module)

            await refresh(self)
        if self.overflowed:
            self.overflowed = False
            self.sub.reset()
            if self.notifier is not None:
                self.notifier.overflow(self)  # RFC 5465 §5.8: NOTIFICATIONOVERFLOW, then as NOTIFY NONE
                return
            if self.sel is not None and self.sel.may("r"):  # a revoked mailbox is never read again (acl.py)
                try:
                    await self.resync_selected(allow_expunge)
                except StoreUnavailable:
                    self.overflowed = True  # invariant 7: what was lost is still unreported; the next report
                    raise
                return
        sel = self.sel
        top = sel.uids[-1] if sel is not None and sel.uids else 0
        if sel is not None and (sel.pending or sel.context_changes
                                or (sel.held and (allow_expunge or sel.condstore))):
            await self.claim_recent()
            await self.report_selected(allow_expunge)
        if self.notifier is not None:
            await self.notifier.report(self, top)

    async def resync_selected(self, allow_expunge: bool) -> None:
        """Re-read the selected mailbox and report how it differs from what the client was told: after the
        change feed overflowed, or when NOTIFY reports the mailbox again after a time it did not."""
        sel = self.sel
        assert sel is not None
        if not sel.may("r"):  # a revoked mailbox is never read again (acl.py)
            return
        mbox = await self.store.get_mailbox_by_id(sel.id)
        cols = await self.store.list_columns(sel.id, flags_only=True)
        sel.resync([(u, cols.modseqs[i], cols.flags[i], cols.keywords_at(i)) for i, u in enumerate(cols.uids)])
        # keyword changes may be among those lost: announce what the mailbox has now (state.py 5)
        self.write(*sel.announce([*(mbox.keywords if mbox else ()),
                                  *(k for kws in cols.keywords.values() for k in kws)]))
        await self.claim_recent()
        await self.report_selected(allow_expunge)

    async def report_selected(self, allow_expunge: bool) -> None:
        """Write the selected mailbox's queued changes (state.py `report`), then the RFC 5267 UPDATE contexts'
        ADDTO / REMOVEFROM for them (update.py), so an ADDTO follows the EXISTS it depends on."""
        sel = self.sel
        assert sel is not None
        changes = [*sel.context_changes, *sel.pending] if sel.contexts else []
        sel.context_changes = ()  # state.py invariant 11
        self.write(*sel.report(allow_expunge))
        if changes:
            from .update import follow  # (update.py imports this module)

            await follow(self, sel, changes)

    async def claim_recent(self) -> None:
        """Before arrivals are announced to a read-write rev1 session: claim (in the store) the \\Recent of
        those no session has claimed yet (state.py). One write per batch, none if another session has them."""
        sel = self.sel
        if sel is None or sel.readonly or sel.rev2 or sel.rights is not None:  # never another user's \Recent
            return
        top = max((ch.uid for ch in sel.pending if ch.kind is ChangeKind.APPEND), default=0)
        if top <= sel.recent_seen:
            return
        try:
            old, new = await self.store.claim_recent(sel.id)
        except NotFound:
            return  # deleted under us: the changes will say so
        sel.recent_seen = max(sel.recent_seen, new)
        sel.grant_recent(old + 1, new)

    # ---- the loop
    async def run(self) -> None:
        conn = self.conn
        self.write(b"* OK [%s] %s Postroom IMAP4rev2 ready\r\n" % (
            self.capability_code().encode(), self.service.hostname.encode()))
        try:
            while self.state != LOGOUT:
                ev = self.framer.next_event()
                if ev is P.NEED_DATA:
                    await self.read_more(between_commands=not self.framer.in_command)
                    continue
                if isinstance(ev, P.LiteralRequest):
                    await self._literal(ev)
                    continue
                try:
                    if isinstance(ev, P.FramingError):
                        await self._bad(ev.tag, ev.text)
                        continue
                    assert isinstance(ev, P.RawCommand)
                    try:
                        cmd = P.parse_command(ev.data)
                    except P.ParseError as e:
                        await self._bad(e.tag, e.text, e.code)
                        continue
                    await self._dispatch(cmd)
                finally:
                    self._drop_staged()  # invariant 6: a command that did not take its file
        except Bye as e:
            self.write(b"* BYE %s\r\n" % str(e).encode())
        except DeadlineExceeded as e:
            self.write(b"* BYE %s\r\n" % (b"Literal data arriving too slowly" if e.reason == "min-data-rate"
                                           else b"Command not received in time"))
            conn.end = "timeout"
        except IdleTimeout:
            self.write(b"* BYE Autologout; idle for too long\r\n")  # RFC 9051 §5.4
            conn.end = "timeout"
        except ShuttingDown:
            self.write(b"* BYE [UNAVAILABLE] Server shutting down\r\n")
            conn.end = "shutdown"
        except (ConnectionClosed, PlaintextAfterStartTLS):
            self.out = []
        finally:
            self._drop_staged()
            if self.sub is not None:
                self.sub.close()
            if self.out and not conn.closed:
                conn.writelines(self.out)
                self.out = []

    async def _quota_warning(self) -> None:
        """A quota warning mail (delivery/quota.py) if this write took the user past 80 % or 95 %; the write
        itself is done, so a failure here is logged, never the command's answer."""
        from postroom.delivery.quota import warn

        if self.user is None:
            return
        try:
            await warn(self.store, self.limits, self.service.hostname, self.user.id, self.user.address)
        except StoreError:
            log.exception("quota warning for %s failed (session %s)", self.user.address, self.conn.session_id)

    async def _over_quota_early(self, req: P.LiteralRequest) -> bool:
        """An APPEND literal for one of the user's own mailboxes that cannot fit their quota now is refused
        before it is sent, `NO [OVERQUOTA]` instead of the continuation (RFC 9208 §4.3; RFC 9051 §7.5 lets a
        server answer a command before its literal), not read and then refused. A mailbox of the other users' or
        shared namespaces has its owner's quota, which the store checks when the message is there. True when
        refused."""
        from postroom.delivery.quota import refusal

        from .acl import OTHER_PREFIX, SHARED_PREFIX

        name = append_target(self.framer.first_line, req.tag)
        if name is None or self.user is None or name.startswith((OTHER_PREFIX, SHARED_PREFIX)):
            return False
        why = refusal(await self.store.get_quota(self.user.id), req.size)
        if why is None:
            return False
        self.framer.reject_literal()
        log.info("%s", logfmt("refused", [("session", self.conn.session_id), ("command", "APPEND"),
                                          ("user", self.user.address), ("reason", "over-quota"),
                                          ("detail", f"{why.reason}: a literal of {req.size} octets")]))
        self.write(b"%s NO [OVERQUOTA] Quota exceeded: %s\r\n" % (req.tag.encode(), why.reason.encode()))
        return True

    async def _literal(self, req: P.LiteralRequest) -> None:
        # Invariant 2: only APPEND carries a message; any other literal is a string argument.
        if req.verb == "APPEND":
            limit = min(self.limits.literal_size, self.limits.message_size)
        else:
            limit = min(self.limits.literal_size, self.framer.max_command)
        if req.size > limit:
            self.framer.reject_literal()
            # RFC 7888 §4 / RFC 7889 §4: TOOBIG for a literal over the limit.
            self.write(b"%s NO [TOOBIG] Literal larger than %d bytes\r\n" % (req.tag.encode(), limit))
            self._count_error()
            return
        held = self.framer.command_bytes + req.size
        cap = STREAM_LITERAL_MIN + self.framer.max_command
        # A large APPEND message, or one that would take the command past its memory cap (MULTIAPPEND), goes to a
        # file; at most MAX_STAGED_LITERALS of them per command (invariant 6).
        stream = (req.verb == "APPEND" and (req.size > STREAM_LITERAL_MIN or held > cap)
                  and self.state in AUTHED)
        if stream and len(self.staged) >= MAX_STAGED_LITERALS:
            self.framer.reject_literal()
            self.write(b"%s NO [LIMIT] At most %d large messages in one APPEND\r\n"
                       % (req.tag.encode(), MAX_STAGED_LITERALS))  # RFC 5530 §3 LIMIT
            self._count_error()
            return
        if not stream and held > cap:
            # Invariant 2: what one command holds in memory is capped, however many literals it has (a second
            # large APPEND literal, many 1 MiB strings, a large APPEND before login): RFC 7889 §4 TOOBIG.
            self.framer.reject_literal()
            self.write(b"%s NO [TOOBIG] Command larger than %d bytes in memory\r\n"
                       % (req.tag.encode(), STREAM_LITERAL_MIN + self.framer.max_command))
            self._count_error()
            return
        if req.verb == "APPEND" and self.state in AUTHED and await self._over_quota_early(req):
            return
        self.framer.accept_literal(external=stream)
        if req.sync:
            self.write(b"+ Ready for literal data\r\n")
            await self.flush()
        if stream:
            await self._stream_literal(req)

    async def _stream_literal(self, req: P.LiteralRequest) -> None:
        """Read the accepted literal into a new staging file (module doc); `self.staged` gets it. A full disk
        does not end the session: the rest of the literal is read and dropped, and APPEND answers NO."""
        self.conn.data_phase(True)  # net invariant 7
        at = self.framer.command_bytes  # the empty literal's data starts here in the command text
        error: InsufficientStorage | None = None
        fd = -1
        path: Path | None = None
        try:
            fd, name = tempfile.mkstemp(dir=self.store.staging_dir(), prefix="imap-append.")
            path = Path(name)
        except OSError as exc:
            if not is_out_of_space(exc):
                raise
            error = InsufficientStorage.from_os_error(exc)

        def write(data: bytes) -> int:
            nonlocal error
            if error is None:
                try:
                    write_all(fd, data)
                except OSError as exc:  # a full disk: read the rest of the literal, then answer NO [OVERQUOTA]
                    if not is_out_of_space(exc):
                        raise
                    error = InsufficientStorage.from_os_error(exc)
            return len(data)

        try:
            got = 0
            while chunk := self.framer.take_external(STREAM_CHUNK):  # what the framer already buffered
                got += write(chunk)
            left = 0
            need = req.size - got
            while left < need:  # the rest, straight from the connection, in bounded chunks
                data = await self.conn.read_some(min(need - left, STREAM_CHUNK))
                left += write(data)
            self.framer.external_done(left)
        except BaseException:
            if path is not None:
                path.unlink(missing_ok=True)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        if error is not None and path is not None:
            path.unlink(missing_ok=True)
        self.staged.append(StagedLiteral(None if error is not None else path, req.size, req.binary, error, at))

    def take_staged(self) -> list[StagedLiteral]:
        """The APPEND handler's files, in literal order, now its business (it must remove them, or have the
        store take them)."""
        staged, self.staged = self.staged, []
        return staged

    def _drop_staged(self) -> None:
        staged, self.staged = self.staged, []
        for st in staged:
            if st.path is not None:
                st.path.unlink(missing_ok=True)

    def _count_error(self) -> None:
        self.errors += 1
        if self.errors >= self.limits.errors_per_session:
            raise Bye("Too many errors")

    async def _bad(self, tag: str, text: str, code: str = "") -> None:
        self.write(_tagged(tag, "BAD", code, text))
        self._count_error()
        await self.flush()

    async def _dispatch(self, cmd: P.Command) -> None:
        entry = self.service.commands.get(cmd.verb)  # commands.py
        if entry is None:
            await self._bad(cmd.tag, f"Unknown command {cmd.verb}")
            return
        states, handler = entry
        if self.state not in states:
            await self._bad(cmd.tag, f"{cmd.verb} not allowed in the {self.state} state")
            return
        status, code, text = "OK", "", ""
        try:
            if self.sel is not None and self.sel.rights is not None:  # another user's mailbox: RFC 4314
                from .acl import guard  # (acl.py imports this module)

                await guard(self, cmd, states)
            if self.uidonly:
                from .uidonly import CODE, refusal

                why = refusal(cmd)
                if why is not None:
                    raise Bad(why, CODE)  # RFC 9586 §3: BAD with the UIDREQUIRED response code
            code, text = await handler(self, cmd)
            if cmd.name in ("APPEND", "COPY"):
                await self._quota_warning()
        except (Bad, P.ParseError) as e:
            status, code, text = "BAD", getattr(e, "code", ""), e.text
            self._count_error()
        except No as e:
            status, code, text = "NO", e.code, e.text
        except NotFound as e:
            status, code, text = "NO", "NONEXISTENT", _clean(e)
        except AlreadyExists as e:
            status, code, text = "NO", "ALREADYEXISTS", _clean(e)
        except Invalid as e:
            status, code, text = "NO", "CANNOT", _clean(e)
        except Forbidden as e:  # RFC 5530 §3 NOPERM: the ACL (RFC 4314) does not allow it
            status, code, text = "NO", "NOPERM", _clean(e)
        except OverQuota as e:  # RFC 9208 §4.3, RFC 5530 §3: a quota (quota.py), nothing stored
            log.info("%s", logfmt("refused", [("session", self.conn.session_id), ("command", cmd.verb),
                                              ("user", self.user.address if self.user else "-"),
                                              ("reason", "over-quota"), ("detail", e)]))
            status, code, text = "NO", "OVERQUOTA", "Quota exceeded: " + _clean(e)
        except StoreUnavailable:  # RFC 5530 §3: "a subsystem is down"; the session stays (invariant 7)
            status, code, text = "NO", "UNAVAILABLE", UNAVAILABLE_TEXT
            self.conn.log["store"] = "unavailable"
        except InsufficientStorage as e:
            # RFC 5530 §3 OVERQUOTA (as Dovecot answers a full disk): nothing was stored; try again later.
            log.warning("imap command %s (session %s): %s", cmd.verb, self.conn.session_id, e)
            status, code, text = "NO", "OVERQUOTA", "Not enough disk space on the server, try again later"
        except Silent:
            await self.flush()
            return
        except (Bye, ConnectionClosed, IdleTimeout, ShuttingDown, PlaintextAfterStartTLS):
            raise
        except (StoreError, Exception) as e:
            log.exception("imap command %s failed (session %s)", cmd.verb, self.conn.session_id)
            status, code, text = "NO", "SERVERBUG", f"Internal error ({type(e).__name__})"
        if self.state != LOGOUT and self.sub is not None:
            try:
                # RFC 9051 §7.5.1: no EXPUNGE during FETCH, STORE, SEARCH (their UID forms may).
                await self.notify(allow_expunge=cmd.uid or cmd.name not in ("FETCH", "STORE", "SEARCH"))
            except StoreUnavailable:  # invariant 7: the report waits; a poll, whose work it was, fails
                if status == "OK" and cmd.name in ("NOOP", "CHECK"):
                    status, code, text = "NO", "UNAVAILABLE", UNAVAILABLE_TEXT
        self.write(_tagged(cmd.tag, status, code, text or f"{cmd.verb} completed"))
        await self.flush()


def append_target(line: bytes, tag: str) -> str | None:
    """The mailbox an APPEND command's first line names, as sent (modified UTF-7 or UTF-8), when it is an atom
    or a quoted string on that line; None when it is a literal itself, or the line is not an APPEND."""
    c = Cursor(line, tag)
    try:
        c.pos = len(tag) + 1
        if c.atom().upper() != "APPEND":
            return None
        c.sp()
        if c.peek() == 0x7B:  # "{": the name is a literal, not on this line
            return None
        return c.mailbox()
    except (P.ParseError, ValueError, IndexError):
        return None


UNAVAILABLE_TEXT = "The mail store cannot be reached now, try again later"


def _clean(e: Exception) -> str:
    return str(e).replace("\r", " ").replace("\n", " ")[:200] or type(e).__name__


def _tagged(tag: str, status: str, code: str, text: str) -> bytes:
    text = text.replace("\r", " ").replace("\n", " ")
    return (f"{tag} {status} [{code}] {text}\r\n" if code else f"{tag} {status} {text}\r\n").encode(
        "utf-8", "replace")


def imap_handler(services: Services, listener: str) -> Callable[[Connection], Awaitable[None]]:
    """The `app.HANDLER_FACTORIES` entry for "imap" and "imaps"."""
    service = Service(services, listener)

    def handler(conn: Connection) -> Awaitable[None]:
        return Session(service, conn).run()  # no coroutine frame of its own above an idle session's

    return handler
