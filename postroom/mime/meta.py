"""Everything IMAP, POP3, SEARCH and the web page need from a message, computed once at delivery.

Theory of operation
-------------------
`compute_meta(raw, limits)` scans the message once (`structure.scan`) and derives, from that one tree:
ENVELOPE, BODYSTRUCTURE and BODY as IMAP wire bytes, the part table (section -> offsets), the defects, and the
search text. `MessageMeta.to_bytes()` serialises it as versioned JSON (bytes values as latin-1 text, so every
byte survives); the store keeps that blob beside the message (`AppendRequest.meta`) and `from_bytes` reads it
back. FETCH then answers from the meta and the raw bytes alone: `section()` and `binary()` resolve a section
through the part table without parsing MIME again. `compute_meta_staged` is the same computation over a message
in a staging file (its prefix in memory, then the file), read through a bounded window (`mime.staged`,
invariant 6): what a metadata worker runs for a large SMTP message or APPEND literal.

A part-table row is (section, header_start, body_start, end, lines, inner_header_start, inner_body_start,
mime_type, encoding, charset, filename, disposition, content_id, flags):
* section is "" for the whole message, else the dotted part number ("1", "1.2");
* inner_* locate the header/body that HEADER, TEXT and HEADER.FIELDS address: the encapsulated message of a
  message/rfc822 part, else the part itself (the root: the message's own header and body);
* flags: 1 = multipart, 2 = encapsulated message (BINARY returns these undecoded).

Format versions (`FORMAT_VERSION`): 1 kept the Date field only as a UTC POSIX time. 2 adds `sent_day`, the
Date field's calendar date as written (RFC 9051 §6.4.4 SENT* disregard time and zone), treats an unknown zone
as UTC in `sent_date`, and decodes quoted-printable by RFC 2045 §6.7 rules 3 and 5 in the search text. 3 adds
`keys`, the SORT / THREAD keys of the header (`mime.sortkeys`: base subject, first addresses, Message-ID and
references), which the store also keeps as narrow columns. 4 adds `mime` to the search text, the header fields
of the body parts (`text.part_fields`), which SEARCH TEXT matches (RFC 9051 §6.4.4 "including MIME header
fields").
`from_bytes` refuses any other version; readers then recompute the metadata from the raw message and store it
back (`imap/fetch.py`, `Store.write_metas`), so each body of an older store is upgraded once, on first use.

Invariants:
1. `compute_meta` never raises on any bytes (structure and text never do; a step that fails anyway, search
   text, ENVELOPE, Date, a file name, is caught and recorded as a defect `<step>-failed:<exception>` so
   delivery goes on with what was computed; if the scan or BODYSTRUCTURE fails, the result is `minimal_meta`
   with the defect `meta-failed:<exception>`).
2. `MessageMeta.from_bytes(m.to_bytes()) == m`.
3. For every row, the slices it names are exactly what `imap.section_bytes` returns on the scanned tree.
4. No pickle: the format is plain JSON with a version number; an unknown version is an error, not a guess.
5. `compute_meta` is linear in len(raw): the scan is bounded `bytes.find` work per level (structure.py), header
   parameters and encoded words are read left to right, search text is capped (text.py invariant 2) and HTML
   is reduced by a forward-only scanner (text.py invariant 4). `metapool` relies on this to run it on the
   event loop for small messages.
6. `compute_meta` reads `raw` only through `len`, `raw[i]`, `raw[a:b]`, `find`, `count`, `startswith` and
   `in`, with offsets, and copies only bounded slices (a header block, at most about 1 MiB of a text part for
   the search text: text.py invariant 2; the scan keeps the fields of at most `structure.KEPT_PART_HEADERS`
   bytes of body-part headers). So `compute_meta_staged` runs the same code over a staged file read
   through a window (`mime.staged`), and a 50 MB message costs its worker about one window, not 50 MB
   (bench/RESULTS.md 2026-12-01 "memory9"). tests/unit/test_mime_staged.py holds the two equal over the MIME
   corpus at several window sizes; code that needs another operation on `raw` adds it to `StagedMessage`.
7. Within one `FORMAT_VERSION`, `to_bytes()` of a message is the same bytes whatever the code version: stored
   blobs are never recomputed for a change that keeps the version. A change meant to keep the output (a faster
   path) is checked with bench/meta_equivalence.py, which compares every byte against another checkout over the
   MIME corpus, the fuzz seeds, the messages the unit tests scan and thousands of generated variants; a change
   of the output raises the version (readers then recompute, as above).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from postroom.config import LimitsConfig
from postroom.mime import headers as H
from postroom.mime import imap
from postroom.mime.address import Parsed
from postroom.mime.cte import IDENTITY_ENCODINGS, UnknownCTE, decode_body
from postroom.mime.dates import parse_date
from postroom.mime.imap import Section
from postroom.mime.sortkeys import EMPTY_KEYS, SortKeys, sort_keys
from postroom.mime.staged import StagedMessage
from postroom.mime.structure import Part, scan, walk
from postroom.mime.text import SearchText, decode_words, search_text

FORMAT_VERSION = 4
_T = TypeVar("_T")
FLAG_MULTIPART = 1
FLAG_MESSAGE = 2
# The stored form's encoder, made once: what json.dumps(doc, ensure_ascii=False, separators=(",", ":")) makes
# per call. The document is a fresh tree of lists, so the check for cycles is left out (same output).
_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class PartRow:
    """One row of the part table (module doc): the part's section and its offsets in the raw message, in octets
    (`end` exclusive), its body's line count, and the Content-* values FETCH and search need."""

    section: str
    header_start: int
    body_start: int
    end: int
    lines: int
    inner_header_start: int
    inner_body_start: int
    mime_type: str  # lower-case "type/subtype"
    encoding: str  # lower-case; "" if absent
    charset: str | None
    filename: str | None  # Content-Disposition filename, else Content-Type name (RFC 2231 decoded)
    disposition: str | None  # lower-case disposition type
    content_id: str | None
    flags: int

    @property
    def size(self) -> int:
        """The body's size in octets (RFC 9051 §7.5.2 body-fld-octets)."""
        return self.end - self.body_start


class MetaFormatError(ValueError):
    """Stored meta bytes this code cannot read."""


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """Everything computed once per message body (module doc): ENVELOPE, BODYSTRUCTURE and BODY as IMAP bytes (RFC
    9051 §7.5.2), the part table, defects as (offset, code), search text, sort keys. Made by `compute_meta`,
    stored as bytes by `to_bytes`, read back by `from_bytes`."""

    size: int
    envelope: bytes
    bodystructure: bytes
    body: bytes
    parts: tuple[PartRow, ...]
    defects: tuple[tuple[int, str], ...]
    search: SearchText
    sent_date: float | None = None  # the Date header's instant, POSIX seconds UTC (RFC 5256 §2.2: SORT DATE)
    sent_day: int | None = None  # its calendar date as written, days since 1970-01-01 (RFC 9051 §6.4.4 SENT*)
    keys: SortKeys = EMPTY_KEYS  # SORT / THREAD keys of the header (mime.sortkeys)
    _index: dict[str, PartRow] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update((r.section, r) for r in self.parts)

    # -- serialisation ---------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The stored form: versioned JSON (`FORMAT_VERSION`), UTF-8."""
        doc = {
            "v": FORMAT_VERSION,
            "size": self.size,
            "env": self.envelope.decode("latin-1"),
            "bs": self.bodystructure.decode("latin-1"),
            "body": self.body.decode("latin-1"),
            "parts": [
                [
                    r.section,
                    r.header_start,
                    r.body_start,
                    r.end,
                    r.lines,
                    r.inner_header_start,
                    r.inner_body_start,
                    r.mime_type,
                    r.encoding,
                    r.charset,
                    r.filename,
                    r.disposition,
                    r.content_id,
                    r.flags,
                ]
                for r in self.parts
            ],
            "defects": [list(d) for d in self.defects],
            "hdr": [list(h) for h in self.search.headers],
            "text": self.search.body,
            "mime": [list(h) for h in self.search.mime],
            "date": self.sent_date,
            "day": self.sent_day,
            "keys": self.keys.to_list(),
        }
        return _JSON.encode(doc).encode("utf-8", "surrogatepass")

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageMeta:
        """Read the stored form back. Raises MetaFormatError for bytes of another version or not of this format
        (the caller computes the meta again)."""
        try:
            doc = json.loads(data.decode("utf-8", "surrogatepass"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MetaFormatError(str(e)) from e
        if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
            raise MetaFormatError(f"unknown meta format {doc.get('v') if isinstance(doc, dict) else doc!r}")
        try:
            return cls(
                size=doc["size"],
                envelope=doc["env"].encode("latin-1"),
                bodystructure=doc["bs"].encode("latin-1"),
                body=doc["body"].encode("latin-1"),
                parts=tuple(PartRow(*row) for row in doc["parts"]),
                defects=tuple((int(o), str(c)) for o, c in doc["defects"]),
                search=SearchText(tuple((k, v) for k, v in doc["hdr"]), doc["text"],
                                  tuple((k, v) for k, v in doc["mime"])),
                sent_date=doc["date"],
                sent_day=doc["day"],
                keys=SortKeys.from_list(doc["keys"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MetaFormatError(str(e)) from e

    # -- FETCH from stored data ---------------------------------------------------------------------------------

    def row(self, part: tuple[int, ...]) -> PartRow | None:
        """The part-table row of part number `part` (() for the whole message, (1, 2) for "1.2"), or None."""
        return self._index.get(".".join(map(str, part)))

    def span(self, section: Section) -> tuple[int, int] | None:
        """The octets [start, end) of the raw message that BODY[section] is, from the part table alone (no body
        needed); for HEADER.FIELDS[.NOT], the header block the fields are chosen from. None for a missing part."""
        r = self.row(section.part)
        if r is None:
            return None
        spec = section.specifier
        if spec == "":
            return (0, self.size) if not section.part else (r.body_start, r.end)
        if spec == "MIME":
            return r.header_start, r.body_start
        if spec == "TEXT":
            return r.inner_body_start, r.end
        return r.inner_header_start, r.inner_body_start  # HEADER, HEADER.FIELDS[.NOT]

    def section(self, raw: bytes, section: Section) -> bytes | None:
        """BODY[section] from the raw message and the part table; same answer as `imap.section_bytes`."""
        if not section.part and not section.specifier:
            return raw
        span = self.span(section)
        if span is None:
            return None
        if section.specifier.startswith("HEADER.FIELDS"):
            return imap.header_fields(raw, span[0], span[1], section)
        return raw[span[0] : span[1]]

    def binary(self, raw: bytes, part: tuple[int, ...]) -> bytes | None:
        """BINARY[part] (RFC 3516): decoded content; None for a missing part; raises cte.UnknownCTE."""
        if not part:
            return raw
        r = self.row(part)
        if r is None:
            return None
        body = raw[r.body_start : r.end]
        if r.flags & (FLAG_MULTIPART | FLAG_MESSAGE):
            return body
        return decode_body(body, r.encoding)

    def binary_size(self, raw: bytes, part: tuple[int, ...]) -> int | None:
        """BINARY.SIZE[part]: the decoded size (identity encodings need no decoding)."""
        r = self.row(part) if part else None
        if part and r is None:
            return None
        if r is not None and r.encoding in IDENTITY_ENCODINGS:
            return r.size
        data = self.binary(raw, part)
        return None if data is None else len(data)


def _filename(part: Part) -> str | None:
    """The attachment's file name: RFC 2231 decoded, and RFC 2047 words decoded too (RFC 2047 §5 forbids them
    in parameters, but many mailers write `filename="=?utf-8?b?...?="` and every client reads it)."""
    name = None
    if part.disposition is not None:
        name = H.param_value(part.disposition[1], "filename")
    if name is None:
        name = H.param_value(part.params, "name")
    if name is not None and "=?" in name:
        name = decode_words(H.to_bytes(name))
    return name


def _row(section: tuple[int, ...], part: Part, defects: list[tuple[int, str]]) -> PartRow:
    if section and part.message is not None:
        ihs, ibs = part.message.header_start, part.message.body_start
    else:
        ihs, ibs = part.header_start, part.body_start
    flags = (FLAG_MULTIPART if part.children else 0) | (FLAG_MESSAGE if part.message is not None else 0)
    return PartRow(
        ".".join(map(str, section)),
        part.header_start,
        part.body_start,
        part.end,
        part.lines,
        ihs,
        ibs,
        part.mime_type,
        part.encoding.lower(),
        H.param_value(part.params, "charset"),
        _guarded(_filename, part, defects, "filename"),
        part.disposition[0].lower() if part.disposition else None,
        H.to_str(part.id) if part.id is not None else None,
        flags,
    )


def _sent_date(root: Part) -> tuple[float | None, int | None]:
    """(instant, day as written) of the first Date: field, (None, None) if it is missing or has no valid date."""
    f = H.first_field(root.fields, "date")
    if f is None:
        return None, None
    sent = parse_date(H.to_str(f.unfolded()))
    return (None, None) if sent is None else (sent.instant, sent.day)


def _guarded(fn: Callable[[Part], _T], part: Part, defects: list[tuple[int, str]], what: str) -> _T | None:
    """fn(part), or None and a defect `<what>-failed:<exception>` if it raises (invariant 1: an extra may fail,
    delivery may not)."""
    try:
        return fn(part)
    except Exception as e:  # noqa: BLE001 - invariant 1
        defects.append((part.header_start, f"{what}-failed:{type(e).__name__}"))
        return None


def compute_meta(raw: bytes, limits: LimitsConfig | None = None) -> MessageMeta:
    """Parse once, at delivery: everything FETCH, SEARCH and the web page read later. Never raises (invariant
    1): a step that fails is recorded as a defect and left out, and if the scan or a structural step fails the
    result is `minimal_meta` with that defect. Linear in len(raw) (module invariant 5). Where it runs (on the
    event loop or in a worker process) is decided by `metapool`, not by callers."""
    try:
        return _compute(raw, limits)
    except Exception as e:  # noqa: BLE001 - invariant 1
        return minimal_meta(raw, f"meta-failed:{type(e).__name__}")


def compute_meta_staged(staged: StagedMessage, limits: LimitsConfig | None = None) -> MessageMeta:
    """`compute_meta(prefix + file bytes)` of a staged message (`mime.staged`), equal to it field for field
    (invariant 6), holding about one window of the file rather than all of it. Raises OSError when the file
    cannot be read (or shrank: `staged.ShrunkError`); anything else ends as in `compute_meta` (invariant 1)."""
    raw = cast(bytes, staged)  # the bytes operations the scan uses, over the file (staged.py invariant 1)
    try:
        return _compute(raw, limits)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - invariant 1
        return minimal_meta(raw, f"meta-failed:{type(e).__name__}")


def _compute(raw: bytes, limits: LimitsConfig | None) -> MessageMeta:
    st = scan(raw, limits)
    root = st.root
    defects = list(st.defects)
    text = _guarded(lambda r: search_text(raw, r), root, defects, "search-text")
    parsed = Parsed()  # each address field parsed once, for ENVELOPE and the sort keys
    envelope = _guarded(lambda r: imap.envelope(r.fields, parsed), root, defects, "envelope")
    sent = _guarded(_sent_date, root, defects, "date")
    sent_date, sent_day = sent if sent is not None else (None, None)
    keys = _guarded(lambda r: sort_keys(r.fields, parsed), root, defects, "sort-keys")
    bodystructure, body = imap.bodystructure_and_body(root)
    parts = tuple(_row(sec, p, defects) for sec, p in walk(root))
    return MessageMeta(
        size=len(raw),
        envelope=NIL_ENVELOPE if envelope is None else envelope,
        bodystructure=bodystructure,
        body=body,
        parts=parts,
        defects=tuple(defects),
        search=SearchText((), "") if text is None else text,
        sent_date=sent_date,
        sent_day=sent_day,
        keys=EMPTY_KEYS if keys is None else keys,
    )


NIL_ENVELOPE = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
MINIMAL_HEADER_MAX = 8 * 1024  # bytes of header `minimal_meta` reads for the ENVELOPE: it runs on the event loop


def minimal_meta(raw: bytes, defect: str) -> MessageMeta:
    """What is cheap to know of a message whose full metadata could not be computed (a step raised, or the
    worker computing it ran past `metapool.META_SECONDS` and was killed): the size, the ENVELOPE and decoded
    header text (SEARCH SUBJECT, FROM, ...) of a header of at most `MINIMAL_HEADER_MAX` bytes (else NIL and
    none), the whole body as one text/plain part (so HEADER, TEXT and BODY[1] still answer from the raw
    bytes), no body search text, and `defect` at offset 0. Linear, and capped where it is not C-speed; never
    raises."""
    crlf = raw.find(b"\r\n\r\n")
    lf = raw.find(b"\n\n")
    ends = [e for e in (crlf + 4 if crlf >= 0 else -1, lf + 2 if lf >= 0 else -1) if e >= 0]
    body_start = min(ends) if ends else len(raw)
    defects = [(0, defect)]
    env = NIL_ENVELOPE
    headers: tuple[tuple[str, str], ...] = ()
    keys = EMPTY_KEYS
    if body_start <= MINIMAL_HEADER_MAX:
        try:
            fields, _ = H.split_fields(raw, 0, body_start)
            env = imap.envelope(fields)
            headers = tuple((f.name, decode_words(f.value)) for f in fields)
            keys = sort_keys(fields)
        except Exception as e:  # noqa: BLE001 - invariant 1
            defects.append((0, f"envelope-failed:{type(e).__name__}"))
    size = len(raw) - body_start
    lines = raw.count(b"\n", body_start)
    basic = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d' % (size, lines)
    rows = tuple(
        PartRow(section, 0, body_start, len(raw), lines, 0, body_start, "text/plain", "", "us-ascii", None, None,
                None, 0)
        for section in ("", "1")
    )
    return MessageMeta(
        size=len(raw),
        envelope=env,
        bodystructure=basic + b" NIL NIL NIL NIL)",
        body=basic + b")",
        parts=rows,
        defects=tuple(defects),
        search=SearchText(headers, ""),
        sent_date=None,
        keys=keys,
    )


__all__ = [
    "FORMAT_VERSION",
    "MessageMeta",
    "MetaFormatError",
    "PartRow",
    "UnknownCTE",
    "compute_meta",
    "compute_meta_staged",
    "minimal_meta",
]

