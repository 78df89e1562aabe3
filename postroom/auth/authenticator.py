"""Logins for every protocol: password checks with throttling, and the SASL mechanisms the sessions offer.

Theory of operation
-------------------
SMTP AUTH, IMAP LOGIN/AUTHENTICATE and POP3 USER/PASS/AUTH all end in `Authenticator`. A protocol session
asks `mechanisms(tls=...)` what it may advertise, starts an exchange with `start(mechanism, ip)`, and feeds it
the client's decoded responses; each step answers a challenge to send, a success with the `User`, or a failure.
The protocol core does the framing (base64 lines, `+ ` continuations, `334`); this module sees raw bytes.

Guessing is made slow for the guesser, never impossible for the owner (like Dovecot's auth penalty):

    the address     failures from one client address (IPv6: its /64) count in a window of `lockout_seconds`;
                    past `max_failures_per_ip` of them, every login attempt from it waits before it is
                    judged: 1 s, doubling per further failure, at most `max_delay_seconds`. The wait is an
                    `await`: it holds that session only, never the event loop or anyone else.
    the pair        failures for one user from one address: past `max_failures_per_user` in the window, that
                    (user, address) pair alone is refused for `lockout_seconds`. Attempts while refused extend
                    the refusal, but never past `max_lockout_seconds` after it began.

Every record is kept in memory and written through to the store (`auth_failures`), so a restart is not a reset.
With `shared` (the worker processes of `server.workers` > 1 share one store; so do the nodes on one PostgreSQL
database, issue 16 item 3), the two records a login is judged
by (the address's and the pair's) are read again from the store before it is judged and before a failure is
counted, so a failure counted in one worker counts in every other: the store is the authority, memory a copy.
Addresses in `auth.trusted_networks` are never delayed or refused: their failures are logged, not counted.

A correct password is remembered for `auth.cache_ttl` seconds (`cache.AuthCache`, like Dovecot's auth_cache):
the next login with the same name and password skips argon2 while the user's stored hash is unchanged. The
delay and the pair's refusal are judged before the cache is asked, exactly as before an argon2 check.

Refusals are logged on the logger `postroom.auth`, one line each, in logfmt (docs/CONFIG.md has a fail2ban
filter for them):

    login result=failed ip=192.0.2.7 user=alice@example.org ip_failures=2 user_failures=2
    login result=throttled ip=192.0.2.7 user=alice@example.org delay=2.000 reason="..."     (WARNING)
    login result=locked ip=192.0.2.7 user=alice@example.org until=1767225600 reason="..."   (WARNING)

`throttled`: the attempt waits `delay` seconds before it is judged; `locked`: the pair is refused until `until`
(seconds since the epoch), logged when the lock begins and for every attempt it refuses.

Invariants
1. A password is never stored, logged or put in an exception message here; neither is the server secret.
2. A correct password is refused only for a (user, address) pair that itself kept failing: failures for other
   users at the same address, or for the same user from other addresses, only ever delay it.
3. A refusal for a locked pair reads the same as a wrong password (same reply, same delay), so a prober learns
   nothing it did not cause itself.
4. A lock has a maximum length (`max_lockout_seconds` from its start) whatever follows; a delay is at most
   `max_delay_seconds`.
5. The records are bounded: at most `MAX_RECORDS` in memory and in the store (the earliest to expire are dropped
   first), usernames longer than an address are keyed by their hash, and expired records are forgotten.
6. An unknown user costs the same argon2 work as a known one (a dummy hash is verified), and SCRAM answers an
   unknown user with a salt and iteration count of the same shape as a real user's, derived from the server
   secret (RFC 5802 §9), so neither timing nor the server-first-message tells which addresses exist.
7. argon2 runs in a worker thread, at most one check per CPU at a time: a login never stalls the event loop,
   and a burst of logins queues instead of starving every other session of CPU. `argon2_checks` counts the
   checks run (and the metric `postroom_password_checks_total{how="argon2"}`); cache hits count as "cache".
8. Plain-text mechanisms (PLAIN, LOGIN) are offered only over TLS unless `auth.allow_plaintext` is set
   (RFC 4954 §4, RFC 9051 §6.2.3 LOGINDISABLED). SCRAM-SHA-256 never exposes the password and is offered always.
9. The cache answers only for a name and password that passed argon2 against the user's current stored hash,
   within `cache_ttl`, and never for a throttled wait or a refused pair (those are judged first); a pair that
   becomes locked drops the user's cached checks (cache.py invariants).
10. A client address in `auth.trusted_networks` is never delayed, never refused as a pair, and adds no record.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config import AuthConfig
from ..metrics import Metrics
from ..net.listener import logfmt
from ..net.sharedmap import SharedMap
from ..store import names
from ..store.api import AuthFailures, Store, StoreError, User
from .cache import AuthCache
from .passwords import SCRAM_ITERATIONS, SCRAM_SALT_BYTES, hash_password, parse_scram_verifier, verify_password_async

PLAINTEXT_MECHANISMS = ("PLAIN", "LOGIN")
SCRAM = "SCRAM-SHA-256"

MAX_RECORDS = 20_000  # invariant 5: ~10 MB at worst (usernames are at most 254 bytes as keys)
_EVICT = MAX_RECORDS // 10  # records dropped at once past the cap, so the sort behind it is rare
_MAX_NAME_KEY = 254  # RFC 5321 §4.5.3.1.3: the longest path; longer login names are keyed by their hash

_DUMMY_HASH = hash_password(os.urandom(16).hex())
_LOG_NAME_MAX = 100  # characters of a login name in a log line

log = logging.getLogger("postroom.auth")


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


def address_key(ip: str) -> str:
    """The key failures of a client address count under: the address itself, or for IPv6 its /64 (one
    subscriber's whole prefix, which an attacker can cycle through at no cost). Not an address: as given."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def _ip_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def canonical_name(username: str) -> str:
    """The account a login name denotes, spelled as the store spells it (`names.address`: `Alice@Example.test.`,
    `"alice"@example.test` and `alice@example.test` are one account), else the name stripped and lower-cased.
    Failures are counted, pairs refused and SCRAM decoys keyed by it, so another spelling of a name is neither
    a fresh set of guesses nor a way to tell real accounts from unknown ones (attack on issue 11)."""
    name = username.strip()
    try:
        return names.address(name)
    except StoreError:
        return name.lower()


def _name_key(username: str) -> str:
    name = canonical_name(username)
    if len(name) <= _MAX_NAME_KEY:
        return name
    return "sha256:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()  # invariant 5


class Authenticator:
    """The one place logins are judged (see the module doc). `clock` gives seconds since the epoch (records
    outlive the process); `sleep` waits (tests inject both); `secret` keys SCRAM's answers for unknown users
    and the auth cache's entries (`auth.secret.load_or_create`; None: a random one, stable for this object
    only); `metrics` counts password checks by how they were answered."""

    def __init__(self, store: Store, config: AuthConfig, clock: Callable[[], float] = time.time, *,
                 secret: bytes | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 metrics: Metrics | None = None, shared: bool = False, logins: SharedMap | None = None) -> None:
        self.store = store
        self.shared = shared  # other processes count failures in the same store: read them before judging
        self.logins = logins  # the POP-before-SMTP times of every worker process (net/sharedmap.py), or None
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._secret = secret if secret is not None else os.urandom(32)
        self._metrics = metrics
        self.cache = AuthCache(self._secret, config.cache_ttl, config.cache_size, clock)
        self.argon2_checks = 0  # invariant 7: password checks that ran argon2 (cache hits do not)
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in config.trusted_networks)
        self._records: dict[tuple[str, str], AuthFailures] = {}
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._logins: dict[str, float] = {}
        # POP-before-SMTP's window (`smtp.pop_before_smtp_minutes`, set by the server and its reloads): with a
        # store shared by nodes, logins are written there too, so another node's SMTP sees them (`sync_login`).
        self.pop_before_smtp_seconds = 0.0
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

    def trusted(self, ip: str) -> bool:
        """Is `ip` in `auth.trusted_networks` (an IPv4-mapped IPv6 address counts as its IPv4 address)?"""
        if not self._trusted:
            return False
        addr = _ip_address(ip)
        return addr is not None and any(addr in net for net in self._trusted)

    def _log(self, result: str, ip: str, username: str, **fields: object) -> None:
        level = logging.INFO if result == "failed" else logging.WARNING
        if log.isEnabledFor(level):
            name = username[:_LOG_NAME_MAX]
            log.log(level, "%s", logfmt("login", [("result", result), ("ip", ip), ("user", name or "-"),
                                                  *fields.items()]))

    def _record(self, address: str, username: str, now: float) -> AuthFailures | None:
        rec = self._records.get((address, username))
        return rec if rec is not None and rec.expires > now else None

    def delay(self, ip: str) -> float:
        """Seconds a login attempt from `ip` waits before it is judged: 0 until the address has
        `max_failures_per_ip` failures in the window, then 1 s doubling per failure, capped (from memory, as
        `locked_out`). Always 0 for a trusted address."""
        if self.trusted(ip):
            return 0.0
        rec = self._record(address_key(ip), "", self._clock())
        free = self.config.max_failures_per_ip
        if rec is None or rec.failures < free:
            return 0.0
        return float(min(self.config.max_delay_seconds, 2.0 ** min(rec.failures - free, 32)))

    def locked_out(self, ip: str, username: str) -> bool:
        """Is the pair (`username`, address of `ip`) refused right now? Never true for other pairs (invariant 2).
        Answers from memory: the records are loaded by the first `throttle` or `failed`, which every login
        path awaits before asking. Never true for a trusted address."""
        if self.trusted(ip):
            return False
        now = self._clock()
        rec = self._record(address_key(ip), _name_key(username), now) if username.strip() else None
        return rec is not None and rec.locked_until > now

    async def _load(self) -> None:
        if self._loaded:
            return
        async with self._load_lock:
            if not self._loaded:
                for rec in await self.store.load_auth_failures(self._clock(), MAX_RECORDS):
                    self._records[(rec.address, rec.username)] = rec
                self._loaded = True

    async def _refresh(self, ip: str, username: str) -> None:
        """`shared`: replace the address's and the pair's records in memory with the store's (module doc)."""
        if not self.shared or self.trusted(ip):
            return
        address = address_key(ip)
        keys = [(address, "")] + ([(address, _name_key(username))] if username.strip() else [])
        found = {(r.address, r.username): r for r in await self.store.read_auth_failures(keys, self._clock())}
        for key in keys:
            rec = found.get(key)
            if rec is None:
                self._records.pop(key, None)
            else:
                self._records[key] = rec

    async def throttle(self, ip: str, username: str = "") -> None:
        """Wait the address's delay (see `delay`); only this coroutine waits. A wait is logged as `throttled`
        with `username` (the name the client gave, for the log only). With `shared`, the address's and the
        pair's records are read from the store first, so `locked_out` afterwards answers for every worker."""
        await self._load()
        await self._refresh(ip, username)
        wait = self.delay(ip)
        if wait > 0:
            rec = self._record(address_key(ip), "", self._clock())
            failures = rec.failures if rec is not None else 0
            self._log("throttled", ip, username, delay=wait,
                      reason=f"{failures} failed logins from this address in {self.config.lockout_seconds:g} s "
                             f"(auth.max_failures_per_ip = {self.config.max_failures_per_ip})")
            await self._sleep(wait)

    def refused_locked(self, ip: str, username: str) -> None:
        """Log that an attempt of the locked pair (`username`, address of `ip`) was refused."""
        rec = self._record(address_key(ip), _name_key(username), self._clock())
        until = rec.locked_until if rec is not None else 0.0
        self._log("locked", ip, username, until=int(until),
                  reason="refused while locked: failed logins for this user from this address "
                         f"(auth.max_failures_per_user = {self.config.max_failures_per_user})")

    async def failed(self, ip: str, username: str) -> None:
        """Count a failed login (also for callers that judged it themselves, like SCRAM's proof check, or IMAP
        LOGIN with a name that is not UTF-8). Durable when it returns. From a trusted address: logged only."""
        if self.trusted(ip):
            self._log("failed", ip, username, trusted="yes")
            return
        await self._load()
        await self._refresh(ip, username)
        cfg, now = self.config, self._clock()
        address, window = address_key(ip), cfg.lockout_seconds
        changed: list[AuthFailures] = []
        rec = self._record(address, "", now)
        count = rec.failures + 1 if rec is not None and now - rec.last_failure <= window else 1
        changed.append(AuthFailures(address, "", count, now, 0.0, 0.0, now + window))
        name = _name_key(username) if username.strip() else ""
        if name:
            pair = self._record(address, name, now)
            if pair is not None and pair.locked_until > now:
                # Still refused: extend, but never past the lock's maximum length (invariant 4).
                until = max(pair.locked_until, min(now + window, pair.locked_since + cfg.max_lockout_seconds))
                pair = dataclasses.replace(pair, failures=pair.failures + 1, last_failure=now, locked_until=until,
                                           expires=max(now + window, until))
            else:
                fresh = pair is None or pair.locked_until > 0 or now - pair.last_failure > window
                count = 1 if fresh or pair is None else pair.failures + 1
                since = until = 0.0
                if count >= cfg.max_failures_per_user:
                    since, until = now, now + window
                pair = AuthFailures(address, name, count, now, since, until, max(now + window, until))
                if until:
                    dropped = self.cache.forget(name)  # invariant 9: a lock ends the user's cached checks
                    self._log("locked", ip, username, until=int(until), cache_dropped=dropped,
                              reason=f"{count} failed logins for this user from this address in {window:g} s "
                                     f"(auth.max_failures_per_user = {cfg.max_failures_per_user})")
            changed.append(pair)
        for r in changed:
            self._records[(r.address, r.username)] = r
        self._log("failed", ip, username, ip_failures=changed[0].failures,
                  user_failures=changed[1].failures if len(changed) > 1 else 0)
        gone = self._evict(now)
        kept = [r for r in changed if (r.address, r.username) in self._records]  # the store mirrors memory
        await self.store.save_auth_failures(kept, gone, now)

    async def succeeded(self, ip: str, username: str) -> None:
        """A correct password: forget the pair's failures (the address keeps its own, invariant 2 needs no more)."""
        key = (address_key(ip), _name_key(username))
        if self._records.pop(key, None) is not None:
            await self.store.save_auth_failures([], [key], self._clock())

    def _evict(self, now: float) -> list[tuple[str, str]]:
        """Keys to drop so that memory and store stay within MAX_RECORDS (invariant 5)."""
        if len(self._records) <= MAX_RECORDS:
            return []
        gone = [k for k, r in self._records.items() if r.expires <= now]
        if len(self._records) - len(gone) > MAX_RECORDS - _EVICT:
            live = sorted((r.expires, k) for k, r in self._records.items() if r.expires > now)
            gone += [k for _, k in live[: len(live) - (MAX_RECORDS - _EVICT)]]
        for k in gone:
            del self._records[k]
        return gone

    # ---- POP-before-SMTP (the seeds): a successful POP3/IMAP login lets that IP relay for a while
    async def note_login(self, ip: str) -> None:
        """Record a successful mailbox login from `ip` (POP3 or IMAP sessions await this before they answer the
        login); in `logins` when given, so that every worker process knows of it; in the store too when several
        nodes share it and the window is open (`pop_before_smtp_seconds`), so a client that relays through
        another node right after its login is let through there (a failed write only shortens the window: this
        node still knows)."""
        now = self._clock()
        self._remember_login(ip, now)
        if self.pop_before_smtp_seconds > 0 and getattr(self.store, "shared_by_nodes", False):
            await self._store_login(ip, now)

    async def _store_login(self, ip: str, now: float) -> None:
        try:
            await self.store.note_mailbox_login(ip, now, self.pop_before_smtp_seconds)
        except Exception as exc:  # the store is out of reach: this node still knows (the window is per node then)
            log.warning("pop-before-smtp: login from %s not recorded in the store: %s", ip, exc)

    async def sync_login(self, ip: str) -> None:
        """POP-before-SMTP across nodes: learn the latest mailbox login from `ip` that any node recorded in the
        store (nothing unless the store is shared by nodes and the window is open). Call before
        `logged_in_recently` where it matters (the SMTP session does at each MAIL)."""
        if self.pop_before_smtp_seconds <= 0 or not getattr(self.store, "shared_by_nodes", False):
            return
        at = await self.store.mailbox_login(ip)
        if at > 0:
            self._remember_login(ip, at)

    def _remember_login(self, ip: str, now: float) -> None:
        if self.logins is not None:
            with self.logins.locked():
                found = self.logins.get(SharedMap.key("login", ip))
                if found is None or found[0] < now:
                    self.logins.put(SharedMap.key("login", ip), now, 0.0, now)
            return
        if self._logins.get(ip, 0.0) >= now:
            return
        self._logins[ip] = now
        if len(self._logins) > 100_000:
            for stale in list(self._logins)[:10_000]:
                del self._logins[stale]

    def logged_in_recently(self, ip: str, seconds: float) -> bool:
        """Whether `ip` logged in to a mailbox within `seconds` (POP-before-SMTP)."""
        if self.logins is not None:
            with self.logins.locked():
                found = self.logins.get(SharedMap.key("login", ip))
            return found is not None and self._clock() - found[0] <= seconds
        when = self._logins.get(ip)
        return when is not None and self._clock() - when <= seconds

    # ---- passwords (LOGIN, USER/PASS, PLAIN, LOGIN mechanism)
    async def check_password(self, username: str, password: str, ip: str) -> User | None:
        """The user if `password` is right and the pair (user, address) is not refused; else None. Waits the
        address's delay first; then a remembered success (the cache, invariant 9) or argon2 decides."""
        username = canonical_name(username)
        await self.throttle(ip, username)
        if username and self.locked_out(ip, username):
            self.refused_locked(ip, username)
            await self.failed(ip, username)  # invariant 3: counted and answered like a wrong password
            return None
        user = await self.store.get_user(username) if username else None
        if user is not None and self.cache.lookup(username, password, user.password_hash):
            self._count("cache")
            await self.succeeded(ip, username)
            return user
        async with self._argon2_slots:
            self.argon2_checks += 1
            self._count("argon2")
            ok = await verify_password_async(user.password_hash if user else _DUMMY_HASH, password)
        if user is None or not ok:
            await self.failed(ip, username)
            return None
        self.cache.remember(username, password, user.password_hash)
        await self.succeeded(ip, username)
        return user

    def _count(self, how: str) -> None:
        if self._metrics is not None:
            self._metrics.password_checked(how)

    # ---- SCRAM (RFC 5802 §9)
    def scram_decoy(self, username: str) -> tuple[int, bytes]:
        """(iterations, salt) for a user without a verifier: the shape of a verifier made now (same iteration
        count, same salt length), stable per name, and not computable without the server secret."""
        key = canonical_name(username).encode("utf-8", "surrogatepass")
        salt = hmac.new(self._secret, b"scram-salt\x00" + key, hashlib.sha256).digest()[:SCRAM_SALT_BYTES]
        return SCRAM_ITERATIONS, salt

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
        # The salt is answered whether or not the pair is refused: a lock is judged at the proof, so the first
        # message never differs because of one (invariant 3).
        user = await self.auth.store.get_user(self.username)
        try:
            iterations, salt, stored_key, server_key = parse_scram_verifier(user.scram) if user else (0, b"", b"", b"")
        except ValueError:
            user = None
            iterations, salt = 0, b""
        if user is None:
            # RFC 5802 §9: answer as if the user existed, with a salt and iteration count of a real verifier's
            # shape that only the server secret can produce (invariant 6); the exchange fails at the proof.
            iterations, salt = self.auth.scram_decoy(self.username)
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
        await self.auth.throttle(self.ip, self.username)
        without_proof, sep, proof_b64 = message.rpartition(",p=")
        attrs = _scram_attrs(without_proof)
        if not sep or attrs.get("r") != self._nonce:
            await self.auth.failed(self.ip, self.username)
            return _fail("malformed client-final-message or wrong nonce")
        if attrs.get("c") != base64.b64encode(self._gs2_header.encode("utf-8")).decode("ascii"):
            await self.auth.failed(self.ip, self.username)
            return _fail("channel binding mismatch")
        if self._user is None or self._keys is None or self.auth.locked_out(self.ip, self.username):
            if self.auth.locked_out(self.ip, self.username):
                self.auth.refused_locked(self.ip, self.username)
            await self.auth.failed(self.ip, self.username)
            return _fail("bad credentials")
        stored_key, server_key = self._keys
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            proof = b""
        client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(client_signature):
            await self.auth.failed(self.ip, self.username)
            return _fail("bad credentials")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
            await self.auth.failed(self.ip, self.username)
            return _fail("bad credentials")
        server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        await self.auth.succeeded(self.ip, self.username)
        return Step(done=True, user=self._user,
                    server_final=b"v=" + base64.b64encode(server_signature))
