"""The webmail: sign-in, folders, the message list and the reading page, server-rendered, on the web listeners.

Theory of operation
-------------------
`Webmail(store, auth, config)` gives Starlette routes under `/mail/` (and `/` redirecting there). Pages are Jinja2
templates (`templates/`, autoescaped) styled by one stylesheet (`static/style.css`). Every control is a link or
a form button, so the pages work without JavaScript; two small scripts of the app's own (`static/live.js`: live
updates, live.py; `static/keys.js`: keyboard shortcuts, drag and drop) only enhance them, loaded as files (the
CSP allows `script-src 'self'` and no inline script), served versioned, cached and compressed (assets.py).
Each request finds its session from the cookie (sessions.py), and every object it
names is resolved through the signed-in user: a mailbox id must be one of the user's own mailboxes, a UID a
message of that mailbox, a section a part of that message's part table; anything else answers 404, exactly like
a missing object, so ids of other users' objects tell nothing.

State changes are POSTs (`application/x-www-form-urlencoded`, at most `MAX_FORM` octets) carrying the session's
CSRF token (sessions.py), and with an `Origin` (or, without one, a `Referer`) that, when present, must be this
server's own; otherwise 403. Flag changes, moves and deletions go through the store like IMAP's (MODSEQ, the
change feed), so IMAP sessions see them at once. Opening a message sets \\Seen, as IMAP's FETCH BODY[] does
(RFC 9051 §6.4.5).

The message list reads one page: `Store.page_messages` (newest UID first, `web.page_size` rows) plus two
one-row probes for the "newer" and "older" links, and the metadata of those rows; the folder tree's unread
counts come from `Store.unseen_counts` (a partial index of unseen messages, at most 1,000 entries read per
mailbox: more shows as "999+"); nothing reads a mailbox whole.
Paging is by UID (`?below=UID`, `?above=UID`), so a page stays put while mail arrives. The same page also
shows a search's results (`?q=`, search.py: IMAP SEARCH's own code), a sorted list (`?sort=`, sort.py: IMAP SORT's
stored keys, paged by offset `?start=`) and the conversation view (`?view=conversations`, conversations.py).

Password sign-in goes through the one `Authenticator` IMAP, POP3 and SMTP use (the same throttling and
locks, shared in memory and in the store). Over plain HTTP it is refused unless the client is on loopback or
`web.allow_plain_http` is set. Every sign-in attempt logs one line (`web signin result=... reason=...`).

Invariants
1. A page or download answers only for objects of the signed-in user (module doc); otherwise 404.
2. Every POST is checked for the CSRF token and same-origin before it changes anything; the sign-in POST for its
   double-submit token (sessions.py).
3. Every response carries `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin` (not no-referrer:
   with it browsers send `Origin: null` on the app's own forms) and a CSP; pages
   also `X-Frame-Options: DENY` / `frame-ancestors 'none'`; only the HTML-mail frame may be framed, by this
   origin alone, and it has its own CSP with `sandbox` (render.py). Over TLS, `Strict-Transport-Security`.
4. Redirects go only to paths built here from ids and integers: no URL from the request is ever followed.
5. Logs name the user and the peer, never a password, a session id or a CSRF token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postroom import metapool as pool
from postroom.auth.authenticator import Authenticator
from postroom.config import Config
from postroom.imap.fetch import META_CACHE
from postroom.mime.address import parse_address_list
from postroom.mime.headers import first_field, split_fields
from postroom.mime.meta import FLAG_MULTIPART, MessageMeta, MetaFormatError
from postroom.smtp.door import Door
from postroom.store import names
from postroom.store.api import (
    AlreadyExists,
    Flag,
    Invalid,
    Mailbox,
    MessageInfo,
    NotFound,
    SpecialUseTaken,
    Store,
    StoreError,
    StoreMode,
)
from postroom.web import autoconfig, conversations, profile, render, search, sort
from postroom.web.assets import Assets
from postroom.web.compose import Compose
from postroom.web.live import Live
from postroom.web.server import _safe
from postroom.web.sessions import Sessions, Signed, cookie_header, cookie_name, csrf_ok, new_token
from postroom.web.settings import Settings

log = logging.getLogger("postroom.web")

MAX_FORM = 64 * 1024  # octets of one form body
MAX_SELECTED = 1000  # messages one list action may name
UNSEEN_SHOWN = 999  # unread counts above this show as "999+": counting further would read big mailboxes whole
HERE = Path(__file__).parent
# Script only from the app's own static files (live.js: no inline script), connections (the event stream, the
# list's refetch) only to the app itself.
PAGE_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data:; "
            "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"  # links open apart; no script, forms, top navigation
FRAME_CSP = ("default-src 'none'; img-src cid: data:; style-src 'unsafe-inline'; base-uri 'none'; "
             f"form-action 'none'; frame-ancestors 'self'; sandbox {FRAME_SANDBOX}")
DOWNLOAD_CSP = "default-src 'none'; sandbox"  # a download a browser shows anyway is an inert, opaque-origin document
HSTS = "max-age=31536000"
# Special-use markers (RFC 6154), from Unicode's dingbats and symbols that common fonts (DejaVu) carry: no emoji
# font needed. Decorative: the folder's name is its accessible name.
SPECIAL_ICONS = {"\\Inbox": "✉", "\\Sent": "➤", "\\Drafts": "✎", "\\Trash": "✖", "\\Junk": "⚠", "\\Archive": "▤",
                 "\\All": "☰", "\\Flagged": "⚑", "\\Important": "❢"}
ACTIONS = {"read", "unread", "flag", "unflag", "move", "delete", "archive", "junk"}


class SecurityHeaders:
    """ASGI middleware for invariant 3: adds the headers a response did not set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                         (b"content-security-policy", PAGE_CSP.encode()), (b"x-frame-options", b"DENY")]
                if tls:
                    extra.append((b"strict-transport-security", HSTS.encode()))
                headers += [(k, v) for k, v in extra if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, wrapped)


@dataclass(frozen=True)
class Folder:
    """One line of the folder tree."""

    mailbox: Mailbox
    label: str  # the last level of the name
    depth: int  # levels below the top
    unseen: int  # up to UNSEEN_SHOWN (then shown as "999+")
    messages: int  # 0 unless asked for (`Webmail._folders`)
    icon: str  # the special-use marker ("" for none)


@dataclass(frozen=True)
class Row:
    """One line of the message list."""

    uid: int
    sender: str
    subject: str
    date: str
    size: str
    seen: bool
    flagged: bool


def human_size(n: int) -> str:
    """Octets as a short figure: "812 B", "4.2 KB", "3.1 MB" (powers of 1024; MB however large)."""
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / (1024 * 1024):.1f} MB"


def when(t: float) -> str:
    """A time (seconds since the epoch) as "YYYY-MM-DD HH:MM" in UTC."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def is_loopback(host: str) -> bool:
    """Is `host` (an IP address as text, IPv6 possibly with a zone) a loopback address (127.0.0.0/8, ::1)?"""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def content_disposition(name: str) -> str:
    """`attachment` with the file name twice (RFC 6266 §4.3): an ASCII fallback and `filename*` in UTF-8
    (RFC 8187 §3.2)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%;' else "_" for c in name) or "attachment"
    quoted = urllib.parse.quote(name, safe="!#$&+-.^_`|~")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"


class Webmail:
    """The webmail's routes over `store`, signing in through `auth` (the server's one `Authenticator`)."""

    def __init__(self, store: Store, auth: Authenticator, config: Config,
                 settings_for: autoconfig.SettingsFor | None = None, door: Door | None = None,
                 on_queued: Callable[[], None] | None = None) -> None:
        """`settings_for(domain)`: the client settings autoconfig.py gives (None: not hosted); without it the
        Apple configuration profile is not offered. `door` (the SMTP send limits) and `on_queued` (wakes the
        outbound queue) are the writing pages' (compose.py)."""
        self.store = store
        self.auth = auth
        self.config = config
        self.settings_for = settings_for
        self.sessions = Sessions(store, config.web)
        self.orders = sort.Orders(store, config.limits)
        self.live = Live(store, self.sessions, self._signed,
                         lambda request: request.cookies.get(cookie_name(_tls(request))))
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      undefined=jinja2.StrictUndefined)
        self.env.globals["apple_profile"] = settings_for is not None
        self.compose = Compose(self, door, on_queued)
        self.settings = Settings(self)
        self.assets = Assets(HERE / "static")
        self.env.globals["asset"] = self.assets.url

    def routes(self) -> list[BaseRoute]:
        """The routes to mount at the root of the web app."""
        return [
            Route("/", self.root, methods=["GET"]),
            Route("/mail/", self.home, methods=["GET"]),
            Route("/mail/signin", self.signin, methods=["POST"]),
            Route("/mail/signout", self.signout, methods=["POST"]),
            Route("/mail/events", self.live.events, methods=["GET"]),
            Route("/mail/folders", self.folders_page, methods=["GET"]),
            Route("/mail/folders", self.folders_post, methods=["POST"]),
            Route("/mail/box/{box:int}", self.list_page, methods=["GET"]),
            Route("/mail/box/{box:int}", self.list_post, methods=["POST"]),
            Route("/mail/box/{box:int}/empty", self.empty_trash, methods=["POST"]),
            Route("/mail/box/{box:int}/{uid:int}", self.read_page, methods=["GET"]),
            Route("/mail/box/{box:int}/thread/{thread:int}", self.thread_page, methods=["GET"]),
            Route("/mail/box/{box:int}/{uid:int}/source", self.source, methods=["GET"]),
            Route("/mail/box/{box:int}/{uid:int}/html/{section}", self.html_frame, methods=["GET"]),
            Route("/mail/box/{box:int}/{uid:int}/part/{section}", self.download, methods=["GET"]),
            Route("/mail/apple.mobileconfig", self.apple_profile, methods=["GET"]),
            *self.compose.routes(),
            *self.settings.routes(),
            Route("/mail/static/{name}", self.assets.serve, methods=["GET"]),
        ]

    # ---- plumbing
    def _page(self, template: str, status: int = 200, headers: dict[str, str] | None = None,
              **context: Any) -> HTMLResponse:
        context.setdefault("address", "")
        context.setdefault("is_admin", False)
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})

    def _error(self, status: int, text: str, signed: Signed | None = None) -> HTMLResponse:
        return self._page("error.html", status=status, message=text, signed=signed, csrf=signed.csrf if signed else "")

    async def _signed(self, request: Request) -> Signed | None:
        return await self.sessions.lookup(request.cookies.get(cookie_name(_tls(request))))

    async def _form(self, request: Request) -> dict[str, list[str]] | Response:
        """The POST's fields, or the refusal: 403 for another origin, 413 when large. A body of another type has no
        fields for us (so no CSRF token: 403 follows)."""
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        origin = request.headers.get("origin")
        if origin is not None:
            if origin != own:
                return self._error(403, "This request came from another site.")
        else:
            referer = request.headers.get("referer")
            if referer is not None:
                parts = urllib.parse.urlsplit(referer)
                if f"{parts.scheme}://{parts.netloc}" != own:
                    return self._error(403, "This request came from another site.")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return {}
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return self._error(413, "This form is too large.")
        out: dict[str, list[str]] = {}
        for k, v in urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            out.setdefault(k, []).append(v)
        return out

    async def _checked_post(self, request: Request) -> tuple[Signed, dict[str, list[str]]] | Response:
        """A signed-in POST with its fields (invariant 2), or the response refusing it."""
        signed = await self._signed(request)
        if signed is None:
            return self._error(403, "You are not signed in (or your session ended). Sign in again.")
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        if not csrf_ok(signed.csrf, _one(form, "csrf")):
            log.warning("web refused reason=csrf user_id=%d peer=%s", signed.user_id, _peer(request))
            return self._error(403, "This form is stale or did not come from this page. Reload and try again.")
        return signed, form

    async def _mailbox(self, signed: Signed, box_id: int) -> Mailbox | None:
        """The user's own mailbox with that id, else None (invariant 1)."""
        box = await self.store.get_mailbox_by_id(box_id)
        return box if box is not None and box.user_id == signed.user_id else None

    async def _message(self, signed: Signed, box_id: int, uid: int) -> tuple[Mailbox, MessageInfo] | None:
        box = await self._mailbox(signed, box_id)
        if box is None:
            return None
        info = await self.store.get_message(box.id, uid)
        return None if info is None else (box, info)

    async def _metas(self, infos: list[MessageInfo]) -> dict[str, MessageMeta]:
        """Metadata of the listed messages: cached (shared with IMAP), stored, or computed and stored back."""
        out, missing = META_CACHE.split(m.blob_id for m in infos)
        fresh: dict[str, bytes] = {}
        stored = await self.store.read_metas(missing) if missing else {}
        parsed = await asyncio.to_thread(_parse_metas, stored)  # ~50 JSON documents of up to ~300 KB: off the loop
        for blob_id in stored:
            meta = parsed.get(blob_id)
            if meta is None:
                try:
                    raw = await self.store.read_message(blob_id)
                except NotFound:
                    continue
                meta = await pool.meta_of(raw, self.config.limits)
                fresh[blob_id] = meta.to_bytes()
            META_CACHE.put(blob_id, meta)
            out[blob_id] = meta
        if fresh:
            try:
                await self.store.write_metas(fresh)
            except StoreError:
                log.warning("could not store recomputed metadata of %d bodies", len(fresh), exc_info=True)
        return out

    async def _folders(self, user_id: int, totals: bool = False) -> list[Folder]:
        """The folder tree, INBOX first, with unread counts (`Store.unseen_counts`: work in proportion to the unread
        messages); with `totals`, message counts too (a count of each mailbox: the folders page only)."""
        boxes = sorted(await self.store.list_mailboxes(user_id),
                       key=lambda b: (b.name.upper() != "INBOX", b.name.split("/")))
        unseen = await self.store.unseen_counts(user_id, limit=UNSEEN_SHOWN + 1)
        out = []
        for b in boxes:
            messages = (await self.store.mailbox_status(b.id)).messages if totals else 0
            icon = SPECIAL_ICONS["\\Inbox"] if b.name.upper() == "INBOX" else SPECIAL_ICONS.get(b.special_use or "", "")
            out.append(Folder(b, b.name.rsplit("/", 1)[-1], b.name.count("/"), unseen.get(b.id, 0), messages, icon))
        return out

    async def _user_address(self, user_id: int) -> str:
        user = await self.store.get_user_by_id(user_id)
        return user.address if user is not None else ""

    async def _account(self, user_id: int) -> dict[str, Any]:
        """What the page header shows of the signed-in user: `address`, and `is_admin` (a link to the web admin,
        web/admin.py, for users with the admin flag)."""
        user = await self.store.get_user_by_id(user_id)
        return {"address": user.address if user is not None else "", "is_admin": user is not None and user.admin}

    # ---- sign-in and out
    async def root(self, request: Request) -> Response:
        """GET /: on to /mail/."""
        return RedirectResponse("/mail/", status_code=303)

    async def home(self, request: Request) -> Response:
        """GET /mail/: the INBOX when signed in, else the sign-in form."""
        signed = await self._signed(request)
        if signed is not None:
            inbox = await self.store.get_mailbox(signed.user_id, "INBOX")
            if inbox is not None:
                return RedirectResponse(f"/mail/box/{inbox.id}", status_code=303)
            return RedirectResponse("/mail/folders", status_code=303)
        return self._signin_page(request)

    def _signin_page(self, request: Request, error: str = "", status: int = 200, username: str = "") -> Response:
        tls = _tls(request)
        held = request.cookies.get(cookie_name(tls, pre=True), "")
        token = held if len(held) == 43 else new_token()  # a second tab keeps the first one's form working
        refused = not self._plain_ok(request)
        response = self._page("signin.html", status=status, csrf=token, error=error, username=username,
                              refused=refused, signed=None)
        response.headers.append("set-cookie", cookie_header(cookie_name(tls, pre=True), token, tls, 3600))
        return response

    def _plain_ok(self, request: Request) -> bool:
        client = request.client.host if request.client else ""
        return _tls(request) or is_loopback(client) or self.config.web.allow_plain_http

    async def signin(self, request: Request) -> Response:
        """POST /mail/signin: check the form token and the password (module doc); a new session and 303 to
        /mail/, or the form again with 401; 403 over plain HTTP off loopback (unless allowed) or without the token."""
        tls, peer = _tls(request), _peer(request)
        if not self._plain_ok(request):
            log.warning("web signin result=refused reason=plain-http peer=%s", peer)
            return self._error(403, "Signing in over plain HTTP is refused here: use the https address.")
        form = await self._form(request)
        if isinstance(form, Response):
            log.warning("web signin result=refused reason=bad-request status=%d peer=%s", form.status_code, peer)
            return form
        if not csrf_ok(request.cookies.get(cookie_name(tls, pre=True), ""), _one(form, "csrf")):
            log.warning("web signin result=refused reason=csrf peer=%s", peer)
            return self._error(403, "The sign-in form was stale or did not come from this site. Reload and try again.")
        username = (_one(form, "username") or "")[:320]
        password = (_one(form, "password") or "")[:1024]
        client = request.client.host if request.client else ""
        if not username or not password:
            log.info("web signin result=failed reason=empty user=%s peer=%s", _safe(username), peer)
            return self._signin_page(request, "Enter your address and password.", 400, username)
        user = await self.auth.check_password(username, password, client)
        if user is None:
            log.info("web signin result=failed reason=bad-credentials user=%s peer=%s", _safe(username), peer)
            return self._signin_page(request, "Wrong address or password.", 401, username)
        old = await self._signed(request)
        if old is not None:  # a session this browser had ends: the new one never reuses its id (no fixation)
            await self.sessions.end(old)
        session_id, _ = await self.sessions.create(user.id)
        log.info("web signin result=ok user=%s peer=%s", _safe(user.address), peer)
        response = RedirectResponse("/mail/", status_code=303)
        response.headers.append("set-cookie", cookie_header(cookie_name(tls), session_id, tls, None))
        response.headers.append("set-cookie", cookie_header(cookie_name(tls, pre=True), "", tls, 0))
        response.headers["Cache-Control"] = "no-store"
        return response

    async def signout(self, request: Request) -> Response:
        """POST /mail/signout: end this session, or with `everywhere=1` every session of the user."""
        checked = await self._checked_post(request)
        if isinstance(checked, Response):
            return checked
        signed, form = checked
        if _one(form, "everywhere") == "1":
            n = await self.sessions.end_all(signed.user_id)
            log.info("web signout scope=everywhere sessions=%d user_id=%d peer=%s", n, signed.user_id, _peer(request))
        else:
            await self.sessions.end(signed)
            log.info("web signout scope=this user_id=%d peer=%s", signed.user_id, _peer(request))
        tls = _tls(request)
        response = RedirectResponse("/mail/", status_code=303)
        response.headers.append("set-cookie", cookie_header(cookie_name(tls), "", tls, 0))
        return response

    # ---- folders
    async def folders_page(self, request: Request) -> Response:
        """GET /mail/folders: the folder management page."""
        signed = await self._signed(request)
        if signed is None:
            return RedirectResponse("/mail/", status_code=303)
        return await self._folders_response(signed, request.query_params.get("error", ""))

    async def _folders_response(self, signed: Signed, error: str = "", status: int = 200) -> Response:
        folders = await self._folders(signed.user_id, totals=True)
        return self._page("folders.html", status=status, signed=signed, csrf=signed.csrf, folders=folders,
                          current=None, error=error, **await self._account(signed.user_id))

    async def folders_post(self, request: Request) -> Response:
        """POST /mail/folders: `action` create (`name`), rename (`mailbox` id, `name`), delete (`mailbox` id,
        `confirm=1` when it holds messages), subscribe or unsubscribe (`mailbox` id: the IMAP subscription, RFC 9051
        §6.3.7, that mail programs list by); 303 back, or the page with the reason (400, 409)."""
        checked = await self._checked_post(request)
        if isinstance(checked, Response):
            return checked
        signed, form = checked
        action = _one(form, "action")
        try:
            if action == "create":
                name = _folder_name(_one(form, "name"))
                await self.store.create_mailbox(signed.user_id, name)
            elif action in ("subscribe", "unsubscribe"):
                box = await self._mailbox(signed, _int(_one(form, "mailbox")))
                if box is None:
                    return self._error(404, "No such folder.", signed)
                await self.store.set_subscribed(signed.user_id, box.name, action == "subscribe")
            elif action in ("rename", "delete"):
                box = await self._mailbox(signed, _int(_one(form, "mailbox")))
                if box is None:
                    return self._error(404, "No such folder.", signed)
                if box.name.upper() == "INBOX":
                    return await self._folders_response(signed, "The Inbox cannot be renamed or deleted.", 400)
                if action == "rename":
                    await self.store.rename_mailbox(signed.user_id, box.name, _folder_name(_one(form, "name")))
                elif (await self.store.mailbox_status(box.id)).messages and _one(form, "confirm") != "1":
                    return await self._folders_response(
                        signed, f"{box.name} holds messages: tick the box to delete them with it.", 400)
                else:
                    await self.store.delete_mailbox(signed.user_id, box.name)
            else:
                return self._error(400, "Unknown folder action.", signed)
        except AlreadyExists:
            return await self._folders_response(signed, "A folder with that name exists already.", 409)
        except (Invalid, SpecialUseTaken, ValueError) as exc:
            return await self._folders_response(signed, f"That folder name cannot be used: {exc}", 400)
        except NotFound:
            return self._error(404, "No such folder.", signed)
        return RedirectResponse("/mail/folders", status_code=303)

    # ---- the message list
    async def list_page(self, request: Request) -> Response:
        """GET /mail/box/{id}[?below=UID|?above=UID][&q=QUERY]: one page of the mailbox, or of the messages the
        search `q` finds in it (search.py), newest first."""
        signed = await self._signed(request)
        if signed is None:
            return RedirectResponse("/mail/", status_code=303)
        box = await self._mailbox(signed, int(request.path_params["box"]))
        if box is None:
            return self._error(404, "No such folder.", signed)
        size = self.config.web.page_size
        below = _opt_int(request.query_params.get("below"))
        above = _opt_int(request.query_params.get("above"))
        if request.query_params.get("view") == "conversations":
            return await self._conversations(signed, box, size, below)
        query = request.query_params.get("q", "")
        order = request.query_params.get("sort", "")
        order = order if order in sort.SORTS else ""
        start = _int(request.query_params.get("start"))
        found: int | None = None  # search results in the whole mailbox
        query_error = ""
        previous = following = None  # offsets of a sorted list's pages around this one
        searched = False  # a search's page (its total is known only when it fit on the first page)
        try:
            if order:  # sort.py: IMAP SORT's keys from the narrow sort rows, the order kept while it holds
                matched = None
                if query.strip():
                    matched, query_error = await self._matched(box, query)
                got = await self.orders.page(box, order, start, size, matched)
                infos, newer_uid, older_uid = got.infos, None, None
                previous, following = got.previous, got.next
                found = got.total if query.strip() and not query_error else None
            elif query.strip():  # the search box (search.py): a page of what IMAP's UID SEARCH finds
                infos, newer_uid, older_uid, found, query_error = await self._search_page(box, query, size,
                                                                                          below, above)
                searched = True
            else:
                infos, newer_uid, older_uid = await self._plain_page(box, size, below, above)
        except NotFound:
            return self._error(404, "No such folder.", signed)
        rows = await self._rows(infos)
        folders = await self._folders(signed.user_id)
        return self._page("mailbox.html", signed=signed, csrf=signed.csrf, folders=folders, current=box,
                          current_label=_label(box), rows=rows, newer=newer_uid, older=older_uid,
                          below=below, above=above, query=query, found=found, query_error=query_error,
                          sort=order, sorts=sort.SORTS, start=start, previous=previous, following=following,
                          searched=searched and not query_error,
                          **await self._account(signed.user_id))

    async def _conversations(self, signed: Signed, box: Mailbox, size: int, below: int | None) -> Response:
        """The conversation list (conversations.py): a page of threads, newest first."""
        try:
            got = await conversations.page(self.store, box, size, below)
        except NotFound:
            return self._error(404, "No such folder.", signed)
        metas = await self._metas([c.newest for c in got.rows])
        rows = []
        for c in got.rows:
            meta = metas.get(c.newest.blob_id)
            rows.append((c, (meta.search.header("from") if meta else "") or "(no sender)",
                         (meta.search.header("subject") if meta else "") or "(no subject)", when(c.newest_date)))
        return self._page("conversations.html", signed=signed, csrf=signed.csrf,
                          folders=await self._folders(signed.user_id), current=box, current_label=_label(box),
                          rows=rows, older=got.older, **await self._account(signed.user_id))

    async def thread_page(self, request: Request) -> Response:
        """GET /mail/box/{id}/thread/{thread id}: the conversation's messages in this mailbox, oldest first."""
        signed = await self._signed(request)
        if signed is None:
            return RedirectResponse("/mail/", status_code=303)
        box = await self._mailbox(signed, int(request.path_params["box"]))
        if box is None:
            return self._error(404, "No such folder.", signed)
        try:
            infos = await conversations.messages(self.store, box, int(request.path_params["thread"]))
        except NotFound:
            infos = []
        if not infos:
            return self._error(404, "No such conversation.", signed)
        rows = await self._rows(infos)
        return self._page("thread.html", signed=signed, csrf=signed.csrf, folders=await self._folders(signed.user_id),
                          current=box, current_label=_label(box), rows=rows,
                          subject=rows[-1].subject, **await self._account(signed.user_id))

    async def _plain_page(self, box: Mailbox, size: int, below: int | None,
                          above: int | None) -> tuple[list[MessageInfo], int | None, int | None]:
        """A page of the mailbox by UID, newest first, and the `above` / `below` values of the pages around it."""
        if above is not None:
            infos = await self.store.page_messages(box.id, size, above=above)
        else:
            infos = await self.store.page_messages(box.id, size, below=below)
        newer = bool(infos) and bool(await self.store.page_messages(box.id, 1, above=infos[0].uid))
        older = bool(infos) and bool(await self.store.page_messages(box.id, 1, below=infos[-1].uid))
        return infos, infos[0].uid if newer else None, infos[-1].uid if older else None

    async def _matched(self, box: Mailbox, query: str) -> tuple[list[int], str]:
        """The UIDs the search finds (search.py), or none and the reason the query was refused."""
        try:
            parsed = search.parse(query)
            return await search.search(self.store, self.config.limits, box, parsed), ""
        except search.QueryError as exc:
            log.info("web search refused reason=%s mailbox_id=%d", _safe(str(exc)[:80]), box.id)
            return [], str(exc)

    async def _search_page(self, box: Mailbox, query: str, size: int, below: int | None, above: int | None
                           ) -> tuple[list[MessageInfo], int | None, int | None, int | None, str]:
        """A page of search results (search.py: by UID windows, newest first), or none and the reason the query
        was refused."""
        try:
            got = await search.page(self.store, self.config.limits, box, search.parse(query), size, below, above)
        except search.QueryError as exc:
            log.info("web search refused reason=%s mailbox_id=%d", _safe(str(exc)[:80]), box.id)
            return [], None, None, None, str(exc)
        return got.infos, got.newer, got.older, got.total, ""

    async def _rows(self, infos: list[MessageInfo]) -> list[Row]:
        metas = await self._metas(infos)
        rows = []
        for m in infos:
            meta = metas.get(m.blob_id)
            sender = meta.search.header("from") if meta else ""
            subject = meta.search.header("subject") if meta else ""
            rows.append(Row(m.uid, sender or "(no sender)", subject or "(no subject)", when(m.internal_date),
                            human_size(m.size), bool(m.flags & Flag.SEEN), bool(m.flags & Flag.FLAGGED)))
        return rows

    async def list_post(self, request: Request) -> Response:
        """POST /mail/box/{id}: `action` read, unread, flag, unflag, move (`dest` id), delete (to \\Trash; in it,
        for good), archive (to \\Archive) or junk (to \\Junk with $Junk) on the `uid`s; 303 back to the page the
        form was on."""
        checked = await self._checked_post(request)
        if isinstance(checked, Response):
            return checked
        signed, form = checked
        box = await self._mailbox(signed, int(request.path_params["box"]))
        if box is None:
            return self._error(404, "No such folder.", signed)
        action = _one(form, "action") or ""
        uids = sorted({u for u in (_int(v) for v in form.get("uid", [])) if u > 0})[:MAX_SELECTED]
        if action not in ACTIONS:
            return self._error(400, "Unknown action.", signed)
        back = f"/mail/box/{box.id}" + _paging(form)  # invariant 4: built from integers
        if not uids:
            return RedirectResponse(back, status_code=303)
        try:
            if action in ("read", "unread", "flag", "unflag"):
                flag = Flag.SEEN if action in ("read", "unread") else Flag.FLAGGED
                mode = StoreMode.ADD if action in ("read", "flag") else StoreMode.REMOVE
                await self.store.store_flags(box.id, uids, mode, flag)
            elif action == "move":
                dest = await self._mailbox(signed, _int(_one(form, "dest")))
                if dest is None:
                    return self._error(404, "No such folder.", signed)
                if dest.id != box.id:
                    await self.store.move_messages(box.id, uids, dest.id)
            elif action == "archive":  # to the \Archive mailbox (RFC 6154 §2), made when missing
                dest = await self._special(signed.user_id, "\\Archive", "Archive")
                if dest.id != box.id:
                    await self.store.move_messages(box.id, uids, dest.id)
            elif action == "junk":  # to \Junk (RFC 6154 §2), with the $Junk keyword spam filters learn from
                dest = await self._special(signed.user_id, "\\Junk", "Junk")
                await self.store.store_flags(box.id, uids, StoreMode.REMOVE, keywords=["$NotJunk"])
                await self.store.store_flags(box.id, uids, StoreMode.ADD, keywords=["$Junk"])
                if dest.id != box.id:
                    await self.store.move_messages(box.id, uids, dest.id)
            else:  # delete: to Trash; in Trash, for good
                if box.special_use == "\\Trash":
                    await self.store.store_flags(box.id, uids, StoreMode.ADD, Flag.DELETED)
                    await self.store.expunge(box.id, uids)
                else:
                    trash = await self._special(signed.user_id, "\\Trash", "Trash")
                    await self.store.move_messages(box.id, uids, trash.id)
        except NotFound:
            return self._error(404, "No such folder.", signed)
        log.info("web action=%s messages=%d mailbox_id=%d user_id=%d", action, len(uids), box.id, signed.user_id)
        return RedirectResponse(back, status_code=303)

    async def _special(self, user_id: int, use: str, name: str) -> Mailbox:
        """The user's mailbox marked `use` (RFC 6154), made as `name` when there is none."""
        for b in await self.store.list_mailboxes(user_id):
            if b.special_use == use:
                return b
        try:
            return await self.store.create_mailbox(user_id, name, use)
        except AlreadyExists:  # a mailbox of that name without the marker: use it
            found = await self.store.get_mailbox(user_id, name)
            if found is None:
                raise
            return found

    async def empty_trash(self, request: Request) -> Response:
        """POST /mail/box/{id}/empty: delete every message of the Trash for good; `confirm=1` required (else 400:
        the page says what to tick). 404 for a mailbox that is not the user's \\Trash."""
        checked = await self._checked_post(request)
        if isinstance(checked, Response):
            return checked
        signed, form = checked
        box = await self._mailbox(signed, int(request.path_params["box"]))
        if box is None or box.special_use != "\\Trash":
            return self._error(404, "No such Trash folder.", signed)
        if _one(form, "confirm") != "1":
            return self._error(400, "Tick \"Yes, delete them for good\" to empty the Trash.", signed)
        try:
            uids = await self.store.uids_with_flag(box.id, 1, 2**32 - 1, 0, False)  # no flag bit: every UID
            for k in range(0, len(uids), MAX_SELECTED):
                part = uids[k:k + MAX_SELECTED]
                await self.store.store_flags(box.id, part, StoreMode.ADD, Flag.DELETED)
                await self.store.expunge(box.id, part)
        except NotFound:
            return self._error(404, "No such Trash folder.", signed)
        log.info("web action=empty-trash messages=%d mailbox_id=%d user_id=%d", len(uids), box.id, signed.user_id)
        return RedirectResponse(f"/mail/box/{box.id}", status_code=303)

    # ---- reading
    async def read_page(self, request: Request) -> Response:
        """GET /mail/box/{id}/{uid}: the reading page; sets \\Seen."""
        signed = await self._signed(request)
        if signed is None:
            return RedirectResponse("/mail/", status_code=303)
        found = await self._message(signed, int(request.path_params["box"]), int(request.path_params["uid"]))
        if found is None:
            return self._error(404, "No such message.", signed)
        box, info = found
        try:
            raw = await self.store.read_message(info.blob_id)
        except NotFound:
            return self._error(404, "No such message.", signed)
        meta = (await self._metas([info])).get(info.blob_id)
        if meta is None:
            return self._error(404, "No such message.", signed)
        view = await asyncio.to_thread(render.view, raw, meta)  # render.py invariant 2
        if not info.flags & Flag.SEEN:
            await self.store.store_flags(box.id, [info.uid], StoreMode.ADD, Flag.SEEN)
        folders = await self._folders(signed.user_id)
        return self._page("message.html", signed=signed, csrf=signed.csrf, folders=folders, current=box,
                          current_label=_label(box), info=info, view=view, when=when(info.internal_date),
                          flagged=bool(info.flags & Flag.FLAGGED), frame_sandbox=FRAME_SANDBOX,
                          human_size=human_size, sender_address=_sender_address(raw[:HEAD_MAX]),
                          **await self._account(signed.user_id))

    async def _raw_and_meta(self, request: Request) -> tuple[bytes, MessageMeta] | Response:
        signed = await self._signed(request)
        if signed is None:
            return self._error(403, "You are not signed in (or your session ended).")
        found = await self._message(signed, int(request.path_params["box"]), int(request.path_params["uid"]))
        if found is None:
            return self._error(404, "No such message.", signed)
        info = found[1]
        try:
            raw = await self.store.read_message(info.blob_id)
        except NotFound:
            return self._error(404, "No such message.", signed)
        meta = (await self._metas([info])).get(info.blob_id)
        if meta is None:
            return self._error(404, "No such message.", signed)
        return raw, meta

    async def html_frame(self, request: Request) -> Response:
        """GET .../html/{section}: the cleaned HTML part as a document of its own, under FRAME_CSP."""
        got = await self._raw_and_meta(request)
        if isinstance(got, Response):
            return got
        raw, meta = got
        doc = await asyncio.to_thread(render.html_document, raw, meta, str(request.path_params["section"]))
        if doc is None:
            return Response("no such part\n", status_code=404, media_type="text/plain")
        return HTMLResponse(doc, headers={"Content-Security-Policy": FRAME_CSP, "X-Frame-Options": "SAMEORIGIN",
                                          "Cache-Control": "no-store"})

    async def download(self, request: Request) -> Response:
        """GET .../part/{section}: the part's decoded bytes as an attachment (RFC 6266)."""
        got = await self._raw_and_meta(request)
        if isinstance(got, Response):
            return got
        raw, meta = got
        row = render.find_row(meta, str(request.path_params["section"]))
        if row is None or row.flags & FLAG_MULTIPART:  # a multipart container is not a download
            return Response("no such part\n", status_code=404, media_type="text/plain")
        data = await asyncio.to_thread(render.decoded, raw, meta, row)
        name = row.filename or f"part-{row.section}" + (".eml" if row.mime_type == "message/rfc822" else "")
        return Response(data, media_type=render.safe_type(row.mime_type),
                        headers={"Content-Disposition": content_disposition(name), "Cache-Control": "no-store",
                                 "Content-Security-Policy": DOWNLOAD_CSP})

    async def source(self, request: Request) -> Response:
        """GET .../source: the message's bytes as stored, as text/plain."""
        got = await self._raw_and_meta(request)
        if isinstance(got, Response):
            return got
        return Response(got[0], media_type="text/plain; charset=utf-8",
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": DOWNLOAD_CSP})


    # ---- account set-up
    async def apple_profile(self, request: Request) -> Response:
        """GET /mail/apple.mobileconfig: the signed-in user's Apple configuration profile (profile.py), signed
        with the server's TLS key when it can be; 404 without client settings for the user's domain."""
        signed = await self._signed(request)
        if signed is None:
            return RedirectResponse("/mail/", status_code=303)
        address = await self._user_address(signed.user_id)
        settings = await self.settings_for(address.rpartition("@")[2]) if self.settings_for and address else None
        if settings is None:
            return self._error(404, "No client settings are offered for your domain here.", signed)
        try:
            body = profile.profile_plist(settings, address)
        except ValueError as exc:
            return self._error(404, f"No profile can be made: {exc}.", signed)
        signed_body = await asyncio.to_thread(profile.sign, body, self.config.cert_path, self.config.key_path)
        log.info("web profile user=%s signed=%s peer=%s", _safe(address), "yes" if signed_body else "no",
                 _peer(request))
        return Response(signed_body or body, media_type=profile.MEDIA_TYPE,
                        headers={"Content-Disposition": content_disposition(profile.file_name(address)),
                                 "Cache-Control": "no-store", "Content-Security-Policy": DOWNLOAD_CSP})


def _parse_metas(stored: dict[str, bytes | None]) -> dict[str, MessageMeta]:
    """The stored metadata that parses (none, or an older format, is left out: recomputed by the caller)."""
    out = {}
    for blob_id, data in stored.items():
        if data is not None:
            try:
                out[blob_id] = MessageMeta.from_bytes(data)
            except MetaFormatError:
                continue
    return out


def _tls(request: Request) -> bool:
    return request.url.scheme == "https"


def _peer(request: Request) -> str:
    client = request.client
    return _safe(f"{client.host}:{client.port}" if client else "")


def _one(form: dict[str, list[str]], key: str) -> str | None:
    values = form.get(key)
    return values[0] if values else None


def _int(value: str | None) -> int:
    try:
        n = int(value or "")
    except ValueError:
        return 0
    return n if 0 < n < 2**63 else 0


def _opt_int(value: str | None) -> int | None:
    n = _int(value)
    return n or None


def _paging(form: dict[str, list[str]]) -> str:
    """The list page's query string back (invariant 4: integers, and the search text percent-encoded as a value)."""
    below, above = _int(_one(form, "below")), _int(_one(form, "above"))
    params: list[tuple[str, str | int]] = [("below", below)] if below else [("above", above)] if above else []
    query = (_one(form, "q") or "")[:search.MAX_QUERY]
    if query.strip():
        params.append(("q", query))
    order, start = _one(form, "sort") or "", _int(_one(form, "start"))
    if order in sort.SORTS and order:
        params.append(("sort", order))
        if start:
            params.append(("start", start))
    return "?" + urllib.parse.urlencode(params) if params else ""


HEAD_MAX = 256 * 1024  # octets of a message read for its From field: a header past it has no usable From


def _sender_address(raw: bytes) -> str:
    """The address of the message's first From mailbox, for the "Block sender" button, read from the field as
    sent (RFC 5322 §3.6.2), not from its decoded text, where a display name like "boss@example.org" encoded in
    RFC 2047 would pass for the address; "" when there is not one usable."""
    end = raw.find(b"\r\n\r\n")
    fields = split_fields(raw, 0, len(raw) if end < 0 else end + 2)[0]
    f = first_field(fields, "from")
    if f is None:
        return ""
    for a in parse_address_list(f.unfolded()):
        if a.mailbox and a.host:
            address = f"{names.quote_local(a.mailbox)}@{a.host}"  # a quoted local part stays quoted
            local, at, domain = address.rpartition("@")
            return address if local and "." in domain and len(address) <= 320 and "=?" not in address else ""
    return ""


def _label(box: Mailbox) -> str:
    return "Inbox" if box.name.upper() == "INBOX" else box.name


def _folder_name(value: str | None) -> str:
    name = (value or "").strip().strip("/")
    if not name:
        raise ValueError("the name is empty")
    return name
