"""Text for SEARCH and the web page: decoded headers and decoded text bodies, bounded in size.

Theory of operation
-------------------
* Headers: RFC 2047 encoded words are decoded (`decode_words`), adjacent words of one charset joined before
  decoding so a character split across two words survives (RFC 2047 §6.2 says blanks between encoded words are
  ignored). Unencoded 8-bit header text is read as UTF-8 (RFC 6532), else Windows-1252.
* Bodies: every text/* leaf (outside encoded message parts) has its transfer encoding undone and its charset
  decoded; text/html is reduced to text with `html.parser` (script/style dropped, block elements become line
  ends, entities resolved). Encapsulated messages contribute their headers too.
* Charsets: any text codec Python knows (aliases through `codecs.lookup`) except names that are no charset
  (`headers.charset_codec`: `idna`, `utf-7`, bytes-to-bytes codecs such as `rot13`); an unknown charset is
  read as UTF-8 and then Windows-1252. Decoding never raises (errors="replace").

Invariants:
1. Nothing here raises on received mail.
2. `SearchText.body` is at most `max_body` characters, and the bytes decoded per part are bounded by a small
   multiple of it, so a 100 MB attachment costs no more than a small one.
3. Header values keep their field order; a field repeated is joined with ", ".
"""

from __future__ import annotations

import binascii
import html
import html.parser
import re
from dataclasses import dataclass

from postroom.mime import headers as H
from postroom.mime.imap import UnknownCTE, decode_base64, decode_body
from postroom.mime.structure import Part

MAX_BODY_CHARS = 256 * 1024
MAX_HEADER_CHARS = 64 * 1024

_EW = re.compile(rb"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([QqBb])\?([^?\s]*)\?=")
_BLANKS = re.compile(rb"^[ \t\r\n]*$")
_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")


def charset_decode(data: bytes, charset: str | None) -> str:
    """Bytes in a named charset -> str. Unknown or absent charset: UTF-8 if valid, else Windows-1252."""
    if charset:
        cs = H.charset_codec(charset) or ""  # unknown, or no charset at all (`rot13`, `idna`): undeclared
        if cs == "ascii":
            cs = ""  # 8-bit in "us-ascii" text is common: read it as undeclared (UTF-8, else Windows-1252)
        if cs:
            try:
                return data.decode(cs, "replace")
            except Exception:  # noqa: BLE001 - a broken codec (stateful CJK) must not stop delivery
                cs = ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _q_decode(text: bytes) -> bytes:
    """RFC 2047 §4.2 "Q": quoted-printable with "_" for space."""
    return binascii.a2b_qp(text, header=True)


def decode_words(value: bytes) -> str:
    """A header value with RFC 2047 encoded words decoded and folding removed."""
    value = _UNFOLD.sub(b"", value).strip()
    out: list[str] = []
    pos = 0
    pending_cs: str | None = None
    pending: bytearray = bytearray()

    def flush() -> None:
        nonlocal pending_cs, pending
        if pending_cs is not None:
            out.append(charset_decode(bytes(pending), pending_cs))
        pending_cs = None
        pending = bytearray()

    for m in _EW.finditer(value):
        gap = value[pos : m.start()]
        # Blanks between two encoded words are dropped (RFC 2047 §6.2); any other text ends the run.
        if gap and not (pending_cs is not None and _BLANKS.match(gap)):
            flush()
            out.append(charset_decode(gap, None))
        cs = m.group(1).decode("ascii", "replace").lower()
        data = decode_base64(m.group(3)) if m.group(2) in b"Bb" else _q_decode(m.group(3))
        if cs != pending_cs:
            flush()
            pending_cs = cs
        pending += data
        pos = m.end()
    flush()
    if pos < len(value):
        out.append(charset_decode(value[pos:], None))
    return "".join(out)


class _HTMLText(html.parser.HTMLParser):
    BLOCK = frozenset(
        [
            "p",
            "div",
            "br",
            "li",
            "tr",
            "td",
            "th",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "table",
            "ul",
            "ol",
            "blockquote",
            "pre",
            "hr",
            "title",
            "section",
            "article",
            "header",
            "footer",
        ]
    )
    SKIP = frozenset(("script", "style", "head"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """HTML reduced to its visible text (never raises)."""
    p = _HTMLText()
    try:
        p.feed(markup)
        p.close()
    except Exception:  # noqa: BLE001 - html.parser is lenient, but received HTML must never stop delivery
        return html.unescape(re.sub(r"<[^>]*>", " ", markup))
    text = "".join(p.parts).replace("\xa0", " ")
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\s*\n\s*", "\n", text).strip()


@dataclass(frozen=True, slots=True)
class SearchText:
    """Decoded text of one message. `headers` are (lower-case name, decoded value) in message order."""

    headers: tuple[tuple[str, str], ...]
    body: str

    def header(self, name: str) -> str:
        name = name.lower()
        return ", ".join(v for k, v in self.headers if k == name)

    def text(self) -> str:
        """Headers and body together (IMAP SEARCH TEXT)."""
        return "\n".join(f"{k}: {v}" for k, v in self.headers) + "\n\n" + self.body


def part_text(raw: bytes, part: Part, limit: int = MAX_BODY_CHARS) -> str:
    """The decoded text of one text/* part (HTML reduced to text), at most about `limit` characters."""
    body = raw[part.body_start : min(part.end, part.body_start + limit * 4 + 4)]
    try:
        data = decode_body(body, part.encoding)
    except UnknownCTE:
        data = body
    text = charset_decode(data, H.param_value(part.params, "charset"))
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if part.subtype.lower() == "html":
        text = html_to_text(text)
    return text[:limit]


def search_text(raw: bytes, root: Part, max_body: int = MAX_BODY_CHARS) -> SearchText:
    """Decoded headers of the message and decoded text of its text parts (invariants 1-3)."""
    headers: list[tuple[str, str]] = []
    size = 0
    for f in root.fields:
        if size > MAX_HEADER_CHARS:
            break
        v = decode_words(f.value)
        size += len(v)
        headers.append((f.name, v))
    chunks: list[str] = []
    left = max_body
    stack: list[Part] = [root]
    while stack and left > 0:
        part = stack.pop()
        if part.children:
            kids = part.children
            if part.subtype.lower() == "alternative":
                # Alternatives carry one text twice: index the plain one (no markup to strip), else the last
                # (RFC 2046 §5.1.4: the richest) alternative.
                plain = [k for k in kids if k.mime_type == "text/plain"]
                kids = plain[:1] if plain else kids[-1:]
            stack.extend(reversed(kids))
            continue
        if part.message is not None:
            inner = part.message
            for f in inner.fields:
                if f.name in ("subject", "from", "to", "cc"):
                    line = f"{f.name}: {decode_words(f.value)}\n"
                    chunks.append(line[:left])
                    left -= len(line)
            stack.append(inner)
            continue
        if part.type.lower() != "text" or part.opaque:
            continue
        t = part_text(raw, part, left)
        if t:
            chunks.append(t)
            left -= len(t) + 1
    body = "\n".join(chunks)[:max_body]
    return SearchText(tuple(headers), body)
