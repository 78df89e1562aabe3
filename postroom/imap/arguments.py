"""Command arguments in the session's terms, shared by the command modules: message sets to UIDs, flag names to
bits, mailbox names to and from the store's, base64.

Theory of operation
-------------------
The parser (parser.py) gives arguments as the client wrote them; what they mean depends on the session. A
sequence set names messages by number or UID in the session's view (`Selected.uids`): `resolve` lists the
UIDs (ascending, unique), `resolve_view` gives a set of one range (1:*) as the slice of the view itself (no
int object a message), `member` answers "is this UID in the set" without listing it (for CHANGEDSINCE and
VANISHED, whose work follows the changes, not the mailbox). Flag names become the store's bitmask and
validated keywords (`parse_flags`). A mailbox name becomes the store's name (`stored_name`: modified UTF-7
for rev1 sessions, UTF-8 after ENABLE IMAP4rev2, RFC 9051 §5.1) and back (`wire_name`). Each refuses what
it cannot take with `Bad` or `No` (the invariants), so handlers pass the client's arguments straight in.

Invariants
1. A message sequence number beyond EXISTS is a client error (BAD); a UID that does not exist is ignored
   (RFC 9051 §6.4.8).
2. Every mailbox name a client sends passes `stored_name` before any store call; a name the store could not
   hold is `NO [CANNOT]` there (RFC 5530 §3).
"""

from __future__ import annotations

import base64
import binascii
import bisect
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from postroom.store import names
from postroom.store.api import FLAG_BY_NAME, HIERARCHY_SEPARATOR, Invalid

from . import encoder
from . import parser as P
from .errors import Bad, No
from .state import Selected, in_ranges, uid_ranges

if TYPE_CHECKING:
    from .session import Session

SEP = HIERARCHY_SEPARATOR  # "/": the one hierarchy separator (one personal namespace, RFC 2342)


# ---- message sets (RFC 9051 §9 sequence-set)

def sel_of(s: Session) -> Selected:
    """The session's Selected state; only for handlers of selected-state commands (the dispatcher checked it)."""
    assert s.sel is not None
    return s.sel


def member(s: Session, seqset: P.SeqSet, uid: bool, star: int = 0) -> Callable[[int], bool]:
    """A test "is this UID named by `seqset`" in the session's view, made without listing the set (the set may be
    1:* of a large mailbox). A message number beyond EXISTS is BAD (module invariant 1). `star` is what "*" means in a
    UID set (default: the highest UID in the view)."""
    sel = sel_of(s)
    if seqset.saved:
        saved = set(sel.saved)
        return saved.__contains__
    top = len(sel.uids) if not uid else (star or (sel.uids[-1] if sel.uids else 0))
    ranges: list[tuple[int, int]] = []
    for lo, hi in seqset.ranges:
        lo = top if lo == P.STAR else lo
        hi = top if hi == P.STAR else hi
        lo, hi = min(lo, hi), max(lo, hi)
        if lo == 0:  # "*" of an empty mailbox
            continue
        if not uid and hi > top:
            raise Bad("Invalid message sequence number")
        ranges.append((lo, hi))
    inside = in_ranges(uid_ranges(ranges))
    if uid:
        return inside
    return lambda u: inside(sel.msn(u))


def resolve(s: Session, seqset: P.SeqSet, uid: bool) -> list[int]:
    """UIDs (ascending, unique) named by a sequence set in the session's view (module invariant 1)."""
    sel = sel_of(s)
    uids = sel.uids
    if seqset.saved:  # RFC 5182 §2.1: "$" is the last saved result, empty if none
        present = set(uids)
        return [u for u in sel.saved if u in present]
    if len(seqset.ranges) == 1:
        return view_slice(s, seqset.ranges[0], uid).tolist()
    out: set[int] = set()
    if not uid:
        n = len(uids)
        for lo, hi in seqset.ranges:
            if lo == P.STAR:
                lo = n
            if hi == P.STAR:
                hi = n
            if lo > hi:
                lo, hi = hi, lo
            if lo == 0:  # "*" in an empty mailbox
                continue
            if hi > n:
                raise Bad("Invalid message sequence number")
            out.update(uids[lo - 1:hi])
            if len(out) > 10_000_000:
                break
        return sorted(out)
    top = uids[-1] if uids else 0
    for lo, hi in seqset.ranges:
        if lo == P.STAR:
            lo = top
        if hi == P.STAR:
            hi = top
        if lo > hi:
            lo, hi = hi, lo
        if hi == 0:
            continue
        i = bisect.bisect_left(uids, lo)
        j = bisect.bisect_right(uids, hi)
        out.update(uids[i:j])
    return sorted(out)


def resolve_view(s: Session, seqset: P.SeqSet, uid: bool) -> Sequence[int]:
    """`resolve`, as the slice of the session's view itself when the set is one range (1:*, 1:n, a UID range: the
    commonest): no int object a message, for a FETCH 1:* that may answer from kept lines (fetch.py)."""
    if len(seqset.ranges) == 1 and not seqset.saved:
        return view_slice(s, seqset.ranges[0], uid)
    return resolve(s, seqset, uid)


def view_slice(s: Session, seqrange: tuple[int, int], uid: bool) -> array[int]:
    """The UIDs of the view named by one range of a sequence set (n:m is m:n, "*" the last message or the highest
    UID: RFC 9051 §9), a slice of the view (ascending already); BAD for a message number beyond EXISTS."""
    uids = sel_of(s).uids
    lo, hi = seqrange
    if uid:
        top = uids[-1] if uids else 0
        lo, hi = top if lo == P.STAR else lo, top if hi == P.STAR else hi
        lo, hi = min(lo, hi), max(lo, hi)
        return uids[0:0] if hi == 0 else uids[bisect.bisect_left(uids, lo):bisect.bisect_right(uids, hi)]
    n = len(uids)
    lo, hi = n if lo == P.STAR else lo, n if hi == P.STAR else hi
    lo, hi = min(lo, hi), max(lo, hi)
    if lo == 0:  # "*" in an empty mailbox
        return uids[0:0]
    if hi > n:
        raise Bad("Invalid message sequence number")
    return uids[lo - 1:hi]


# ---- flags (RFC 9051 §2.3.2)

def parse_flags(flags: Iterable[str]) -> tuple[int, list[str]]:
    """System flags to a bitmask, keywords validated; \\Recent cannot be set (RFC 9051 §2.3.2) and is
    ignored; another unknown system flag is a BAD."""
    bits = 0
    keywords: list[str] = []
    for f in flags:
        if f.startswith("\\"):
            bit = FLAG_BY_NAME.get(f.lower())
            if bit is None:
                if f.lower() == "\\recent":
                    continue
                raise Bad(f"Unknown system flag {f[:40]}")
            bits |= bit
        else:
            try:
                keywords.append(names.keyword(f))
            except Invalid:
                raise Bad(f"Invalid keyword {f[:40]}") from None
    return bits, keywords


# ---- mailbox names (RFC 9051 §5.1)

def stored_name(s: Session, name: str) -> str:
    """The store's name for a client's mailbox argument (module invariant 2; mailboxes.py invariant 5). Raises
    `No` [CANNOT] for a name that is not valid modified UTF-7 (rev1) or not valid UTF-8 (8-bit bytes reach here
    surrogate-escaped)."""
    try:
        name = encoder.decode_mailbox(name, s.rev2)
    except ValueError:
        raise No("Mailbox name is not valid modified UTF-7", "CANNOT") from None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # RFC 9051 §5.1: mailbox names are UTF-8; RFC 5530 §3 CANNOT: a name this server cannot hold.
        raise No("Mailbox name is not valid UTF-8", "CANNOT") from None
    if name.upper() == "INBOX" or name[:6].upper() == "INBOX" + SEP:
        name = "INBOX" + name[5:]
    return name


def wire_name(s: Session, name: str) -> bytes:
    """A stored mailbox name as the session writes it: modified UTF-7 (rev1) or UTF-8 (encoder invariant 2)."""
    return encoder.mailbox(name, s.rev2)


# ---- base64 (AUTHENTICATE, RFC 9051 §6.2.2)

def b64decode(data: bytes) -> bytes:
    """Decoded base64 (RFC 4648 §4, no whitespace or stray characters); `Bad` "Invalid base64" otherwise."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Bad("Invalid base64") from None
