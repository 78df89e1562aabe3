"""The web admin: server-rendered pages under `/admin/` for users with the admin flag (issue 13 item 7).

Theory of operation
-------------------
`Admin(webmail, ...)` adds routes beside the webmail's and shares everything that keeps the webmail safe: the
session cookie and its store-kept sessions, the per-session CSRF token and the same-origin check on every POST
(mail.py invariant 2, sessions.py), the security headers and CSP (no script: every control is a link or a form
button, so the pages work without JavaScript). What the pages do is adminops.py, the same functions the
`postroom` command runs (domains with their DKIM keys, users, quotas, aliases, the queue, DNS records, DKIM
rotation), so the two cannot drift apart; held list posts are approved or rejected through the router
(`Router.moderate`: an approved post is distributed exactly as the owner's approval mail would).

Pages: status (`/admin/`: listeners bound, open sessions per protocol and the other Prometheus figures read
from the process's registry, store and queue size), domains, users (quota use, add with a given or generated
password, set quota, admin on/off, reset password, remove), aliases, lists (their held posts), the outbound queue
(list, show one, retry, delete), DNS (each domain's records beside what the server's resolver answers today,
and DKIM rotation: new keys kept and published first, the switch only when the operator confirms).

A state change answers with the page itself and a one-line result (`role="status"`), or the reason it was
refused (`role="alert"`, status 400/409); nothing is redirected to a URL taken from the request.

Invariants
1. Only a signed-in user whose `User.admin` is set reaches any `/admin/` page; everyone else (signed out, or
   signed in without the flag) gets exactly the 404 an unknown URL gets, so the pages' existence is not shown.
2. Every POST is checked, in this order: admin (else 404), same origin and form size (403/413, mail.py), the
   session's CSRF token (403), and only then acted on.
3. An admin cannot take their own admin flag or remove their own account here (adminops invariant 2).
4. Every action logs one line on `postroom.web.admin`: `admin action=... target=... by=ADDRESS result=...`
   (a refusal with its reason); no password, token or session id is logged.
5. A destructive action (remove a domain, a user, an alias; delete queue entries; switch DKIM keys) needs the
   form's confirmation box ticked; without it nothing changes (400, the page says what to tick).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from postroom import adminops
from postroom.config import Config
from postroom.delivery.lists import HeldPosts
from postroom.metrics import Metrics
from postroom.store.api import AlreadyExists, Invalid, NotFound, StoreError, User
from postroom.web.mail import Webmail, _one, _peer
from postroom.web.server import _safe
from postroom.web.sessions import Signed, csrf_ok

log = logging.getLogger("postroom.web.admin")

SHOWN_FIGURES = ("postroom_sessions_open", "postroom_sessions_total", "postroom_connections_refused_total",
                 "postroom_messages_accepted_total", "postroom_messages_delivered_total",
                 "postroom_password_checks_total")
HEADER_SHOWN = 16 * 1024  # octets of a queued message's header shown on its page


@dataclass(frozen=True)
class Held:
    """A held list post as the lists page shows it."""

    token: str
    list_address: str
    mail_from: str
    subject: str
    size: int


class Admin:
    """The admin routes over the webmail's store and sessions (module doc). `config()` gives the server's current
    settings; `addresses` is the live
    `{listener: (host, port)}` of the server; `router()` makes the router that distributes approved posts;
    `lookup` is the server's resolver for the DNS page (None: the page shows records without checking)."""

    def __init__(self, webmail: Webmail, config: Callable[[], Config], metrics: Metrics,
                 addresses: Mapping[str, tuple[str, int]], router: Callable[[], Any],
                 lookup: adminops.Lookup | None = None) -> None:
        self.webmail = webmail
        self.store = webmail.store
        self._config = config
        self.metrics = metrics
        self.addresses = addresses
        self.router = router
        self.lookup = lookup
        self.held = HeldPosts(self.store)

    def routes(self) -> list[BaseRoute]:
        """The routes to add to the web app (all under /admin/)."""
        return [
            Route("/admin/", self.status_page, methods=["GET"]),
            Route("/admin/domains", self.domains_page, methods=["GET"]),
            Route("/admin/domains", self.domains_post, methods=["POST"]),
            Route("/admin/users", self.users_page, methods=["GET"]),
            Route("/admin/users", self.users_post, methods=["POST"]),
            Route("/admin/aliases", self.aliases_page, methods=["GET"]),
            Route("/admin/aliases", self.aliases_post, methods=["POST"]),
            Route("/admin/lists", self.lists_page, methods=["GET"]),
            Route("/admin/lists", self.lists_post, methods=["POST"]),
            Route("/admin/queue", self.queue_page, methods=["GET"]),
            Route("/admin/queue", self.queue_post, methods=["POST"]),
            Route("/admin/queue/{qid:int}", self.queue_entry_page, methods=["GET"]),
            Route("/admin/dns", self.dns_index, methods=["GET"]),
            Route("/admin/dns/{domain}", self.dns_page, methods=["GET"]),
            Route("/admin/dns/{domain}", self.dns_post, methods=["POST"]),
        ]

    # ---- plumbing --------------------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        """The server's settings now (a reload's host name and MTA-STS mode show at the next page)."""
        return self._config()

    @staticmethod
    def _hidden() -> Response:
        """What an unknown URL gets from Starlette (invariant 1)."""
        return PlainTextResponse("Not Found", status_code=404)

    async def _admin(self, request: Request) -> tuple[Signed, User] | None:
        signed = await self.webmail._signed(request)
        if signed is None:
            return None
        user = await self.store.get_user_by_id(signed.user_id)
        return (signed, user) if user is not None and user.admin else None

    async def _post(self, request: Request) -> tuple[Signed, User, dict[str, list[str]]] | Response:
        """Invariant 2: the admin, the origin, the CSRF token; the form's fields, or the refusal."""
        who = await self._admin(request)
        if who is None:
            return self._hidden()
        form = await self.webmail._form(request)
        if isinstance(form, Response):
            return form
        signed, user = who
        if not csrf_ok(signed.csrf, _one(form, "csrf")):
            log.warning("admin refused reason=csrf by=%s peer=%s", _safe(user.address), _peer(request))
            return self.webmail._error(403, "This form is stale or did not come from this page. Reload and try "
                                            "again.", signed)
        return signed, user, form

    def _render(self, template: str, who: tuple[Signed, User], status: int = 200, **context: Any) -> Response:
        signed, user = who
        context.setdefault("done", "")
        context.setdefault("error", "")
        return self.webmail._page(template, status=status, signed=signed, csrf=signed.csrf, address=user.address,
                                  is_admin=True, **context)

    @staticmethod
    def _log(request: Request, user: User, action: str, target: str, result: str = "ok", reason: str = "") -> None:
        extra = f" reason={_safe(reason)}" if reason else ""
        log.info("admin action=%s target=%s by=%s result=%s%s peer=%s", action, _safe(target), _safe(user.address),
                 result, extra, _peer(request))

    async def _act(self, request: Request, user: User, action: str, target: str,
                   work: Callable[[], Any]) -> tuple[str, str, int]:
        """Run `work()` (a coroutine function) for `action` on `target`: ("", error, status) when it was refused,
        (result text or "", "", 200) when done; logged either way (invariant 4)."""
        try:
            done = await work()
        except adminops.AdminError as exc:
            self._log(request, user, action, target, "refused", str(exc))
            return "", str(exc), 400
        except AlreadyExists as exc:
            self._log(request, user, action, target, "refused", str(exc))
            return "", f"Already exists: {exc}", 409
        except (NotFound, Invalid, StoreError) as exc:
            self._log(request, user, action, target, "refused", str(exc))
            return "", f"Refused: {exc}", 400
        self._log(request, user, action, target)
        return str(done or ""), "", 200

    # ---- status ----------------------------------------------------------------------------------------------
    async def status_page(self, request: Request) -> Response:
        """GET /admin/: listeners, sessions, sizes, the Prometheus figures."""
        who = await self._admin(request)
        if who is None:
            return self._hidden()
        figures = [f for f in self.metrics.figures() if f[0] in SHOWN_FIGURES]
        sessions = {labels.split('"')[1]: int(v) for name, labels, v in figures
                    if name == "postroom_sessions_open" and labels}
        db = self.config.data_path / "postroom.db"
        db_size = sum(_size(db.with_name(db.name + suffix)) for suffix in ("", "-wal", "-shm"))
        users = await adminops.user_rows(self.store)
        return self._render(
            "admin_status.html", who, listeners=sorted(self.addresses.items()), sessions=sorted(sessions.items()),
            figures=figures, db_size=adminops.quota_text(db_size, 0, "bytes"),
            stored=adminops.quota_text(sum(u.storage for u in users), 0, "bytes"),
            messages=sum(u.messages for u in users), users=len(users),
            domains=len(await self.store.list_domains()), queue=await self.store.queue_length(),
            hostname=self.config.server.hostname)

    # ---- domains ---------------------------------------------------------------------------------------------
    async def _domains(self, who: tuple[Signed, User], status: int = 200, done: str = "", error: str = "") -> Response:
        rows = []
        users = await adminops.user_rows(self.store)
        for d in await self.store.list_domains():
            mine = [u for u in users if u.user.domain_id == d.id]
            rows.append((d, len(mine), adminops.quota_text(sum(u.storage for u in mine), d.quota_bytes, "bytes")))
        return self._render("admin_domains.html", who, status, rows=rows, done=done, error=error)

    async def domains_page(self, request: Request) -> Response:
        """GET /admin/domains."""
        who = await self._admin(request)
        return self._hidden() if who is None else await self._domains(who)

    async def domains_post(self, request: Request) -> Response:
        """POST /admin/domains: `action` add (`name`, `quota`) or remove (`name`, `confirm=1`)."""
        got = await self._post(request)
        if isinstance(got, Response):
            return got
        signed, user, form = got
        action, name = _one(form, "action") or "", (_one(form, "name") or "").strip()

        async def add() -> str:
            domain = await adminops.add_domain(self.store, name, _size_field(_one(form, "quota")))
            return f"Domain {domain.name} added, with DKIM keys: publish its DNS records (DNS page)."

        async def remove() -> str:
            _confirmed(form, f"removing {name}")
            await adminops.remove_domain(self.store, name)
            return f"Domain {name} removed."

        if action not in ("add", "remove"):
            return self.webmail._error(400, "Unknown action.", signed)
        done, error, status = await self._act(request, user, f"domain-{action}", name,
                                              add if action == "add" else remove)
        return await self._domains((signed, user), status, done, error)

    # ---- users -----------------------------------------------------------------------------------------------
    async def _users(self, who: tuple[Signed, User], status: int = 200, done: str = "", error: str = "",
                     password: str = "") -> Response:
        rows = [(r, adminops.quota_text(r.storage, r.storage_limit, "bytes"),
                 adminops.quota_text(r.messages, r.message_limit)) for r in await adminops.user_rows(self.store)]
        return self._render("admin_users.html", who, status, rows=rows, done=done, error=error, password=password,
                            me=who[1].address)

    async def users_page(self, request: Request) -> Response:
        """GET /admin/users."""
        who = await self._admin(request)
        return self._hidden() if who is None else await self._users(who)

    async def users_post(self, request: Request) -> Response:
        """POST /admin/users: `action` add (`user`, `password` or none: generated, `quota`, `admin`), quota
        (`user`, `quota`, `quota_messages`), admin (`user`, `on` 1/0), password (`user`: a new generated one),
        remove (`user`, `confirm=1`)."""
        got = await self._post(request)
        if isinstance(got, Response):
            return got
        signed, user, form = got
        action, target = _one(form, "action") or "", (_one(form, "user") or "").strip()
        shown = ""  # a generated password, shown once on the page (adminops invariant 3)

        async def add() -> str:
            nonlocal shown
            given = _one(form, "password") or ""
            password = given or adminops.generate_password()
            made = await adminops.add_user(self.store, target, password, quota=_size_field(_one(form, "quota")),
                                           admin=_one(form, "admin") == "1")
            shown = "" if given else password
            return f"User {made.address} added."

        async def quota() -> str:
            messages = (_one(form, "quota_messages") or "").strip()
            if messages and not messages.isdigit():
                raise adminops.AdminError(f"not a whole number of messages: {messages!r}")
            storage = (_one(form, "quota") or "").strip()
            made = await adminops.set_user_quota(self.store, target, _size_field(storage) if storage else None,
                                                 int(messages) if messages else None)
            return f"Quota of {made.address}: {adminops.quota_text(made.quota_bytes, 0, 'bytes') or 'none'}."

        async def admin() -> str:
            made = await adminops.set_admin(self.store, target, _one(form, "on") == "1", acting=user.address)
            return f"{made.address} is {'an admin now' if made.admin else 'no admin now'}."

        async def password() -> str:
            nonlocal shown
            new = adminops.generate_password()
            await adminops.set_password(self.store, target, new)
            shown = new
            return f"New password of {adminops.normalize_address(target)} set."

        async def remove() -> str:
            _confirmed(form, f"removing {target} and all their mail")
            await adminops.remove_user(self.store, target, acting=user.address)
            return f"User {target} removed, with all their mail."

        works = {"add": add, "quota": quota, "admin": admin, "password": password, "remove": remove}
        if action not in works:
            return self.webmail._error(400, "Unknown action.", signed)
        done, error, status = await self._act(request, user, f"user-{action}", target, works[action])
        return await self._users((signed, user), status, done, error, shown if not error else "")

    # ---- aliases ---------------------------------------------------------------------------------------------
    async def _aliases(self, who: tuple[Signed, User], status: int = 200, done: str = "", error: str = "") -> Response:
        return self._render("admin_aliases.html", who, status, aliases=await self.store.list_aliases(), done=done,
                            error=error)

    async def aliases_page(self, request: Request) -> Response:
        """GET /admin/aliases."""
        who = await self._admin(request)
        return self._hidden() if who is None else await self._aliases(who)

    async def aliases_post(self, request: Request) -> Response:
        """POST /admin/aliases: `action` add (`source`, `targets` separated by spaces or commas) or remove
        (`source`, `target`, `confirm=1`)."""
        got = await self._post(request)
        if isinstance(got, Response):
            return got
        signed, user, form = got
        action, source = _one(form, "action") or "", (_one(form, "source") or "").strip()

        async def add() -> str:
            targets = (_one(form, "targets") or "").replace(",", " ").split()
            src, shown = await adminops.add_alias(self.store, source, targets)
            return f"Alias {src} -> {', '.join(shown)} added."

        async def remove() -> str:
            target = (_one(form, "target") or "").strip() or None
            _confirmed(form, f"removing the alias {source}")
            await adminops.remove_alias(self.store, source, target)
            return f"Alias {source}{' -> ' + target if target else ''} removed."

        if action not in ("add", "remove"):
            return self.webmail._error(400, "Unknown action.", signed)
        done, error, status = await self._act(request, user, f"alias-{action}", source,
                                              add if action == "add" else remove)
        return await self._aliases((signed, user), status, done, error)

    # ---- lists and their moderation queue --------------------------------------------------------------------
    async def _lists(self, who: tuple[Signed, User], status: int = 200, done: str = "", error: str = "") -> Response:
        held = []
        for post in await self.held.posts():
            held.append(Held(post.token, post.list_address, post.mail_from, _subject(post.raw), len(post.raw)))
        return self._render("admin_lists.html", who, status, lists=await self.store.list_lists(), held=held,
                            done=done, error=error, human_size=_human)

    async def lists_page(self, request: Request) -> Response:
        """GET /admin/lists: the lists and the posts held for moderation."""
        who = await self._admin(request)
        return self._hidden() if who is None else await self._lists(who)

    async def lists_post(self, request: Request) -> Response:
        """POST /admin/lists: `action` approve or reject, `token` of a held post."""
        got = await self._post(request)
        if isinstance(got, Response):
            return got
        signed, user, form = got
        action, token = _one(form, "action") or "", _one(form, "token") or ""
        if action not in ("approve", "reject"):
            return self.webmail._error(400, "Unknown action.", signed)

        async def act() -> str:
            result = await self.router().moderate(token, action == "approve")
            if result is None:
                raise adminops.AdminError("that post is no longer held (approved or rejected already)")
            if action == "reject":
                return "Post rejected: dropped."
            return f"Post approved: delivered to {result.local} local and queued for {result.queued} remote members."

        done, error, status = await self._act(request, user, f"list-{action}", token[:8], act)
        return await self._lists((signed, user), status, done, error)

    # ---- the outbound queue ----------------------------------------------------------------------------------
    async def _queue(self, who: tuple[Signed, User], status: int = 200, done: str = "", error: str = "") -> Response:
        now = time.time()
        rows = []
        for e in await self.store.queue_list():
            waiting = [r for r in e.recipients if r.state in adminops.PENDING]
            nxt = min((r.next_try for r in waiting), default=0.0)
            rows.append((e, len(waiting), _until(nxt, now) if waiting else "-",
                         next((r.last_error for r in waiting if r.last_error), "")))
        return self._render("admin_queue.html", who, status, rows=rows, done=done, error=error,
                            when=_when, human_size=_human)

    async def queue_page(self, request: Request) -> Response:
        """GET /admin/queue."""
        who = await self._admin(request)
        return self._hidden() if who is None else await self._queue(who)

    async def queue_entry_page(self, request: Request) -> Response:
        """GET /admin/queue/{id}: envelope, recipients with their state and last error, the header."""
        who = await self._admin(request)
        if who is None:
            return self._hidden()
        qid = int(request.path_params["qid"])
        entry = await self.store.queue_get(qid) if 0 < qid < 2**63 else None  # SQLite integers are 64-bit
        if entry is None:
            return self.webmail._error(404, "No such queue entry (it may have been delivered meanwhile).", who[0])
        try:
            raw = await self.store.read_message(entry.blob_id)
        except NotFound:
            raw = b""
        end = raw.find(b"\r\n\r\n")
        header = raw[:end if 0 <= end < HEADER_SHOWN else HEADER_SHOWN].decode("utf-8", "replace")
        return self._render("admin_queue_entry.html", who, entry=entry, header=header, when=_when,
                            until=lambda t: _until(t, time.time()), pending=adminops.PENDING)

    async def queue_post(self, request: Request) -> Response:
        """POST /admin/queue: `action` retry or delete (`confirm=1`) of the `id`s."""
        got = await self._post(request)
        if isinstance(got, Response):
            return got
        signed, user, form = got
        action = _one(form, "action") or ""
        ids = sorted({int(v) for v in form.get("id", []) if v.isdigit() and 0 < int(v) < 2**63})

        async def retry() -> str:
            count, entries = await adminops.queue_retry(self.store, ids)
            return f"{count} recipient(s) in {entries} entr{'y' if entries == 1 else 'ies'} due now."

        async def delete() -> str:
            _confirmed(form, "deleting without telling the senders")
            await adminops.queue_delete(self.store, ids)
            return f"Queue entr{'y' if len(ids) == 1 else 'ies'} {', '.join(map(str, ids))} deleted (no bounce sent)."

        if action not in ("retry", "delete") or not ids:
            return self.webmail._error(400, "Unknown action, or no queue entry named.", signed)
        done, error, status = await self._act(request, user, f"queue-{action}", ",".join(map(str, ids)),
                                              retry if action == "retry" else delete)
        return await self._queue((signed, user), status, done, error)

    # ---- DNS and DKIM ----------------------------------------------------------------------------------------
    async def dns_index(self, request: Request) -> Response:
        """GET /admin/dns: the domains, each a link to its records."""
        who = await self._admin(request)
        if who is None:
            return self._hidden()
        return self._render("admin_dns_index.html", who, domains=await self.store.list_domains())

    async def _dns(self, who: tuple[Signed, User], name: str, status: int = 200, done: str = "",
                   error: str = "") -> Response:
        domain = await self.store.get_domain(name) if name else None
        if domain is None:
            return self.webmail._error(404, "No such local domain.", who[0])
        records = await adminops.dns_records(self.store, self.config, name)
        checked = await adminops.check_dns(self.lookup, records) if self.lookup is not None else \
            [adminops.Checked(r, "unknown", ("no resolver: delivery is off",)) for r in records]
        upcoming = adminops.next_dkim(domain)
        return self._render("admin_dns.html", who, status, domain=domain, checked=checked, upcoming=upcoming,
                            done=done, error=error, hostname=self.config.server.hostname)

    async def dns_page(self, request: Request) -> Response:
        """GET /admin/dns/{domain}: the records to publish beside what DNS answers, DKIM rotation."""
        who = await self._admin(request)
        if who is None:
            return self._hidden()
        return await self._dns(who, _domain_param(request))

    async def dns_post(self, request: Request) -> Response:
        """POST /admin/dns/{domain}: `action` rotate (new DKIM keys, kept until the switch) or switch
        (`confirm=1`: sign with them)."""
        got = await self._post(request)
        if isinstance(got, Response):
            return got
        signed, user, form = got
        name, action = _domain_param(request), _one(form, "action") or ""
        if not name or await self.store.get_domain(name) is None:
            return self.webmail._error(404, "No such local domain.", signed)

        async def rotate() -> str:
            keys = await adminops.rotate_dkim(self.store, name)
            return (f"New DKIM keys made (selectors {keys.rsa_selector}, {keys.ed25519_selector}): publish their "
                    "records, then switch.")

        async def switch() -> str:
            _confirmed(form, "switching to the new keys (publish their records first)")
            domain = await adminops.switch_dkim(self.store, name)
            return (f"{domain.name} signs with selectors {domain.dkim_selector} and {domain.dkim_ed25519_selector} "
                    "now. Keep the old records published for a few days.")

        if action not in ("rotate", "switch"):
            return self.webmail._error(400, "Unknown action.", signed)
        done, error, status = await self._act(request, user, f"dkim-{action}", name,
                                              rotate if action == "rotate" else switch)
        return await self._dns((signed, user), name, status, done, error)


# ---- helpers ---------------------------------------------------------------------------------------------------
def _confirmed(form: dict[str, list[str]], what: str) -> None:
    """Invariant 5: AdminError unless the form's confirmation box was ticked."""
    if _one(form, "confirm") != "1":
        raise adminops.AdminError(f"Not done: tick the confirmation box to confirm {what}.")


def _size_field(value: str | None) -> int:
    """A size field of a form (empty: 0); AdminError for what `adminops.parse_size` refuses."""
    text = (value or "").strip()
    try:
        return adminops.parse_size(text) if text else 0
    except ValueError as exc:
        raise adminops.AdminError(str(exc)) from None


def _domain_param(request: Request) -> str:
    """The path's domain, normalised; "" for one that is not a domain name (answered 404 like an unknown one)."""
    try:
        return adminops.normalize_domain(str(request.path_params["domain"]))
    except adminops.AdminError:
        return ""


def _subject(raw: bytes) -> str:
    from postroom.delivery.lists import _header

    return _header(raw, b"subject") or "(no subject)"


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _human(n: int) -> str:
    return adminops.quota_text(n, 0, "bytes")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def _until(t: float, now: float) -> str:
    if t <= now:
        return "now"
    left = int(t - now)
    return f"in {left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"in {left // 60}m{left % 60:02d}s"
