"""SEARCH and UID SEARCH (RFC 9051 §6.4.4; ESEARCH RFC 4731; SEARCHRES RFC 5182).

Theory of operation
-------------------
The search runs in Python over the mailbox's message records. Keys on flags, UIDs, sizes and internal dates
read the records as columns (`list_columns`: one query, no object per message; a key on one flag is one
comprehension over the flags column). A program of one system-flag key alone (UNSEEN, DELETED, ...) is one
indexed query (`Store.uids_with_flag`), or, while the mailbox is unchanged since a FETCH FLAGS kept the flags
listing of the announced range (fetch.py invariant 8), one comprehension over that listing. Only text and
Date-header keys read the records (`list_messages`) and the stored metadata (decoded headers, body text and the
Date header, computed at delivery), in batches (`fetch.prefetch_meta`: one store call per batch). Sequence sets
inside the key are resolved once.

Narrowing by the full-text index (issue 14): when the program's string keys (TEXT, BODY, SUBJECT, FROM, TO, CC,
BCC, HEADER) under its top-level AND, or under ORs of such keys, can be looked up (`_narrowing`, a
`store.textindex.TextFilter`), the store returns the candidates (`Store.search_text`: every message whose text
may match, and every message whose body is not indexed yet) and only those are read and evaluated; the
evaluation is the same exact one, so answers are those of the full scan (textindex invariant 1). A string too
short to look up (under three characters), or a program whose text keys sit under NOT, leaves the full scan.

The exact check on scan forms (schema 16): every text test of the program is handed to the store with the
message bodies, `META_BATCH` per call (`Store.scan_texts`), and a reader thread answers them from each body's
scan form (`store/scanform.py`: the haystacks below, case-folded once at indexing, compressed): one bit per test
and body. The event loop then only evaluates the program per message with those bits (`_Ctx.hits`). A body
without a form (not indexed yet) is checked from its metadata as before, and so is every message of a program
with a SENT* key (the Date is in the metadata, not in the form); the answers are the same (scanform invariant 1).

String keys match case-insensitively as substrings of the decoded text (RFC 9051 §6.4.4); the charset given
with CHARSET is only checked: arguments are UTF-8 already (US-ASCII is its subset). Date keys compare the
calendar day in UTC of the internal date (BEFORE, ON, SINCE), or the Date header's date as written, in the
sender's zone (SENT*, `MessageMeta.sent_day`), or the UTC day of the save date (SAVED*, RFC 8514 §4.3; the
internal date for a message saved before schema 12, whose save date was not recorded). OLDER and YOUNGER (RFC
5032, WITHIN) compare the internal date with the time the SEARCH started, to the second.

MODSEQ n (RFC 7162 §3.1.5) matches messages whose MODSEQ is n or more; Postroom keeps one MODSEQ per message, so
the optional entry name and type (a flag's own mod-sequence) are checked for syntax and answered with the
message's. It is a CONDSTORE enabling command, and a non-empty answer carries the highest MODSEQ of the messages
returned: `* SEARCH ... (MODSEQ m)` (§3.1.6), or `MODSEQ m` in ESEARCH (RFC 4731 §3.2: of the MIN and/or MAX
message when only those are asked for).

Answer: `* SEARCH n...` for rev1 without RETURN; `* ESEARCH (TAG "t") [UID] ...` with RETURN or after
ENABLE IMAP4rev2 (RFC 9051 §7.3.4), with PARTIAL (RFC 5267 §4.4) when asked. EMAILID and THREADID (RFC 8474
§6) are resolved to UID sets before the evaluation, like sequence sets (`objectid.matching`). RETURN (SAVE)
stores the result as `$` (RFC 5182 §2.4: with MIN or MAX only those are saved; SAVE alone sends no ESEARCH).
RETURN (UPDATE) (RFC 5267 §4.3, CONTEXT=SEARCH) keeps the program, its sequence sets as resolved now, and the
answer as an update context (`start_context`, context.py); `matching` evaluates the messages a later change
names against it (update.py). UPDATE and CONTEXT return no data of their own: alone, they answer ALL.

Bounded work (issue 11): a SEARCH may name at most `MAX_SEARCH_KEYS` keys (every key, NOT, OR and list
counts; more is `NO [LIMIT]` before any work). A text key is evaluated once per message however often it
appears (`_text_tests`: each distinct test, its needle case-folded once, each haystack case-folded once per
message), and the work is counted: characters compared, key nodes evaluated. The evaluation yields to the event
loop every `SLICE_CHARS` characters or `SLICE_NODES` nodes, so other sessions are served in between, and a
SEARCH that would compare more than `MAX_SEARCH_WORK` characters is abandoned with `NO [LIMIT]` saying why.
Answers are those of the plain evaluation: the same tests, evaluated in another order.

Invariants
1. Only messages the client knows are searched (announced UIDs); arrivals not yet reported are not.
2. A key that needs no metadata never loads any; one that does loads each message's metadata once (or its scan
   form instead, off the loop), and with narrowing only the candidates' (a whole-mailbox SUBJECT search reads no
   other message's body text).
3. No synchronous stretch of a SEARCH does more than about `SLICE_CHARS` characters of comparison or
   `SLICE_NODES` key evaluations (plus one message's case-folding, at most `mime.text` bounds) before it
   yields; the whole SEARCH does at most `MAX_SEARCH_WORK` characters of comparison, counted alike on the
   scan forms (the store stops past the budget it is given) and on the metadata.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Container, Mapping, Sequence
from typing import Any

from postroom.mime.meta import MessageMeta
from postroom.store.api import Flag, MessageColumns, MessageInfo
from postroom.store.scanform import ScanTest, text_haystack
from postroom.store.textindex import TextAll, TextAny, TextFilter, TextTerm

from . import encoder, objectid
from . import parser as P
from .arguments import resolve, sel_of
from .context import MAX_CONTEXTS, UidRanges, UpdateContext
from .errors import Bad, No, Result
from .fetch import META_BATCH, cached_flags, load_meta, prefetch_meta
from .results import partial_item
from .session import Session

_CHARSETS = ("UTF-8", "US-ASCII")
_META_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO", "HEADER", "SENTBEFORE", "SENTON",
              "SENTSINCE"}
_FLAG_TESTS = {
    "ANSWERED": (int(Flag.ANSWERED), True), "UNANSWERED": (int(Flag.ANSWERED), False),
    "DELETED": (int(Flag.DELETED), True), "UNDELETED": (int(Flag.DELETED), False),
    "DRAFT": (int(Flag.DRAFT), True), "UNDRAFT": (int(Flag.DRAFT), False),
    "FLAGGED": (int(Flag.FLAGGED), True), "UNFLAGGED": (int(Flag.FLAGGED), False),
    "SEEN": (int(Flag.SEEN), True), "UNSEEN": (int(Flag.SEEN), False),
}
DAY = 86400.0
MAX_SEARCH_KEYS = 1000  # key nodes in one SEARCH: a few hundred keys on a line are real (issue 15 item 6); RFC 9051
# sets no limit; RFC 5530 §3 LIMIT answers past it. Work is bounded apart (MAX_SEARCH_WORK, slices that yield).
MAX_SEARCH_WORK = 1 << 31  # characters of message text compared by one SEARCH (about 1-2 s of CPU)
SLICE_CHARS = 2 * 1024 * 1024  # characters compared between two yields to the event loop (~1-2 ms)
SLICE_NODES = 20_000  # key nodes evaluated between two yields (~5 ms)
_TEXT_OPS = frozenset(("FROM", "TO", "CC", "BCC", "SUBJECT", "HEADER", "BODY", "TEXT"))
_SENT_KEYS = frozenset(("SENTBEFORE", "SENTON", "SENTSINCE"))

_SEEN = int(Flag.SEEN)  # plain int: IntFlag arithmetic is slow in per-message loops


def _needs_meta(key: P.Key) -> bool:
    if key.op in _META_KEYS:
        return True
    return any(isinstance(a, P.Key) and _needs_meta(a) for a in key.args)


def _seqsets(key: P.Key, out: list[tuple[P.Key, P.SeqSet]]) -> None:
    for a in key.args:
        if isinstance(a, P.SeqSet):
            out.append((key, a))
        elif isinstance(a, P.Key):
            _seqsets(a, out)


def count_keys(key: P.Key) -> int:
    """Key nodes in a search program (every key, NOT, OR and parenthesised list); depth is bounded by the
    parser (syntax.MAX_DEPTH), so the recursion is too."""
    return 1 + sum(count_keys(a) for a in key.args if isinstance(a, P.Key))


_Test = tuple[str, tuple[Any, ...]]  # (op, args) of one text key: equal tests are evaluated once per message


def _text_tests(key: P.Key, out: dict[_Test, str]) -> None:
    """Each distinct text test of the program -> its needle, case-folded once (RFC 9051 §6.4.4: string keys
    match case-insensitively as substrings)."""
    if key.op in _TEXT_OPS:
        needle = key.args[1] if key.op == "HEADER" else key.args[0]
        assert isinstance(needle, str)
        out[(key.op, key.args)] = needle.casefold()
    for a in key.args:
        if isinstance(a, P.Key):
            _text_tests(a, out)


class _Ctx:
    def __init__(self, s: Session, sets: Mapping[int, Container[int]]) -> None:
        self.s = s
        self.sel = sel_of(s)
        self.sets = sets
        self.now = time.time()  # RFC 5032 §1: OLDER / YOUNGER count back from "the current date and time"
        self.hits: dict[_Test, bool] = {}  # the text tests' results for the message being matched
        self.compared = 0  # characters compared so far (invariant 3, MAX_SEARCH_WORK)
        self.chars = 0  # ... and nodes evaluated, since the last yield
        self.nodes = 0

    async def tick(self, chars: int = 0, nodes: int = 0) -> None:
        """Count work; yield to the event loop when a slice is full (invariant 3)."""
        self.chars += chars
        self.nodes += nodes
        if self.chars >= SLICE_CHARS or self.nodes >= SLICE_NODES:
            self.chars = self.nodes = 0
            await asyncio.sleep(0)

    def budget(self, chars: int) -> None:
        self.compared += chars
        if self.compared > MAX_SEARCH_WORK:
            raise No(f"SEARCH abandoned: it would compare more than {MAX_SEARCH_WORK} characters of message text "
                     "(use fewer or narrower keys)", "LIMIT")

    async def evaluate_text(self, tests: dict[_Test, str], meta: MessageMeta) -> None:
        """`hits` for one message: each distinct test once, each haystack case-folded once, in slices."""
        st = meta.search
        hay: dict[tuple[str, str], str] = {}
        self.hits = {}
        for test, needle in tests.items():
            op, args = test
            if op == "HEADER":
                name = str(args[0]).lower()
                if not needle:  # RFC 9051 §6.4.4: an empty string matches every message with that field
                    self.hits[test] = any(k == name for k, _ in st.headers)
                    continue
                where = ("h", name)
            elif op in ("BODY", "TEXT"):
                where = (op, "")
            else:
                where = ("h", op.lower())
            text = hay.get(where)
            if text is None:
                raw = st.body if op == "BODY" else _text(meta) if op == "TEXT" else st.header(where[1])
                text = hay[where] = raw.casefold()
                await self.tick(chars=len(raw))
            self.budget(len(text))
            self.hits[test] = needle in text
            await self.tick(chars=len(text))


def _text(meta: MessageMeta) -> str:
    """TEXT's haystack: the header and body text, the attachments' file names and the body parts' header fields
    (RFC 9051 §6.4.4: TEXT covers "the header (including MIME header fields) or body"; `scanform.text_haystack`,
    which the scan form is built from)."""
    return text_haystack(meta)


def _day(ts: float) -> float:
    return ts - ts % DAY


def _match(key: P.Key, m: _Msg, meta: MessageMeta | None, ctx: _Ctx) -> bool:
    op = key.op
    args: tuple[Any, ...] = key.args  # each key's argument types are fixed by the parser
    if op == "AND":
        return all(_match(k, m, meta, ctx) for k in args)
    if op == "ALL":
        return True
    if op in _FLAG_TESTS:
        bit, want = _FLAG_TESTS[op]
        return bool(m.flags & bit) == want
    if op == "OR":
        return _match(args[0], m, meta, ctx) or _match(args[1], m, meta, ctx)
    if op == "NOT":
        return not _match(args[0], m, meta, ctx)
    if op in ("SEQ", "UID", "EMAILID", "THREADID"):
        return m.uid in ctx.sets[id(key)]  # resolved before the evaluation (run_search)
    if op == "RECENT":
        return ctx.sel.is_recent(m.uid)
    if op == "NEW":
        return ctx.sel.is_recent(m.uid) and not m.flags & _SEEN
    if op == "OLD":
        return not ctx.sel.is_recent(m.uid)
    if op in ("KEYWORD", "UNKEYWORD"):
        has = args[0].lower() in (k.lower() for k in m.keywords)
        return has == (op == "KEYWORD")
    if op == "MODSEQ":  # RFC 7162 §3.1.5: "equal to or greater than"
        return bool(m.modseq >= args[0])
    if op == "LARGER":
        return bool(m.size > args[0])
    if op == "SMALLER":
        return bool(m.size < args[0])
    if op == "BEFORE":
        return bool(_day(m.internal_date) < args[0])
    if op == "ON":
        return bool(_day(m.internal_date) == args[0])
    if op == "SINCE":
        return bool(_day(m.internal_date) >= args[0])
    # RFC 5032 §2: OLDER n, internal date older than now - n; YOUNGER n, younger. The instant itself counts as
    # older (as Dovecot does), so every message is exactly one of OLDER n and YOUNGER n.
    if op == "OLDER":
        return bool(m.internal_date <= ctx.now - args[0])
    if op == "YOUNGER":
        return bool(m.internal_date > ctx.now - args[0])
    if op in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        # RFC 8514 §4.3: the save date's UTC day, as BEFORE/ON/SINCE take the internal date's; a message whose
        # save date is not stored (saved before schema 12) is judged by its internal date, the fallback §4.3
        # gives where the storage has no save date.
        day = _day(m.internal_date if m.save_date is None else m.save_date)
        return bool(day < args[0] if op == "SAVEDBEFORE" else day == args[0] if op == "SAVEDON" else day >= args[0])
    if op == "SAVEDATESUPPORTED":
        return True  # RFC 8514 §4.3: every mailbox here keeps save dates
    if op in _TEXT_OPS:
        return ctx.hits[(op, args)]  # evaluated before: `_Ctx.evaluate_text`, or on the scan forms
    assert meta is not None
    # RFC 9051 §6.4.4: SENT* compare the Date field's date "disregarding time and timezone", i.e. the calendar
    # date as the sender wrote it, not the UTC day. Without a valid Date field there is no such date: no match.
    sent = meta.sent_day
    if sent is None:
        return False
    day = int(args[0] // DAY)
    if op == "SENTBEFORE":
        return sent < day
    if op == "SENTON":
        return sent == day
    return sent >= day  # SENTSINCE


class _Row:
    """The one message `_match` looks at when no metadata is needed: filled in place from `MessageColumns`, so
    a search of a large mailbox makes no object per message."""

    __slots__ = ("uid", "modseq", "flags", "size", "internal_date", "keywords", "save_date")

    def __init__(self) -> None:
        self.uid = 0
        self.modseq = 0
        self.flags = 0
        self.size = 0
        self.internal_date = 0.0
        self.keywords: frozenset[str] = frozenset()
        self.save_date: float | None = None


_Msg = MessageInfo | _Row


def _flag_test(key: P.Key) -> tuple[int, bool] | None:
    """(flag bit, present) when `key` is one system-flag test (UNSEEN, DELETED, ...), alone; else None."""
    if key.op == "AND" and len(key.args) == 1 and isinstance(key.args[0], P.Key):
        return _flag_test(key.args[0])
    return _FLAG_TESTS.get(key.op)


def _fast(key: P.Key, cols: MessageColumns) -> list[int] | None:
    """A search on flags only (UNSEEN, DELETED, ...) as one comprehension over the flags column; None for
    any other key."""
    test = _FLAG_TESTS.get(key.op)
    if test is None:
        if key.op == "AND" and len(key.args) == 1 and isinstance(key.args[0], P.Key):
            return _fast(key.args[0], cols)
        return None
    bit, want = test
    if want:
        return [u for u, f in zip(cols.uids, cols.flags) if f & bit]
    return [u for u, f in zip(cols.uids, cols.flags) if not f & bit]


def uses_modseq(key: P.Key) -> bool:
    """The program has a MODSEQ key (RFC 7162 §3.1.5: a CONDSTORE enabling command; the answer names a MODSEQ)."""
    return key.op == "MODSEQ" or any(isinstance(a, P.Key) and uses_modseq(a) for a in key.args)


async def run_search(s: Session, key: P.Key, uid_cmd: bool, modseqs: dict[int, int] | None = None,
                     resolved: dict[int, Container[int]] | None = None, *, narrow: bool = True) -> list[int]:
    """UIDs matching `key`, ascending (invariant 1). With `modseqs`, the MODSEQ of each match is put there; with
    `resolved`, the UID set each sequence set, EMAILID and THREADID key was resolved to (by `id` of its key).
    `narrow=False` skips the full-text index (the same answers, module essay): for a few hundred messages reading
    them is cheaper than a lookup that costs what the term's postings in the whole store cost (the webmail's
    small search windows, web/search.py)."""
    sel = sel_of(s)
    found: list[tuple[P.Key, P.SeqSet]] = []
    _seqsets(key, found)
    sets = {id(k): set(resolve(s, ss, k.op == "UID")) for k, ss in found}
    ids: list[P.Key] = []
    objectid.object_keys(key, ids)
    for k in ids:  # RFC 8474 §6: EMAILID and THREADID, as UID sets
        sets[id(k)] = await objectid.matching(s, k.op, str(k.args[0]))
    if resolved is not None:
        resolved.update((k, UidRanges(v)) for k, v in sets.items())  # RFC 5267 §4.3: as when the command ran
    ctx = _Ctx(s, sets)
    known = sel.uids
    if not known:
        return []
    if _needs_meta(key):
        return await _meta_search(s, key, ctx, modseqs, narrow)
    flag_test = _flag_test(key)
    if flag_test is not None and modseqs is None:  # SEEN, UNSEEN, DELETED...: the store filters, in SQL
        # Every message of the store between the first and the last announced UID has been announced: a new one
        # always gets a UID above all others (RFC 9051 §2.3.1.1), so nothing needs filtering out. The listing a
        # FETCH FLAGS of the same UIDs keeps (fetch.py invariant 8) answers instead while the mailbox is unchanged.
        cached = await cached_flags(s, sel.id, known[0], known[-1])
        if cached is not None:
            bit, want = flag_test
            return [u for u, f in zip(cached.uids, cached.flags) if bool(f & bit) is want]
        return await s.store.uids_with_flag(sel.id, known[0], known[-1], *flag_test)
    cols = await s.store.list_columns(sel.id, known[0], known[-1])
    announced = None if array("I", cols.uids) == known else set(known)
    out = _fast(key, cols)
    if out is None:
        out = []
        row = _Row()
        kw_at = cols.keywords_at
        saved = cols.save_dates
        nodes = count_keys(key)
        for i, (uid, flags, size, date) in enumerate(zip(cols.uids, cols.flags, cols.sizes, cols.internal_dates)):
            row.uid, row.flags, row.size, row.internal_date, row.keywords = uid, flags, size, date, kw_at(i)
            row.modseq = cols.modseqs[i]
            row.save_date = saved[i] if saved else None
            if _match(key, row, None, ctx):
                out.append(uid)
            await ctx.tick(nodes=nodes)  # invariant 3
    if announced is not None:
        out = [u for u in out if u in announced]
    if modseqs is not None and out:
        index = {u: i for i, u in enumerate(cols.uids)}
        modseqs.update((u, cols.modseqs[index[u]]) for u in out)
    return out


def _narrowing(key: P.Key) -> TextFilter | None:
    """The index lookups that every message matching `key` passes (module essay), or None if there are none:
    string keys, and ANDs and ORs of them; an AND keeps the parts that narrow, an OR needs both sides to."""
    op = key.op
    if op in _TEXT_OPS:
        if op == "HEADER":
            return TextTerm("header", str(key.args[1]), str(key.args[0]).lower())
        return TextTerm(op.lower(), str(key.args[0]))
    if op == "AND":
        parts = [f for f in (_narrowing(k) for k in key.args if isinstance(k, P.Key)) if f is not None]
        return None if not parts else parts[0] if len(parts) == 1 else TextAll(tuple(parts))
    if op == "OR":
        a, b = (_narrowing(k) for k in key.args if isinstance(k, P.Key))
        return None if a is None or b is None else TextAny((a, b))
    return None


async def _meta_search(s: Session, key: P.Key, ctx: _Ctx, modseqs: dict[int, int] | None = None,
                       narrow: bool = True) -> list[int]:
    """A search with text or Date-header keys: the records (only the index's candidates when it can narrow),
    then `META_BATCH` messages per store call: the text tests answered on their scan forms in the store, the
    metadata of the others read and checked here (invariant 2)."""
    sel = ctx.sel
    known = sel.uids
    flt = _narrowing(key) if narrow else None
    found = None if flt is None else await s.store.search_text(sel.id, known[0], known[-1], flt)
    if found is not None:
        infos = [m for m in found.messages if sel.msn(m.uid)]
    else:
        infos = [m for m in await s.store.list_messages(sel.id, known[0], known[-1]) if sel.msn(m.uid)]
    tests: dict[_Test, str] = {}
    _text_tests(key, tests)
    order = list(tests)
    # The scan forms answer the string keys (store/scanform.py); SENT* need the metadata itself.
    scan = None if _needs_sent(key) else [_scan_test(t, tests[t]) for t in order]
    # The index answered every text test exactly (fts.py invariant 5): each candidate holds them all, and no
    # scan form or metadata is read (invariant 2).
    exact = scan is not None and found is not None and flt is not None and _answered(flt, found.exact, order)
    nodes = count_keys(key)
    out: list[int] = []
    by_bits: dict[int, dict[_Test, bool]] = {}  # one answer dict per bit mask (they are few)
    for k in range(0, len(infos), META_BATCH):
        batch = infos[k:k + META_BATCH]
        hits: dict[str, int] = {}
        if exact:
            hits = dict.fromkeys((m.blob_id for m in batch), (1 << len(order)) - 1)
        elif scan:
            # Off the event loop: a reader thread decompresses and compares (invariant 3); the budget holds.
            found_hits = await s.store.scan_texts(list({m.blob_id: None for m in batch}), scan,
                                                  MAX_SEARCH_WORK - ctx.compared)
            ctx.budget(found_hits.compared)
            hits = found_hits.hits
        rest = [m for m in batch if m.blob_id not in hits]
        metas = await prefetch_meta(s, rest) if rest else {}
        for m in batch:
            bits = hits.get(m.blob_id)
            meta: MessageMeta | None = None
            if bits is not None:
                answers = by_bits.get(bits)
                if answers is None:
                    answers = by_bits[bits] = {t: bool(bits >> i & 1) for i, t in enumerate(order)}
                ctx.hits = answers
            else:
                meta = metas.get(m.blob_id) or await load_meta(s, m)
                await ctx.evaluate_text(tests, meta)  # invariant 3: the costly part, in slices
            if _match(key, m, meta, ctx):
                out.append(m.uid)
                if modseqs is not None:
                    modseqs[m.uid] = m.modseq
            await ctx.tick(nodes=nodes)
    return out


def _answered(flt: TextFilter, exact: bool, order: Sequence[_Test]) -> bool:
    """The index's exact answer (`TextCandidates.exact`) decides every test of `order` for its candidates: the
    filter is an AND of terms only (each holds for every candidate), and every test is one of them."""
    if not exact:
        return False
    stack: list[TextFilter] = [flt]
    covered: set[TextTerm] = set()
    while stack:
        f = stack.pop()
        if isinstance(f, TextTerm):
            covered.add(f)
        elif isinstance(f, TextAll):
            stack.extend(f.terms)
        else:
            return False  # an OR: which side holds is not known per message
    return all(_term_of(t) in covered for t in order)


def _term_of(test: _Test) -> TextTerm:
    """The index term `_narrowing` makes of a text test."""
    op, args = test
    if op == "HEADER":
        return TextTerm("header", str(args[1]), str(args[0]).lower())
    return TextTerm(op.lower(), str(args[0]))


def _needs_sent(key: P.Key) -> bool:
    """The program has a SENT* key (compared with the metadata's Date, not a string)."""
    return key.op in _SENT_KEYS or any(isinstance(a, P.Key) and _needs_sent(a) for a in key.args)


def _scan_test(test: _Test, needle: str) -> ScanTest:
    """One text test as the scan form answers it: TEXT and BODY by their haystacks, the others by field."""
    op, args = test
    data = needle.encode("utf-8", "surrogatepass")  # case-folded already (`_text_tests`)
    if op in ("TEXT", "BODY"):
        return ScanTest(op.lower(), data)
    return ScanTest("header", data, str(args[0]).lower() if op == "HEADER" else op.lower())


async def matching(s: Session, key: P.Key, sets: Mapping[int, Container[int]],
                   infos: Sequence[MessageInfo]) -> set[int]:
    """The UIDs of `infos` that match `key`, its sequence sets as resolved when the command ran (`sets`): RFC
    5267 §4.3's re-evaluation of changed messages for UPDATE contexts (update.py). The work is that of `infos`
    alone, in slices as every search (invariant 3); no other message is read."""
    ctx = _Ctx(s, sets)
    tests: dict[_Test, str] = {}
    _text_tests(key, tests)
    need = _needs_meta(key)
    nodes = count_keys(key)
    out: set[int] = set()
    for m in infos:
        meta = None
        if need:
            meta = await load_meta(s, m)
            await ctx.evaluate_text(tests, meta)
        if _match(key, m, meta, ctx):
            out.add(m.uid)
        await ctx.tick(nodes=nodes)
    return out


async def search(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.SearchArgs)
    if a.charset is not None and a.charset not in _CHARSETS:
        raise No("Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")  # RFC 9051 §6.4.4
    sel = sel_of(s)
    update = check_update(s, cmd, a.returns)
    resolved: dict[int, Container[int]] | None = {} if update else None
    modseqs: dict[int, int] | None = None
    if uses_modseq(a.key):
        s.enable_condstore()  # RFC 7162 §3.1
        modseqs = {}
    try:
        if count_keys(a.key) > MAX_SEARCH_KEYS:
            # RFC 5530 §3 LIMIT: "an implementation limit of some kind"; checked before any work.
            raise No(f"Too many search keys (at most {MAX_SEARCH_KEYS})", "LIMIT")
        uids = await run_search(s, a.key, cmd.uid, modseqs, resolved)
    except Exception:
        if a.returns is not None and "SAVE" in a.returns:
            sel.saved = []  # RFC 5182 §2.1: a failed SEARCH with SAVE leaves $ empty
        raise
    numbers = uids if cmd.uid else [sel.msn(u) for u in uids]
    returns = a.returns
    if returns is not None and "SAVE" in returns:
        minmax = [o for o in returns if o in ("MIN", "MAX")]
        if minmax and not any(o in ("ALL", "COUNT") for o in returns) and uids:
            sel.saved = sorted({uids[0] if o == "MIN" else uids[-1] for o in minmax})
        else:
            sel.saved = uids
        if not [o for o in returns if o not in P.NO_DATA_OPTIONS]:  # SAVE alone (UPDATE, CONTEXT ask for none)
            if resolved is not None:
                start_context(s, cmd, a.key, resolved, None, uids)
            return "", "SEARCH completed"
    if returns is None and not s.rev2:
        tail = b" (MODSEQ %d)" % max(modseqs.values()) if modseqs else b""  # RFC 7162 §3.1.6: if non-empty
        s.write(b"* SEARCH" + (b" " + " ".join(map(str, numbers)).encode() if numbers else b"") + tail + b"\r\n")
        return "", "SEARCH completed"
    # RFC 5267 §4.1: UPDATE and CONTEXT have no interaction with the other options and return no data of their
    # own, so RETURN (UPDATE) answers as RETURN () does: ALL (the results the updates then change).
    opts = [o for o in (returns or ()) if o not in P.NO_DATA_OPTIONS] or ["ALL"]
    line = b'* ESEARCH (TAG ' + encoder.quoted(cmd.tag) + b")"
    if cmd.uid:
        line += b" UID"
    for o in ("MIN", "MAX", "ALL", "PARTIAL", "COUNT"):
        if o == "PARTIAL" and a.partial is not None:
            line += b" " + partial_item(a.partial, numbers)  # RFC 5267 §4.4
        if o not in opts or o == "PARTIAL":
            continue
        if o == "COUNT":
            line += b" COUNT %d" % len(numbers)
        elif numbers:
            if o == "MIN":
                line += b" MIN %d" % numbers[0]
            elif o == "MAX":
                line += b" MAX %d" % numbers[-1]
            else:
                line += b" ALL " + encoder.seqset(numbers)
    if modseqs and uids:
        # RFC 4731 §3.2: the MODSEQ of the one message MIN or MAX names, the higher of the two if both, else of
        # every message found.
        shown = uids if ("ALL" in opts or "COUNT" in opts) else [
            uids[0] if o == "MIN" else uids[-1] for o in opts if o in ("MIN", "MAX")]
        line += b" MODSEQ %d" % max(modseqs[u] for u in shown)
    s.write(line + b"\r\n")
    if resolved is not None:
        start_context(s, cmd, a.key, resolved, None, uids)
    return "", "SEARCH completed"


def check_update(s: Session, cmd: P.Command, returns: tuple[str, ...] | None) -> bool:
    """Whether the searching command asks for UPDATE (RFC 5267 §4.3); BAD, before any work, when its tag is that
    of a context still updating ("An attempt to use UPDATE where a tag is already in use ... SHALL result in the
    server rejecting the searching command with a BAD response")."""
    if returns is None or "UPDATE" not in returns:
        return False
    if cmd.tag in sel_of(s).contexts:
        raise Bad("Tag reuse")
    return True


def start_context(s: Session, cmd: P.Command, key: P.Key, resolved: dict[int, Container[int]],
                  criteria: tuple[tuple[str, bool], ...] | None, ordered: Sequence[int]) -> None:
    """Keep an UPDATE context whose client now holds `ordered` (UIDs in the requested order), or, past
    `MAX_CONTEXTS`, refuse with the untagged `NO [NOUPDATE "tag"]` after the results (RFC 5267 §4.3.1: "Other
    return options specified SHALL still be honoured")."""
    sel = sel_of(s)
    if len(sel.contexts) >= MAX_CONTEXTS:
        s.write(b"* NO [NOUPDATE " + encoder.quoted(cmd.tag) + b"] Too many contexts\r\n")
        return
    sel.contexts[cmd.tag] = UpdateContext.create(cmd.tag, cmd.uid, key, resolved, criteria, ordered)
