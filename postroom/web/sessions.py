"""Webmail sessions: sign-in cookies, expiry, and the CSRF token that every state-changing request carries.

Theory of operation
-------------------
A sign-in makes a new session id, 32 random bytes (256 bits) written base64url in the cookie, and stores only
its SHA-256 (`Store.add_web_session`), so a leaked database or backup signs nobody in, and any process that has
the store open recognises the cookie. Each request hashes the cookie and looks the row up (a primary-key point
lookup). A session ends when it was not used for `web.session_idle_seconds`, when `web.session_max_seconds`
have passed since the sign-in, at sign-out, or when the user signs out everywhere (every row of the user goes).
`last_seen` is written at most once per `TOUCH_SECONDS`, so reading mail is not a disk write per click.

CSRF (OWASP "synchronizer token"): each session has its own random token, stored with it and put in a hidden
field of every form; a POST must carry it, compared in constant time (`hmac.compare_digest`). The sign-in form,
which has no session yet, uses a double-submit token instead: a random value in a short-lived pre-session cookie
and the same value in the form. SameSite=Lax on both cookies and the `Origin`/`Referer` check in mail.py are
further layers, not the only one.

Cookie (RFC 6265 §4.1.2; the `__Host-` prefix, RFC 6265bis §4.1.3.2): `HttpOnly` (no script reads it),
`SameSite=Lax`, `Path=/`; over TLS `Secure` and the `__Host-` name prefix, which a browser accepts only with
`Secure`, `Path=/` and no `Domain`, so no other host or plain-HTTP page can plant or overwrite it.

Invariants
1. A session id is never stored, logged or put in an exception; only its SHA-256 is.
2. Sign-in always makes a new id (no fixation: an id planted before the sign-in never becomes signed in).
3. `lookup` answers None for a session past either expiry and deletes its row.
4. `csrf_ok` is constant-time in the token's content and false for an empty or missing token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from postroom.config import WebConfig
from postroom.store.api import Store, WebSession

TOUCH_SECONDS = 60.0  # `last_seen` is written at most this often per session
SESSION_COOKIE = "postroom_session"
SECURE_SESSION_COOKIE = "__Host-postroom_session"
PRE_COOKIE = "postroom_signin"
SECURE_PRE_COOKIE = "__Host-postroom_signin"


def new_token() -> str:
    """32 random bytes, base64url without padding (43 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


def id_hash(session_id: str) -> str:
    """What the store keys a session by: the SHA-256 hex of the id (invariant 1)."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


def csrf_ok(expected: str, given: str | None) -> bool:
    """Is `given` the token `expected`? (invariant 4)"""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8", "surrogateescape"), given.encode("utf-8", "surrogateescape"))


def cookie_name(tls: bool, pre: bool = False) -> str:
    """The cookie's name over TLS (`__Host-` prefixed) or plain HTTP."""
    if pre:
        return SECURE_PRE_COOKIE if tls else PRE_COOKIE
    return SECURE_SESSION_COOKIE if tls else SESSION_COOKIE


def cookie_header(name: str, value: str, tls: bool, max_age: int | None) -> str:
    """A Set-Cookie value with the module doc's attributes; `max_age` 0 deletes the cookie, None: a browser-session
    cookie."""
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if tls:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Signed:
    """A signed-in request's session: the row and the id hash it was found by."""

    session: WebSession

    @property
    def user_id(self) -> int:
        return self.session.user_id

    @property
    def csrf(self) -> str:
        return self.session.csrf


class Sessions:
    """Sessions in `store` under the `[web]` expiry settings; `clock` gives seconds since the epoch."""

    def __init__(self, store: Store, config: WebConfig, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self._clock = clock

    async def create(self, user_id: int) -> tuple[str, WebSession]:
        """A new session for the user: (the id for the cookie, the stored row). Expired sessions of everyone are
        pruned on the way (two index range deletes)."""
        now = self._clock()
        await self.store.prune_web_sessions(now - self.config.session_idle_seconds,
                                            now - self.config.session_max_seconds)
        session_id = new_token()  # invariant 2: always new
        row = WebSession(id_hash(session_id), user_id, new_token(), now, now)
        await self.store.add_web_session(row)
        return session_id, row

    async def lookup(self, session_id: str | None) -> Signed | None:
        """The live session for a cookie value, or None (invariant 3). Refreshes `last_seen` now and then."""
        if not session_id or len(session_id) > 100:
            return None
        key = id_hash(session_id)
        row = await self.store.get_web_session(key)
        if row is None:
            return None
        now = self._clock()
        if now - row.last_seen > self.config.session_idle_seconds or \
                now - row.created > self.config.session_max_seconds:
            await self.store.delete_web_sessions(id_hash=key)
            return None
        if now - row.last_seen >= TOUCH_SECONDS:
            await self.store.touch_web_session(key, now)
        return Signed(row)

    async def end(self, signed: Signed) -> None:
        """Sign this session out."""
        await self.store.delete_web_sessions(id_hash=signed.session.id_hash)

    async def end_all(self, user_id: int) -> int:
        """Sign every session of the user out; how many there were."""
        return await self.store.delete_web_sessions(user_id=user_id)
