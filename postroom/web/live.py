"""Live updates of open webmail pages: Server-Sent Events at `/mail/events`, fed by the store's change hub.

Theory of operation
-------------------
An open list page (mailbox.html, conversations.html) loads `static/live.js`, which opens an `EventSource` on
`/mail/events?box=ID&modseq=N` (N: the mailbox's HIGHESTMODSEQ when the page was rendered). The request is
checked like every page: its session cookie must name a live session (sessions.py), and the mailbox must be the
user's own, else 403 / 404 before anything is streamed. The stream then subscribes to the change hub for the
signed-in user, the very feed IMAP IDLE and NOTIFY wake on (store/hub.py): deliveries by SMTP, flags set and
messages expunged or moved by an IMAP client or another web page, in this process or another one using the
store (hub.py "Other processes").

What is sent (the Server-Sent Events format, HTML Living Standard §9.2 "Server-sent events"): one event per
change that a page shows, `event: message` for APPEND, FLAGS and EXPUNGE (data: a JSON object with `kind`,
`mailbox`, `uid`, `flags`) and `event: folders` for the folder tree's own changes (created, deleted, renamed,
subscribed); a comment line (`: keepalive`) every `KEEPALIVE_SECONDS` of silence, so idle proxies keep the
connection and a client that went away is noticed; `retry:` once, the reconnection delay. The page does not
rebuild rows from these records: it refetches its own URL and swaps the list and the folder tree (live.js), so
what it shows is always what the server renders (the same escaping, the same accessible names) and a page
without script is the same page, only not updated.

The gap between rendering and subscribing: a change committed after the page was read but before the stream
subscribed reaches no one. So, once subscribed, the stream compares the mailbox's HIGHESTMODSEQ with the page's
`modseq` (one point lookup) and sends `event: stale` when it moved: the page refetches once.

Bounds (secure by default): each stream's subscription holds at most the hub's `maxsize` changes; a client that
does not read them (a stuck or slow connection) overflows it (hub invariant 3), and the stream then sends
`event: overflow` and ends: live.js refetches the list and reconnects, as it does after any reconnection. A user
may hold at most `MAX_STREAMS_PER_USER` streams at once (more answers 429). Each keepalive also checks the session
again: a signed-out or expired session ends its stream (`event: signedout`). `close()` (server shutdown) ends
every stream at once, so shutting down does not wait for open pages.

Invariants
1. A stream exists only for a live session, and carries only changes of that session's user (hub invariant 2).
2. At most `MAX_STREAMS_PER_USER` streams per user; each holds at most the hub's `maxsize` changes; an overflow
   ends the stream (and the page resyncs by refetching).
3. Work per change is constant (a record formatted, a write); nothing here reads a mailbox.
4. One log line per stream when it ends (`web events end ... reason=...`), naming the user, never the cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from postroom.store.api import Change, ChangeKind, Store
from postroom.store.hub import SubscriptionOverflow
from postroom.web.sessions import Sessions, Signed

log = logging.getLogger("postroom.web")

KEEPALIVE_SECONDS = 15.0  # a comment line after this much silence; the session is checked again then
RETRY_MS = 1000  # the reconnection delay the browser is told (`retry:`)
MAX_STREAMS_PER_USER = 20  # open pages (tabs) of one user with live updates
BATCH = 200  # changes written in one go before the next read of the subscription
_MESSAGE_KINDS = {ChangeKind.APPEND: "append", ChangeKind.FLAGS: "flags", ChangeKind.EXPUNGE: "expunge"}
_FOLDER_KINDS = {ChangeKind.MAILBOX_CREATED, ChangeKind.MAILBOX_DELETED, ChangeKind.MAILBOX_RENAMED,
                 ChangeKind.MAILBOX_SUBSCRIBED, ChangeKind.MAILBOX_UNSUBSCRIBED}


def event_text(change: Change) -> bytes:
    """One change as Server-Sent Events text (`event:` and `data:` lines and the blank line ending it), or b""
    for a change no page shows (keywords, ACL, metadata)."""
    kind = _MESSAGE_KINDS.get(change.kind)
    if kind is not None:
        data = {"kind": kind, "mailbox": change.mailbox_id, "uid": change.uid, "flags": change.flags}
        return b"event: message\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    if change.kind in _FOLDER_KINDS:
        data = {"kind": change.kind.value, "mailbox": change.mailbox_id}
        return b"event: folders\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    return b""


class Live:
    """The `/mail/events` endpoint over `store`'s hub; `signed(request)` finds the request's session and
    `cookie(request)` its cookie value (mail.py's, so the rules are the same)."""

    def __init__(self, store: Store, sessions: Sessions, signed: Callable[[Request], Awaitable[Signed | None]],
                 cookie: Callable[[Request], str | None]) -> None:
        self.store = store
        self.sessions = sessions
        self._signed = signed
        self._cookie = cookie
        self._streams: dict[int, int] = {}  # user id -> open streams (invariant 2)
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End every open stream now (server shutdown); later requests are refused with 503."""
        self._closing.set()

    def open_streams(self, user_id: int | None = None) -> int:
        """How many streams are open (of one user, or of all)."""
        return sum(self._streams.values()) if user_id is None else self._streams.get(user_id, 0)

    async def events(self, request: Request) -> Response:
        """GET /mail/events?box=ID&modseq=N: the event stream (module doc); 403 without a session, 404 for a
        mailbox not the user's, 429 past `MAX_STREAMS_PER_USER`, 503 while shutting down."""
        plain = {"Cache-Control": "no-store"}
        if self._closing.is_set():
            return Response("shutting down\n", status_code=503, media_type="text/plain", headers=plain)
        signed = await self._signed(request)
        if signed is None:
            return Response("not signed in\n", status_code=403, media_type="text/plain", headers=plain)
        box_id = _number(request.query_params.get("box"))
        modseq = _number(request.query_params.get("modseq"))
        box = await self.store.get_mailbox_by_id(box_id) if box_id else None
        if box_id and (box is None or box.user_id != signed.user_id):
            return Response("no such folder\n", status_code=404, media_type="text/plain", headers=plain)
        user_id = signed.user_id
        if self._streams.get(user_id, 0) >= MAX_STREAMS_PER_USER:
            log.warning("web events refused reason=too-many-streams user_id=%d", user_id)
            return Response("too many open pages with live updates\n", status_code=429, media_type="text/plain",
                            headers=plain)
        cookie = self._cookie(request)

        async def stream() -> AsyncIterator[bytes]:
            # Counted and subscribed here, in the generator, so its `finally` undoes both whatever happens.
            started = time.monotonic()
            sent = 0
            reason = "client-gone"
            self._streams[user_id] = self._streams.get(user_id, 0) + 1
            sub = self.store.hub.subscribe(user_id)  # before the modseq check: nothing falls in between
            closing = asyncio.ensure_future(self._closing.wait())
            gone = asyncio.ensure_future(_disconnected(request))  # noticed at once, not at the next write
            getter: asyncio.Future[Change] | None = None
            try:
                yield b"retry: %d\n: live\n\n" % RETRY_MS
                if box_id:
                    now = await self.store.get_mailbox_by_id(box_id)
                    if now is None or now.highestmodseq != modseq:
                        yield b"event: stale\ndata: {}\n\n"
                while True:
                    getter = asyncio.ensure_future(sub.get())
                    done, _ = await asyncio.wait({getter, closing, gone}, timeout=KEEPALIVE_SECONDS,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        with contextlib.suppress(BaseException):
                            await getter
                    if closing in done:
                        reason = "shutdown"
                        return
                    if gone in done:
                        return
                    if getter not in done:  # silence: keep the connection, check the session (invariant 1)
                        if await self.sessions.lookup(cookie) is None:
                            reason = "signed-out"
                            yield b"event: signedout\ndata: {}\n\n"
                            return
                        yield b": keepalive\n\n"
                        continue
                    try:
                        changes = [getter.result()]
                        while len(changes) < BATCH and (more := sub.get_nowait()) is not None:
                            changes.append(more)
                    except SubscriptionOverflow:  # invariant 2: the page resyncs by refetching
                        reason = "overflow"
                        yield b"event: overflow\ndata: {}\n\n"
                        return
                    text = b"".join(event_text(c) for c in changes)
                    if text:
                        sent += len(changes)
                        yield text
            finally:
                for task in (closing, gone, getter):
                    if task is not None and not task.done():
                        task.cancel()
                        with contextlib.suppress(BaseException):
                            await task
                sub.close()
                left = self._streams.get(user_id, 1) - 1
                if left:
                    self._streams[user_id] = left
                else:
                    self._streams.pop(user_id, None)
                log.info("web events end user_id=%d mailbox_id=%d changes=%d seconds=%.1f reason=%s", user_id,
                         box_id, sent, time.monotonic() - started, reason)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _disconnected(request: Request) -> None:
    """Return when the client has gone (the ASGI `http.disconnect` message; the request has no body to read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _number(value: str | None) -> int:
    try:
        n = int(value or "")
    except ValueError:
        return 0
    return n if 0 < n < 2**63 else 0
