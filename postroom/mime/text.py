"""Text for SEARCH and the web page: decoded headers and decoded text bodies, bounded in size.

Theory of operation
-------------------
* Headers: RFC 2047 encoded words are decoded (`decode_words`), adjacent words of one charset joined before
  decoding so a character split across two words survives (RFC 2047 §6.2 says blanks between encoded words are
  ignored). Unencoded 8-bit header text is read as UTF-8 (RFC 6532), else Windows-1252.
* Bodies: every text/* leaf (outside encoded message parts) has its transfer encoding undone and its charset
  decoded; text/html is reduced to text by `html_to_text`, a linear scanner of its own (script/style/head
  dropped, block elements become line ends, entities resolved). Encapsulated messages contribute their headers too.
* Charsets: any text codec Python knows (aliases through `codecs.lookup`) except names that are no charset
  (`headers.charset_codec`: `idna`, `utf-7`, bytes-to-bytes codecs such as `rot13`); an unknown charset is
  read as UTF-8 and then Windows-1252. Decoding never raises (errors="replace").

Invariants:
1. Nothing here raises on received mail.
2. `SearchText.body` is at most `max_body` characters, and the bytes decoded per part are bounded by a small
   multiple of it, so a 100 MB attachment costs no more than a small one.
3. Header values keep their field order; a field repeated is joined with ", ".
4. Every step is linear in its input: `html_to_text` only searches forward and stops at an unterminated
   construct, blank runs are collapsed without backtracking regexes, charset names are looked up once
   (`headers.charset_codec`, cached).
5. `SearchText.mime` holds the header fields of the body parts (not those of the message itself, which are
   `headers`), at most about `MAX_HEADER_CHARS` characters of values; each part header is read once.
"""

from __future__ import annotations

import binascii
import html
import re
from dataclasses import dataclass

from postroom.mime import headers as H
from postroom.mime.cte import UnknownCTE, decode_base64, decode_body
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
    if 10 in value:  # a LF: folded (`int in bytes`; `bytes in bytes` costs an exception in CPython 3.11)
        value = _UNFOLD.sub(b"", value)
    value = value.strip()
    if value.find(b"=?") < 0:  # no encoded word, the common case: the text as it is
        return charset_decode(value, None) if value else ""
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


# HTML to text: a scanner of its own, linear in the markup. The stdlib `html.parser` rescans the rest of the
# buffer for every unclosed tag ("<a " x 20,000 took ~30 s, issue 11), so it is not used. The tokenizing follows
# the WHATWG HTML tokenizer (§13.2.5) where it matters for text: a tag starts with "<" and an ASCII letter (else
# "<" is text), its attributes run to the first ">" outside a quoted value, comments run to "-->", markup
# declarations and processing instructions to ">", script and style are raw text up to their end tag, and
# anything left open at the end of input is dropped. Every step searches forward from the current position and
# never looks back, and an unterminated construct ends the scan, so the cost is O(len(markup)).
_BLOCK = frozenset(("p", "div", "br", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul",
                    "ol", "blockquote", "pre", "hr", "title", "section", "article", "header", "footer"))
_SKIP = "head"  # its text (title, meta) is not the message's; ended by </head> or <body>
_RAW_END = {name: re.compile(rf"</{name}[\s/>]", re.IGNORECASE) for name in ("script", "style")}
_SIMPLE_TAG = re.compile(r"""<(/?)([A-Za-z][^\t\n\f\r />]*)[^>"']*>""")  # a tag without quoted values
_NAME_STOP = frozenset("\t\n\f\r />")  # what ends a tag name (WHATWG HTML §13.2.5.8)
_TAG_REST = re.compile(r"""=[\t\n\f\r ]*(["'])|>""")  # the next quoted attribute value, or the tag's end
_HSPACE = re.compile(r"[ \t]+")


def _tag_end(markup: str, pos: int) -> int:
    """Index after the ">" that ends the tag whose attributes start at `pos`, or -1 if the input ends first."""
    while True:
        m = _TAG_REST.search(markup, pos)
        if m is None:
            return -1
        quote = m.group(1)
        if quote is None:
            return m.end()
        close = markup.find(quote, m.end())
        if close < 0:
            return -1
        pos = close + 1


def html_to_text(markup: str) -> str:
    """HTML reduced to its visible text: tags, comments, script, style and head dropped, block elements as line
    ends, character references resolved, blanks collapsed. Never raises; O(len(markup)) (see above)."""
    out: list[str] = []
    skip = False
    pos = 0
    n = len(markup)
    find = markup.find
    simple_tag = _SIMPLE_TAG.match
    unescape = html.unescape
    while pos < n:
        lt = find("<", pos)
        if lt < 0:
            lt = n
        if lt > pos and not skip:
            text = markup[pos:lt]
            out.append(unescape(text) if "&" in text else text)
        if lt >= n:
            break
        m = simple_tag(markup, lt)  # most tags: no quoted attribute value, one regex step
        if m is not None:
            closing = m.group(1) == "/"
            name = m.group(2).lower()
            pos = m.end()
        else:
            nxt = markup[lt + 1 : lt + 2]
            if nxt == "!" and markup.startswith("<!--", lt):
                if markup.startswith("<!-->", lt) or markup.startswith("<!--->", lt):  # abrupt empty comment
                    pos = find(">", lt + 4) + 1
                    continue
                end = find("-->", lt + 4)
                pos = n if end < 0 else end + 3
                continue
            if nxt in ("!", "?"):  # <!DOCTYPE ...>, <![CDATA[...]]>, <?xml ...?>: a bogus comment to ">"
                end = find(">", lt + 2)
                pos = n if end < 0 else end + 1
                continue
            closing = nxt == "/"
            start = lt + 2 if closing else lt + 1
            first = markup[start : start + 1]
            if not (first.isascii() and first.isalpha()):
                if closing:  # "</>" is ignored, "</ x>" is a bogus comment
                    end = find(">", start)
                    pos = n if end < 0 else end + 1
                else:
                    if not skip:
                        out.append("<")  # "a < b": text
                    pos = lt + 1
                continue
            name_end = start + 1
            while name_end < n and markup[name_end] not in _NAME_STOP:
                name_end += 1
            name = markup[start:name_end].lower()
            end = _tag_end(markup, name_end)
            if end < 0:
                break  # EOF in a tag: the tag is dropped
            pos = end
        if name in _BLOCK:
            if not skip:
                out.append("\n")
        elif name == _SKIP:
            skip = not closing
        elif name == "body":
            skip = False
        elif not closing and name in _RAW_END:
            raw_end = _RAW_END[name].search(markup, pos)  # raw text: not markup, and not shown
            pos = n if raw_end is None else raw_end.start()
    text = "".join(out).replace("\xa0", " ")
    text = _HSPACE.sub(" ", text)
    # Blank runs around line ends become one line end (split and strip: a regex like \s*\n\s* backtracks over
    # long blank runs without a line end, which is quadratic).
    return "\n".join(line for line in (part.strip() for part in text.split("\n")) if line)


@dataclass(frozen=True, slots=True)
class SearchText:
    """Decoded text of one message. `headers` are (lower-case name, decoded value) in message order; `mime` the
    same for the header fields of the body parts (invariant 5), in part order."""

    headers: tuple[tuple[str, str], ...]
    body: str
    mime: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str:
        """The values of every field named `name` (any case), joined with ", "; "" if there is none."""
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
    return SearchText(tuple(headers), body, part_fields(raw, root))


def part_fields(raw: bytes, root: Part, limit: int = MAX_HEADER_CHARS) -> tuple[tuple[str, str], ...]:
    """The header fields of every body part below the message's own header (invariant 5): each part's MIME
    header (Content-Type, Content-Disposition, Content-Description, ...; RFC 2045 §3) and the header of each
    encapsulated message, as (lower-case name, decoded value), depth first in part order, at most about `limit`
    characters of values. These are what RFC 9051 §6.4.4 TEXT adds to the message header ("the header
    (including MIME header fields) or body"); BODY does not look at them."""
    out: list[tuple[str, str]] = []
    size = 0
    stack: list[tuple[Part, bool]] = [(root, False)]  # (part, whether its own header is a body part's)
    while stack and size <= limit:
        part, own = stack.pop()
        fields = []
        if own:  # split by the scan already, unless past structure.KEPT_PART_HEADERS
            fields = part.fields or H.split_fields(raw, part.header_start, part.body_start)[0]
        if part.message is not None:
            fields = fields + part.message.fields  # the encapsulated message's header (scanned already)
            inner = part.message
            kids = inner.children
        else:
            kids = part.children
        for f in fields:
            if size > limit:
                break
            v = decode_words(f.value)
            size += len(v)
            out.append((f.name, v))
        stack.extend((k, True) for k in reversed(kids))
    return tuple(out)
