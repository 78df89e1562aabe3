"""Preview text of a message (RFC 8970 §3): a short plain-text extract for message lists.

Theory of operation
-------------------
`preview_text(raw, meta)` reads the part table computed at delivery (`mime.meta`), takes the first text/plain or
text/html part of the message itself (not one inside an attached message, not one marked as an attachment) and
decodes at most `SOURCE_MAX` bytes of it, through the decoders the search text uses (`mime.cte`,
`mime.text.charset_decode`, `html_to_text` for HTML). Quoted lines of plain text (those starting with ">") are
left out (§3 leaves the choice of text to the server; a reply's quote says nothing new), whitespace is
collapsed to single spaces, and the result is at most `PREVIEW_MAX` characters (§3). IMAP computes it once per
body and keeps it in the store (`imap/preview.py`).

Invariants
1. Never raises on any message; a message without such a part has the empty preview "".
2. The work is bounded whatever the message: at most `SOURCE_MAX` bytes are decoded, and every step is linear.
3. The result has no control characters and no CR or LF, and at most `PREVIEW_MAX` code points.
"""

from __future__ import annotations

from postroom.mime.cte import UnknownCTE, decode_body
from postroom.mime.meta import FLAG_MESSAGE, FLAG_MULTIPART, MessageMeta, PartRow
from postroom.mime.text import charset_decode, html_to_text

PREVIEW_MAX = 256  # characters: RFC 8970 §3 "MUST NOT be more than 256 characters in length"
SOURCE_MAX = 64 * 1024  # bytes of the chosen part decoded (invariant 2): far more than 256 characters of text
_TEXT_TYPES = ("text/plain", "text/html")


def first_text_part(parts: tuple[PartRow, ...]) -> PartRow | None:
    """The first text/plain or text/html leaf of the message in document order, outside encapsulated messages and
    not an attachment; None if there is none."""
    inside: list[str] = []  # sections of message/rfc822 parts: what is under them is another message's text
    for row in parts:
        if not row.section:
            continue  # the root: its twin "1" (a single-part message) or its children are what count
        if any(row.section.startswith(m + ".") for m in inside):
            continue
        if row.flags & FLAG_MESSAGE:
            inside.append(row.section)
            continue
        if row.flags & FLAG_MULTIPART or row.mime_type not in _TEXT_TYPES or row.disposition == "attachment":
            continue
        return row
    return None


def preview_text(raw: bytes, meta: MessageMeta) -> str:
    """RFC 8970 §3 preview of the message `raw` whose metadata is `meta` (module doc; invariants 1-3)."""
    try:
        part = first_text_part(meta.parts)
        if part is None:
            return ""
        body = raw[part.body_start:min(part.end, part.body_start + SOURCE_MAX)]
        try:
            data = decode_body(body, part.encoding)
        except UnknownCTE:
            return ""  # not text we can read
        text = charset_decode(data, part.charset)
        if part.mime_type == "text/html":
            if len(body) < part.end - part.body_start:
                # cut at SOURCE_MAX: a tag (or comment) cut in two would read as text ("<di"); drop the tail
                # after the last "<" that no ">" follows (RFC 8970 §3: the preview is text, never markup)
                lt = text.rfind("<")
                if lt >= 0 and text.find(">", lt) < 0:
                    text = text[:lt]
            words = html_to_text(text).split()
        else:  # plain text quotes with ">" at the start of a line (RFC 3676 §4.5); such lines are left out
            words = " ".join(ln for ln in text.splitlines() if not ln.lstrip().startswith(">")).split()
        # every run of whitespace, line ends included, is one space
        out = " ".join(words)[:PREVIEW_MAX]
        return "".join(ch if ch.isprintable() else " " for ch in out)
    except Exception:  # noqa: BLE001 - invariant 1: a preview is never worth a failed FETCH
        return ""
