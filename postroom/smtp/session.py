"""The asyncio SMTP session: drives `protocol.ServerCore` over a `net.Connection` and applies listener policy.

Theory of operation
-------------------
One loop per connection: pull events from the core; when it needs data, write what it has produced (so a
pipelined batch is answered with one write, RFC 2920 §3.1), then read whatever has arrived. Each event is
answered before the next is pulled (core invariant 6).

Most of what a client sends is answered without the loop: its read passes `_answer_inline`, which the
connection calls from its transport callback with whole lines that arrive while the read waits
(net/connection.py invariant 12). There the core answers what it answers itself (EHLO, NOOP, RSET, errors,
DATA's 354, BDAT chunks), takes a message's lines (writing them to the staging file past the threshold), and
MAIL and RCPT are begun: their handler runs until it first waits, which with the SQLite store's synchronous
point lookups is never, so the reply leaves in the same callback (on PostgreSQL, MAIL and RCPT go to the
loop: asyncpg may connect inside `asyncio.timeout`, which needs a task). Postfix's smtp-source waits for each reply:
per message four commands, four round trips, which now cost no task step, future or timer each. The first
thing that must wait (the message at its end, AUTH, STARTTLS, a RCPT whose router waits) is handed to the loop.

Three listeners, three policies (`Policy.for_listener`):

    smtp (MX, 25)          mail for local domains, aliases and lists; anything else `550 5.7.1` unless the
                           client is in `smtp.relay_networks` or logged in to POP3/IMAP within
                           `smtp.pop_before_smtp_minutes` (POP-before-SMTP). STARTTLS offered; AUTH is not.
    submission (587)       STARTTLS before AUTH (unless `auth.allow_plaintext`), AUTH before MAIL, and the
                           envelope sender and every From/Sender header address must be the user's (their
                           address, `+detail`, an explicit alias leading to them, a list they own; never a
                           catch-all: `Router.may_send_as`), else `553 5.7.1` (RFC 6409 §6.1).
    submissions (465)      the same over implicit TLS (RFC 8314).

On the submission listeners a message without Date or Message-ID gets them (RFC 6409 §8.3, §8.4; large
receivers refuse mail without a Message-ID), added before the existing header; MX mail is left as it came.

The message goes to `delivery.Router.accept` (the one door) with this hop's Received header prepended
(RFC 5321 §4.4, with the TLS version and cipher and the authenticated user, RFC 3848 protocol names); the
`250` is sent only when the router returns, i.e. when every copy is durable.

Invariants
1. The SMTP code never touches the store: recipients, senders and messages go through the router.
2. No `250` after DATA/BDAT before `Router.accept` returned; a full disk there (`InsufficientStorage`) is
   `452 4.3.1` (RFC 3463 §3.4) with one log line, a store that cannot be reached (`StoreUnavailable`) `451
   4.3.0` (at RCPT, DATA/BDAT, or any command needing it; AUTH `454 4.7.0`) with no traceback (the engine logs
   the outage once per interval), any other failure `451 4.3.0` with its traceback.
3. STARTTLS with plaintext already pipelined after it is refused with 421 and the connection closed, before
   anything is read as if it came over TLS (CVE-2011-0411).
4. One log line per session (fields in `conn.log`, written by the listener) and one per accepted message
   with its id (built only when its logger takes INFO); never a password or message content.
5. Replies to an idle client (`421 4.4.2`, RFC 5321 §4.5.3.2.7) and at shutdown (`421 4.3.2`) end the
   session; a failed session never affects another.
6. A body past `STAGING_THRESHOLD` (store/api.py; the core's `spill_at`) is written to one staging file as it
   arrives and handed to the router as `Envelope.staged`; the file is removed when the message is answered,
   discarded (`BodyDiscarded`) or the session ends. So a session holds at most about the threshold plus one
   read of input in memory while receiving, whatever the client sends; data past SIZE is not even written.
   A full disk is `452 4.3.1` (RFC 3463 §3.4), like the store's `InsufficientStorage`.
7. Inbound trust (postroom/inbound/check.py) on the MX listener, for clients that may not relay (not in
   `smtp.relay_networks`, no POP-before-SMTP: those are ours, like Postfix's mynetworks): SPF, DKIM and DMARC
   run on the message exactly as received, before anything is changed; the Authentication-Results field goes
   on top (RFC 8601 §5), above this hop's Received. A DMARC reject is `550 5.7.1` with the message's log line
   saying `refused=dmarc`; a quarantine goes to the recipients' Junk (`Envelope.junk`). On every listener, an
   incoming Authentication-Results field that claims our host name as authserv-id is removed (RFC 8601 §5).
8. An MX client that is not exempt (`smtp.screen_exempt`, relay networks) is looked up at connect, beside the
   pregreet wait (smtp/dnsbl.py): blocklists (`smtp.dnsbl_zones`) and its forward-confirmed reverse DNS name.
   A listed client gets `554 5.7.1` at every RCPT (logged `reason=dnsbl` with zone, sender and recipient); the
   name goes into the Received field's TCP-info (RFC 5321 §4.4: `from helo (name [ip])`, only when
   confirmed) and into the session log line (`rdns=`, "unknown" when not confirmed). Exempt clients: no lookups.
9. rspamd (`rspamd.url`, postroom/inbound/rspamd.py) judges MX mail from clients that may not relay, after the
   inbound checks and before delivery: reject is `550 5.7.1`, soft reject / greylist `451 4.7.1`, add header /
   rewrite subject go to Junk with `$Junk` and an `X-Spam` field (and rspamd's Subject); rspamd unreachable
   means delivered, with `rspamd=unavailable` on the message's log line. Never both refused and stored.
   rspamd's Junk filing is `Envelope.spam`: a recipient's authenticated allow rule skips it (invariant 10).
10. Sender rules (inbound/senders.py) on every listener: an envelope sender that a block rule of every user a
   recipient leads to blocks is refused at that RCPT, `550 5.7.1`, with one refusal line `reason=sender-blocked`
   naming the rule's scope and pattern (router invariant 15 decides the rest at delivery). On the MX, an allow
   rule matching MAIL FROM skips greylisting only once SPF passes for it (the session log says
   `greylist=skipped-allowed`); after DATA the checks' authenticated senders go to the router
   (`Envelope.authenticated`), where an allow rule can only skip the spam filing.
11. The built-in score (inbound/score.py, `[inbound.score]`) of MX mail the inbound checks ran on: its field
   `X-Postroom-Score` goes on top with Authentication-Results (one arriving under that name is removed on every
   listener, like ours of RFC 8601 §5), its total and parts on the message's log line. When rspamd answered,
   the score is only logged (`score_role=logged`); otherwise over `reject_threshold` (when set) the message
   is `550 5.7.1` (`refused=score`), over `junk_threshold` it is spam (`Envelope.spam`: Junk with `$Junk`,
   except for recipients whose authenticated allow rule counts).
12. With `inbound.dmarc_reports` on, each MX message whose DMARC record has `rua` leaves one durable row for the
   domain's daily aggregate report (inbound/dmarc_reports.py) before it is answered, refused messages included.
13. Replies keep the order of the commands whichever path answers them (RFC 5321 §4.2, RFC 2920 §3.1):
   `_answer_inline` stops at the first event it may not answer and leaves it in `_held` (an event, or a begun
   handler that waits, `_Resumed`, which the loop's task then finishes exactly as if it had begun it), and the
   loop takes `_held` before it asks the core for anything; the replies written inline precede it. A handler is
   begun inline only where nothing before its first wait needs a current task (`_drives_inline`: not the
   SPF check of greylisting's allow rule, and only on a store whose reads need none, `Store.reads_without_task`:
   SQLite, not PostgreSQL). One inline call writes at most `DRAIN_ABOVE` bytes of replies plus
   one, then hands over (the loop drains); the connection offers nothing while its output is paused. Inline
   answers never end the session (QUIT and the error limit's `Closed` go through the loop), and a message's
   lines taken inline are under the data phase's minimum rate like those the loop reads (net invariant 7).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postroom.auth.authenticator import Exchange, Step
from postroom.delivery.router import (
    HEAD_LIMIT,
    Accepted,
    Destination,
    Envelope,
    ListPost,
    Rcpt,
    RouteError,
    Router,
    header_sender_fields,
)
from postroom.fsutil import write_all
from postroom.inbound import authres
from postroom.inbound.check import InboundChecks, Verdict
from postroom.inbound.dmarc_reports import evaluation as dmarc_evaluation
from postroom.inbound.rspamd import RspamdClient, RspamdResult, subject_field, subject_spans
from postroom.inbound.score import Score, score
from postroom.inbound.score import field_spans as score_spans
from postroom.inbound.senders import authenticated_senders
from postroom.inbound.spf import SpfResult
from postroom.mime.compose import complete_submission, rfc5322_date
from postroom.net.connection import (
    Connection,
    ConnectionClosed,
    DeadlineExceeded,
    IdleTimeout,
    PlaintextAfterStartTLS,
    ShuttingDown,
)
from postroom.net.listener import Handler, log_refusal, logfmt
from postroom.smtp.dnsbl import ClientInfo, look_up_client
from postroom.store.api import STAGING_THRESHOLD, InsufficientStorage, StoreUnavailable

from . import replies as R
from .events import (
    AuthAborted,
    AuthResponse,
    AuthStart,
    BodyData,
    BodyDiscarded,
    Closed,
    Expand,
    MailFrom,
    Message,
    RcptTo,
    StartTLS,
    Verify,
)
from .protocol import NEED_DATA, ServerCore
from .replies import Reply
from .states import Mode

if TYPE_CHECKING:
    from postroom.services import Services

log = logging.getLogger("postroom.smtp")
message_log = logging.getLogger("postroom.smtp.message")

READ_SIZE = 256 * 1024
DRAIN_ABOVE = 64 * 1024  # replies `_answer_inline` writes from one chunk before it hands over (inv. 13)


@dataclass(frozen=True)
class Policy:
    listener: str
    starttls: bool  # offer STARTTLS (plain listeners)
    submission: bool  # AUTH offered, AUTH required before MAIL, sender must be the user's
    relay_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    pop_before_smtp_seconds: float = 0.0

    @classmethod
    def for_listener(cls, listener: str, services: Services) -> Policy:
        cfg = services.config
        nets = tuple(ipaddress.ip_network(n, strict=False) for n in cfg.smtp.relay_networks)
        return cls(listener=listener,
                   starttls=listener in ("smtp", "submission"),
                   submission=listener in ("submission", "submissions"),
                   relay_networks=nets,
                   pop_before_smtp_seconds=cfg.smtp.pop_before_smtp_minutes * 60.0)

    def in_relay_networks(self, ip: str) -> bool:
        if not self.relay_networks:  # the usual case: skip parsing the address for every RCPT
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.relay_networks)


def ip_literal(ip: str) -> str:
    # RFC 5321 §4.1.3: "[192.0.2.1]" or "[IPv6:2001:db8::1]"
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


_last_date: tuple[tuple[int, int, int], str] = ((-1, 0, 0), "")  # (second, zone offsets) formatted last, its text


def _date_of_second(second: int) -> str:
    """`rfc5322_date(second)`, formatted once per second: every message received in one second of the clock
    carries the same date-time (RFC 5322 §3.3 has no finer unit), so the text is made once for all of them. The
    local zone's offsets are part of the key: a zone changed meanwhile (`time.tzset`) is not answered stale."""
    global _last_date
    key = (second, time.timezone, time.altzone)
    if _last_date[0] != key:
        _last_date = (key, rfc5322_date(second))
    return _last_date[1]


def _safe(text: str, limit: int = 255) -> str:
    """A HELO name or user for a header comment: printable ASCII without the comment's specials."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "()\\;" else "?" for c in text[:limit]) or "unknown"


def received_header(*, helo: str, ip: str, hostname: str, esmtp: bool, tls_version: str | None,
                    tls_cipher: str | None, user: str, smtputf8: bool, message_id: str, recipients: list[str],
                    now: float, rdns: str | None = None) -> bytes:
    """RFC 5321 §4.4 time-stamp line; `rdns` the client's forward-confirmed name (or "unknown" / None: the
    address alone). `with` names the protocol as RFC 3848 / RFC 6531 §3.7.3 register them."""
    if smtputf8:
        proto = "UTF8SMTP"
    else:
        proto = "ESMTP" if esmtp else "SMTP"
    if proto != "SMTP":
        proto += ("S" if tls_version else "") + ("A" if user else "")
    # RFC 5321 §4.4 TCP-info: the client's name only when forward-confirmed (smtp/dnsbl.py), else the address.
    tcp_info = f"{_safe(rdns)} {ip_literal(ip)}" if rdns and rdns != "unknown" else ip_literal(ip)
    lines = [f"Received: from {_safe(helo)} ({tcp_info})",
             f"\tby {hostname} (Postroom) with {proto} id {message_id}"]
    comments = []
    if tls_version:
        comments.append(f"using {tls_version} with cipher {_safe(tls_cipher or 'unknown')}")
    if user:
        comments.append(f"authenticated as {_safe(user)}")
    if comments:
        lines.append("\t(" + "; ".join(comments) + ")")
    date = _date_of_second(int(now))
    if len(recipients) == 1 and len(recipients[0]) < 500:
        # RFC 5321 §7.2: name the recipient only when there is one (no disclosure of the others).
        lines.append(f"\tfor <{recipients[0]}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


class Session:
    def __init__(self, services: Services, router: Router, policy: Policy, conn: Connection,
                 clock: Callable[[], float] = time.time, checks: InboundChecks | None = None,
                 rspamd: RspamdClient | None = None) -> None:
        self.services = services
        self.checks = checks  # inbound trust checks (MX listener only; invariant 7)
        self.rspamd = rspamd  # rspamd's verdict on MX mail (invariant 9)
        self.helo_spf: SpfResult | None = None  # the HELO identity's SPF result, once known
        self.router = router
        self.policy = policy
        self.conn = conn
        self.clock = clock
        cfg = services.config
        self.core = ServerCore(cfg.server.hostname, max_size=cfg.limits.message_size,
                               max_recipients=cfg.limits.recipients, line_length=cfg.limits.line_length,
                               max_errors=cfg.limits.errors_per_session, spill_at=STAGING_THRESHOLD)
        self.exchange: Exchange | None = None
        self.final_pending: Step | None = None  # SCRAM server-final sent as a 334; waiting for the empty reply
        self.user = ""
        self.message_seq = 0
        self.rcpts_refused = 0
        self.staged: _Staged | None = None  # invariant 6: the body being received, past STAGING_THRESHOLD
        self.client_lookups: asyncio.Task[ClientInfo] | None = None  # blocklists and FCrDNS (dnsbl.py)
        # invariant 13: what `_answer_inline` left to the loop: an event, or a command it began that must wait
        self._held: object = None

    # --- policy hooks ----------------------------------------------------------------------------------------
    def _update_offers(self) -> None:
        core, auth = self.core, self.services.auth
        core.starttls_available = self.policy.starttls and not self.conn.tls
        if not self.policy.submission:
            core.auth_mechanisms = ()
            core.auth_refusal = R.R502_NOT_IMPLEMENTED
        elif self.conn.tls or self.services.config.auth.allow_plaintext:
            core.auth_mechanisms = tuple(auth.mechanisms(self.conn.tls))
        else:
            core.auth_mechanisms = ()
            core.auth_refusal = R.R530_TLS_REQUIRED  # RFC 3207 §4 / RFC 4954 §4: STARTTLS before AUTH

    def may_relay(self) -> bool:
        if self.core.authenticated:
            return True
        ip = self.conn.peer[0]
        if self.policy.in_relay_networks(ip):
            return True
        secs = self.policy.pop_before_smtp_seconds
        return secs > 0 and self.services.auth.logged_in_recently(ip, secs)

    # --- the loop --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        conn, core = self.conn, self.core
        core.tls = conn.tls
        self._update_offers()
        self._start_client_lookups()
        if not self.policy.submission and not await self._screen():
            await self._flush()
            conn.log.update({"helo": "-", "user": "-", "messages": 0, "errors": 0})
            self._end_client_lookups()
            return
        core.greet()
        try:
            while True:
                held, self._held = self._held, None
                if isinstance(held, _Resumed):  # invariant 13: a command `_answer_inline` began, finished here
                    await held
                    continue
                ev = core.next_event() if held is None else held
                if ev is NEED_DATA:
                    await self._flush()
                    between = core.mode is Mode.COMMAND and core.pending_input == 0
                    conn.data_phase(core.mode is Mode.DATA or core.mode is Mode.BDAT)  # net invariant 7
                    try:
                        # What arrives while this waits is answered from the connection's callback (invariant
                        # 13); the read returns b"" when something needs this loop. Not for a SASL line.
                        data = await conn.read_some(READ_SIZE, interruptible=between,
                                                    inline=None if core.mode is Mode.SASL else self._answer_inline)
                    except DeadlineExceeded as exc:
                        core.close_with(R.R421_SLOW_DATA if exc.reason == "min-data-rate" else R.R421_SLOW_COMMAND)
                        conn.end = "timeout"
                        break
                    except IdleTimeout:
                        core.close_with(R.R421_TIMEOUT)
                        conn.end = "timeout"
                        break
                    except ShuttingDown:
                        core.close_with(R.R421_SHUTDOWN)
                        conn.end = "shutdown"
                        break
                    core.receive_data(data)
                elif isinstance(ev, Closed):
                    conn.end = ev.reason
                    break
                elif isinstance(ev, StartTLS):
                    if not await self._starttls():
                        return
                elif isinstance(ev, BodyData):
                    self._spill(ev.data)
                elif isinstance(ev, BodyDiscarded):
                    self._drop_staged()
                else:
                    await self._handle(ev)
            await self._flush()
        finally:
            self._drop_staged()
            conn.log.update({"helo": core.helo or "-", "user": self.user or "-", "messages": core.messages,
                             "errors": core.errors})
            self._end_client_lookups()

    def _start_client_lookups(self) -> None:
        """Start the blocklist and FCrDNS lookups of an MX client (smtp/dnsbl.py) at connect, so they run beside
        the pregreet wait; exempt and relay clients are not looked up (issue 12 item 7)."""
        smtp, door, dns, ip = self.services.config.smtp, self.services.door, self.services.dns, self.conn.peer[0]
        score = self.services.config.inbound.score
        score_zones = score.dnsbl_zones if score.enabled and self.checks is not None else ()
        if self.policy.submission or dns is None or not (smtp.dnsbl_zones or smtp.reverse_dns or score_zones):
            return
        if (door is not None and door.exempt(ip)) or self.policy.in_relay_networks(ip):
            return
        timeout = smtp.dnsbl_timeout_seconds
        self.client_lookups = asyncio.create_task(
            look_up_client(dns.with_lifetime(timeout), ip, smtp.dnsbl_zones, timeout, smtp.reverse_dns, score_zones))

    async def _client_info(self) -> ClientInfo | None:
        """The lookups' result (waiting for them, bounded by their time-out), or None when not looked up."""
        if self.client_lookups is None:
            return None
        info = await self.client_lookups
        if info.rdns is not None:
            self.conn.log["rdns"] = info.rdns
        return info

    def _end_client_lookups(self) -> None:
        """At the session's end: the name into its log line when known; unfinished lookups cancelled."""
        task = self.client_lookups
        if task is None:
            return
        if task.done() and not task.cancelled() and task.exception() is None:
            if task.result().rdns is not None:
                self.conn.log["rdns"] = task.result().rdns
        else:
            task.cancel()

    def _log_route_refusal(self, exc: RouteError, ev: object) -> None:
        """The one log line of a refused MAIL, RCPT or message (relay denied, list policy, unknown user, ...)."""
        txn = self.core.txn
        fields: list[tuple[str, Any]] = [("code", exc.code), ("esc", exc.esc)]
        if isinstance(ev, RcptTo):
            what = "rcpt"
            fields += [("from", (txn.mail_from if txn is not None else "") or "<>"),
                       ("to", ev.recipient.address)]
        elif isinstance(ev, Message):
            what = "data"
            fields += [("from", ev.mail_from or "<>"), ("rcpts", len(ev.recipients))]
        else:
            what = "mail" if isinstance(ev, MailFrom) else type(ev).__name__.lower()
        if self.core.authenticated:
            fields.append(("user", self.core.authenticated))
        log_refusal(self.conn, what, exc.text, fields)

    async def _screen(self) -> bool:
        """The MX tests before the greeting (door.py): the connection rate, then the pregreet test. False: the
        session ends with the reply already queued (and `conn.end` saying why)."""
        door, ip = self.services.door, self.conn.peer[0]
        if door is None or door.exempt(ip):
            return True
        now = self.clock()
        if not door.connection_allowed(ip, now):
            self._refuse_at_door(R.R421_CONNECTION_RATE, "connection-rate")
            return False
        delay = self.services.config.smtp.greet_delay_seconds
        if delay <= 0 or door.passes.passed(ip, now):
            return True
        try:
            early = await asyncio.wait_for(self.conn.read_some(1024, interruptible=True), delay)
        except TimeoutError:
            door.passes.add(ip, self.clock())  # it waited for the greeting, as RFC 5321 §3.1 asks
            return True
        except (ConnectionClosed, ShuttingDown):
            self.conn.end = "eof"
            return False
        self._refuse_at_door(R.R554_PREGREET, "pregreet", early=len(early))
        return False

    def _refuse_at_door(self, reply: Reply, reason: str, **fields: object) -> None:
        self.core.close_with(reply)
        self.conn.end = "refused"
        self.conn.log["refused"] = reason
        log_refusal(self.conn, "connect", reason, [("code", reply.code), *fields.items()])

    async def _flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            self.conn.write(out)
            await self.conn.drain()

    # --- answers from the connection's callback (invariant 13) --------------------------------------------------
    def _answer_inline(self, data: bytes) -> bool:
        """Take `data` from the connection's callback while the loop's read waits (net/connection.py invariant
        12) and answer what it can there, in order, all the replies of one chunk in one write (RFC 2920 §3.1).

        What the core answers itself (EHLO, NOOP, RSET, HELP, errors, the 354 of DATA, BDAT chunks) is answered
        here, a message's data is taken (and past the staging threshold written to its file), and MAIL and RCPT
        are answered too (`_drives_inline`): their handler is begun here, and one that finishes without waiting
        (the router's store reads are synchronous on SQLite) has answered. True: everything was taken and the
        read goes on waiting (in a message's data, with the connection's data phase on: net invariant 7). False:
        the loop carries on from here, with what was left in `_held` (an event it must carry out, such as the
        message once its data ended, or the begun command as `_Resumed`), or with lines past `DRAIN_ABOVE`
        bytes of replies still in the core (invariant 13)."""
        core = self.core
        core.receive_data(data)
        mode = core.mode
        out: list[bytes] = []
        size = 0
        ready = False
        while size <= DRAIN_ABOVE:
            ev = core.next_event()
            if ev is NEED_DATA:
                ready = core.mode is not Mode.SASL  # a SASL line is the loop's (the exchange awaits it)
                break
            if isinstance(ev, BodyData):
                self._spill(ev.data)  # invariant 6, as the loop does
            elif isinstance(ev, BodyDiscarded):
                self._drop_staged()
            elif isinstance(ev, (MailFrom, RcptTo)) and self._drives_inline(ev):
                run = self._handle(ev)
                try:
                    waits_on = run.send(None)
                except StopIteration:  # answered without waiting
                    pass
                else:  # it waits (a store on the network, the client's DNS lookups): the loop goes on with it
                    self._held = _Resumed(run, waits_on)
                    break
            else:  # the message, AUTH, STARTTLS, VRFY, EXPN, QUIT, too many errors: the loop's
                self._held = ev
                break
            reply = core.data_to_send()
            if reply:
                out.append(reply)
                size += len(reply)
        reply = core.data_to_send()
        if reply:
            out.append(reply)
        if out:
            self.conn.writelines(out)
        if core.mode is not mode:
            self.conn.data_phase(core.mode is Mode.DATA or core.mode is Mode.BDAT)  # net invariant 7, as the loop
        return ready

    def _drives_inline(self, ev: MailFrom | RcptTo) -> bool:
        """May `_answer_inline` begin this command's handler itself? Only where nothing the handler reaches
        before it first waits needs to run inside a task (`asyncio.timeout`, and `asyncio.wait_for` from Python
        3.12, ask for the current task): the router and the store. Not an MX RCPT that greylisting may exempt
        after an SPF check (invariant 10): that asks the DNS resolver, whose time-outs do. Neither on a store whose
        reads may need a task (`Store.reads_without_task`: PostgreSQL opens a connection inside `asyncio.timeout`).
        """
        if not self.router.reads_without_task:
            return False
        if isinstance(ev, MailFrom):
            return True
        door, checks = self.services.door, self.checks
        return (door is None or door.greylist is None or self.policy.submission or checks is None
                or not checks.inbound.spf)

    async def _handle(self, ev: object) -> None:
        try:
            if isinstance(ev, MailFrom):
                await self._mail(ev)
            elif isinstance(ev, RcptTo):
                await self._rcpt(ev)
            elif isinstance(ev, Message):
                await self._message(ev)
            elif isinstance(ev, AuthStart):
                await self._auth_start(ev)
            elif isinstance(ev, AuthResponse):
                await self._auth_response(ev)
            elif isinstance(ev, AuthAborted):
                self.exchange = None
                self.final_pending = None
            elif isinstance(ev, Verify):
                await self._vrfy(ev)
            elif isinstance(ev, Expand):
                await self._expn(ev)
            else:  # pragma: no cover - every event type is handled above
                raise AssertionError(f"unhandled event {ev!r}")
        except RouteError as exc:
            self._log_route_refusal(exc, ev)
            self.core.send(Reply(exc.code, exc.esc, (exc.text,)))
        except InsufficientStorage as exc:
            log.warning("session %s: %s", self.conn.session_id, exc)
            if isinstance(ev, Message):
                self.core.message_done(R.R452_NO_STORAGE)  # RFC 3463 §3.4: X.3.1 mail system full
            else:
                self.core.send(R.R452_NO_STORAGE)
        except StoreUnavailable:  # invariant 2: no traceback, the engine logs the outage once per interval
            self.conn.log["store"] = "unavailable"
            if isinstance(ev, (AuthStart, AuthResponse)):
                self.exchange = None
                self.core.auth_done(R.R454_AUTH_TEMP)  # RFC 4954 §6: 454 4.7.0 temporary authentication failure
            elif isinstance(ev, Message):
                self.core.message_done(R.R451_STORE_UNAVAILABLE)
            else:
                self.core.send(R.R451_STORE_UNAVAILABLE)
        except Exception:
            log.exception("session %s: error handling %s", self.conn.session_id, type(ev).__name__)
            if isinstance(ev, (AuthStart, AuthResponse)):
                self.exchange = None
                self.core.auth_done(R.R454_AUTH_TEMP)
            elif isinstance(ev, Message):
                self.core.message_done(R.R451_LOCAL_ERROR)
            else:
                self.core.send(R.R451_LOCAL_ERROR)

    # --- STARTTLS ----------------------------------------------------------------------------------------------
    async def _starttls(self) -> bool:
        conn, core = self.conn, self.core
        if core.pending_input or conn.pending:  # invariant 3
            core.close_with(R.R421_TLS_PIPELINED)
            conn.end = "tls-pipelined"
            await self._flush()
            return False
        core.send(R.R220_READY_TLS)
        await self._flush()
        try:
            await conn.start_tls()
        except PlaintextAfterStartTLS:
            conn.end = "tls-pipelined"
            conn.abort()
            return False
        core.tls_started()
        self._update_offers()
        return True

    # --- MAIL / RCPT -------------------------------------------------------------------------------------------
    async def _mail(self, ev: MailFrom) -> None:
        door = self.services.door
        if self.policy.pop_before_smtp_seconds > 0 and not self.core.authenticated:
            await self.services.auth.sync_login(self.conn.peer[0])  # a login on another node opens it too
        if self.policy.submission:
            if not self.core.authenticated:
                log_refusal(self.conn, "mail", "authentication required", [("code", 530), ("from", ev.address)])
                self.core.send(R.R530_AUTH_REQUIRED)  # RFC 4954 §6
                return
            if not await self.router.may_send_as(self.core.authenticated, ev.address):
                log_refusal(self.conn, "mail", "sender address not owned by the user",
                            [("code", 553), ("from", ev.address), ("user", self.core.authenticated)])
                self.core.send(R.R553_SENDER_NOT_OWNED)  # RFC 6409 §6.1
                return
            if door is not None and not door.take_message(self.core.authenticated, self.clock()):
                self._refused("send-limit-messages", R.R450_USER_MESSAGES, "mail")
                return
        elif door is not None and not door.exempt(self.conn.peer[0]) \
                and not door.message_allowed(self.conn.peer[0], self.clock()):
            self._refused("message-rate", R.R450_MESSAGE_RATE, "mail")
            return
        self.core.accept_mail()

    def _refused(self, reason: str, reply: Reply, what: str, **fields: object) -> None:
        """Answer a command (`what`: "mail", "rcpt") with a door refusal, logged with its reason (one line,
        `log_refusal`)."""
        self.core.send(reply)
        log_refusal(self.conn, what, reason, [("code", reply.code), ("esc", reply.esc),
                                              ("user", self.core.authenticated or "-"), *fields.items()])

    async def _rcpt(self, ev: RcptTo) -> None:
        txn = self.core.txn
        assert txn is not None
        door, user = self.services.door, self.core.authenticated
        if self.policy.submission and door is not None and user and not door.take_recipient(user, self.clock()):
            self._refused("send-limit-recipients", R.R450_USER_RECIPIENTS, "rcpt")
            return
        # DNS blocklists are applied here, not instead of the greeting (Postfix's reject_rbl_client, not
        # postscreen): the refusal's log line then names the sender and the recipient, so a listed but wanted
        # correspondent can be found and let in, and RFC 5321 §3.1's 554 greeting (then 503 to everything but
        # QUIT) is not needed. The lookups started at connect; here they are normally long done.
        info = await self._client_info()
        if info is not None and info.listed is not None:
            zone, answer = info.listed
            self.rcpts_refused += 1
            self._refused("dnsbl", R.dnsbl_blocked(self.conn.peer[0], zone), "rcpt", zone=zone, answer=answer,
                          sender=txn.mail_from or "<>", recipient=ev.recipient.address)
            return
        try:
            # RFC 1870 §6.2: a declared SIZE is checked against the recipient's quota here (452 / 552 5.2.2).
            dests = await self.router.check_recipient(ev.recipient.address, txn.mail_from, self.may_relay(),
                                                      size=txn.params.size)
        except RouteError:
            self.rcpts_refused += 1
            raise
        # Sender block lists (invariant 10, inbound/senders.py): refused for this recipient only.
        rule = await self.router.blocked_at_rcpt(dests, txn.mail_from)
        if rule is not None:
            self.rcpts_refused += 1
            whose = "the recipient" if rule.user_id is not None else f"the domain {rule.scope}"
            self._refused("sender-blocked", Reply(550, "5.7.1", (f"Sender refused by a block rule of {whose}",)),
                          "rcpt", scope=rule.scope, rule=rule.pattern, sender=txn.mail_from,
                          recipient=ev.recipient.address)
            return
        # Greylisting after the recipient is known to be ours: an unknown one gets its 550, not a 450 to retry.
        grey = door.greylist if door is not None and not self.policy.submission else None
        if grey is not None and door is not None and not self.may_relay() and not door.exempt(self.conn.peer[0]) \
                and not await self._allowed_sender(dests, txn.mail_from):
            wait = grey.check(self.conn.peer[0], txn.mail_from, ev.recipient.address, self.clock())
            if wait > 0:
                self._refused("greylisted", R.greylisted(wait), "rcpt")
                return
        self.core.accept_rcpt(ev.recipient)

    async def _allowed_sender(self, dests: Sequence[Destination], mail_from: str) -> bool:
        """Whether an allow rule of a recipient counts for `mail_from` at RCPT (invariant 10): a rule matches and
        SPF of the MAIL FROM domain passes (the only identity known before DATA: inbound/senders.py)."""
        if self.checks is None or not self.checks.inbound.spf or not await self.router.allows(dests, mail_from):
            return False
        spf = await self.checks.spf.check_mail_from(self.conn.peer[0], self.core.helo, mail_from)
        if spf.result == "pass":
            self.conn.log["greylist"] = "skipped-allowed"
        return spf.result == "pass"

    # --- the message -------------------------------------------------------------------------------------------
    async def _message(self, ev: Message) -> None:
        conn, core = self.conn, self.core
        self.message_seq += 1
        message_id = f"{conn.session_id}.{self.message_seq}"
        recipients = [r.address for r in ev.recipients]
        staged: Path | None = None
        head = ev.raw  # the start of the message, for the submission fix-ups and checks
        if ev.spilled:
            head = self.staged.head if self.staged is not None else b""
            staged = self._finish_staged(ev.raw)  # the body is in the file; the prefix goes before it
        added = b""
        if self.policy.submission:
            # RFC 6409 §8.3/§8.4: complete it before it is delivered, queued and (at sending) DKIM-signed. Mail
            # arriving on the MX port is never changed (only the Received field is prepended). The new fields
            # go before the message's own header, so they are a prefix like the Received field.
            completed = complete_submission(head, self.services.config.server.hostname, now=self.clock,
                                            sender=ev.mail_from)
            added = completed[:len(completed) - len(head)]
        info = await self._client_info()
        header = received_header(helo=core.helo, ip=conn.peer[0], rdns=info.rdns if info is not None else None,
                                 hostname=self.services.config.server.hostname,
                                 esmtp=core.esmtp, tls_version=conn.tls_version, tls_cipher=conn.tls_cipher,
                                 user=core.authenticated, smtputf8=ev.params.smtputf8, message_id=message_id,
                                 recipients=recipients, now=self.clock())
        body = b"" if ev.spilled else ev.raw
        header_too_long = (not header_complete(head)) if ev.spilled else (
            len(ev.raw) > HEAD_LIMIT and not header_complete(ev.raw[:HEAD_LIMIT]))
        if header_too_long:
            # Every check of a staged message's header (Authentication-Results removal, RFC 8601 §5; DMARC's From;
            # submission's From) reads its first HEAD_LIMIT bytes: a header longer than that is refused, not
            # half-checked. A message held in memory is held to the same limit, so one rule holds at any size.
            self._drop_staged()
            core.message_done(Reply(552, "5.3.4", (f"Message header longer than {HEAD_LIMIT // 1024} KiB",)))
            return
        verdict: Verdict | None = None
        spam_score: Score | None = None
        if self.checks is not None and not core.authenticated and not self.may_relay():
            # invariant 7: checked as received (DKIM signs the original bytes), before anything is removed.
            verdict = await self.checks.check(ip=conn.peer[0], helo=core.helo, mail_from=ev.mail_from, head=head,
                                              raw=None if ev.spilled else ev.raw, path=staged,
                                              helo_known=self.helo_spf,
                                              iprev=(info.iprev, info.rdns or "unknown")
                                              if info is not None and info.iprev else None)
            if verdict.helo_spf is not None and verdict.helo_spf.result != "temperror":
                self.helo_spf = verdict.helo_spf  # the same for the session's next messages (same client, name)
            if self.services.config.inbound.dmarc_reports and verdict.dmarc is not None:
                # inbound/dmarc_reports.py: kept (durably) for the domain's aggregate report, refusals too
                row = dmarc_evaluation(now=self.clock(), ip=conn.peer[0], dmarc=verdict.dmarc, spf=verdict.spf,
                                       dkim=verdict.dkim, action=verdict.action)
                if row is not None:
                    await self.services.store.add_dmarc_result(row)
            if verdict.action == "reject":
                self._drop_staged()
                self._log_message(message_id, ev, recipients, len(header) + ev.size, verdict,
                                  refused="dmarc")
                domain = verdict.dmarc.domain if verdict.dmarc is not None else ""
                # RFC 7489 §7.3: a rejection at the end of DATA, 5.7.1 (RFC 7372 §3.3 has no DMARC code).
                text = (f"Message refused: the DMARC policy of {domain} says reject and it failed authentication"
                        if verdict.dmarc is None or verdict.dmarc.result != "permerror" else
                        "Message refused: its From header field names no single domain DMARC can check "
                        "(RFC 7489 §6.6.1)")
                core.message_done(Reply(550, "5.7.1", (text,)))
                return
            score_cfg = self.services.config.inbound.score
            if score_cfg.enabled:
                spam_score = score(score_cfg, spf=verdict.spf, dkim=verdict.dkim, dmarc=verdict.dmarc,
                                   helo=core.helo, rdns=info.rdns if info is not None else None,
                                   listed=info.scored if info is not None else ())
                header = spam_score.field() + header
            header = verdict.header + header
        # RFC 8601 §5: fields claiming our authserv-id came from elsewhere, and so did a score field claiming to
        # be ours (inbound/score.py): removed (invariant 7).
        spans = sorted(authres.own_fields(head, self.services.config.server.hostname) + score_spans(head))
        if spans:
            if ev.spilled and staged is not None:
                await asyncio.to_thread(_remove_from_file, staged, spans)
            else:
                body = authres.remove_spans(body, spans)
        scan: RspamdResult | None = None
        scan_log: list[tuple[str, object]] = []
        if self.rspamd is not None and not core.authenticated and not self.may_relay():
            # invariant 9: rspamd sees the message as it would be stored (our Received, Authentication-Results).
            scan = await self.rspamd.check(
                prefix=header + added, raw=None if ev.spilled else body, path=staged if ev.spilled else None,
                ip=conn.peer[0], helo=core.helo, mail_from=ev.mail_from, recipients=recipients,
                hostname=info.rdns if info is not None and info.rdns != "unknown" else None,
                queue_id=message_id, user=core.authenticated)
            scan_log = [("rspamd", "unavailable")] if scan is None else [
                ("rspamd", scan.action.replace(" ", "-")), ("rspamd_score", f"{scan.score:.2f}")]
            if scan is not None and scan.action in ("reject", "soft reject", "greylist"):
                self._drop_staged()
                self._log_message(message_id, ev, recipients, len(header) + ev.size, verdict, refused="rspamd",
                                  extra=scan_log)
                if scan.action == "reject":
                    core.message_done(Reply(550, "5.7.1", ("Message refused as spam",)))
                else:  # soft reject, greylist: the sender's server tries again later
                    core.message_done(Reply(451, "4.7.1", ("Try again later",)))
                return
            if scan is not None and spam_score is not None:
                scan_log.append(("score_role", "logged"))  # invariant 11: rspamd answered, rspamd decides
            if scan is not None and scan.junk:
                added += scan.x_spam()
                if scan.subject is not None:
                    # Replace the Subject field by rspamd's (below our trace fields; RFC 5322 §3.6 lets the
                    # fields come in any order). Found in the kept start of the message, as it now is.
                    now_head = authres.remove_spans(head, spans) if spans else head
                    old = subject_spans(now_head)
                    if old and ev.spilled and staged is not None:
                        await asyncio.to_thread(_remove_from_file, staged, old)
                    elif old:
                        body = authres.remove_spans(body, old)
                    added += subject_field(scan.subject)
        spam = scan is not None and scan.junk
        if scan is None and spam_score is not None:  # invariant 11: no rspamd verdict, ours decides
            score_cfg = self.services.config.inbound.score
            if score_cfg.reject_threshold and spam_score.total > score_cfg.reject_threshold:
                self._drop_staged()
                self._log_message(message_id, ev, recipients, len(header) + ev.size, verdict, refused="score",
                                  extra=scan_log + spam_score.log_fields())
                core.message_done(Reply(550, "5.7.1", (f"Message refused as spam (score {spam_score.total:g})",)))
                return
            spam = spam_score.total > score_cfg.junk_threshold
        if spam_score is not None:
            scan_log += spam_score.log_fields()
        env = Envelope(mail_from=ev.mail_from,
                       recipients=tuple(Rcpt(r.address, r.orcpt, r.notify) for r in ev.recipients),
                       # trace fields and body as two pieces: never joined on the way to a local mailbox
                       # (router invariant 17)
                       raw=header + added, body=body, envid=ev.params.envid,
                       ret=ev.params.ret, may_relay=self.may_relay(), staged=staged,
                       # Submission checked every From address below; relay networks and POP-before-SMTP
                       # clients are trusted like Postfix's mynetworks. Anyone else's From is unchecked.
                       from_checked=self.may_relay(),
                       junk=verdict is not None and verdict.action == "quarantine",
                       spam=spam,
                       authenticated=self._authenticated(ev.mail_from, head, verdict))
        try:
            if self.policy.submission:
                if ev.spilled and not header_complete(head):
                    # A From field past what is kept of a large body's start could not be checked.
                    raise RouteError(552, "5.3.4", f"Message header longer than {HEAD_LIMIT // 1024} KiB")
                # RFC 6409 §6.1: the header's From/Sender must be the user's too, or the queue would DKIM-sign
                # a forgery with our domain (`Router.may_send_as` is the one rule, as for MAIL FROM).
                await self.router.check_header_senders(core.authenticated, head)
            accepted = await self.router.accept(env)  # invariant 2
        except RouteError as exc:
            self._log_route_refusal(exc, ev)
            core.message_done(Reply(exc.code, exc.esc, (exc.text,)))
            return
        finally:
            self._drop_staged()
        self.services.metrics.message_accepted()
        if accepted.local:
            self.services.metrics.message_delivered(accepted.local)
        self._log_message(message_id, ev, recipients, len(header) + ev.size, verdict, accepted=accepted, extra=scan_log)
        core.message_done(R.queued(message_id))

    @staticmethod
    def _authenticated(mail_from: str, head: bytes, verdict: Verdict | None) -> frozenset[str]:
        """The sender addresses the checks authenticated (inbound/senders.py), for the allow rules."""
        if verdict is None:
            return frozenset()
        header_from = [a for name, found in header_sender_fields(head) if name == "From" for a in found]
        return authenticated_senders(mail_from, header_from, verdict.spf, verdict.dkim, verdict.dmarc)

    def _log_message(self, message_id: str, ev: Message, recipients: list[str], size: int, verdict: Verdict | None,
                     accepted: Accepted | None = None, refused: str = "",
                     extra: list[tuple[str, object]] | None = None) -> None:
        """Invariant 4: the one line per message, accepted or refused by a check (with the check's name); not even
        built when the logger would drop it (`--log-level warning`)."""
        if not message_log.isEnabledFor(logging.INFO):
            return
        conn = self.conn
        fields: list[tuple[str, object]] = [
            ("id", message_id), ("session", conn.session_id), ("listener", conn.listener),
            ("from", ev.mail_from or "<>"), ("rcpts", len(recipients)), ("size", size), ("chunked", ev.chunked)]
        if accepted is not None:
            fields += [("local", accepted.local), ("queued", accepted.queued), ("held", accepted.held),
                       ("queue_ids", ",".join(map(str, accepted.queue_ids)) or "-")]
        fields.append(("user", self.core.authenticated or "-"))
        if verdict is not None:
            fields += verdict.log_fields()
        fields += extra or []
        if refused:
            fields.append(("refused", refused))
        message_log.info("%s", logfmt("message", fields))

    # --- the staging file of a large body (invariant 6) ---------------------------------------------------------
    def _spill(self, data: bytes | bytearray) -> None:
        """Append a piece of the body to the staging file (made on the first piece). A write error (disk full)
        is kept and answered when the message ends; the rest of the body is then only counted."""
        st = self.staged
        if st is None:
            fd, name = tempfile.mkstemp(dir=self.router.staging_dir(), prefix="smtp-data.")
            st = self.staged = _Staged(Path(name), fd)
        st.keep_head(data)
        if st.error is not None:
            return
        try:
            write_all(st.fd, data)  # page cache: no fsync here; the store fsyncs before it commits
        except OSError as exc:
            st.error = exc
            st.close()
            st.path.unlink(missing_ok=True)

    def _finish_staged(self, tail: bytes) -> Path:
        """Write the last bytes and close the file: it now holds the whole body. Raises the write error."""
        st = self.staged
        if st is None:  # pragma: no cover - the core spilled, so there is a file
            raise AssertionError("spilled body without a staging file")
        self._spill(tail)
        if st.error is not None:
            self._drop_staged()
            raise InsufficientStorage.from_os_error(st.error)
        st.close()
        return st.path

    def _drop_staged(self) -> None:
        st, self.staged = self.staged, None
        if st is not None:
            st.close()
            st.path.unlink(missing_ok=True)

    # --- AUTH (RFC 4954) ---------------------------------------------------------------------------------------
    async def _auth_start(self, ev: AuthStart) -> None:
        try:
            self.exchange = self.services.auth.start(ev.mechanism, self.conn.peer[0], self.conn.tls)
        except ValueError:
            self.core.send(R.R504_AUTH_MECHANISM)
            return
        await self._auth_step(await self.exchange.begin(ev.initial))

    async def _auth_response(self, ev: AuthResponse) -> None:
        if self.final_pending is not None:
            step, self.final_pending = self.final_pending, None
            # RFC 4954 §4: after the server's additional data in a 334, the client sends an empty response.
            await self._auth_step(step if ev.data == b"" else Step(done=True, error="non-empty final response"),
                                  final=True)
            return
        if self.exchange is None:  # pragma: no cover - the core only sends AuthResponse during an exchange
            self.core.auth_done(R.R501_AUTH_CANCELLED)
            return
        await self._auth_step(await self.exchange.respond(ev.data))

    async def _auth_step(self, step: Step, final: bool = False) -> None:
        core = self.core
        if not step.done:
            core.auth_challenge(step.challenge)
            return
        if step.ok and step.server_final and not final:
            self.final_pending = step
            core.auth_challenge(step.server_final)
            return
        username = self.exchange.username if self.exchange is not None else ""
        self.exchange = None
        if step.ok and step.user is not None:
            self.user = step.user.address
            core.auth_done(R.R235_AUTH_OK, step.user.address)
            self.conn.log["auth"] = "ok"
            return
        self.conn.log["auth_failed"] = int(self.conn.log.get("auth_failed", 0)) + 1
        if username:
            self.conn.log["auth_user"] = username
        log_refusal(self.conn, "login", step.error or "authentication failed",
                    [("code", 535), ("user", username[:100] or "-")])
        core.auth_done(R.R535_AUTH_FAILED)

    # --- VRFY / EXPN (RFC 5321 §3.5, §7.3) -------------------------------------------------------------------
    def _answers_allowed(self) -> bool:
        return self.services.config.smtp.vrfy_expn and bool(self.core.authenticated)

    async def _vrfy(self, ev: Verify) -> None:
        if not self._answers_allowed():
            self.core.send(R.R252_CANNOT_VRFY)  # RFC 5321 §7.3: 252 rather than disclose addresses
            return
        address = ev.argument.strip("<>").strip()
        local, _, domain = address.rpartition("@")
        if not local or not await self.router.is_local_domain(domain.lower()):
            self.core.send(R.R252_CANNOT_VRFY)
            return
        if await self.router.resolve(address):
            self.core.send(R.reply(250, "2.1.5", f"<{await self.router.normalize(address)}>"))
        else:
            self.core.send(R.R550_VRFY_UNKNOWN)

    async def _expn(self, ev: Expand) -> None:
        if not self._answers_allowed():
            self.core.send(R.R502_EXPN_DISABLED)
            return
        address = ev.argument.strip("<>").strip()
        dests = await self.router.resolve(address) if "@" in address else []
        lists = [d.ml for d in dests if isinstance(d, ListPost)]
        if not lists:
            self.core.send(R.reply(550, "5.1.1", "Not a mailing list"))
            return
        members = [f"<{m}>" for m in lists[0].members] or [f"<{lists[0].owner}>"]
        self.core.send(R.Reply(250, "2.1.5", tuple(members)))


class _Resumed:
    """A command's handler that `_answer_inline` began from the connection's callback and that then waited on
    `waits_on` (what its coroutine yielded: a future, or None for a bare `yield`): awaiting this in the
    session's task goes on with it exactly as if the task had begun it (invariant 13). The task waits on what
    the coroutine yields and sends or throws the outcome back in, as `yield from` would."""

    __slots__ = ("run", "waits_on")

    def __init__(self, run: Coroutine[Any, Any, None], waits_on: object) -> None:
        self.run = run
        self.waits_on = waits_on

    def __await__(self) -> Generator[Any, Any, None]:
        run, step = self.run, self.waits_on
        while True:
            try:
                sent = yield step
            except GeneratorExit:
                run.close()
                raise
            except BaseException as exc:  # what the task met waiting (CancelledError too) goes in
                try:
                    step = run.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    step = run.send(sent)
                except StopIteration:
                    return


class _Staged:
    """The open staging file of the body being received."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.error: OSError | None = None
        self.head = b""  # the first HEAD_LIMIT bytes: the header, for submission's fix-ups and From check

    def keep_head(self, data: bytes | bytearray) -> None:
        """Keep `data`, a piece of the body as it arrives, while the start kept is under HEAD_LIMIT bytes."""
        if len(self.head) < HEAD_LIMIT:
            self.head += bytes(data[:HEAD_LIMIT - len(self.head)])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _remove_from_file(path: Path, spans: list[tuple[int, int]]) -> None:
    """Cut the byte ranges `spans` (all in the header, at the file's start) out of the staged message at `path`:
    the rest is copied in bounded pieces into a new file that then replaces it (run in a thread)."""
    last = spans[-1][1]
    tmp = path.with_name(path.name + ".ar")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        start = src.read(last)
        dst.write(authres.remove_spans(start, spans))
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, path)


def header_complete(head: bytes) -> bool:
    """Does `head`, the start of a message, hold its whole header (RFC 5322 §2.1: it ends at the empty line)?"""
    return head.startswith(b"\r\n") or b"\r\n\r\n" in head


def smtp_handler_factory(services: Services, listener: str) -> Handler:
    """`app.HANDLER_FACTORIES` entry for the `smtp`, `submission` and `submissions` listeners."""
    router = Router(services.store, services.config, on_queued=services.wake_queue)
    policy = Policy.for_listener(listener, services)
    inbound = services.config.inbound
    checks: InboundChecks | None = None
    if listener == "smtp" and (inbound.spf or inbound.dkim or inbound.dmarc or inbound.arc):
        # The MX listener: mail from the world (submission is not checked), through the server's one resolver.
        dns = services.dns.with_lifetime(inbound.dns_timeout_seconds) if services.dns is not None else None
        checks = InboundChecks(services.config, dns)
    rspamd: RspamdClient | None = None
    if listener == "smtp" and services.config.rspamd.url:
        rspamd = RspamdClient(services.config.rspamd.url, services.config.rspamd.timeout_seconds)

    async def handler(conn: Connection) -> None:
        await Session(services, router, policy, conn, checks=checks, rspamd=rspamd).run()

    return handler
