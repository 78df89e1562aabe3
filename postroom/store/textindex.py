"""What the full-text index holds, and which index lookups a SEARCH string key may narrow by (every engine).

Theory of operation
-------------------
IMAP SEARCH string keys match as case-insensitive substrings of decoded text (RFC 9051 §6.4.4); `imap/search.py`
checks that exactly over the stored `SearchText`. An index only *narrows*: an engine returns every message whose
text might contain the string (a superset), and the exact check confirms, so answers never depend on the index.

`index_fields(meta)` is the text an engine indexes for one body, per field, case-folded as the exact check
folds it (`str.casefold`):

    subject, from, to, cc, bcc   exactly `SearchText.header(name)`: what SUBJECT, FROM, TO, CC, BCC compare
    headers                      every field as "name: value" lines: the header part of `SearchText.text()`
    names                        attachment file names, one per line (`PartRow.filename`), then the body
                                 parts' header fields as "name: value" lines (`SearchText.mime`): the
                                 rest of TEXT's haystack (`scanform.text_haystack`)
    body                         exactly `SearchText.body`: what BODY compares

`pieces(field_key, needle)` cuts a needle into substrings that must each occur in one index field for the key to
match. A piece never spans what the index joins differently from the exact haystack: a TEXT needle is cut at
line ends (TEXT's haystack joins headers, body and names by line ends), a HEADER needle for a field without a
column of its own at commas (a repeated field's values are joined by ", " in the haystack, by lines in
`headers`), and every needle at lone surrogates (a client may send UTF-8-encoded surrogates; the index holds
U+FFFD where the text had one). Each piece is then looked up by its trigrams (`trigrams`): only pieces of three
characters or more narrow; a needle with none (e.g. one or two CJK characters) is left to the exact scan.

Invariants
1. If `casefold(needle)` is a substring of the exact haystack of a key, every piece of `pieces(key, needle)`
   is a substring of one of the index fields `FIELDS_OF[key]` of that message, and every trigram of that piece
   occurs in that field. Hence a lookup by trigrams never loses a match (it may add some).
2. `index_fields` is a pure function of the stored metadata, and contains no lone surrogate (they become "?"
   and needles are cut at theirs, so no match is lost) and no NUL (it becomes U+FFFD; a needle holds no NUL:
   SEARCH refuses one, so no match spans it).
3. Conversely, each index field is a stretch of its key's haystack between line ends (or the whole haystack,
   for a header field's own column and for BODY), differing only where a lone surrogate became "?" or a NUL
   became U+FFFD. So a needle that is one piece (`pieces` gives it whole: no line end in a
   TEXT needle) and holds no "?", U+FFFD, NUL or surrogate (`TextTerm.whole`) is a substring of the haystack
   exactly when it is a substring of one of the key's fields: an engine that checks the whole needle against
   the field text itself (SQLite's phrase lookups in a column with positions, PostgreSQL's LIKE) answers
   exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from postroom.mime.meta import MessageMeta

HEADER_FIELDS = ("subject", "from", "to", "cc", "bcc")  # header fields with an index column of their own
HEAD_COLUMNS = (*HEADER_FIELDS, "headers", "names")  # the header-side columns, in this order
MIN_PIECE = 3  # characters: a trigram index cannot look up less
MAX_PIECES = 4  # pieces of one needle looked up (the longest); the rest are left to the exact check
_SURROGATES = re.compile("[\ud800-\udfff]")
_NOT_WHOLE = frozenset("?\ufffd\x00")  # an index field may hold them where the haystack has other text
MAX_TRIGRAMS = 12  # trigrams of one piece looked up (spread over it); more only cost time

# The index fields each kind of key may be found in; ("header", name) keys use HEADER_FIELDS or "headers".
FIELDS_OF: dict[str, tuple[str, ...]] = {
    **{f: (f,) for f in HEADER_FIELDS},
    "header": ("headers",),
    "body": ("body",),
    "text": ("headers", "names", "body"),
}


@dataclass(frozen=True, slots=True)
class TextTerm:
    """One SEARCH string key to narrow by: `key` is "subject", "from", "to", "cc", "bcc", "body", "text" or
    "header" (then `header` names the field, lower-case), `needle` the string as the client gave it."""

    key: str
    needle: str
    header: str = ""

    def fields(self) -> tuple[str, ...]:
        """The index fields a match must be in (`FIELDS_OF`; a HEADER of a field with its own column, there)."""
        if self.key == "header" and self.header in HEADER_FIELDS:
            return (self.header,)
        return FIELDS_OF[self.key]

    def whole(self) -> str | None:
        """The case-folded needle when one lookup of it, whole, in the key's index fields answers the key exactly
        (module invariant 3), else None."""
        if self.key == "header" and self.header not in HEADER_FIELDS:
            return None  # the other fields share one column of "name: value" lines
        folded = self.needle.casefold()
        if self.pieces() != [folded] or not _NOT_WHOLE.isdisjoint(folded):
            return None
        if not folded.isascii() and _SURROGATES.search(folded):
            return None
        return folded

    def pieces(self) -> list[str]:
        """The case-folded pieces to look up (invariant 1), at most `MAX_PIECES`, longest first; [] when none
        is long enough (the term cannot narrow)."""
        key = self.header if self.key == "header" and self.header in HEADER_FIELDS else self.key
        return pieces(key, self.needle)


@dataclass(frozen=True, slots=True)
class TextAll:
    """Every one of `terms` holds (SEARCH's implicit AND)."""

    terms: tuple[TextFilter, ...]


@dataclass(frozen=True, slots=True)
class TextAny:
    """At least one of `terms` holds (SEARCH OR)."""

    terms: tuple[TextFilter, ...]


TextFilter = TextTerm | TextAll | TextAny


def _clean(text: str) -> str:
    """`text` case-folded with lone surrogates replaced and NUL as U+FFFD (invariant 2): SQLite and PostgreSQL
    take UTF-8 only, PostgreSQL's text holds no NUL, and SQLite's FTS5 tokenizers stop at one (a sender could
    hide every word after a NUL from SEARCH)."""
    folded = text.casefold()
    if "\x00" in folded:
        folded = folded.replace("\x00", "\ufffd")
    if folded.isascii():
        return folded
    return folded.encode("utf-8", "replace").decode("utf-8")


def index_fields(meta: MessageMeta) -> dict[str, str]:
    """The text to index for one body, by field (module essay). Pure; never raises on stored metadata."""
    st = meta.search
    out = {name: _clean(st.header(name)) for name in HEADER_FIELDS}
    out["headers"] = _clean("\n".join(f"{k}: {v}" for k, v in st.headers))
    names = [r.filename for r in meta.parts if r.filename]
    names.extend(f"{k}: {v}" for k, v in st.mime)
    out["names"] = _clean("\n".join(names))
    out["body"] = _clean(st.body)
    return out


def pieces(key: str, needle: str) -> list[str]:
    """Case-folded substrings of `needle` that a match must contain within one index field of `key` (a field
    name of `HEADER_FIELDS`, "header" for any other field, "body" or "text"); only those of `MIN_PIECE`
    characters or more, the `MAX_PIECES` longest. See invariant 1."""
    folded = needle.casefold()
    if key == "text":
        parts = folded.split("\n")
    elif key == "header":
        parts = folded.replace("\n", ",").split(",")
    else:
        parts = [folded]
    if not folded.isascii() and _SURROGATES.search(folded):  # invariant 2: U+FFFD in the index there
        parts = [p for part in parts for p in _SURROGATES.split(part)]
    usable = sorted({p for p in parts if len(p) >= MIN_PIECE}, key=len, reverse=True)
    return usable[:MAX_PIECES]


def trigrams(piece: str) -> list[str]:
    """Trigrams of `piece` (at least 3 characters) that a field containing it must contain: non-overlapping
    from the start plus the last one, at most `MAX_TRIGRAMS` spread over it. All of them appear in any text
    containing `piece`, so looking up a subset only admits more candidates."""
    n = len(piece)
    starts = list(range(0, n - 2, 3))
    if starts[-1] != n - 3:
        starts.append(n - 3)
    if len(starts) > MAX_TRIGRAMS:
        step = len(starts) / MAX_TRIGRAMS
        starts = [starts[int(i * step)] for i in range(MAX_TRIGRAMS - 1)] + [starts[-1]]
    seen: dict[str, None] = {}
    for i in starts:
        seen.setdefault(piece[i:i + 3], None)
    return list(seen)


def terms(flt: TextFilter) -> Iterator[TextTerm]:
    """Every term of a filter, depth first."""
    if isinstance(flt, TextTerm):
        yield flt
    else:
        for t in flt.terms:
            yield from terms(t)


__all__ = ["FIELDS_OF", "HEADER_FIELDS", "HEAD_COLUMNS", "TextAll", "TextAny", "TextFilter", "TextTerm",
           "index_fields", "pieces", "trigrams"]
