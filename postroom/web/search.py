"""The webmail's search box: a query language people know, translated into an IMAP SEARCH program and run by
IMAP's own SEARCH code, so the page finds exactly what `UID SEARCH` finds.

Theory of operation
-------------------
`parse(query)` reads what a person types into the box and returns the IMAP search program (RFC 9051 §6.4.4) as
text, or raises `QueryError` with a sentence saying what is wrong (shown above the list; never a 500):

    from:WORD | from:"a phrase"     FROM string            (the From field, decoded, substring, any case)
    to:..., subject:...             TO string, SUBJECT string
    has:attachment                  HEADER Content-Type "multipart/mixed"  (note 1)
    before:YYYY-MM-DD               BEFORE date            (received before that day, UTC)
    after:YYYY-MM-DD                SINCE date             (received on or after that day: as Gmail's after:)
    is:unread | is:read             UNSEEN | SEEN
    is:flagged | is:unflagged       FLAGGED | UNFLAGGED
    WORD | "a phrase"               BODY string            (free text over the body)

Terms are separated by spaces and all must hold (AND). A `name:value` whose name is not one of the above is free
text (a URL is a word). Strings are written as IMAP quoted strings (`"` and `\\` escaped; UTF-8 as is, RFC 9051
§4.3), so `imap_text` is exactly what a client would send after `UID SEARCH CHARSET UTF-8`; the key tree is made
from it by the IMAP parser itself (`imap.parser.parse_command`), and the search is `imap.search.run_search` over
the mailbox, with the full-text index narrowing string keys and the exact check after it (imap/search.py), the
same bounds (`MAX_SEARCH_WORK`, slices that yield to the event loop) and the same answers.

Note 1: IMAP SEARCH has no key for "has an attachment"; mail programs send attachments as multipart/mixed, so
that is the test (a message whose top-level Content-Type contains "multipart/mixed"). It misses attachments in
a message of another structure and counts a mixed message without one; the help text says what it does.

`run_search` works on an IMAP session's view of the selected mailbox (`imap.state.Selected`). `SearchScope` is
that view for the webmail: the store, the limits and a `Selected` holding every UID of the mailbox (read in one
index-only query, `Store.uids_with_flag` with no flag: 4 octets a message, as an IMAP SELECT holds), read-write,
IMAP4rev2 (no \\Recent). Nothing else of an IMAP session is touched by a program this parser makes (no
sequence sets, no EMAILID/THREADID, no RECENT), which `parse` guarantees by construction.

Windows: IMAP SEARCH answers every match, and a page needs `page_size` of them, newest first. So `page` searches
the mailbox by UID windows, from the top down (or, for "newer results", from `above` up): `FIRST_WINDOW` UIDs,
then twice as many each step (at most `MAX_WINDOW`), each window one `run_search` over just its UIDs (the
full-text index narrows within the window's range), until more than a page is found or the mailbox's end is
reached. A window of up to `NARROW_FROM` UIDs is searched without the full-text index: its lookup costs what the
term's postings in the whole store cost (a word in every message: every message), while reading a few hundred
messages' scan forms costs those alone; wider windows are narrowed by it. Within each window the answer is
exactly IMAP's, so the pages together are exactly `UID SEARCH`'s answer,
newest first; a page costs the windows it needed, which for a query matching often is the first one, whatever
the mailbox's size. The total is known only when the search reached the end on the first page ("N messages
found"); otherwise the page says that more follow. Paging is by UID (`below` / `above`), like the plain list, and
reads the records of the page only (a point lookup each).

Invariants
1. Every query either gives an IMAP program the IMAP parser accepts, or raises `QueryError`; no other exception
   leaves `parse` for any input (tests feed it arbitrary text).
2. A query has at most `MAX_TERMS` terms and `MAX_QUERY` characters; control characters are refused.
3. The answer is the one `UID SEARCH CHARSET UTF-8 <imap_text>` gives over IMAP for the same mailbox (tested with
   imaplib), page after page; every UID of the mailbox is in exactly one window of a walk.
"""

from __future__ import annotations

import datetime
from array import array
from dataclasses import dataclass
from typing import cast

from postroom.config import LimitsConfig
from postroom.imap import parser as P
from postroom.imap.errors import No
from postroom.imap.search import run_search
from postroom.imap.session import Session
from postroom.imap.state import Selected
from postroom.store.api import Mailbox, MessageInfo, Store

MAX_QUERY = 500  # characters of one query
FIRST_WINDOW = 200  # UIDs searched by a page's first step (4 pages of 50); each further step twice as many
MAX_WINDOW = 64_000  # ... up to this many
NARROW_FROM = 1000  # UIDs of a window past which the full-text index narrows its search (module doc)
MAX_TERMS = 20  # terms of one query
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_IS = {"unread": "UNSEEN", "read": "SEEN", "seen": "SEEN", "unseen": "UNSEEN", "flagged": "FLAGGED",
       "unflagged": "UNFLAGGED", "starred": "FLAGGED"}
_FIELDS = {"from": "FROM", "to": "TO", "subject": "SUBJECT"}
_OPERATORS = {"from", "to", "subject", "has", "before", "after", "is"}


class QueryError(ValueError):
    """The query cannot be read; `str(exc)` is a sentence for the person who typed it."""


@dataclass(frozen=True)
class Parsed:
    """A query read: the IMAP search program as text, and its key tree (the IMAP parser's)."""

    imap_text: str
    key: P.Key


def quoted(text: str) -> str:
    """An IMAP quoted string (RFC 9051 §4.3: `"` and `\\` escaped with `\\`)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tokens(query: str) -> list[tuple[str | None, str]]:
    """(operator or None, value) per term; a quoted value keeps its spaces. QueryError for an open quote."""
    out: list[tuple[str | None, str]] = []
    i, n = 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
            continue
        op: str | None = None
        start = i
        while i < n and not query[i].isspace() and query[i] not in ':"':
            i += 1
        if i < n and query[i] == ":" and query[start:i].lower() in _OPERATORS:
            op = query[start:i].lower()
            i += 1
            start = i
        else:
            i = start
        if i < n and query[i] == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise QueryError("A quotation mark is not closed: end the phrase with another \".")
            value = query[i + 1:end]
            i = end + 1
        else:
            while i < n and not query[i].isspace():
                i += 1
            value = query[start:i]
        if op is not None and not value:
            raise QueryError(f"{op}: needs a value, as in {op}:{_EXAMPLE[op]}.")
        if value or op is not None:
            out.append((op, value))
    return out


_EXAMPLE = {"from": "anna", "to": "bob@example.org", "subject": '"weekly report"', "has": "attachment",
            "before": "2024-12-31", "after": "2024-01-01", "is": "unread"}


def _imap_date(op: str, value: str) -> str:
    try:
        day = datetime.date.fromisoformat(value)
    except ValueError:
        raise QueryError(f"{op}:{value} is not a date: write it as {op}:{_EXAMPLE[op]} (year-month-day).") from None
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year:04d}"


def parse(query: str) -> Parsed:
    """The IMAP search program for a query (module doc), or QueryError (invariants 1, 2)."""
    if len(query) > MAX_QUERY:
        raise QueryError(f"The search is too long (at most {MAX_QUERY} characters).")
    if any(ord(ch) < 32 and not ch.isspace() or ord(ch) == 127 or ch in "\r\n\x00" for ch in query):
        raise QueryError("The search contains control characters.")
    terms = _tokens(query)
    if not terms:
        raise QueryError("Type something to search for.")
    if len(terms) > MAX_TERMS:
        raise QueryError(f"The search has too many terms (at most {MAX_TERMS}).")
    keys: list[str] = []
    for op, value in terms:
        if op is None:
            keys.append("BODY " + quoted(value))
        elif op in _FIELDS:
            keys.append(f"{_FIELDS[op]} {quoted(value)}")
        elif op == "has":
            if value.lower() not in ("attachment", "attachments"):
                raise QueryError(f"has:{value} is not known: has:attachment is.")
            keys.append('HEADER Content-Type "multipart/mixed"')  # module doc, note 1
        elif op == "before":
            keys.append("BEFORE " + _imap_date(op, value))
        elif op == "after":
            keys.append("SINCE " + _imap_date(op, value))
        else:  # is
            imap = _IS.get(value.lower())
            if imap is None:
                raise QueryError(f"is:{value} is not known: is:unread, is:read, is:flagged and is:unflagged are.")
            keys.append(imap)
    text = " ".join(keys)
    try:
        command = P.parse_command(b"w UID SEARCH CHARSET UTF-8 " + text.encode("utf-8", "surrogatepass"))
    except (P.ParseError, UnicodeError) as exc:
        raise QueryError("This search cannot be read; try fewer special characters.") from exc
    args = command.args
    assert isinstance(args, P.SearchArgs)
    return Parsed(text, args.key)


class SearchScope:
    """What `imap.search.run_search` reads of an IMAP session (module doc): `store`, `limits` (metadata
    recomputed when missing) and `sel`, the mailbox with every UID announced."""

    def __init__(self, store: Store, limits: LimitsConfig, box: Mailbox, uids: list[int]) -> None:
        self.store = store
        self.limits = limits
        self.sel = Selected(box, readonly=False, uids=array("I", uids), rev2=True)


async def search(store: Store, limits: LimitsConfig, box: Mailbox, parsed: Parsed, uid_min: int = 1,
                 uid_max: int = 2**32 - 1) -> list[int]:
    """The UIDs of `box` in [uid_min, uid_max] matching the program, ascending (invariant 3); the full-text index
    narrows only a window wider than `NARROW_FROM` UIDs (module doc). QueryError when the search is refused for its
    size (`imap.search.MAX_SEARCH_WORK`); NotFound when the mailbox is gone."""
    uids = await store.uids_with_flag(box.id, uid_min, uid_max, 0, False)  # no flag bit: every UID, from the index
    if not uids:
        return []
    scope = SearchScope(store, limits, box, uids)
    try:
        # The session's attributes run_search reads are exactly SearchScope's (module doc).
        return await run_search(cast(Session, scope), parsed.key, uid_cmd=True,
                                narrow=uid_max - uid_min + 1 > NARROW_FROM)
    except No as exc:
        raise QueryError(f"This search is too large: {exc.text}") from exc


@dataclass(frozen=True)
class Page:
    """One page of results, newest first, and the paging around it."""

    infos: list[MessageInfo]
    total: int | None  # results in the whole mailbox when the search covered it (all fit on this page), else None
    newer: int | None  # the `above` value of the page before (newer results), or None
    older: int | None  # the `below` value of the page after (older results), or None


async def page(store: Store, limits: LimitsConfig, box: Mailbox, parsed: Parsed, size: int,
               below: int | None = None, above: int | None = None) -> Page:
    """One page of results newest first: the `size` newest below UID `below`, or the `size` oldest above `above`
    (module doc, "Windows"); the records of these UIDs only."""
    top = max(1, box.uidnext - 1)
    up = above is not None
    edge = (above or 0) + 1 if up else min(top, (below or top + 1) - 1)  # the first UID to look at
    found: list[int] = []  # matches in the walk's order (ascending going up, descending going down)
    span = FIRST_WINDOW
    while len(found) <= size and (edge <= top if up else edge >= 1):
        lo, hi = (edge, min(top, edge + span - 1)) if up else (max(1, edge - span + 1), edge)
        got = await search(store, limits, box, parsed, lo, hi)
        found += got if up else got[::-1]
        edge = hi + 1 if up else lo - 1
        span = min(span * 2, MAX_WINDOW)
    exhausted = edge > top if up else edge < 1  # the walk reached the end in its direction
    chosen = found[:size]
    more = len(found) > size or not exhausted  # past this page, in the walk's direction
    if up:
        chosen.reverse()  # newest first on the page
    infos = []
    for uid in chosen:
        info = await store.get_message(box.id, uid)
        if info is not None:  # expunged since the search
            infos.append(info)
    if not chosen:
        return Page(infos, 0 if below is None and above is None else None, None, None)
    newer = chosen[0] if (more if up else above is not None or below is not None) else None
    older = chosen[-1] if (more if not up else True) else None
    whole = below is None and above is None and not more
    return Page(infos, len(found) if whole else None, newer, older)
