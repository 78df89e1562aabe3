"""The webmail's writing pages: compose, reply, reply-all, forward (inline and as attachment), drafts, sending.

Theory of operation
-------------------
`Compose(webmail, door, on_queued)` adds three routes to the webmail's (mail.py):

    GET  /mail/compose[?mode=reply|all|forward|attach|draft&box=ID&uid=UID]   the form, blank or started from a
                                                                           message of the user's (or a draft)
    POST /mail/compose                                                     `action=send` or `action=save`
    GET  /mail/compose/correspondents?q=TEXT                               completion (JSON)

The form is `multipart/form-data` and works without script. Starlette's multipart parser spools each uploaded
file to a temporary file (in memory up to 1 MB, then on disk); `_Uploads` counts the files' octets and stops
keeping data past `limits.message_size` (the text fields, which the form puts first, are kept, so the page
comes back with them and a message that says what to do); a body more than twice that is cut off (413).

Sending is an authenticated submission by the signed-in user, through the same router calls as the submission
listener (smtp/server.py): the sender must pass `Router.may_send_as` (the user's address or an explicit alias
leading to them, never a catch-all: the From menu lists exactly those), each recipient passes
`Router.check_recipient` with the message's size (relaying allowed, as for an authenticated client; quotas as
for RCPT with SIZE), the send limits of `smtp/door.py` are taken, one message and one per recipient, once the
message is known to be sendable (so a form refused for a typo costs nothing), the header's From passes
`check_header_senders`, and `Router.accept` stores local copies and queues the rest (the queue DKIM-signs at
sending, dkim.py invariant 3, and sends DSNs). The message is written (writing.py) into a file in the store's
staging directory and handed over as `Envelope.staged` with a Received field as prefix, so neither the router
nor the store holds it whole again. Then the same file becomes the copy in Sent (`\\Sent`, made when
missing) with `\\Seen`, with a Bcc field put in front when there were Bcc recipients (RFC 5322 §3.6.3: the
sender's own copy may keep them, as mail clients do; the copies sent never carry it); the original of a
reply gets `\\Answered`, of a forward `$Forwarded` (through the store, so IMAP sessions see it); a draft the
message was resumed from is expunged.

"Save draft" writes the message (with Bcc, an `X-Postroom-Draft-Origin` field naming the message replied to or
forwarded, so a resumed draft still flags it, and an address field that does not parse yet, half typed, as the
text typed in `X-Postroom-Draft-To` / `-Cc` / `-Bcc`, since the address fields cannot hold it) into Drafts
(`\\Drafts`, made when missing) with `\\Draft \\Seen`, and expunges the draft it replaces. Opening a draft
(`mode=draft`) fills the form from it and lists its attachments as kept: hidden `source` (box:uid) and a `keep`
checkbox per part section, read back from the stored message when the form is sent (the same path keeps a
forwarded message's attachments). With script, static/compose.js saves the draft every `AUTOSAVE_SECONDS` while
the text changes (the same POST with `autosave=1`, answered in JSON), adds files dropped on the form to its file
input, and fills the address fields' `<datalist>` from the correspondents endpoint. "Rich text" (`rich=1`) sends
an HTML twin of the text as well (writing.py); a draft keeps the choice. The page's CSP (`COMPOSE_CSP`) allows
script from this origin only: still no inline script.

Correspondents are the addresses in the From fields of the user's last `RECENT` Inbox messages and the To/Cc
of the last `RECENT` in Sent, read through the metadata (no body): bounded work whatever the mailbox size,
cached per user for `CORRESPONDENTS_SECONDS`.

Invariants
1. Every message, part or mailbox named by the form (`box`/`uid`, `source`, `origin`, `draft`) is resolved
   through the signed-in user (`Webmail._message`); anything else answers 404 and changes nothing.
2. Nothing is sent or saved before the session, the same-origin check and the CSRF token have passed.
3. A refused send (address, sender, limit, size, a router refusal) answers the form again with every field
   kept (uploaded files excepted: the browser cannot be given them back), a status (400, 403, 404, 413, 429,
   507, or the router's 5xx/4xx as 400/503) and one log line `web send result=refused reason=...` (`web save`
   for a draft); an accepted one logs `web send result=ok` with the counts. Once `Router.accept` has returned
   the message is sent: nothing after it (the Sent copy, flags, the old draft) can turn it into an error.
4. The work that grows with the message (writing, base64, metadata, parsing an original) runs in worker
   threads or the metadata workers, never on the event loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from postroom import metapool as pool
from postroom.delivery.router import Envelope, Rcpt, RouteError, Router
from postroom.mime.compose import make_message_id, rfc5322_date
from postroom.mime.cte import UnknownCTE, decode_body
from postroom.mime.meta import FLAG_MULTIPART
from postroom.smtp.door import Door
from postroom.store.api import (
    AlreadyExists,
    Flag,
    Mailbox,
    MessageInfo,
    NotFound,
    OverQuota,
    StoreError,
    StoreMode,
)
from postroom.web import render, writing
from postroom.web.server import _safe
from postroom.web.sessions import Signed, csrf_ok

if TYPE_CHECKING:
    from postroom.web.mail import Webmail

log = logging.getLogger("postroom.web")

AUTOSAVE_SECONDS = 10
RECENT = 300  # messages of Inbox and of Sent read for completion
CORRESPONDENTS_SECONDS = 60.0
MAX_SUGGESTIONS = 20
MAX_TEXT_FIELD = 2 * 1024 * 1024  # octets of one text field (the body)
MAX_FILES = 100
ORIGIN_FIELD = "X-Postroom-Draft-Origin"
TYPED_FIELD = "X-Postroom-Draft"  # + "-To", "-Cc", "-Bcc": an address field of a draft that does not parse yet
COMPOSE_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data:; "
               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
MODES = {"reply", "all", "forward", "attach", "draft"}


class _TooLarge(Exception):
    pass


class _Uploads(MultiPartParser):
    """Starlette's parser, keeping at most `cap` octets of file data in all (module essay)."""

    def __init__(self, *args: Any, cap: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cap = cap
        self.file_octets = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self.file_octets += end - start
            if self.file_octets > self.cap:
                return  # over: counted, not kept (the send is refused with the text kept)
        super().on_part_data(data, start, end)


@dataclass
class _Form:
    """The fields of a compose POST."""

    values: dict[str, str]
    keep: list[str]
    files: list[UploadFile]
    file_octets: int
    cap: int

    def get(self, key: str) -> str:
        return self.values.get(key, "")

    def close(self) -> None:
        for f in self.files:
            f.file.close()


@dataclass
class _Refusal(Exception):
    status: int
    reason: str  # for the log
    text: str  # for the user


@dataclass
class _Kept:
    """An attachment of the stored message the form resumes (or forwards), listed on the form."""

    section: str
    name: str
    size: str


@dataclass
class _Cache:
    at: float
    addresses: list[str] = field(default_factory=list)


def _ref(value: str) -> tuple[int, int]:
    """"box:uid" as two positive integers, (0, 0) for anything else."""
    box, _, uid = value.partition(":")
    try:
        b, u = int(box), int(uid)
    except ValueError:
        return 0, 0
    return (b, u) if 0 < b < 2**63 and 0 < u < 2**32 else (0, 0)


class Compose:
    """The compose routes (module essay) of `mail` (the Webmail: sessions, templates, authorisation)."""

    def __init__(self, mail: Webmail, door: Door | None, on_queued: Callable[[], None] | None = None) -> None:
        self.mail = mail
        self.store = mail.store
        self.config = mail.config
        self.door = door
        self.router = Router(mail.store, mail.config, on_queued=on_queued)
        self._correspondents: dict[int, _Cache] = {}

    def routes(self) -> list[BaseRoute]:
        """The routes to add to the webmail's."""
        return [
            Route("/mail/compose", self.page, methods=["GET"]),
            Route("/mail/compose", self.post, methods=["POST"]),
            Route("/mail/compose/correspondents", self.correspondents, methods=["GET"]),
        ]

    # ---- identities and special mailboxes
    async def identities(self, user_id: int) -> list[str]:
        """The addresses the user may send as: their own, then the explicit aliases that lead to them
        (`Router.identities`; a catch-all never)."""
        return await self.router.identities(user_id)

    async def _special(self, user_id: int, use: str, name: str) -> Mailbox:
        for b in await self.store.list_mailboxes(user_id):
            if b.special_use == use:
                return b
        try:
            return await self.store.create_mailbox(user_id, name, use)
        except AlreadyExists:  # one of that name without the marker: use it
            found = await self.store.get_mailbox(user_id, name)
            if found is None:
                raise
            return found

    # ---- the page
    async def page(self, request: Request) -> Response:
        """GET /mail/compose: the form, blank or from a message (`mode`, `box`, `uid`)."""
        signed = await self.mail._signed(request)
        if signed is None:
            return RedirectResponse("/mail/", status_code=303)
        q = request.query_params
        mode = q.get("mode", "")
        draft = writing.Draft()
        context: dict[str, Any] = {"mode": "", "origin": "", "source": "", "kept": [], "draft_uid": "",
                                   "attach_message": "", "notice": ""}
        if mode:
            if mode not in MODES:
                return self.mail._error(400, "Unknown way to start a message.", signed)
            box_id, uid = _int(q.get("box")), _int(q.get("uid"))
            if mode == "draft":
                drafts = await self._special(signed.user_id, "\\Drafts", "Drafts")
                box_id = drafts.id
            found = await self.mail._message(signed, box_id, uid)  # invariant 1
            if found is None:
                return self.mail._error(404, "No such message.", signed)
            box, info = found
            try:
                raw = await self.store.read_message(info.blob_id)
            except NotFound:
                return self.mail._error(404, "No such message.", signed)
            original = await asyncio.to_thread(writing.Original.parse, raw)  # invariant 4
            ref = f"{box.id}:{info.uid}"
            if mode == "draft":
                draft, context = await self._resumed(raw, original, ref, info.uid, context)
                if q.get("saved") == "1":
                    context["notice"] = "Draft saved."
            elif mode in ("reply", "all"):
                own = await self.identities(signed.user_id)
                draft.to, draft.cc = writing.reply_recipients(original, own, mode == "all")
                draft.subject = writing.reply_subject(original.subject)
                draft.in_reply_to, draft.references = writing.reply_threading(
                    original.message_id, original.references, original.in_reply_to)
                draft.text = writing.reply_text(original)
                draft.from_ = _chosen_identity(original, own) if _addressed(original, own) else ""
                context.update(mode="reply", origin=ref)
            else:
                draft.subject = writing.forward_subject(original.subject)
                context.update(mode="forward", origin=ref)
                if mode == "attach":
                    context["attach_message"] = ref
                else:
                    draft.text = writing.forward_text(original)
                    context.update(source=ref, kept=await self._attachments_of(info, raw))
        else:
            draft.to = q.get("to", "")[:2000]
        if mode != "draft":  # a new message, reply or forward: the default identity and the signature (settings.py)
            settings = await self.store.get_user_settings(signed.user_id)
            if not draft.from_:
                draft.from_ = settings.default_identity
            draft.text = writing.with_signature(draft.text, settings.signature)
        return await self._form_page(signed, draft, context)

    async def _resumed(self, raw: bytes, original: writing.Original, ref: str, uid: int,
                       context: dict[str, Any]) -> tuple[writing.Draft, dict[str, Any]]:
        parsed = await asyncio.to_thread(_draft_fields, raw)
        draft = writing.Draft(from_=parsed.get("from", ""), to=parsed.get("typed-to", original.to),
                              cc=parsed.get("typed-cc", original.cc),
                              bcc=parsed.get("typed-bcc", parsed.get("bcc", "")), subject=original.subject,
                              text=original.text,
                              in_reply_to=original.in_reply_to, references=original.references,
                              rich=parsed.get("rich") == "1")
        kind, _, origin = parsed.get("origin", "").partition(" ")
        info = await self.store.get_message(*_ref(ref))
        context.update(draft_uid=str(uid), source=ref,
                       kept=await self._attachments_of(info, raw) if info is not None else [],
                       mode=kind if kind in ("reply", "forward") else "",
                       origin=origin if kind in ("reply", "forward") and _ref(origin) != (0, 0) else "")
        draft.from_ = email.utils.parseaddr(draft.from_)[1]
        return draft, context

    async def _attachments_of(self, info: MessageInfo, raw: bytes) -> list[_Kept]:
        from postroom.web.mail import human_size

        meta = (await self.mail._metas([info])).get(info.blob_id)
        if meta is None:
            return []
        view = await asyncio.to_thread(render.view, raw, meta)
        return [_Kept(a.section, a.name, human_size(a.size)) for a in view.attachments]

    async def _form_page(self, signed: Signed, draft: writing.Draft, context: dict[str, Any], error: str = "",
                         status: int = 200) -> Response:
        identities = await self.identities(signed.user_id)
        folders = await self.mail._folders(signed.user_id)
        response = self.mail._page(
            "compose.html", status=status, signed=signed, csrf=signed.csrf, folders=folders, current=None,
            identities=identities, draft=draft, error=error, autosave=AUTOSAVE_SECONDS,
            limit=self.config.limits.message_size, address=identities[0] if identities else "",
            is_admin=(await self.mail._account(signed.user_id))["is_admin"], **context)
        response.headers["Content-Security-Policy"] = COMPOSE_CSP
        return response

    # ---- the POST
    async def _read_form(self, request: Request) -> _Form | Response:
        cap = self.config.limits.message_size
        kind = request.headers.get("content-type", "")
        if not kind.lower().startswith("multipart/form-data"):
            return self.mail._error(400, "This form must be sent as multipart/form-data.")

        async def limited() -> AsyncGenerator[bytes, None]:
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > 2 * cap + MAX_TEXT_FIELD:
                    raise _TooLarge()
                yield chunk

        parser = _Uploads(request.headers, limited(), max_files=MAX_FILES, max_fields=1000,
                          max_part_size=MAX_TEXT_FIELD, cap=cap)
        try:
            data: FormData = await parser.parse()
        except _TooLarge:
            return self.mail._error(413, f"This upload is far over the limit of {_mb(cap)}: nothing was sent.")
        except MultiPartException as exc:
            return self.mail._error(400, f"The form could not be read: {exc}")
        values: dict[str, str] = {}
        keep: list[str] = []
        files: list[UploadFile] = []
        for key, value in data.multi_items():
            if isinstance(value, UploadFile):
                if value.filename:
                    files.append(value)
                else:
                    value.file.close()
            elif key == "keep":
                keep.append(value)
            else:
                values.setdefault(key, value)
        return _Form(values, keep, files, parser.file_octets, cap)

    async def post(self, request: Request) -> Response:
        """POST /mail/compose: send or save (module essay); invariants 2 and 3."""
        signed = await self.mail._signed(request)
        if signed is None:
            return self.mail._error(403, "You are not signed in (or your session ended). Sign in again.")
        origin_check = await self.mail._form(request)  # the same-origin check; a multipart body is left unread
        if isinstance(origin_check, Response):
            return origin_check
        form = await self._read_form(request)
        if isinstance(form, Response):
            return form
        try:
            if not csrf_ok(signed.csrf, form.get("csrf")):
                log.warning("web refused reason=csrf user_id=%d peer=%s", signed.user_id, _peer(request))
                return self.mail._error(403, "This form is stale or did not come from this page. Reload and "
                                             "try again.")
            draft = writing.Draft(
                from_=form.get("from"), to=form.get("to"), cc=form.get("cc"), bcc=form.get("bcc"),
                subject=form.get("subject"), text=form.get("body").replace("\x00", ""),
                in_reply_to=form.get("in_reply_to"), references=form.get("references"), rich=form.get("rich") == "1")
            context: dict[str, Any] = {
                "mode": form.get("mode") if form.get("mode") in ("reply", "forward") else "",
                "origin": form.get("origin") if _ref(form.get("origin")) != (0, 0) else "",
                "source": form.get("source") if _ref(form.get("source")) != (0, 0) else "",
                "draft_uid": str(_int(form.get("draft")) or ""),
                "attach_message": form.get("attach_message") if _ref(form.get("attach_message")) != (0, 0) else "",
                "kept": [], "notice": ""}
            save = form.get("action") == "save"
            try:
                if save:
                    return await self._save(request, signed, draft, form, context)
                return await self._send(request, signed, draft, form, context)
            except _Refusal as r:
                log.info("web %s result=refused reason=%s user_id=%d peer=%s", "save" if save else "send",
                         r.reason, signed.user_id, _peer(request))
                if form.get("autosave") == "1":
                    return JSONResponse({"error": r.text}, status_code=r.status)
                context["kept"] = await self._kept_again(signed, context["source"], form.keep)
                return await self._form_page(signed, draft, context, r.text, r.status)
        finally:
            form.close()

    async def _kept_again(self, signed: Signed, source: str, keep: list[str]) -> list[_Kept]:
        box_id, uid = _ref(source)
        found = await self.mail._message(signed, box_id, uid)
        if found is None:
            return []
        try:
            raw = await self.store.read_message(found[1].blob_id)
        except NotFound:
            return []
        return [k for k in await self._attachments_of(found[1], raw) if k.section in keep]

    async def _parts(self, signed: Signed, draft: writing.Draft, form: _Form, context: dict[str, Any]) -> None:
        """Fill `draft.attachments`: kept parts of `source`, the forwarded message, the uploads (invariant 1)."""
        if form.file_octets > form.cap:
            raise _Refusal(413, "too-large", f"The attached files come to {_mb(form.file_octets)}, over the limit of "
                                             f"{_mb(form.cap)} for a message: attach fewer or smaller files and "
                                             "send again.")
        source = context["source"]
        if source and form.keep:
            found = await self.mail._message(signed, *_ref(source))
            meta = (await self.mail._metas([found[1]])).get(found[1].blob_id) if found is not None else None
            if found is None or meta is None:
                raise _Refusal(404, "no-source", "The draft or message these attachments came from is gone "
                                                 "(saved again in another window?). Open it again.")
            for section in dict.fromkeys(form.keep):
                row = render.find_row(meta, section)
                if row is None or row.flags & FLAG_MULTIPART:
                    continue
                try:  # the part's octets alone, not the whole message
                    encoded = await self.store.read_message_range(found[1].blob_id, row.body_start, row.size)
                except NotFound:
                    raise _Refusal(404, "no-source", "The message these attachments came from is gone.") from None
                data = await asyncio.to_thread(_decoded, encoded, row.encoding)  # invariant 4
                name = row.filename or f"part-{row.section}"
                draft.attachments.append(writing.Attachment(name, row.mime_type, data,
                                                            rfc822=row.mime_type == "message/rfc822"))
        if context["attach_message"]:
            found = await self.mail._message(signed, *_ref(context["attach_message"]))
            if found is None:
                raise _Refusal(404, "no-original", "The message to forward is gone.")
            raw = await self.store.read_message(found[1].blob_id)
            subject = (await asyncio.to_thread(writing.Original.parse, raw)).subject
            draft.attachments.append(writing.Attachment(_eml_name(subject), "message/rfc822", raw, rfc822=True))
        for f in form.files:
            draft.attachments.append(writing.Attachment(f.filename or "attachment",
                                                        f.content_type or "application/octet-stream", f.file))

    async def _write(self, draft: writing.Draft, head: bytes) -> tuple[Path, int]:
        """The message in a new staging file (invariant 4): its path and size; 413 past the limit."""
        fd, name = tempfile.mkstemp(dir=self.store.staging_dir(), prefix="web-compose.")
        path = Path(name)

        def go() -> int:
            with os.fdopen(fd, "wb") as out:
                return writing.write_message(out, draft, head)

        try:
            size = await asyncio.to_thread(go)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size > self.config.limits.message_size:
            path.unlink(missing_ok=True)
            raise _Refusal(413, "too-large", f"The message would be {_mb(size)}, over the limit of "
                                             f"{_mb(self.config.limits.message_size)}: remove an attachment "
                                             "and send again.")
        return path, size

    async def _sender(self, signed: Signed, draft: writing.Draft) -> tuple[str, list[str]]:
        """(the user's address, the checked From address) or a refusal."""
        identities = await self.identities(signed.user_id)
        if not identities:
            raise _Refusal(403, "no-user", "Your account is gone.")
        chosen = draft.from_.strip() or identities[0]
        if chosen.lower() not in {i.lower() for i in identities} or \
                not await self.router.may_send_as(identities[0], chosen):  # RFC 6409 §6.1, router invariant 6
            raise _Refusal(403, "sender-not-owned", f"You cannot send as {chosen}: choose one of your own "
                                                    "addresses in From.")
        return chosen, identities

    async def _from_field(self, signed: Signed, sender: str) -> str:
        """The From field's value for `sender` (one of the user's identities): with the identity's display name,
        else the user's (settings.py), else the bare address."""
        settings = await self.store.get_user_settings(signed.user_id)
        name = settings.identity_names.get(sender.lower(), "") or settings.display_name
        return writing.mailbox(name, sender)

    async def _send(self, request: Request, signed: Signed, draft: writing.Draft, form: _Form,
                    context: dict[str, Any]) -> Response:
        sender, identities = await self._sender(signed, draft)
        user = identities[0]
        try:
            to = writing.parse_addresses(draft.to, "To")
            cc = writing.parse_addresses(draft.cc, "Cc")
            bcc = writing.parse_addresses(draft.bcc, "Bcc")
        except writing.BadAddress as exc:
            raise _Refusal(400, "bad-address", f"{exc} Correct it and send again.") from None
        rcpts = list(dict.fromkeys(a for _, a in [*to, *cc, *bcc]))
        if not rcpts:
            raise _Refusal(400, "no-recipients", "Add at least one recipient in To, Cc or Bcc.")
        if len(rcpts) > self.config.limits.recipients:  # as submission's RCPT past it (452 4.5.3, RFC 5321 §4.5.3.1.8)
            raise _Refusal(400, "too-many-recipients",
                           f"A message may go to at most {self.config.limits.recipients} recipients; this one has "
                           f"{len(rcpts)}. Your text is kept: send it in parts, or to a mailing list.")
        await self._parts(signed, draft, form, context)
        now = time.time()
        hostname = self.config.server.hostname
        message_id = make_message_id(hostname)
        head = writing.header_bytes(draft, from_=await self._from_field(signed, sender), to=to, cc=cc, bcc=bcc,
                                    date=now, message_id=message_id,
                                    with_bcc=False)
        path, size = await self._write(draft, head)
        try:
            for r in rcpts:
                try:  # as RCPT TO of an authenticated client with SIZE (RFC 1870 §6.2: quotas checked too)
                    await self.router.check_recipient(r, sender, True, size=size)
                except RouteError as exc:
                    raise _Refusal(400 if exc.code >= 500 else 503, "recipient",
                                   f"{r}: {exc.text}. Correct or remove this address and send again.") from None
            self._take_limits(user, len(rcpts), now)
            try:
                await self.router.check_header_senders(user, head)
            except RouteError as exc:
                raise _Refusal(403, "header-sender", exc.text) from None
            received = _received(hostname, _client(request), request.url.scheme == "https", user, now)
            env = Envelope(mail_from=sender, recipients=tuple(Rcpt(r) for r in rcpts), raw=received,
                           may_relay=True, staged=path, from_checked=True)
            try:
                accepted = await self.router.accept(env)
            except RouteError as exc:
                raise _Refusal(400 if exc.code >= 500 else 503, "router",
                               f"The message was not sent: {exc.text}.") from None
            sent: Mailbox | None = None
            try:
                sent = await self._special(signed.user_id, "\\Sent", "Sent")
                copy, copy_size = await self._with_field(path, writing.bcc_field(bcc)) if bcc else (path, size)
                await self._keep_copy(sent, copy, copy_size, Flag.SEEN)
            except (StoreError, OSError) as exc:  # sent already (durable, router invariant 1): only the copy is missing
                log.warning("web send sent-copy=failed reason=%s user=%s", type(exc).__name__, _safe(user))
        finally:
            path.unlink(missing_ok=True)
        await self._mark_original(signed, context)
        await self._drop_draft(signed, context["draft_uid"])
        self._correspondents.pop(signed.user_id, None)
        log.info("web send result=ok user=%s from=%s rcpts=%d size=%d local=%d queued=%d peer=%s", _safe(user),
                 _safe(sender), len(rcpts), size, accepted.local, accepted.queued, _peer(request))
        # mail.py invariant 4: a path built from an integer
        return RedirectResponse(f"/mail/box/{sent.id}" if sent is not None else "/mail/", status_code=303)

    def _take_limits(self, user: str, recipients: int, now: float) -> None:
        """The submission send limits of smtp/door.py, counted as a submission of this message would count them
        (one MAIL, one RCPT per recipient); taken only once the message is known to be sendable, so a form
        refused for a typo costs nothing."""
        door = self.door
        if door is None:
            return
        if not door.take_message(user, now):
            raise _Refusal(429, "send-limit-messages",
                           f"You have sent the most messages allowed in an hour "
                           f"({self.config.smtp.submission_messages_per_hour}). Your text is kept: send it later.")
        for _ in range(recipients):
            if not door.take_recipient(user, now):
                raise _Refusal(429, "send-limit-recipients",
                               f"You have written to the most recipients allowed in an hour "
                               f"({self.config.smtp.submission_recipients_per_hour}). Your text is kept: send it "
                               "later.")

    async def _with_field(self, path: Path, field: bytes) -> tuple[Path, int]:
        """A new staging file: `field` (a header field, CRLF) then the message in `path`, copied in pieces in a
        thread (never whole in memory): the Sent copy keeps its Bcc field, which the sent message does not carry."""
        fd, name = tempfile.mkstemp(dir=self.store.staging_dir(), prefix="web-sent.")
        copy = Path(name)

        def go() -> int:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                out.write(field)
                shutil.copyfileobj(src, out, 256 * 1024)
                return out.tell()

        try:
            return copy, await asyncio.to_thread(go)
        except BaseException:
            copy.unlink(missing_ok=True)
            raise

    async def _keep_copy(self, box: Mailbox, path: Path, size: int, flags: int) -> int:
        meta = await pool.meta_of_file(path, size, self.config.limits, allow_nul=False)
        result = await self.store.append_file(box.id, path, flags=flags, meta=meta.to_bytes())
        return result.uid

    async def _mark_original(self, signed: Signed, context: dict[str, Any]) -> None:
        """\\Answered on a replied message, $Forwarded on a forwarded one (through the store: IMAP sees it)."""
        if not context["origin"] or context["mode"] not in ("reply", "forward"):
            return
        found = await self.mail._message(signed, *_ref(context["origin"]))
        if found is None:
            return  # moved or deleted meanwhile: nothing to flag
        box, info = found
        try:
            if context["mode"] == "reply":
                await self.store.store_flags(box.id, [info.uid], StoreMode.ADD, Flag.ANSWERED)
            else:
                await self.store.store_flags(box.id, [info.uid], StoreMode.ADD, keywords=["$Forwarded"])
        except StoreError:
            log.warning("could not flag the original of a %s", context["mode"], exc_info=True)

    async def _drop_draft(self, signed: Signed, draft_uid: str) -> None:
        uid = _int(draft_uid)
        if not uid:
            return
        drafts = await self._special(signed.user_id, "\\Drafts", "Drafts")
        if await self.store.get_message(drafts.id, uid) is not None:
            await self.store.store_flags(drafts.id, [uid], StoreMode.ADD, Flag.DELETED)
            await self.store.expunge(drafts.id, [uid])

    async def _save(self, request: Request, signed: Signed, draft: writing.Draft, form: _Form,
                    context: dict[str, Any]) -> Response:
        sender, _ = await self._sender(signed, draft)
        pairs: dict[str, list[tuple[str, str]]] = {}
        extra = []
        for what, value in (("To", draft.to), ("Cc", draft.cc), ("Bcc", draft.bcc)):
            try:
                pairs[what] = writing.parse_addresses(value, what)
            except writing.BadAddress:  # half typed: kept as typed in a text field of our own, resumed from it
                pairs[what] = []
                extra.append((f"{TYPED_FIELD}-{what}", " ".join(value.split())[:2000]))
        await self._parts(signed, draft, form, context)
        if context["origin"] and context["mode"]:
            extra.append((ORIGIN_FIELD, f"{context['mode']} {context['origin']}"))
        head = writing.header_bytes(draft, from_=await self._from_field(signed, sender), to=pairs["To"],
                                    cc=pairs["Cc"], bcc=pairs["Bcc"],
                                    date=time.time(), message_id=make_message_id(self.config.server.hostname),
                                    with_bcc=True, extra=extra)
        path, size = await self._write(draft, head)
        try:
            drafts = await self._special(signed.user_id, "\\Drafts", "Drafts")
            try:
                uid = await self._keep_copy(drafts, path, size, Flag.DRAFT | Flag.SEEN)
            except OverQuota:
                raise _Refusal(507, "over-quota", "Your mailbox is full: the draft was not saved. Delete some "
                                                  "mail (or send the message) and try again.") from None
        finally:
            path.unlink(missing_ok=True)
        if context["draft_uid"] != str(uid):
            await self._drop_draft(signed, context["draft_uid"])
        log.info("web save result=ok user_id=%d size=%d draft_uid=%d peer=%s", signed.user_id, size, uid,
                 _peer(request))
        if form.get("autosave") == "1":
            info = await self.store.get_message(drafts.id, uid)
            kept: list[_Kept] = []
            if info is not None:
                kept = await self._attachments_of(info, await self.store.read_message(info.blob_id))
            return JSONResponse({"draft": uid, "source": f"{drafts.id}:{uid}",
                                 "attachments": [{"section": k.section, "name": k.name, "size": k.size}
                                                 for k in kept]},
                                headers={"Cache-Control": "no-store"})
        return RedirectResponse(f"/mail/compose?mode=draft&uid={uid}&saved=1", status_code=303)

    # ---- completion
    async def correspondents(self, request: Request) -> Response:
        """GET /mail/compose/correspondents?q=TEXT: up to MAX_SUGGESTIONS addresses ("Name <addr>") the user
        wrote to or got mail from recently that contain TEXT (no case), as a JSON list. 403 when signed out."""
        signed = await self.mail._signed(request)
        if signed is None:
            return JSONResponse({"error": "not signed in"}, status_code=403)
        q = request.query_params.get("q", "").strip().lower()[:200]
        known = await self._known(signed.user_id)
        hits = [a for a in known if q in a.lower()][:MAX_SUGGESTIONS]
        return JSONResponse(hits, headers={"Cache-Control": "no-store"})

    async def _known(self, user_id: int) -> list[str]:
        now = time.monotonic()
        cached = self._correspondents.get(user_id)
        if cached is not None and now - cached.at < CORRESPONDENTS_SECONDS:
            return cached.addresses
        own = {a.lower() for a in await self.identities(user_id)}
        found: dict[str, str] = {}
        boxes = [b for b in await self.store.list_mailboxes(user_id)
                 if b.name.upper() == "INBOX" or b.special_use == "\\Sent"]
        for box in boxes:
            sent = box.special_use == "\\Sent"
            try:
                infos = await self.store.page_messages(box.id, RECENT)
            except NotFound:
                continue
            metas = await self.mail._metas(infos)
            for m in infos:
                meta = metas.get(m.blob_id)
                if meta is None:
                    continue
                values = [meta.search.header("to"), meta.search.header("cc")] if sent \
                    else [meta.search.header("from")]
                for name, addr in email.utils.getaddresses([v for v in values if v]):
                    if "@" in addr and addr.lower() not in own:
                        found.setdefault(addr.lower(), email.utils.formataddr((name, addr)) if name else addr)
        addresses = sorted(found.values(), key=str.lower)
        if len(self._correspondents) > 10_000:
            self._correspondents.clear()
        self._correspondents[user_id] = _Cache(now, addresses)
        return addresses


def _draft_fields(raw: bytes) -> dict[str, str]:
    """From, Bcc, the draft-origin field and the address fields kept as typed (`typed-to`...) of a stored draft
    (decoded), and "rich" ("1" when it has an HTML part: it was written in the rich-text mode)."""
    import email.parser
    import email.policy

    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw, headersonly=True)
    out = {}
    names = [("from", "from"), ("bcc", "bcc"), ("origin", ORIGIN_FIELD.lower())]
    names += [(f"typed-{w}", f"{TYPED_FIELD}-{w}".lower()) for w in ("to", "cc", "bcc")]
    for key, name in names:
        try:
            value = msg.get(name)
        except Exception:
            continue
        if value is not None:
            out[key] = " ".join(str(value).split())
    full = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    try:
        out["rich"] = "1" if full.get_body(preferencelist=("html",)) is not None else ""
    except Exception:  # a structure the parser cannot walk: plain
        out["rich"] = ""
    return out


def _decoded(encoded: bytes, encoding: str) -> bytes:
    """A part's body with its transfer encoding undone; as stored for an encoding this server does not know."""
    try:
        return decode_body(encoded, encoding)
    except UnknownCTE:
        return encoded


def _addressed(original: writing.Original, own: list[str]) -> bool:
    """Whether the original was sent to one of the user's identities `own` (To or Cc)."""
    mine = {a.lower() for a in own}
    return any(addr.lower() in mine for _, addr in email.utils.getaddresses([original.to, original.cc]))


def _chosen_identity(original: writing.Original, own: list[str]) -> str:
    """The identity a reply is sent from: the one of the user's addresses the original was sent to, else the
    first (the user's own)."""
    mine = {a.lower(): a for a in own}
    for _, addr in email.utils.getaddresses([original.to, original.cc]):
        if addr.lower() in mine:
            return mine[addr.lower()]
    return own[0] if own else ""


def _eml_name(subject: str) -> str:
    clean = "".join(c for c in subject if c.isalnum() or c in " -_.,()")[:80].strip()
    return (clean or "message") + ".eml"


def _received(hostname: str, client: str, tls: bool, user: str, now: float) -> bytes:
    """The trace field of this hop (RFC 5321 §4.4), like submission's: the browser's address, the user."""
    with_ = "HTTPSA" if tls else "HTTPA"
    return (f"Received: from [{client}] by {hostname} (Postroom webmail) with {with_}\r\n"
            f"\t(authenticated user {_safe(user)}); {rfc5322_date(now)}\r\n").encode("ascii", "replace")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _peer(request: Request) -> str:
    client = request.client
    return _safe(f"{client.host}:{client.port}" if client else "")


def _int(value: str | None) -> int:
    try:
        n = int(value or "")
    except ValueError:
        return 0
    return n if 0 < n < 2**63 else 0


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"
