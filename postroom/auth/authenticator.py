"""Logins for every protocol: password checks with lockout, and the SASL mechanisms the sessions offer.

Theory of operation
-------------------
SMTP AUTH, IMAP LOGIN/AUTHENTICATE and POP3 USER/PASS/AUTH all end in `Authenticator`. A protocol session
asks `mechanisms(tls=...)` what it may advertise, starts an exchange with `start(mechanism, ip)`, and feeds it
the client's decoded responses; each step answers a challenge to send, a success with the `User`, or a failure.
The protocol core does the framing (base64 lines, `+ ` continuations, `334`); this module sees raw bytes.

Invariants
1. A password is never stored, logged or put in an exception message here.
2. Failures are counted per IP and per user in a sliding window (`auth.lockout_seconds`). Past
   `max_failures_per_ip` / `max_failures_per_user` every attempt from that IP or for that user fails at once,
   without checking the password, until the window has passed; the answer is the same as for a wrong password,
   so a locked-out prober learns nothing.
3. An unknown user costs the same argon2 work as a known one (a dummy hash is verified), so timing does not
   tell which addresses exist.
4. argon2 runs in a worker thread, at most one check per CPU at a time: a login never stalls the event loop,
   and a burst of logins queues instead of starving every other session of CPU.
5. Plain-text mechanisms (PLAIN, LOGIN) are offered only over TLS unless `auth.allow_plaintext` is set
   (RFC 4954 §4, RFC 9051 §6.2.3 LOGINDISABLED). SCRAM-SHA-256 never exposes the password and is offered always.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import hashlib
import hmac
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..config import AuthConfig
from ..store.api import Store, User
from .passwords import hash_password, parse_scram_verifier, verify_password_async

PLAINTEXT_MECHANISMS = ("PLAIN", "LOGIN")
SCRAM = "SCRAM-SHA-256"

_DUMMY_HASH = hash_password(os.urandom(16).hex())


@dataclass(frozen=True)
class Step:
    """One answer of an exchange. Exactly one of: `challenge` to send (done=False); `user` (success);
    `error` (failure, a short reason for the log, never shown with the password)."""

    done: bool
    challenge: bytes = b""
    user: User | None = None
    error: str = ""
    server_final: bytes = b""  # SCRAM's server-final-message, sent with the success (RFC 5802 §3)

    @property
    def ok(self) -> bool:
        return self.done and self.user is not None


def _fail(reason: str) -> Step:
    return Step(done=True, error=reason)


class _Window:
    """Failure timestamps per key, kept for `span` seconds."""

    def __init__(self, span: float, clock: Callable[[], float]) -> None:
        self.span = span
        self.clock = clock
        self._events: dict[str, deque[float]] = {}

    def count(self, key: str) -> int:
        events = self._events.get(key)
        if not events:
            return 0
        horizon = self.clock() - self.span
        while events and events[0] < horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return 0
        return len(events)

    def add(self, key: str) -> None:
        self._events.setdefault(key, deque()).append(self.clock())
        if len(self._events) > 100_000:  # bound memory under a spray of addresses: forget the stalest keys
            for stale in list(self._events)[:10_000]:
                del self._events[stale]

    def clear(self, key: str) -> None:
        self._events.pop(key, None)


class Authenticator:
    def __init__(self, store: Store, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.config = config
        self._by_ip = _Window(config.lockout_seconds, clock)
        self._by_user = _Window(config.lockout_seconds, clock)
        self._clock = clock
        self._logins: dict[str, float] = {}
        # argon2 is CPU- and memory-hard on purpose: more checks at once than cores only starve the event loop
        # (a login storm made every session slow in bench/imap.py), so extra logins wait their turn here.
        self._argon2_slots = asyncio.Semaphore(max(1, os.cpu_count() or 1))

    # ---- policy
    def plaintext_allowed(self, tls: bool) -> bool:
        return tls or self.config.allow_plaintext

    def mechanisms(self, tls: bool) -> list[str]:
        """What a session may advertise on a connection with or without TLS."""
        mechs = list(PLAINTEXT_MECHANISMS) if self.plaintext_allowed(tls) else []
        return mechs + [SCRAM]

    def locked_out(self, ip: str, username: str = "") -> bool:
        if self._by_ip.count(ip) >= self.config.max_failures_per_ip:
            return True
        return bool(username) and self._by_user.count(username.lower()) >= self.config.max_failures_per_user

    def failed(self, ip: str, username: str) -> None:
        """Count a failed login (also for callers that judged it themselves, like SCRAM's proof check)."""
        self._by_ip.add(ip)
        if username:
            self._by_user.add(username.lower())

    # ---- POP-before-SMTP (the seeds): a successful POP3/IMAP login lets that IP relay for a while
    def note_login(self, ip: str) -> None:
        """Record a successful mailbox login from `ip` (POP3 or IMAP sessions call this)."""
        self._logins[ip] = self._clock()
        if len(self._logins) > 100_000:
            for stale in list(self._logins)[:10_000]:
                del self._logins[stale]

    def logged_in_recently(self, ip: str, seconds: float) -> bool:
        when = self._logins.get(ip)
        return when is not None and self._clock() - when <= seconds

    # ---- passwords (LOGIN, USER/PASS, PLAIN, LOGIN mechanism)
    async def check_password(self, username: str, password: str, ip: str) -> User | None:
        """The user if `password` is right and neither the IP nor the user is locked out; else None."""
        username = username.strip().lower()
        if self.locked_out(ip, username):
            self.failed(ip, username)
            return None
        user = await self.store.get_user(username) if username else None
        async with self._argon2_slots:
            ok = await verify_password_async(user.password_hash if user else _DUMMY_HASH, password)
        if user is None or not ok:
            self.failed(ip, username)
            return None
        self.succeeded(username)
        return user

    def succeeded(self, username: str) -> None:
        self._by_user.clear(username.lower())

    # ---- SASL
    def start(self, mechanism: str, ip: str, tls: bool) -> Exchange:
        """A new exchange. Raises ValueError for a mechanism that is unknown or not allowed here."""
        mech = mechanism.upper()
        if mech not in self.mechanisms(tls):
            raise ValueError(f"mechanism {mechanism} not available")
        if mech == "PLAIN":
            return _Plain(self, ip)
        if mech == "LOGIN":
            return _Login(self, ip)
        return _Scram(self, ip)


class Exchange(abc.ABC):
    """One SASL exchange. `begin(initial)` with the initial response (None if the client sent none), then
    `respond(data)` for each client response, until a Step with done=True."""

    def __init__(self, auth: Authenticator, ip: str) -> None:
        self.auth = auth
        self.ip = ip
        self.username = ""  # known once the client named itself, for the session log

    @abc.abstractmethod
    async def begin(self, initial: bytes | None) -> Step: ...

    @abc.abstractmethod
    async def respond(self, data: bytes) -> Step: ...


class _Plain(Exchange):
    """RFC 4616: message = [authzid] NUL authcid NUL passwd."""

    async def begin(self, initial: bytes | None) -> Step:
        if initial is None:
            return Step(done=False, challenge=b"")  # RFC 4616 §2: the server sends an empty challenge
        return await self.respond(initial)

    async def respond(self, data: bytes) -> Step:
        parts = data.split(b"\x00")
        if len(parts) != 3:
            return _fail("malformed PLAIN message")
        try:
            authzid, authcid, passwd = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return _fail("PLAIN message is not UTF-8")
        self.username = authcid.lower()
        if authzid and authzid.lower() != authcid.lower():
            # Acting as another user is not offered (RFC 4616 §2: the server decides who may).
            return _fail("authorization identity differs")
        user = await self.auth.check_password(authcid, passwd, self.ip)
        return Step(done=True, user=user) if user else _fail("bad credentials")


class _Login(Exchange):
    """The LOGIN mechanism (draft-murchison-sasl-login): "Username:" then "Password:"."""

    _stage = 0

    async def begin(self, initial: bytes | None) -> Step:
        if initial is not None:
            return await self.respond(initial)
        return Step(done=False, challenge=b"Username:")

    async def respond(self, data: bytes) -> Step:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return _fail("LOGIN response is not UTF-8")
        if self._stage == 0:
            self.username = text.lower()
            self._stage = 1
            return Step(done=False, challenge=b"Password:")
        user = await self.auth.check_password(self.username, text, self.ip)
        return Step(done=True, user=user) if user else _fail("bad credentials")


def _scram_attrs(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in message.split(","):
        if len(item) >= 2 and item[1] == "=":
            out.setdefault(item[0], item[2:])
    return out


def _saslname(value: str) -> str:
    # RFC 5802 §5.1: "=2C" and "=3D" stand for "," and "=" in a username.
    return value.replace("=2C", ",").replace("=3D", "=")


class _Scram(Exchange):
    """RFC 5802 / RFC 7677 SCRAM-SHA-256 without channel binding (gs2 flag "n" or "y")."""

    _client_first_bare = ""
    _server_first = ""
    _gs2_header = ""
    _nonce = ""
    _user: User | None = None
    _keys: tuple[bytes, bytes] | None = None

    async def begin(self, initial: bytes | None) -> Step:
        if initial is None or initial == b"":
            return Step(done=False, challenge=b"")
        return await self._first(initial)

    async def respond(self, data: bytes) -> Step:
        if not self._server_first:
            return await self._first(data)
        return await self._final(data)

    async def _first(self, data: bytes) -> Step:
        try:
            message = data.decode("utf-8")
        except UnicodeDecodeError:
            return _fail("client-first-message is not UTF-8")
        gs2_flag, _, rest = message.partition(",")
        authzid, _, bare = rest.partition(",")
        if gs2_flag not in ("n", "y") or not bare:
            # "p=..." asks for channel binding, which SCRAM-SHA-256 (without -PLUS) does not offer.
            return _fail("unsupported channel binding")
        attrs = _scram_attrs(bare)
        if "m" in attrs or "n" not in attrs or "r" not in attrs:
            return _fail("malformed client-first-message")
        self.username = _saslname(attrs["n"]).lower()
        if authzid and _saslname(authzid[2:]).lower() != self.username:
            return _fail("authorization identity differs")
        self._gs2_header = f"{gs2_flag},{authzid},"
        self._client_first_bare = bare
        user = None if self.auth.locked_out(self.ip, self.username) else await self.auth.store.get_user(self.username)
        try:
            iterations, salt, stored_key, server_key = parse_scram_verifier(user.scram) if user else (0, b"", b"", b"")
        except ValueError:
            user = None
            iterations, salt = 0, b""
        if user is None:
            # Answer as if the user existed (RFC 5802 §9 suggests not revealing unknown users): a made-up salt
            # that is stable per name, and the exchange fails at the proof.
            salt = hashlib.sha256(b"postroom-scram" + self.username.encode()).digest()[:16]
            iterations = 4096
        else:
            self._user = user
            self._keys = (stored_key, server_key)
        self._nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode("ascii")
        self._server_first = f"r={self._nonce},s={base64.b64encode(salt).decode('ascii')},i={iterations}"
        return Step(done=False, challenge=self._server_first.encode("ascii"))

    async def _final(self, data: bytes) -> Step:
        try:
            message = data.decode("utf-8")
        except UnicodeDecodeError:
            return _fail("client-final-message is not UTF-8")
        without_proof, sep, proof_b64 = message.rpartition(",p=")
        attrs = _scram_attrs(without_proof)
        if not sep or attrs.get("r") != self._nonce:
            self.auth.failed(self.ip, self.username)
            return _fail("malformed client-final-message or wrong nonce")
        if attrs.get("c") != base64.b64encode(self._gs2_header.encode("utf-8")).decode("ascii"):
            self.auth.failed(self.ip, self.username)
            return _fail("channel binding mismatch")
        if self._user is None or self._keys is None:
            self.auth.failed(self.ip, self.username)
            return _fail("bad credentials")
        stored_key, server_key = self._keys
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            proof = b""
        client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(client_signature):
            self.auth.failed(self.ip, self.username)
            return _fail("bad credentials")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
            self.auth.failed(self.ip, self.username)
            return _fail("bad credentials")
        server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        self.auth.succeeded(self.username)
        return Step(done=True, user=self._user,
                    server_final=b"v=" + base64.b64encode(server_signature))
