"""What the webmail shows of a message: decoded headers, the body as safe HTML, the attachment list, and the HTML
part cleaned for its sandboxed frame.

Theory of operation
-------------------
Everything here works from the raw bytes and the part table computed at delivery (`mime.meta.MessageMeta`):
no MIME is parsed again. `view()` picks the body to show among the text parts that are neither attachments nor
inside a forwarded message (message/rfc822): the first text/html if there is one (RFC 2046 §5.1.4: of
alternatives, the last is the richest; senders put HTML last), else every text/plain part in order. A plain
body is escaped and its URLs made links (`rel="noopener noreferrer"`); an HTML body is not put in the page at
all: the page frames `/html`, which `html_document()` answers with the part cleaned by nh3 (an allow-list
sanitiser: no script, no event handlers, no forms, no `javascript:` URLs, no `<style>`, only harmless CSS
properties) and served under its own CSP and `sandbox` (mail.py), so even a sanitiser miss runs no script,
loads nothing remote and cannot navigate the app. Remote images are dropped (`img` keeps only `cid:` sources);
`cid:` references (RFC 2392) are replaced by `data:` URLs of the message's own parts, since browsers do not
resolve `cid:`.

Text is decoded with `mime.text.charset_decode`: every charset Python has a codec for; an unknown one reads as
UTF-8, else Windows-1252. Header fields come decoded (RFC 2047) from the metadata's search text.

Invariants
1. Every string from the message reaches the page through Jinja2's autoescape or `markupsafe.escape`;
   `Markup` is only made here, from escaped pieces.
2. Work grows with the message, so callers run `view()` and `html_document()` in a worker thread
   (`asyncio.to_thread`), never on the event loop; each reads at most `MAX_TEXT` decoded characters of body.
3. An attachment's section is one of the part table's; nothing outside the table is addressed.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

import nh3
from markupsafe import Markup, escape

from postroom.mime.cte import UnknownCTE
from postroom.mime.meta import FLAG_MESSAGE, FLAG_MULTIPART, MessageMeta, PartRow
from postroom.mime.text import charset_decode

MAX_TEXT = 1_000_000  # decoded characters of body shown; the rest is in "view source"
MAX_INLINE_IMAGES = 10 * 1024 * 1024  # octets of cid: images turned into data: URLs per message

_URL = re.compile(r"(?i)\b(?:https?://|mailto:)[^\s<>\"'\x00-\x1f]+")
_TRAILING = ".,;:!?)]}'\""
_TOKEN = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")
_CID_SRC = re.compile(r'src="cid:([^"]*)"')

# What HTML mail keeps (nh3's allow-list plus presentational attributes mail uses); everything else goes.
_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"style", "dir", "lang", "title", "align", "valign", "bgcolor", "width", "height"},
    "a": {"href", "hreflang"},
    "img": {"src", "alt", "width", "height", "align", "border"},
    "td": {"colspan", "rowspan", "nowrap"},
    "th": {"colspan", "rowspan", "scope"},
    "table": {"border", "cellpadding", "cellspacing", "summary"},
    "ol": {"start", "type"},
    "font": {"color", "face", "size"},
}
_TAGS = set(nh3.ALLOWED_TAGS) | {"font"}
_STYLE_PROPERTIES = {  # no property that takes a URL (background, list-style-image, border-image, content...)
    "color", "background-color", "font", "font-family", "font-size", "font-style", "font-weight", "text-align",
    "text-decoration", "text-transform", "line-height", "letter-spacing", "vertical-align", "white-space",
    "margin", "margin-top", "margin-bottom", "margin-left", "margin-right", "padding", "padding-top",
    "padding-bottom", "padding-left", "padding-right", "border", "border-top", "border-bottom", "border-left",
    "border-right", "border-color", "border-style", "border-width", "border-collapse", "border-radius", "width",
    "max-width", "min-width", "height", "display", "direction",
}


@dataclass(frozen=True)
class Attachment:
    section: str  # the part's number ("2", "1.3")
    name: str  # decoded file name (RFC 2231 / 2047), or a made-up one for an unnamed part
    mime_type: str
    size: int  # octets as stored (still transfer-encoded)


@dataclass(frozen=True)
class View:
    """A message as the reading page shows it."""

    headers: dict[str, str]  # "from", "to", "cc", "date", "subject": decoded, "" when missing
    text: Markup | None  # the plain body as safe HTML, or None when the body is HTML (framed)
    html_section: str | None  # the HTML part to frame
    attachments: tuple[Attachment, ...]
    truncated: bool  # the body shown is cut at MAX_TEXT characters


def _inside_message(row: PartRow, rows: tuple[PartRow, ...]) -> bool:
    return any(r.flags & FLAG_MESSAGE and r.section and row.section.startswith(r.section + ".") for r in rows)


def _part(section: str) -> tuple[int, ...]:
    return tuple(int(p) for p in section.split(".")) if section else ()


def decoded(raw: bytes, meta: MessageMeta, row: PartRow) -> bytes:
    """The part's content with its transfer encoding undone (base64, quoted-printable); as stored for an
    unknown encoding."""
    try:
        data = meta.binary(raw, _part(row.section))
    except UnknownCTE:
        data = raw[row.body_start:row.end]
    return data if data is not None else b""


def _text_of(raw: bytes, meta: MessageMeta, row: PartRow, limit: int) -> str:
    return charset_decode(decoded(raw, meta, row)[: limit * 4], row.charset)[:limit].replace("\r\n", "\n")


def linkify(text: str) -> Markup:
    """Plain text as HTML: escaped, URLs (http, https, mailto) made links that open apart from the app."""
    out: list[str] = []
    pos = 0
    for m in _URL.finditer(text):
        url = m.group(0).rstrip(_TRAILING)
        end = m.start() + len(url)
        out.append(str(escape(text[pos:m.start()])))
        out.append(f'<a href="{escape(url)}" rel="noopener noreferrer" target="_blank">{escape(url)}</a>')
        pos = end
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))  # invariant 1: every piece escaped above


def safe_type(mime_type: str) -> str:
    """The part's type if it is a plain `type/subtype` token pair, else application/octet-stream."""
    return mime_type if _TOKEN.match(mime_type) else "application/octet-stream"


def view(raw: bytes, meta: MessageMeta) -> View:
    """The reading page's view of a message (invariant 2: run it in a thread)."""
    rows = meta.parts
    headers = {k: meta.search.header(k) for k in ("from", "to", "cc", "date", "subject")}
    multipart = bool(rows and rows[0].flags & FLAG_MULTIPART)
    leaves = [r for r in rows if (r.section or not multipart) and not r.flags & (FLAG_MULTIPART | FLAG_MESSAGE)
              and not _inside_message(r, rows)]
    if not multipart:
        leaves = [r for r in leaves if r.section == "1"] or leaves[:1]
    bodies = [r for r in leaves if r.mime_type in ("text/plain", "text/html") and r.disposition != "attachment"
              and r.filename is None]
    html_parts = [r for r in bodies if r.mime_type == "text/html"]
    shown = html_parts[:1] if html_parts else [r for r in bodies if r.mime_type == "text/plain"]
    text: Markup | None = None
    truncated = False
    if not html_parts:
        chunks: list[str] = []
        left = MAX_TEXT
        for r in shown:
            piece = _text_of(raw, meta, r, left + 1)
            truncated = truncated or len(piece) > left
            chunks.append(piece[:left])
            left -= len(chunks[-1])
            if left <= 0:
                break
        text = linkify("\n\n".join(chunks))
    attached: list[Attachment] = []
    used = {r.section for r in shown}
    for r in rows:
        if not r.section or r.section in used or r.flags & FLAG_MULTIPART or _inside_message(r, rows):
            continue
        if r.section == "1" and not multipart:
            continue
        if r.disposition == "attachment" or r.filename or r.flags & FLAG_MESSAGE or (
                r.content_id is None and r.mime_type not in ("text/plain", "text/html")):
            name = r.filename or f"part-{r.section}" + (".eml" if r.flags & FLAG_MESSAGE else "")
            attached.append(Attachment(r.section, name, r.mime_type, r.end - r.body_start))
    return View(headers, text, html_parts[0].section if html_parts else None, tuple(attached), truncated)


def find_row(meta: MessageMeta, section: str) -> PartRow | None:
    """The part-table row of `section` ("1.2"), or None (invariant 3)."""
    if not re.fullmatch(r"[1-9][0-9]{0,4}(?:\.[1-9][0-9]{0,4}){0,30}", section):
        return None
    return meta.row(_part(section))


def _keep_attribute(element: str, attribute: str, value: str) -> str | None:
    if element == "img" and attribute == "src" and not value.lower().startswith("cid:"):
        return None  # remote (and every other) image source: blocked
    return value


def clean_html(markup: str) -> str:
    """An HTML part reduced to the allow-list (module doc); `img` keeps only `cid:` sources."""
    return nh3.clean(markup, tags=_TAGS, attributes=_ATTRIBUTES, attribute_filter=_keep_attribute,
                     url_schemes={"http", "https", "mailto", "cid"}, url_relative="deny",
                     filter_style_properties=_STYLE_PROPERTIES, link_rel="noopener noreferrer",
                     set_tag_attribute_values={"a": {"target": "_blank"}}, strip_comments=True)


def html_document(raw: bytes, meta: MessageMeta, section: str) -> str | None:
    """The complete document the sandboxed frame shows for the HTML part `section`, or None when that is not a
    text/html part of the message (invariant 2: run it in a thread)."""
    row = find_row(meta, section)
    if row is None or row.mime_type != "text/html":
        return None
    body = clean_html(_text_of(raw, meta, row, MAX_TEXT))
    by_cid: dict[str, PartRow] = {}
    for r in meta.parts:
        if r.content_id and r.mime_type.startswith("image/"):
            by_cid.setdefault(r.content_id.strip().strip("<>").strip(), r)
    budget = MAX_INLINE_IMAGES

    def inline(m: re.Match[str]) -> str:
        nonlocal budget
        target = by_cid.get(html.unescape(m.group(1)).strip().strip("<>"))
        if target is None or target.end - target.body_start > budget:
            return 'src=""'
        budget -= target.end - target.body_start
        data = base64.b64encode(decoded(raw, meta, target)).decode("ascii")
        return f'src="data:{safe_type(target.mime_type)};base64,{data}"'

    body = _CID_SRC.sub(inline, body)
    return ('<!doctype html><html><head><meta charset="utf-8"><meta name="color-scheme" content="light">'
            "<style>body{font-family:system-ui,sans-serif;margin:8px;color:#111;background:#fff;"
            "overflow-wrap:anywhere}img{max-width:100%;height:auto}</style></head><body>"
            f"{body}</body></html>")
