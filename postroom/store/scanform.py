"""The scan form of a body's search text: what SEARCH's exact check compares, ready to compare (every engine).

Theory of operation
-------------------
IMAP SEARCH string keys match as case-insensitive substrings (RFC 9051 §6.4.4). The exact check (imap/search.py)
case-folds the haystacks of `MessageMeta.search` per message, after decoding the metadata's JSON: for a term in
every message, or one too short for the trigram index (textindex.py), that is every message of the mailbox, and
the decoding costs more than the comparing. The scan form is those haystacks case-folded once, when the body is
indexed, and kept per body beside the index rows (store/sqlite/fts.py), so a scan decompresses and calls
`bytes.find`, nothing else.

`build(meta)` -> bytes: one format byte (`CODEC_ZSTD`), then a Zstandard frame (level 1) of

    "<6I"  n_fields, fields_bytes, text_chars, body_chars, body_start, body_end
    n_fields x "<3I"  name_bytes, value_bytes, value_chars
    each field's name then value (UTF-8)
    TEXT's haystack (UTF-8): `text_haystack(meta).casefold()`; BODY's is its bytes [body_start, body_end)

where the fields are one per distinct header field name (lower-case, first-seen order) with the value SUBJECT,
FROM, ..., HEADER compare: `SearchText.header(name).casefold()` (repeated fields joined by ", "), and the *_chars
are the haystacks' lengths in characters (what `MAX_SEARCH_WORK` counts). Text is encoded with "surrogatepass"
(decoded mail may hold lone surrogates). Zstandard level 1, not zlib and not uncompressed: on the bench mail
(bench/scanform.py, bench/RESULTS.md) it keeps 0.42x of the text against zlib level 1's 0.46x and scans 4-8
times faster than zlib; uncompressed scans faster still but adds about the bodies' size to the database, and
lz4 scans about twice as fast at 0.65x.

`evaluate(data, tests)` -> (bit mask of the tests that hold, characters compared). A test is a `ScanTest`: the
key's haystack ("text", "body" or "header" with a field name) and its needle, case-folded and UTF-8 encoded.

Invariants
1. For valid UTF-8 (and "surrogatepass" UTF-8, whose lead and continuation bytes are told apart the same way),
   `needle.encode() in hay.encode()` exactly when `needle in hay`; and `str.casefold` maps code point by code
   point, so the case-folded concatenation is the concatenation of the case-folded parts. Hence `evaluate`
   answers each test as `_Ctx.evaluate_text` does on the metadata the form was built from, and counts the same
   characters.
2. `build` is a pure function of the metadata; a form this code cannot read (another format byte, a damaged
   frame) makes `evaluate` raise `ScanFormError`, and the caller falls back to the metadata.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import zstandard

from postroom.mime.meta import MessageMeta

CODEC_ZSTD = b"\x01"  # format byte: this layout, Zstandard-compressed
LEVEL = 1  # Zstandard level: see the module essay
_HEAD = struct.Struct("<6I")
_FIELD = struct.Struct("<3I")
_MAX_FORM = 64 * 1024 * 1024  # bytes a frame may decompress to: search text is capped far below (mime.text)
_local = threading.local()  # zstandard (de)compressor objects are not to be shared between threads


class ScanFormError(ValueError):
    """Stored scan-form bytes this code cannot read."""


@dataclass(frozen=True, slots=True)
class ScanTest:
    """One SEARCH string test: `kind` "text", "body" or "header" (then `name` is the lower-case field name: what
    SUBJECT, FROM, TO, CC, BCC and HEADER compare), `needle` the string case-folded and encoded by `needle_bytes`.
    An empty needle of a "header" test asks whether the field is present (RFC 9051 §6.4.4)."""

    kind: str
    needle: bytes
    name: str = ""


def needle_bytes(needle: str) -> bytes:
    """The form of a client's string that `evaluate` looks for: case-folded, UTF-8 with surrogates passed."""
    return needle.casefold().encode("utf-8", "surrogatepass")


def text_haystack(meta: MessageMeta) -> str:
    """TEXT's haystack (before case folding): the message's header fields and body text, the attachments' file
    names, and the header fields of the body parts (RFC 9051 §6.4.4: TEXT covers "the header (including MIME
    header fields) or body"; a file name is a MIME parameter too)."""
    return meta.search.text() + _tail(meta)


def _tail(meta: MessageMeta) -> str:
    """What TEXT's haystack has after the header and body text: file names, then the body parts' fields."""
    names = "".join("\n" + r.filename for r in meta.parts if r.filename)
    return names + "".join(f"\n{k}: {v}" for k, v in meta.search.mime)


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def build(meta: MessageMeta) -> bytes:
    """The scan form of one body's metadata (module essay). Pure; never raises on stored metadata."""
    st = meta.search
    values: dict[str, list[str]] = {}
    for k, v in st.headers:
        values.setdefault(k, []).append(v)
    head_text = "\n".join(f"{k}: {v}" for k, v in st.headers).casefold()
    body = st.body.casefold()
    rest = _tail(meta).casefold()
    head_b, body_b = _enc(head_text), _enc(body)
    text_b = head_b + b"\n\n" + body_b + _enc(rest)
    table = []
    blobs = []
    for k, vs in values.items():
        value = ", ".join(vs).casefold()
        kb, vb = _enc(k), _enc(value)
        table.append(_FIELD.pack(len(kb), len(vb), len(value)))
        blobs.append(kb + vb)
    text_chars = len(head_text) + 2 + len(body) + len(rest)
    fields = b"".join(blobs)
    head = _HEAD.pack(len(values), len(fields), text_chars, len(body), len(head_b) + 2,
                      len(head_b) + 2 + len(body_b))
    return CODEC_ZSTD + _compressor().compress(head + b"".join(table) + fields + text_b)


def evaluate(data: bytes, tests: Sequence[ScanTest]) -> tuple[int, int]:
    """(bit mask: bit i set when tests[i] holds, characters of haystack compared) for one body's scan form.
    Raises ScanFormError for a form this code cannot read (invariant 2)."""
    if data[:1] != CODEC_ZSTD:
        raise ScanFormError(f"unknown scan form {data[:1]!r}")
    try:
        form = _decompressor().decompress(data[1:], max_output_size=_MAX_FORM)
        n, fields_bytes, text_chars, body_chars, body_start, body_end = _HEAD.unpack_from(form)
    except (zstandard.ZstdError, struct.error) as e:
        raise ScanFormError(str(e)) from e
    fields: dict[str, tuple[int, int, int]] | None = None
    text_at = _HEAD.size + n * _FIELD.size + fields_bytes
    bits = 0
    chars = 0
    for i, t in enumerate(tests):
        if t.kind == "text":
            chars += text_chars
            hit = form.find(t.needle, text_at) >= 0
        elif t.kind == "body":
            chars += body_chars
            hit = form.find(t.needle, text_at + body_start, text_at + body_end) >= 0
        else:
            if fields is None:
                fields = _fields(form, n)
            where = fields.get(t.name)
            if not t.needle:  # RFC 9051 §6.4.4: an empty string matches every message with the field
                hit = where is not None
            elif where is None:
                hit = False
            else:
                start, end, value_chars = where
                chars += value_chars
                hit = form.find(t.needle, start, end) >= 0
        if hit:
            bits |= 1 << i
    return bits, chars


def _fields(form: bytes, n: int) -> dict[str, tuple[int, int, int]]:
    """name -> (start, end, characters) of its value in `form`."""
    out: dict[str, tuple[int, int, int]] = {}
    at = _HEAD.size + n * _FIELD.size
    try:
        for name_len, value_len, value_chars in _FIELD.iter_unpack(form[_HEAD.size:at]):
            name = form[at:at + name_len].decode("utf-8", "surrogatepass")
            at += name_len
            out[name] = (at, at + value_len, value_chars)
            at += value_len
    except (struct.error, UnicodeDecodeError) as e:
        raise ScanFormError(str(e)) from e
    return out
