"""Any-state and not-authenticated commands: CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE, ENABLE, ID;
and UNAUTHENTICATE (RFC 8437), which leads back to the not-authenticated state.

Theory of operation
-------------------
Logins go through `auth.Authenticator` (throttling, constant work for unknown users, SASL mechanisms). A
successful login subscribes the session to the user's change feed, notes the IP for POP-before-SMTP and
answers with the post-login CAPABILITY as a response code (RFC 9051 §6.2.2, §6.2.3).

Invariants
1. LOGIN and the plaintext SASL mechanisms are refused before TLS unless `auth.allow_plaintext`
   (LOGINDISABLED, RFC 9051 §6.2.3; `[PRIVACYREQUIRED]`).
2. STARTTLS refuses when plaintext is pipelined after it (CVE-2011-0411): nothing buffered may be read as if
   it came over TLS. After the upgrade the framer is empty and the client must ask CAPABILITY again.
3. Failed logins answer `NO [AUTHENTICATIONFAILED]` whatever the reason (unknown user, wrong password, a
   refused user/address pair), so a prober learns nothing.
4. After UNAUTHENTICATE nothing of the previous user remains in the session (`Session.forget_user`): no
   selected mailbox (closed without expunge), no change feed, no ENABLEd extension; the next login may be
   another user's.
5. Sessions of one user in this process hold one `User` record (`shared_user`): a login keeps the record an
   earlier session of the same user holds when it is equal in every field (the record is frozen), else its
   own, which later logins then share. Weakly held: it goes with the last session. The log's "login" field
   is the record's address when they are the same text. (An idle session's bytes, bench/RESULTS.md.)
"""

from __future__ import annotations

import base64
import weakref

from postroom import __version__ as _version
from postroom.net.connection import PlaintextAfterStartTLS
from postroom.net.listener import log_refusal
from postroom.store.api import User

from . import parser as P
from .arguments import b64decode
from .encoder import quoted
from .errors import Bad, No, Result, Silent
from .session import Session
from .state import AUTH, LOGOUT


async def capability(s: Session, cmd: P.Command) -> Result:
    s.write(b"* CAPABILITY " + " ".join(s.capability_list()).encode() + b"\r\n")
    return "", "CAPABILITY completed"


async def noop(s: Session, cmd: P.Command) -> Result:
    return "", "NOOP completed"


async def logout(s: Session, cmd: P.Command) -> Result:
    s.write(b"* BYE Logging out\r\n")  # RFC 9051 §6.1.3: BYE before the tagged OK
    s.state = LOGOUT
    s.conn.end = "logout"
    return "", "LOGOUT completed"


async def starttls(s: Session, cmd: P.Command) -> Result:
    if s.conn.tls:
        raise Bad("TLS is already active")
    if s.conn.tls_context is None:
        raise No("TLS is not available on this listener")
    if s.framer.buffered or s.conn.pending:  # invariant 2
        raise Bad("Plaintext pipelined after STARTTLS")
    s.write(b"%s OK Begin TLS negotiation now\r\n" % cmd.tag.encode())
    await s.flush()
    try:
        await s.conn.start_tls()
    except PlaintextAfterStartTLS:
        s.state = LOGOUT
        s.conn.end = "starttls-injection"
        s.conn.abort()
        raise
    s.framer.reset()
    raise Silent()


_USERS: weakref.WeakValueDictionary[int, User] = weakref.WeakValueDictionary()


def shared_user(user: User) -> User:
    """The record a session logged in as `user` keeps (invariant 5): an equal one another session of this
    process holds (the password hash and SCRAM verifier strings are most of its ~600 bytes), else `user`,
    remembered for the next login. Equal records are interchangeable: `User` is frozen."""
    known = _USERS.get(user.id)
    if known is not None and known == user:
        return known
    _USERS[user.id] = user
    return user


async def _logged_in(s: Session, user: User) -> Result:
    user = shared_user(user)  # invariant 5
    if s.conn.log.get("login") == user.address:
        s.conn.log["login"] = user.address  # one string, not two equal ones
    s.user = user
    s.state = AUTH
    s.subscribe(user)
    await s.auth.note_login(s.conn.peer[0])
    s.conn.log["user"] = user.address
    return s.capability_code(), "Logged in"


async def login(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.Login)
    if not s.auth.plaintext_allowed(s.conn.tls):  # invariant 1
        raise No("LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")
    s.conn.log["login"] = cmd.args.user[:100].encode("utf-8", "replace").decode()
    try:
        cmd.args.user.encode("utf-8")
        cmd.args.password.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 cannot match any stored name or password
        await s.auth.failed(s.conn.peer[0], "")
        log_refusal(s.conn, "login", "user name or password not UTF-8", [("user", s.conn.log["login"])])
        raise No("Authentication failed", "AUTHENTICATIONFAILED") from None
    user = await s.auth.check_password(cmd.args.user, cmd.args.password, s.conn.peer[0])
    if user is None:
        log_refusal(s.conn, "login", "wrong user name or password (or too many failures)",
                    [("user", s.conn.log["login"])])
        raise No("Authentication failed", "AUTHENTICATIONFAILED")  # invariant 3
    return await _logged_in(s, user)


async def authenticate(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.Authenticate)
    try:
        exchange = s.auth.start(cmd.args.mechanism, s.conn.peer[0], s.conn.tls)
    except ValueError:
        if cmd.args.mechanism in ("PLAIN", "LOGIN") and not s.auth.plaintext_allowed(s.conn.tls):
            raise No("Plaintext authentication is disabled before STARTTLS", "PRIVACYREQUIRED") from None
        raise No("Unsupported authentication mechanism", "CANNOT") from None
    initial = cmd.args.initial
    if initial is not None:  # RFC 4959 SASL-IR: "=" is an empty initial response
        initial = b"" if initial == b"=" else b64decode(initial)
    step = await exchange.begin(initial)
    while not step.done:
        s.write(b"+ " + base64.b64encode(step.challenge) + b"\r\n")
        line = await s.read_line(s.sasl_line_max())
        if line == b"*":
            raise Bad("Authentication cancelled")  # RFC 9051 §6.2.2
        step = await exchange.respond(b64decode(line))
    if exchange.username:
        s.conn.log["login"] = exchange.username[:100]
    if not step.ok or step.user is None:
        log_refusal(s.conn, "login", step.error or "authentication failed",
                    [("mechanism", cmd.args.mechanism), ("user", exchange.username[:100] or "-")])
        raise No("Authentication failed", "AUTHENTICATIONFAILED")
    if step.server_final:
        # IMAP has no "additional data with success": send it as a challenge and take the empty answer.
        s.write(b"+ " + base64.b64encode(step.server_final) + b"\r\n")
        line = await s.read_line(s.sasl_line_max())
        if line == b"*":
            raise Bad("Authentication cancelled")
    return await _logged_in(s, step.user)


async def unauthenticate(s: Session, cmd: P.Command) -> Result:
    # RFC 8437 §3: back to not authenticated; a selected mailbox is closed without expunging (as UNSELECT).
    s.forget_user()  # invariant 4
    return s.capability_code(), "UNAUTHENTICATE completed"


async def enable(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.Names)
    enabled: list[str] = []
    for cap in cmd.args.items:
        if cap == "IMAP4REV2" and not s.rev2:  # RFC 9051 §6.3.1; unknown names are ignored (RFC 5161 §3.1)
            s.rev2 = True
            enabled.append("IMAP4rev2")
        elif cap == "CONDSTORE" and not s.condstore:  # RFC 7162 §3.1: an enabling command
            s.enable_condstore()
            enabled.append("CONDSTORE")
        elif cap == "QRESYNC" and not s.qresync:  # RFC 7162 §3.2.3: implies CONDSTORE
            s.enable_condstore()
            s.qresync = True
            enabled.append("QRESYNC")
        elif cap == "UIDONLY" and not s.uidonly:  # RFC 9586 §3.1 (uidonly.py)
            s.uidonly = True
            enabled.append("UIDONLY")
    s.write(b"* ENABLED" + b"".join(b" " + c.encode() for c in enabled) + b"\r\n")
    return "", "ENABLE completed"


async def id_(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.IdArgs)
    if cmd.args.params:
        for k, v in cmd.args.params:
            if k.lower() in ("name", "version"):
                s.conn.log["client_" + k.lower()] = (v or "")[:60]
    s.write(b"* ID (" + quoted("name") + b" " + quoted("Postroom") + b" " + quoted("version") + b" "
            + quoted(_version) + b")\r\n")  # RFC 2971 §3.2
    return "", "ID completed"

