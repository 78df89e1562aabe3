"""The MIME structure scan: every part's byte offsets in the exact raw message, found once.

Theory of operation
-------------------
`scan(raw)` returns the root `Part`. A part is an entity (RFC 2045 §2.4): a header block
`raw[header_start:body_start]` (the empty line that ends it included) and a body `raw[body_start:end]`.

* The header ends at the first empty line (`CRLF CRLF`, or bare-LF forms for robustness). A part whose first
  line is empty has an empty header; a part with no empty line is all header and an empty body (a defect).
* A multipart body (RFC 2046 §5.1.1) is cut at delimiter lines: `--boundary` at the start of a line, followed by
  optional transport padding (blanks) and the line end; `--boundary--` closes. The line end *before* a delimiter
  belongs to the delimiter, so a child ends there. Text before the first delimiter is the preamble, text after
  the close delimiter the epilogue; both belong to no child. A boundary string that appears mid-line (base64
  lines can contain it by accident) never matches: matching needs line start and the `--` prefix. A missing close
  delimiter ends the last child at the end of the parent's body (a defect); the parent's own delimiters are found
  first, so a child multipart whose close delimiter is lost still ends at the parent's next delimiter.
  A multipart without a boundary parameter, or in which no delimiter is found, gets one empty text/plain part
  at the end of its body (IMAP needs at least one; Dovecot does the same), so its body stays readable as TEXT.
* A `message/rfc822` or `message/global` part (or any child of `multipart/digest` without a Content-Type,
  RFC 2046 §5.1.5) encapsulates a message: `Part.message` is that message, whose header starts at the part's body.
* Scanning is `bytes.find` over regions; each nesting level scans its region once, so cost is about
  depth x size with no per-character Python loop and no copy of bodies.

Invariants:
1. `scan` never raises (except MemoryError-like conditions of the interpreter); odd input gives a best-effort
   tree and entries in `Structure.defects`.
2. For every part: `header_start <= body_start <= end <= len(raw)`; children lie inside their parent's body, in
   order, without overlap; an encapsulated message spans exactly its part's body.
3. Depth (multipart and message levels) never exceeds `limits.mime_depth` (itself capped at MAX_DEPTH_CAP, so
   the recursive descent stays far from Python's recursion limit); the number of parts never exceeds
   `limits.mime_parts`. A multipart past a limit is kept as an opaque leaf (`application/octet-stream` for
   IMAP), a message part past it as a message with an empty envelope and body, and a defect is recorded.
4. Offsets come from the scan; raw bytes are never re-serialised.
5. Line counts are LF counts of the body, so a body's last line, which ends where the delimiter's CRLF begins,
   is not counted (Dovecot counts the same way; RFC 9051 §7.5.2 does not say).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postroom.config import LimitsConfig
from postroom.mime import headers as H
from postroom.mime.headers import Field, Params

_LWSP = b" \t"
MAX_DEPTH_CAP = 200
# Bytes of body-part headers whose fields the scan keeps for later readers (the search text reads about 64 KiB of
# them): a message of many large part headers is not held whole (meta.py invariant 6).
KEPT_PART_HEADERS = 64 * 1024
DEFAULT_LIMITS = LimitsConfig()


@dataclass(slots=True)
class Part:
    """One MIME entity with its offsets into the raw message and the MIME fields IMAP reports."""

    header_start: int
    body_start: int
    end: int
    type: str = "text"  # as sent (case kept); defaults lower-case
    subtype: str = "plain"
    params: Params = ()
    encoding: str = ""  # Content-Transfer-Encoding as sent, "" if absent (IMAP then says "7BIT")
    id: bytes | None = None  # Content-ID raw value
    description: bytes | None = None
    md5: bytes | None = None
    disposition: tuple[str, Params] | None = None
    language: tuple[str, ...] | None = None
    location: bytes | None = None
    lines: int = 0  # lines in the body (IMAP "body size in text lines")
    children: list[Part] = field(default_factory=list)
    message: Part | None = None  # the encapsulated message of a message/rfc822 or message/global part
    # Its header's fields: always for the root and encapsulated messages; for a body part (its MIME header) while
    # the body-part headers kept so far stay within KEPT_PART_HEADERS bytes, else [] (readers split it again).
    fields: list[Field] = field(default_factory=list)
    opaque: bool = False  # a multipart/message part not descended into (limit reached or unusable)

    @property
    def size(self) -> int:
        """Body octets (IMAP body size)."""
        return self.end - self.body_start

    @property
    def mime_type(self) -> str:
        """"type/subtype", lower-case."""
        return f"{self.type}/{self.subtype}".lower()

    @property
    def is_multipart(self) -> bool:
        """Whether the part has child parts (a multipart with at least one body part found)."""
        return bool(self.children)

    @property
    def is_message(self) -> bool:
        """Whether the part encapsulates a message (message/rfc822 or message/global) that was scanned."""
        return self.message is not None


@dataclass(slots=True)
class Structure:
    """What `scan` found: the root part, the defects as (offset in octets, code) and the number of parts."""

    root: Part
    defects: list[tuple[int, str]]  # (offset, code), in the order found
    part_count: int


class _Scanner:
    def __init__(self, raw: bytes, limits: LimitsConfig) -> None:
        self.raw = raw
        # Capped so that the recursive descent (three frames a level) stays far from Python's recursion limit.
        self.max_depth = max(1, min(limits.mime_depth, MAX_DEPTH_CAP))
        self.max_parts = max(1, limits.mime_parts)
        self.defects: list[tuple[int, str]] = []
        self.parts = 0
        self.kept_part_headers = 0  # bytes of body-part headers kept in Part.fields so far

    def defect(self, offset: int, code: str) -> None:
        if len(self.defects) < 1000:
            self.defects.append((offset, code))

    # -- headers ----------------------------------------------------------------------------------------------

    def header_end(self, start: int, end: int) -> int:
        """Body start of the entity whose header starts at `start` (inside [start, end))."""
        raw = self.raw
        if raw.startswith(b"\r\n", start) and start + 2 <= end:
            return start + 2
        if raw.startswith(b"\n", start) and start + 1 <= end:
            return start + 1
        crlf = raw.find(b"\n\r\n", start, end)
        limit = end if crlf < 0 else crlf
        lf = raw.find(b"\n\n", start, limit)
        if lf >= 0:
            return lf + 2
        if crlf >= 0:
            return crlf + 3
        if start < end:
            self.defect(start, "no-header-body-separator")
        return end

    # -- entities ---------------------------------------------------------------------------------------------

    def entity(self, start: int, end: int, depth: int, digest_child: bool, is_message: bool) -> Part:
        """Parse the entity raw[start:end]: header, then body by its type."""
        self.parts += 1
        raw = self.raw
        body_start = self.header_end(start, end)
        fields, ok = H.split_fields(raw, start, body_start)
        if not ok:
            self.defect(start, "malformed-header-line")
        part = Part(start, body_start, end)
        if is_message:
            part.fields = fields
        elif self.kept_part_headers + body_start - start <= KEPT_PART_HEADERS:
            part.fields = fields
            self.kept_part_headers += body_start - start
        ct = None
        for f in fields:
            name = f.name
            if not name.startswith("content-"):
                continue
            if name == "content-type":
                if ct is None:
                    ct = f
            elif name == "content-transfer-encoding":
                if not part.encoding:
                    part.encoding = H.parse_token_value(f.value)
            elif name == "content-id":
                if part.id is None:
                    part.id = f.unfolded()
            elif name == "content-description":
                if part.description is None:
                    part.description = f.unfolded()
            elif name == "content-md5":
                if part.md5 is None:
                    part.md5 = f.unfolded()
            elif name == "content-disposition":
                if part.disposition is None:
                    dtype, dparams, dok = H.parse_disposition(f.value)
                    if dtype:
                        part.disposition = (dtype, dparams)
                    if not dok:
                        self.defect(f.start, "bad-content-disposition-params")
            elif name == "content-language":
                if part.language is None:
                    part.language = H.parse_language(f.value) or None
            elif name == "content-location" and part.location is None:
                part.location = f.unfolded()
        if ct is not None:
            typ, sub, params, ok = H.parse_content_type(ct.value)
            if not typ:
                self.defect(ct.start, "bad-content-type")
                part.params = (("charset", "us-ascii"),)
            else:
                part.type, part.subtype, part.params = typ, sub, params
                if not ok:
                    self.defect(ct.start, "bad-content-type-params")
        elif digest_child:
            part.type, part.subtype = "message", "rfc822"  # RFC 2046 §5.1.5
        else:
            part.params = (("charset", "us-ascii"),)  # RFC 2045 §5.2
        ltype = part.type.lower()
        if ltype == "multipart":
            self.multipart(part, depth)
        elif ltype == "message" and part.subtype.lower() in ("rfc822", "global"):
            self.encapsulated(part, depth)
        if not part.children and part.message is None:
            part.lines = _count_lines(raw, body_start, end)
        return part

    def too_deep_or_many(self, part: Part, depth: int) -> bool:
        if depth + 1 > self.max_depth:
            self.defect(part.header_start, "depth-limit")
        elif self.parts >= self.max_parts:
            self.defect(part.header_start, "part-limit")
        else:
            return False
        part.opaque = True
        return True

    def encapsulated(self, part: Part, depth: int) -> None:
        enc = part.encoding.lower()
        if enc not in ("", "7bit", "8bit", "binary"):
            # RFC 2046 §5.2.1: only identity encodings are allowed; an encoded message is not descended into.
            self.defect(part.header_start, "encoded-message-part")
            part.opaque = True
            return
        if self.too_deep_or_many(part, depth):
            return
        part.message = self.entity(part.body_start, part.end, depth + 1, False, True)
        part.lines = _count_lines(self.raw, part.body_start, part.end)

    def multipart(self, part: Part, depth: int) -> None:
        if self.too_deep_or_many(part, depth):
            return
        boundary = H.param_value(part.params, "boundary")
        if not boundary:
            # Kept a multipart (with the one empty part below), as Dovecot does: the body stays reachable as TEXT.
            self.defect(part.header_start, "multipart-without-boundary")
            self.empty_child(part)
            return
        raw = self.raw
        delim = b"--" + H.to_bytes(boundary)
        dlen = len(delim)
        start, end = part.body_start, part.end
        digest = part.subtype.lower() == "digest"
        child_start = -1  # -1: still in the preamble
        closed = False
        pos = start
        while pos < end:
            hit = raw.find(delim, pos, end)
            if hit < 0:
                break
            after = hit + dlen
            if hit != start and raw[hit - 1] != 0x0A:  # not at line start: not a delimiter
                pos = hit + 1
                continue
            is_close = raw.startswith(b"--", after) and after + 2 <= end
            j = after + 2 if is_close else after
            # transport padding (RFC 2046 §5.1.1), then the line end
            while j < end and raw[j] in _LWSP:
                j += 1
            if j < end and raw[j] == 0x0D and j + 1 < end and raw[j + 1] == 0x0A:
                line_end = j + 2
            elif j < end and raw[j] == 0x0A:
                line_end = j + 1
            elif j >= end:
                line_end = end
            elif is_close:
                # `--boundary--` followed by other text: still a close delimiter (lenient, as most readers)
                nl = raw.find(b"\n", j, end)
                line_end = end if nl < 0 else nl + 1
            else:
                pos = hit + 1
                continue
            # The line end before the delimiter belongs to the delimiter (RFC 2046 §5.1.1).
            prev_end = hit
            if hit > start and raw[hit - 1] == 0x0A:
                prev_end = hit - 1
                if prev_end > start and raw[prev_end - 1] == 0x0D:
                    prev_end -= 1
            if child_start >= 0 and not self.add_child(
                part, child_start, max(child_start, prev_end), depth, digest
            ):
                return
            if is_close:
                closed = True
                break
            child_start = line_end
            pos = line_end
        if not closed and child_start >= 0:
            self.defect(end, "missing-close-boundary")
            self.add_child(part, child_start, end, depth, digest)
        elif not closed:
            self.defect(start, "no-boundary-found")
        if not part.children:
            self.empty_child(part)

    def empty_child(self, part: Part) -> None:
        """BODYSTRUCTURE needs at least one part (RFC 9051 §9 body-type-mpart): an empty text/plain one at the
        end of the body, so every section reads as empty."""
        self.parts += 1
        part.children.append(Part(part.end, part.end, part.end, params=(("charset", "us-ascii"),)))

    def add_child(self, part: Part, cstart: int, cend: int, depth: int, digest: bool) -> bool:
        if self.parts >= self.max_parts:
            self.defect(cstart, "part-limit")
            return False
        part.children.append(self.entity(cstart, cend, depth + 1, digest, False))
        return True


def _count_lines(raw: bytes, start: int, end: int) -> int:
    """Lines in raw[start:end]: its LF count. A last line without a line end (a part's body ends before the CRLF
    that belongs to the next delimiter) is not counted; Dovecot counts the same way."""
    return raw.count(b"\n", start, end) if end > start else 0


def scan(raw: bytes, limits: LimitsConfig | None = None) -> Structure:
    """Scan a whole message. Never raises on any bytes."""
    s = _Scanner(raw, limits or DEFAULT_LIMITS)
    root = s.entity(0, len(raw), 0, False, True)
    if b"\x00" in raw:
        s.defect(raw.find(b"\x00"), "nul-byte")
    return Structure(root, s.defects, s.parts)


# --------------------------------------------------------------------------------------------------------
# Part numbers (RFC 3501 §6.4.5 / RFC 9051 §6.4.5)


def subparts(part: Part) -> list[Part]:
    """The parts numbered below `part`: a multipart's children; for a message part, the parts of its message
    (the children of a multipart message, else the message itself as part 1)."""
    if part.children:
        return part.children
    if part.message is not None:
        msg = part.message
        return msg.children if msg.children else [msg]
    return []


def find_part(root: Part, section: tuple[int, ...]) -> Part | None:
    """The part a numeric section names, or None. `()` is the whole message (root)."""
    if not section:
        return root
    candidates = root.children if root.children else [root]
    cur: Part | None = None
    for n in section:
        if n < 1 or n > len(candidates):
            return None
        cur = candidates[n - 1]
        candidates = subparts(cur)
    return cur


def walk(root: Part) -> list[tuple[tuple[int, ...], Part]]:
    """Every numbered part, depth first, with its section number; the root is `()` (and, when it is not a
    multipart, also `(1,)`)."""
    out: list[tuple[tuple[int, ...], Part]] = [((), root)]
    top = root.children if root.children else [root]
    work: list[tuple[tuple[int, ...], Part]] = [((i,), p) for i, p in enumerate(top, 1)]
    work.reverse()
    while work:  # iterative: safe at any depth
        sec, p = work.pop()
        out.append((sec, p))
        kids = subparts(p)
        for i in range(len(kids), 0, -1):
            work.append((sec + (i,), kids[i - 1]))
    return out
