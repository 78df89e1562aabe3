"""The webmail's settings page: password, display name and signature, identities, the out-of-office reply, and the
user's blocked and allowed senders.

Theory of operation
-------------------
`Settings(webmail)` adds two routes to the webmail's (mail.py):

    GET  /mail/settings     the page: one form per section, server-rendered, working without script
    POST /mail/settings     `action` = password | profile | identities | vacation | rule-add | rule-remove

Every POST goes through `Webmail._checked_post` (session, same origin, CSRF token: mail.py invariant 2), and names
nothing but the signed-in user: the settings row, the password and the sender rules are all found by the
session's user id (or that user's own address), never by an id or address from the form (invariant 1). A
change answers 303 back to the page with `?done=KEY` (a key of `DONE`, so the redirect is built here: mail.py
invariant 4); a refused one answers the page again with the reason and 400 (403 for a wrong current password).

Password: the current password is checked through the server's one `Authenticator` (`check_password`: the same
throttling, failure counting and lockout as IMAP LOGIN, so a wrong one here counts toward the lock of the user
and address like any failed login); the new one, typed twice, must pass `adminops.check_password`, and its
argon2 hash and SCRAM verifiers are made together (`make_credentials`, as `postroom user passwd` does) and
written by `Store.set_password`, which ends every web session of the user in the same transaction. The browser
that changed it gets a new session at once (a new id, sessions.py invariant 2) in the redirect's cookie, and the
page says that the other webmail sessions were signed out and this one stays signed in (mail apps already
connected keep their sessions until they reconnect, as with Dovecot).

Identities are `Router.identities` (the user's address and the explicit aliases leading to them, never a
catch-all): the page shows them, and the user picks the default one (compose.py starts new messages from it) and
a display name per identity (the From field's name; the display name of the profile when empty). The
out-of-office fields are stored in `UserSettings` and acted on at delivery (delivery/autoreply.py); dates are
whole days in UTC, the end day included. Sender rules are `Store.add_sender_rule` / `remove_sender_rule` on the
user's own scope (their address): the very rows the router enforces at RCPT and delivery (router invariant 15).
The reading page has a "Block sender" button posting `rule-add` with the message's From address.

Invariants
1. A POST changes only the signed-in user's settings, password or sender rules (module doc).
2. Every value is length-limited (`LIMITS`) before it is stored; a longer one is refused with the field named.
3. The password is never logged, echoed on the page or kept beyond the request.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from postroom import adminops
from postroom.auth.passwords import make_credentials
from postroom.delivery import autoreply
from postroom.store.api import Invalid, NotFound, UserSettings
from postroom.web.server import _safe
from postroom.web.sessions import Signed, cookie_header, cookie_name

if TYPE_CHECKING:
    from postroom.web.mail import Webmail

log = logging.getLogger("postroom.web")

LIMITS = {"display_name": 200, "signature": 4000, "identity_name": 200, "vacation_subject": 200,
          "vacation_text": 10_000, "pattern": 320, "password": 1024}
DAY = 86400
DONE = {
    "password": ("Password changed. Your other webmail sessions were signed out; this one stays signed in. Mail apps"
                 " already connected stay connected until they reconnect, then need the new password."),
    "profile": "Display name and signature saved.",
    "identities": "Identities saved.",
    "vacation": "Out-of-office reply saved.",
    "rule-add": "Sender rule added.",
    "rule-remove": "Sender rule removed.",
}
KIND_WORDS = {"block": "Blocked", "allow": "Allowed"}


class _Refused(Exception):
    def __init__(self, text: str, status: int = 400, reason: str = "invalid") -> None:
        super().__init__(text)
        self.text = text
        self.status = status
        self.reason = reason


def _field(form: dict[str, list[str]], key: str, limit_key: str, label: str) -> str:
    """The form's `key` (first value, "" when missing), refused past LIMITS[limit_key] characters (invariant 2)."""
    values = form.get(key)
    value = values[0] if values else ""
    if len(value) > LIMITS[limit_key]:
        raise _Refused(f"{label} is too long: at most {LIMITS[limit_key]} characters.")
    return value


def _one_line(text: str) -> str:
    return " ".join(text.split())


def day_start(text: str, label: str) -> float | None:
    """A "YYYY-MM-DD" day (an `<input type=date>` value) as the time its day starts in UTC; None for ""."""
    text = text.strip()
    if not text:
        return None
    try:
        t = time.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise _Refused(f"{label} is not a date (YYYY-MM-DD).") from None
    return float(calendar.timegm(t))


def day_text(t: float | None, end: bool = False) -> str:
    """The "YYYY-MM-DD" of a stored time (the day before for an end time: the end day is shown included)."""
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d", time.gmtime(t - DAY if end else t))


class Settings:
    """The settings routes (module doc) of `mail` (the Webmail: sessions, templates, the authenticator)."""

    def __init__(self, mail: Webmail) -> None:
        self.mail = mail
        self.store = mail.store

    def routes(self) -> list[BaseRoute]:
        """The routes to add to the webmail's."""
        return [
            Route("/mail/settings", self.page, methods=["GET"]),
            Route("/mail/settings", self.post, methods=["POST"]),
        ]

    async def page(self, request: Request) -> Response:
        """GET /mail/settings: the page, with the notice of `?done=` when it names one of DONE."""
        signed = await self.mail._signed(request)
        if signed is None:
            return RedirectResponse("/mail/", status_code=303)
        return await self._render(signed, done=DONE.get(request.query_params.get("done", ""), ""))

    async def _render(self, signed: Signed, *, done: str = "", error: str = "", status: int = 200,
                      shown: UserSettings | None = None) -> Response:
        settings = shown if shown is not None else await self.store.get_user_settings(signed.user_id)
        identities = await self.mail.compose.identities(signed.user_id)
        account = await self.mail._account(signed.user_id)
        rules = await self.store.list_sender_rules(account["address"]) if account["address"] else []
        default = settings.default_identity if settings.default_identity in identities else \
            (identities[0] if identities else "")
        return self.mail._page(
            "settings.html", status=status, signed=signed, csrf=signed.csrf,
            folders=await self.mail._folders(signed.user_id), current=None, settings=settings, done=done,
            error=error, identities=[(i, settings.identity_names.get(i.lower(), "")) for i in identities],
            default_identity=default, blocked=[r.pattern for r in rules if r.kind == "block"],
            allowed=[r.pattern for r in rules if r.kind == "allow"],
            vacation_start=day_text(settings.vacation_start), vacation_end=day_text(settings.vacation_end, True),
            limits=LIMITS, max_days=autoreply.MAX_DAYS, **account)

    async def post(self, request: Request) -> Response:
        """POST /mail/settings (module doc): 303 back to the page, or the page with the refusal."""
        checked = await self.mail._checked_post(request)
        if isinstance(checked, Response):
            return checked
        signed, form = checked
        action = (form.get("action") or [""])[0]
        user = await self.store.get_user_by_id(signed.user_id)
        if user is None:
            return self.mail._error(403, "Your account is gone.", signed)
        works = {"password": self._password, "profile": self._profile, "identities": self._identities,
                 "vacation": self._vacation, "rule-add": self._rule_add, "rule-remove": self._rule_remove}
        work = works.get(action)
        if work is None:
            return self.mail._error(400, "Unknown action.", signed)
        try:
            response = await work(request, signed, user.address, form)
        except _Refused as exc:
            log.info("web settings result=refused action=%s reason=%s user=%s peer=%s", action, exc.reason,
                     _safe(user.address), _peer(request))
            return await self._render(signed, error=exc.text, status=exc.status)
        log.info("web settings result=ok action=%s user=%s peer=%s", action, _safe(user.address), _peer(request))
        if response is not None:
            return response
        return RedirectResponse(f"/mail/settings?done={action}", status_code=303)

    # ---- the sections
    async def _password(self, request: Request, signed: Signed, address: str,
                        form: dict[str, list[str]]) -> Response | None:
        current = _field(form, "current", "password", "The current password")
        new = _field(form, "new", "password", "The new password")
        again = _field(form, "again", "password", "The new password, again")
        if not current:
            raise _Refused("Enter your current password.", reason="empty")
        client = request.client.host if request.client else ""
        # The one Authenticator: throttled, counted and locked like an IMAP LOGIN (module doc).
        if await self.mail.auth.check_password(address, current, client) is None:
            raise _Refused("The current password is wrong.", 403, "bad-current-password")
        if new != again:
            raise _Refused("The two new passwords differ: type the same one twice.", reason="mismatch")
        try:
            adminops.check_password(new)
        except adminops.AdminError as exc:
            raise _Refused(f"The new password cannot be used: {exc}.", reason="weak") from None
        password_hash, scram = await asyncio.to_thread(make_credentials, new)  # argon2: ~0.1 s of CPU
        await self.store.set_password(address, password_hash, scram)  # ends every session of the user
        session_id, _ = await self.mail.sessions.create(signed.user_id)  # ... and this browser gets a new one
        tls = request.url.scheme == "https"
        response = RedirectResponse("/mail/settings?done=password", status_code=303)
        response.headers.append("set-cookie", cookie_header(cookie_name(tls), session_id, tls, None))
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _profile(self, request: Request, signed: Signed, address: str,
                       form: dict[str, list[str]]) -> None:
        name = _one_line(_field(form, "display_name", "display_name", "The display name"))
        signature = _field(form, "signature", "signature", "The signature").replace("\r\n", "\n").strip("\n")
        settings = await self.store.get_user_settings(signed.user_id)
        await self._save(signed, replace(settings, display_name=name, signature=signature))

    async def _identities(self, request: Request, signed: Signed, address: str,
                          form: dict[str, list[str]]) -> None:
        own = await self.mail.compose.identities(signed.user_id)
        by_key = {i.lower(): i for i in own}
        default = _field(form, "default", "pattern", "The default identity").strip()
        if default and default.lower() not in by_key:
            raise _Refused(f"{default} is not one of your addresses.", reason="not-own-identity")
        names: dict[str, str] = {}
        for given, name in zip(form.get("identity", []), form.get("name", [])):
            if len(name) > LIMITS["identity_name"]:
                raise _Refused(f"The display name for {given[:100]} is too long: at most "
                               f"{LIMITS['identity_name']} characters.")
            if given.lower() in by_key and _one_line(name):
                names[given.lower()] = _one_line(name)
        settings = await self.store.get_user_settings(signed.user_id)
        await self._save(signed, replace(settings, default_identity=by_key.get(default.lower(), ""),
                                         identity_names=names))

    async def _vacation(self, request: Request, signed: Signed, address: str,
                        form: dict[str, list[str]]) -> None:
        on = (form.get("vacation") or [""])[0] == "1"
        subject = _one_line(_field(form, "subject", "vacation_subject", "The reply's subject"))
        text = _field(form, "text", "vacation_text", "The reply's text").replace("\r\n", "\n").strip("\n")
        start = day_start(_field(form, "start", "pattern", "The first day"), "The first day")
        last = day_start(_field(form, "end", "pattern", "The last day"), "The last day")
        end = last + DAY if last is not None else None  # the last day is included
        days_text = _field(form, "days", "pattern", "The number of days").strip() or "7"
        if not (days_text.isascii() and days_text.isdigit()) or not 1 <= int(days_text) <= autoreply.MAX_DAYS:
            raise _Refused(f"The number of days between replies to one sender is a whole number from 1 to "
                           f"{autoreply.MAX_DAYS}.")
        if start is not None and end is not None and end <= start:
            raise _Refused("The last day is before the first day.")
        if on and not text.strip():
            raise _Refused("Write the text of the reply before turning it on.", reason="empty")
        settings = await self.store.get_user_settings(signed.user_id)
        await self._save(signed, replace(settings, vacation=on, vacation_subject=subject, vacation_text=text,
                                         vacation_start=start, vacation_end=end, vacation_days=int(days_text)))

    async def _rule_add(self, request: Request, signed: Signed, address: str,
                        form: dict[str, list[str]]) -> None:
        kind = (form.get("kind") or ["block"])[0]
        if kind not in KIND_WORDS:
            raise _Refused("Unknown kind of sender rule.")
        pattern = _field(form, "pattern", "pattern", "The sender").strip()
        try:
            await self.store.add_sender_rule(address, kind, pattern)  # invariant 1: the user's own scope
        except Invalid as exc:
            raise _Refused(f"Not a sender address or @domain: {exc}.", reason="bad-pattern") from None

    async def _rule_remove(self, request: Request, signed: Signed, address: str,
                           form: dict[str, list[str]]) -> None:
        pattern = _field(form, "pattern", "pattern", "The sender").strip()
        try:
            await self.store.remove_sender_rule(address, pattern)
        except Invalid:
            raise _Refused("Not a sender address or @domain.", reason="bad-pattern") from None

    async def _save(self, signed: Signed, settings: UserSettings) -> None:
        try:
            await self.store.set_user_settings(signed.user_id, settings)
        except NotFound:
            raise _Refused("Your account is gone.", 403, "no-user") from None


def _peer(request: Request) -> str:
    client = request.client
    return _safe(f"{client.host}:{client.port}" if client else "")

