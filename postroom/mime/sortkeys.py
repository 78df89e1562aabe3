"""What SORT, THREAD and the stored thread id need from a message's header, computed once at delivery.

Theory of operation
-------------------
`sort_keys(fields)` reads the top-level header fields and returns `SortKeys`: the base subject (RFC 5256
§2.1) and whether its extraction removed a reply or forward marker, the addr-mailbox of the first From, To
and Cc address (RFC 5256 §3 FROM, TO, CC), the display name of the first From and To address (RFC 5957
DISPLAYFROM, DISPLAYTO), the Message-ID and the references (RFC 5256 §3 REFERENCES step 1). Every string that
is compared is kept as its collation key (`casemap`, RFC 5051 i;unicode-casemap), so a SORT compares plain
strings and never case-maps 100,000 subjects per command. `mime.meta` stores the result with the rest of the
metadata and the store copies it into narrow columns (`store/sqlite/schema.py` step 13).

Collation: RFC 5256 §1 makes SORT and THREAD collate "in accordance with the requirements of I18NLEVEL=1"
(RFC 5255 §4.3: the default comparator is i;unicode-casemap, RFC 5051). RFC 5051 §2: each character is
mapped to its titlecase (the simple mapping: one character to one), the string is then canonically
decomposed (NFD), and keys are compared as octet strings of UTF-8 (code point order is the same order). On
ASCII text this is i;ascii-casemap (upper case), the collation RFC 5256 §2.1 names.

Invariants:
1. `base_subject` is linear in the subject's length: one left-to-right pass over blob chains and leaders, one
   right-to-left pass over trailers, positions instead of copies (a subject of 20,000 `[a]` costs one pass).
2. Nothing here raises on received mail; a field that is not what it should be gives the empty key (RFC 5256
   §3: a missing field sorts as the empty string) or no Message-ID.
3. At most `MAX_REFERENCES` references are kept, the last ones (the parent is the last, RFC 5256 §3 step
   1.B); RFC 5256 step 1.B treats a shortened References field as the truncated field it already handles.
4. Message-IDs are compared as written (case-sensitive), without the angle brackets.
5. Every string is text a database can store: 8-bit bytes of a field are read as UTF-8, else Windows-1252
   (as `mime.text` reads undeclared header text), never kept as lone surrogates.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from postroom.mime import headers as H
from postroom.mime.address import Address, Parsed, parse_address_list
from postroom.mime.text import charset_decode, decode_words

MAX_REFERENCES = 500
MAX_KEY_CHARS = 1024  # characters of an address key kept (a display name longer than this sorts by its start)

_BLANKS = re.compile(r"[ \t\r\n]+")
# RFC 5256 §2.1: subj-blob = "[" *BLOBCHAR "]" *WSP (BLOBCHAR: anything but "[" and "]"); WSP is one space
# after step (1).
_BLOB = re.compile(r"\[[^\[\]]*\] *")
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_REFWD = re.compile(r"(?:re|fwd?) *(?:\[[^\[\]]*\] *)?:", re.IGNORECASE)
_MSG_ID = re.compile(r"<([^<>\s]*@[^<>\s]*)>")


@dataclass(frozen=True, slots=True)
class SortKeys:
    """The sort and thread keys of one message (module doc). Strings compared by SORT are collation keys
    (`casemap`); "" where the field is missing."""

    subject: str  # casemap(base subject), RFC 5256 §2.1
    reply: bool  # the extraction removed a subj-refwd, a "(fwd)" trailer or a [fwd: ...] (RFC 5256 §3 step 6)
    from_: str  # casemap(addr-mailbox of the first From address)
    to: str
    cc: str
    display_from: str  # casemap(RFC 5957 display name of the first From address)
    display_to: str
    message_id: str | None  # the first valid msg-id of Message-ID, without <>; None if there is none
    references: tuple[str, ...]  # References' msg-ids, else the first of In-Reply-To (RFC 5256 §3 step 1)

    def to_list(self) -> list[object]:
        """The stored form, a JSON-able list (`from_list` reads it back)."""
        return [self.subject, self.reply, self.from_, self.to, self.cc, self.display_from, self.display_to,
                self.message_id, list(self.references)]

    @classmethod
    def from_list(cls, doc: list[object]) -> SortKeys:
        """The inverse of `to_list`; raises TypeError or ValueError on anything else."""
        subject, reply, frm, to, cc, dfrom, dto, msgid, refs = doc
        if not all(isinstance(x, str) for x in (subject, frm, to, cc, dfrom, dto)) or not isinstance(refs, list):
            raise TypeError("bad sort keys")
        if msgid is not None and not isinstance(msgid, str):
            raise TypeError("bad message id")
        return cls(str(subject), bool(reply), str(frm), str(to), str(cc), str(dfrom), str(dto), msgid,
                   tuple(str(r) for r in refs))


EMPTY_KEYS = SortKeys("", False, "", "", "", "", "", None, ())


@lru_cache(maxsize=4096)
def _title(ch: str) -> str:
    """RFC 5051 §2 step 1: the simple titlecase mapping of one character (itself when the full mapping would
    make more than one character, as UnicodeData's one-to-one field does not)."""
    t = ch.title()
    if len(t) == 1:
        return t
    u = ch.upper()
    return u if len(u) == 1 else ch


def casemap(text: str) -> str:
    """The i;unicode-casemap key of `text` (RFC 5051 §2): titlecase each character, then NFD. Keys compare
    as RFC 5051 orders the strings."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFD", "".join(map(_title, text)))


def _normalize(subject: str) -> str:
    """RFC 5256 §2.1 step (1) after RFC 2047 decoding: tabs and line breaks to spaces, runs of spaces to one."""
    return _BLANKS.sub(" ", subject)


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 §2.1: the base subject of a decoded Subject value, and whether a reply or forward marker (a
    subj-refwd, a "(fwd)" trailer, a [fwd: ...] wrapper) was removed. Linear (invariant 1)."""
    s = _normalize(subject)
    lo, hi = 0, len(s)
    reply = False
    while True:
        # (2) Remove trailing subj-trailer ("(fwd)" / WSP), repeatedly.
        while hi > lo:
            if s[hi - 1] == " ":
                hi -= 1
            elif hi - lo >= 5 and s[hi - 5:hi].lower() == "(fwd)":
                hi -= 5
                reply = True
            else:
                break
        # (3) Remove subj-leader ((*subj-blob subj-refwd) / WSP); (4) remove a subj-blob prefix if a non-empty
        # subj-base remains; (5) repeat both until nothing matches.
        while lo < hi:
            if s[lo] == " ":
                lo += 1
                continue
            # The chain of blobs at lo, once: step (3) needs a subj-refwd right after some of them, step (4)
            # removes them one by one otherwise, which ends at the same place as removing all but the last when
            # nothing follows them, or all of them when something does (invariant 1).
            ends: list[int] = []
            pos = lo
            while pos < hi:
                m = _BLOB.match(s, pos, hi)
                if m is None:
                    break
                pos = m.end()
                ends.append(pos)
            m = _REFWD.match(s, pos, hi)
            if m is not None:
                lo = m.end()
                reply = True
                continue
            if not ends:
                break
            if pos < hi:
                lo = pos  # every blob goes: a subj-base follows them
            elif len(ends) > 1:
                lo = ends[-2]  # the last blob is the subj-base (RFC 5256 §2.1 subj-middle comment)
            break
        # (6) [fwd: ... ] around the rest: remove both and repeat from (2).
        if hi - lo >= 6 and s[lo:lo + 5].lower() == "[fwd:" and s[hi - 1] == "]":
            lo += 5
            hi -= 1
            reply = True
            continue
        return s[lo:hi], reply


def _first_address(fields: list[H.Field], name: str, parsed: Parsed | None) -> Address | None:
    for f in fields:
        if f.name == name:
            addrs = parse_address_list(f.value) if parsed is None else parsed.of(f.value)
            if addrs:
                return addrs[0]
    return None


def _text(value: str) -> str:
    """Header text as read by `headers.to_str` (8-bit bytes as surrogates) made storable (invariant 5)."""
    return value if value.isascii() else charset_decode(H.to_bytes(value), None)


def _mailbox(addr: Address | None) -> str:
    """RFC 5256 §3: the [IMAP] addr-mailbox of the address ("" without one)."""
    if addr is None or addr.mailbox is None:
        return ""
    return casemap(_text(addr.mailbox[:MAX_KEY_CHARS]))


def _display(addr: Address | None) -> str:
    """RFC 5957 §3: the address's display-name, RFC 2047 decoded; without one (or an empty one) the addr-spec
    ("mailbox@host", the mailbox alone for a group start)."""
    if addr is None:
        return ""
    name = decode_words(H.to_bytes(addr.name)).strip() if addr.name else ""
    if not name:
        if addr.mailbox is None:
            return ""
        name = addr.mailbox if addr.host is None else f"{addr.mailbox}@{addr.host}"
    return casemap(_text(name[:MAX_KEY_CHARS]))


def message_ids(value: str) -> list[str]:
    """The msg-ids of a Message-ID, References or In-Reply-To value, in order, without <> (RFC 5322 §3.6.4:
    "<" id-left "@" id-right ">"; anything between them but blanks and angle brackets is taken)."""
    return [_text(m) for m in _MSG_ID.findall(value)]


def sort_keys(fields: list[H.Field], parsed: Parsed | None = None) -> SortKeys:
    """The `SortKeys` of a message from its top-level header fields (invariant 2). `parsed`: the message's
    address lists parsed so far, shared with its ENVELOPE (`mime.meta`); the keys are the same without it."""
    subj = H.first_field(fields, "subject")
    base, reply = base_subject(decode_words(subj.value)) if subj is not None else ("", False)
    frm = _first_address(fields, "from", parsed)
    to = _first_address(fields, "to", parsed)
    f = H.first_field(fields, "message-id")
    ids = message_ids(H.to_str(f.unfolded())) if f is not None else []
    refs: list[str] = []
    f = H.first_field(fields, "references")
    if f is not None:
        refs = message_ids(H.to_str(f.unfolded()))
    if not refs:  # RFC 5256 §3 REFERENCES step 1.A: else the first valid msg-id of In-Reply-To
        f = H.first_field(fields, "in-reply-to")
        if f is not None:
            refs = message_ids(H.to_str(f.unfolded()))[:1]
    return SortKeys(
        subject=casemap(base),
        reply=reply,
        from_=_mailbox(frm),
        to=_mailbox(to),
        cc=_mailbox(_first_address(fields, "cc", parsed)),
        display_from=_display(frm),
        display_to=_display(to),
        message_id=ids[0] if ids else None,
        references=tuple(refs[-MAX_REFERENCES:]),
    )


__all__ = ["EMPTY_KEYS", "MAX_REFERENCES", "SortKeys", "base_subject", "casemap", "message_ids", "sort_keys"]
