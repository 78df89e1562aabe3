"""Asking rspamd about a message on the MX listener, over its HTTP protocol (issue 12 item 8, the integration).

Theory of operation
-------------------
With `rspamd.url` set, the session (smtp/session.py) calls `RspamdClient.check` at the end of DATA/BDAT, after
the inbound checks (SPF, DKIM, DMARC: their Authentication-Results field is on top of what rspamd sees) and
before delivery. The client POSTs the message to `<url>/checkv2` (HTTP/1.0, one connection per message) with
the request headers rspamd's protocol documents (https://rspamd.com/doc/developers/protocol.html): `IP` (the
client's address), `Helo`, `Hostname` (the client's forward-confirmed name, when known), `From` (the envelope
sender), one `Rcpt` per recipient, `Queue-Id` (the message id of our log lines) and `User` (the authenticated
user, never on the MX). The reply is JSON: `action`, `score`, `required_score`, and `subject` for "rewrite
subject".

What the session does with the action (`RspamdResult`):

* "reject": `550 5.7.1` (the message is refused, nothing stored);
* "soft reject" and "greylist": `451 4.7.1`, so the sender tries again later;
* "add header" and "rewrite subject": delivered to each recipient's Junk mailbox with the `$Junk` keyword
  (the DMARC quarantine path, `Envelope.junk`), with an `X-Spam` field giving the score; for "rewrite subject"
  the Subject field is replaced by the one rspamd returns;
* "no action": delivered as it is.

rspamd unreachable, slow past `rspamd.timeout_seconds`, or answering something that is not its protocol: the
message is delivered as if rspamd had said nothing, and the message's log line says `rspamd=unavailable`:
a filter being down must never lose or refuse mail.

Invariants
1. `check` never raises for anything rspamd or the network does; it returns None instead (and logs why).
2. The message goes out in pieces of at most `CHUNK` bytes; a staged body is read from its file in a thread,
   so memory and event-loop work per message do not grow with its size.
3. A reply larger than `MAX_REPLY` bytes is not read to its end (and counts as "unavailable").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from pathlib import Path

from postroom.config import parse_http_url as parse_url  # re-exported: the URL rule lives with the setting
from postroom.inbound.authres import field_end

log = logging.getLogger("postroom.inbound.rspamd")

CHUNK = 1 << 20
MAX_REPLY = 1 << 20
ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")


class RspamdError(Exception):
    """rspamd could not be asked, or its reply is not its protocol."""


@dataclass(frozen=True)
class RspamdResult:
    """rspamd's verdict: `action` one of ACTIONS, `score` and `required` (the reject threshold), `subject` the
    rewritten Subject (action "rewrite subject" only, else None)."""

    action: str
    score: float
    required: float
    subject: str | None = None

    @property
    def junk(self) -> bool:
        """Deliver to Junk with $Junk (module doc)."""
        return self.action in ("add header", "rewrite subject")

    def x_spam(self) -> bytes:
        """The `X-Spam` field added to a message that goes to Junk."""
        return f"X-Spam: Yes; score={self.score:.2f}; required={self.required:.2f}\r\n".encode("ascii")


def _header_value(text: str) -> bytes:
    """A request header value: UTF-8, with no CR, LF or other control characters."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", text).encode("utf-8")


class RspamdClient:
    """The `/checkv2` client (module doc). `url`: "http://host:port[/prefix]"; `timeout`: seconds for the whole
    exchange."""

    def __init__(self, url: str, timeout: float) -> None:
        self.host, self.port, self.prefix = parse_url(url)
        self.timeout = timeout

    async def check(self, *, prefix: bytes, raw: bytes | None, path: Path | None, ip: str, helo: str,
                    mail_from: str, recipients: Sequence[str], hostname: str | None, queue_id: str,
                    user: str = "") -> RspamdResult | None:
        """rspamd's verdict on the message `prefix` + (`raw` or the file `path`), or None when rspamd could not
        be asked (invariant 1)."""
        headers = [(b"IP", _header_value(ip)), (b"Helo", _header_value(helo)),
                   (b"From", _header_value(mail_from)), (b"Queue-Id", _header_value(queue_id))]
        if hostname:
            headers.append((b"Hostname", _header_value(hostname)))
        if user:
            headers.append((b"User", _header_value(user)))
        headers += [(b"Rcpt", _header_value(r)) for r in recipients]
        try:
            return await asyncio.wait_for(self._exchange(headers, prefix, raw, path), self.timeout)
        except (OSError, TimeoutError, RspamdError, ValueError, UnicodeError) as exc:
            log.warning("rspamd unavailable queue_id=%s error=%r", queue_id, str(exc) or type(exc).__name__)
            return None

    async def _exchange(self, headers: list[tuple[bytes, bytes]], prefix: bytes, raw: bytes | None,
                        path: Path | None) -> RspamdResult:
        size = len(prefix) + (len(raw) if raw is not None else (path.stat().st_size if path is not None else 0))
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            request = [f"POST {self.prefix}/checkv2 HTTP/1.0".encode("ascii"),
                       f"Content-Length: {size}".encode("ascii")]
            request += [name + b": " + value for name, value in headers]
            writer.write(b"\r\n".join(request) + b"\r\n\r\n" + prefix)
            if raw is not None:
                for i in range(0, len(raw), CHUNK):  # invariant 2
                    writer.write(raw[i:i + CHUNK])
                    await writer.drain()
            elif path is not None:
                with open(path, "rb") as f:
                    while piece := await asyncio.to_thread(f.read, CHUNK):
                        writer.write(piece)
                        await writer.drain()
            await writer.drain()
            reply = await reader.read(MAX_REPLY + 1)
            while len(reply) <= MAX_REPLY:
                more = await reader.read(MAX_REPLY + 1 - len(reply))
                if not more:
                    break
                reply += more
        finally:
            writer.close()
        if len(reply) > MAX_REPLY:
            raise RspamdError("reply too large")  # invariant 3
        return parse_reply(reply)


def parse_reply(reply: bytes) -> RspamdResult:
    """The verdict in an HTTP reply from `/checkv2`; raises RspamdError when it is not one."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        raise RspamdError("no end of the reply's header")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/") or status[1] != b"200":
        raise RspamdError(f"HTTP status {b' '.join(status[:3]).decode('latin-1')!r}")
    try:
        data = json.loads(body)
    except ValueError:
        raise RspamdError("reply is not JSON") from None
    if not isinstance(data, dict):
        raise RspamdError("reply is not a JSON object")
    action = data.get("action")
    score, required = data.get("score", 0.0), data.get("required_score", 0.0)
    if action not in ACTIONS or not isinstance(score, (int, float)) or not isinstance(required, (int, float)):
        raise RspamdError(f"unknown action {action!r} or score")
    subject = data.get("subject") if action == "rewrite subject" else None
    if action == "rewrite subject" and not isinstance(subject, str):
        raise RspamdError("rewrite subject without a subject")
    return RspamdResult(action, float(score), float(required), subject)


def subject_field(subject: str) -> bytes:
    """A Subject field with `subject` (RFC 2047 encoded words when it is not ASCII), folded, CRLF-ended."""
    text = re.sub(r"[\x00-\x1f\x7f]", " ", subject)
    try:
        text.encode("ascii")
        value = Header(text, "us-ascii", header_name="Subject").encode(linesep="\r\n")
    except UnicodeEncodeError:
        value = Header(text, "utf-8", header_name="Subject").encode(linesep="\r\n")
    return b"Subject: " + value.encode("ascii") + b"\r\n"


_SUBJECT = re.compile(rb"(?im)^subject[ \t]*:")


def subject_spans(head: bytes) -> list[tuple[int, int]]:
    """Byte spans [start, end) in `head` (the message start, CRLF line ends) of its Subject fields, continuation
    lines included (RFC 5322 §2.2.3)."""
    if head.startswith(b"\r\n"):
        return []
    end = head.find(b"\r\n\r\n")
    block = head[:len(head) if end < 0 else end + 2]
    spans = []
    for m in _SUBJECT.finditer(block):
        stop = field_end(block, m.end())
        spans.append((m.start(), stop))
    return spans
