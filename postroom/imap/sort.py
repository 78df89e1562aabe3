"""SORT and UID SORT (RFC 5256 §3; DISPLAYFROM / DISPLAYTO, RFC 5957; ESORT's RETURN, RFC 5267 §3).

Theory of operation
-------------------
The search program is evaluated by SEARCH's own code (`search.run_search`), so both answer the same set. The
order comes from the store (`Store.sort_uids`): the keys are copied at delivery into one narrow row per
message, clustered by (mailbox, UID), so the engine reads one range of them and sorts it with its own sorter in
its reader thread, and the event loop only filters the answer to the matches in slices. A body stored by an
older version gets its keys from its metadata first, once (`objectid.ensure_keys`).
Strings are compared as the i;unicode-casemap keys stored at delivery (`mime.sortkeys`), numbers as numbers:

* ARRIVAL: the internal date; DATE: the sent date (the Date field's instant in UTC), else the internal date
  (RFC 5256 §2.2); SIZE: RFC822.SIZE;
* SUBJECT: the base subject (RFC 5256 §2.1); FROM, TO, CC: the addr-mailbox of the first address;
* DISPLAYFROM, DISPLAYTO: the display name of the first address, else its addr-spec (RFC 5957 §3);
* REVERSE reverses the key it precedes; ties of every key are broken by the sequence number (UID order),
  ascending (RFC 5256 §3: "an implicit sort criterion of sequence number", which REVERSE does not touch).

`sorted_steps` and `drive` are the sliced sort THREAD uses (thread.py): runs of `SORT_CHUNK` keys sorted apart and
merged, yielding to the event loop every `SLICE_ROWS` keys.

Answer: `* SORT n...` (RFC 5256 §4); with RETURN, `* ESEARCH (TAG "t") [UID] MIN MAX ALL COUNT PARTIAL` where MIN
and MAX are the first and last in sort order and ALL keeps the order (RFC 5267 §3.1, `results.ordered_set`).
RETURN (UPDATE) keeps the answer, in sort order, as a CONTEXT=SORT update context (RFC 5267 §4.3, update.py).

Invariants
1. SORT answers exactly the messages SEARCH would (announced ones, SEARCH invariant 1), each once.
2. No synchronous stretch handles more than about `SLICE_ROWS` messages or one sort of `SORT_CHUNK` keys.
3. No metadata is parsed for a body whose keys are stored; no key is computed per command.
4. An answer is kept (`ordercache`) under the mailbox's content version and the digests of the matched and the
   announced UIDs, and sent again only under an equal key: the same bytes as sorting again.
5. After arrivals only (the content version moved by its UIDNEXT alone, the matched UIDs are the kept ones plus
   new ones), the order kept for the mailbox and criteria is completed by placing each arrival by binary search
   (`placed_arrivals`, at most `ARRIVALS_MAX`), comparing stored keys as the store's sorter does (`sort_key`):
   the same order as sorting again, for a few point reads instead of a sort of the mailbox.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import heapq
from array import array
from collections.abc import Callable, Container, Generator, Sequence
from typing import Any, TypeVar

from postroom.store.api import SortRow, ThreadColumns

from . import encoder
from . import parser as P
from .arguments import sel_of
from .errors import No, Result
from .objectid import ensure_keys
from .ordercache import cache_of, digest
from .results import ordered_set, partial_item
from .search import MAX_SEARCH_KEYS, check_update, count_keys, run_search, start_context
from .session import Session

CHARSETS = ("UTF-8", "US-ASCII")
SLICE_ROWS = 5000  # messages handled between two yields (~2-5 ms)
SORT_CHUNK = 8192  # keys sorted in one go (~3-6 ms)
WRITE_CHUNK = 64 * 1024  # bytes of a kept answer handed to the connection between two flush checks
ARRIVALS_MAX = 64  # arrivals placed into a kept order one by one (invariant 5); more: the store sorts again
ORDER_KEY = "SORT order"  # `ordercache` key of the last order per (mailbox, criteria), for `placed_arrivals`
_T = TypeVar("_T")
Steps = Generator[None, None, _T]


async def drive(steps: Steps[_T]) -> _T:
    """Run a generator that yields between slices of work, yielding to the event loop each time (invariant 2)."""
    try:
        while True:
            next(steps)
            await asyncio.sleep(0)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def sorted_steps(keys: list[tuple[Any, ...]]) -> Steps[list[tuple[Any, ...]]]:
    """`sorted(keys)` (distinct tuples) in slices: runs of `SORT_CHUNK` sorted apart, then merged, yielding
    every `SLICE_ROWS` keys (invariant 2)."""
    if len(keys) <= SORT_CHUNK:
        return sorted(keys)
    runs: list[list[tuple[Any, ...]]] = []
    for k in range(0, len(keys), SORT_CHUNK):
        runs.append(sorted(keys[k:k + SORT_CHUNK]))
        yield
    out: list[tuple[Any, ...]] = []
    for n, key in enumerate(heapq.merge(*runs)):
        out.append(key)
        if n % SLICE_ROWS == SLICE_ROWS - 1:
            yield
    return out


_STORE_KEYS = {"ARRIVAL": "arrival", "DATE": "date", "SIZE": "size", "SUBJECT": "subject", "FROM": "from", "TO": "to",
               "CC": "cc", "DISPLAYFROM": "display_from", "DISPLAYTO": "display_to"}


_FIELDS: dict[str, Callable[[SortRow], Any]] = {  # as store/sqlite/threads.py SORT_EXPRESSIONS
    "ARRIVAL": lambda r: r.internal_date,
    "DATE": lambda r: r.internal_date if r.sent is None else r.sent,  # RFC 5256 §2.2
    "SIZE": lambda r: r.size,
    "SUBJECT": lambda r: r.subject,
    "FROM": lambda r: r.from_,
    "TO": lambda r: r.to,
    "CC": lambda r: r.cc,
    "DISPLAYFROM": lambda r: r.display_from,
    "DISPLAYTO": lambda r: r.display_to,
}


@functools.total_ordering
class _Desc:
    """A sort key under REVERSE: compares the other way round."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and bool(self.v == other.v)

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.v < self.v)

    def __hash__(self) -> int:
        return hash(self.v)


def sort_key(row: SortRow, criteria: Sequence[tuple[str, bool]]) -> tuple[Any, ...]:
    """The place of `row` in SORT order, as `Store.sort_uids` sorts: each criterion's column (strings are the
    stored i;unicode-casemap keys, compared as SQLite's BINARY collation compares them: by code point), REVERSE
    per criterion, then the UID ascending (RFC 5256 §3)."""
    return (*(_Desc(_FIELDS[k](row)) if rev else _FIELDS[k](row) for k, rev in criteria), row.uid)


async def _stored_key(s: Session, mailbox_id: int, uid: int, criteria: Sequence[tuple[str, bool]]
                      ) -> tuple[Any, ...] | None:
    """The `sort_key` of one message from its stored keys (None if it is gone or its keys are not stored)."""
    rows = await s.store.list_sort_rows(mailbox_id, uid, uid)
    return sort_key(rows[0], criteria) if rows and rows[0].known else None


async def placed_arrivals(s: Session, criteria: Sequence[tuple[str, bool]], version: tuple[int, ...],
                          uids: Sequence[int]) -> list[int] | None:
    """`sorted_uids(s, uids, criteria)` from the order kept for the mailbox and criteria (`ORDER_KEY`) when the
    mailbox only gained messages since (invariant 5), else None: the kept matched UIDs are the start of `uids`,
    the rest (at most `ARRIVALS_MAX`) arrived after it was kept and have stored keys; each is placed by binary
    search over the kept order, probing the stored keys of about log2(n) messages."""
    sel = sel_of(s)
    kept = cache_of(s.store).get((ORDER_KEY, sel.id, tuple(criteria)))
    if kept is None:
        return None
    was, matched, ordered = kept
    if was == version and len(uids) == len(matched) and array("I", uids) == matched:
        return list(ordered)  # the same messages (another form of the command: UID SORT, ESORT)
    if was[1:] != version[1:] or was[0] >= version[0] or len(uids) <= len(matched):
        return None  # something left or was re-keyed (content_version), or nothing arrived
    extra = uids[len(matched):]
    if len(extra) > ARRIVALS_MAX or min(extra) < was[0] or array("I", uids[:len(matched)]) != matched:
        return None  # not only arrivals: the search matched other old messages this time
    wanted = set(extra)
    rows = [r for r in await s.store.list_sort_rows(sel.id, min(extra), max(extra)) if r.uid in wanted]
    if len(rows) != len(extra) or not all(r.known for r in rows):
        return None  # one left already, or its keys are not stored: sorted again (`sorted_uids` fills them)
    out = list(ordered)
    probed: dict[int, tuple[Any, ...]] = {}
    for key in sorted(sort_key(r, criteria) for r in rows):
        lo, hi = 0, len(out)
        while lo < hi:
            mid = (lo + hi) // 2
            other = probed.get(out[mid])
            if other is None:
                other = await _stored_key(s, sel.id, out[mid], criteria)
                if other is None:
                    return None  # it left meanwhile
                probed[out[mid]] = other
            if other < key:
                lo = mid + 1
            else:
                hi = mid
        out.insert(lo, key[-1])  # the UID (sort_key's last item)
        probed[key[-1]] = key
    if await s.store.content_version(sel.id) != version:
        return None  # a change committed while probing: the probes may mix two states (ordercache module doc)
    return out


def keep_order(s: Session, criteria: Sequence[tuple[str, bool]], version: tuple[int, ...], uids: Sequence[int],
               ordered: Sequence[int]) -> None:
    """Keep `ordered` (the UIDs of `uids` in SORT order, computed under `version`) for `placed_arrivals`."""
    cache_of(s.store).put((ORDER_KEY, sel_of(s).id, tuple(criteria)),
                          (version, array("I", uids), array("I", ordered)))


async def sorted_uids(s: Session, uids: Sequence[int], criteria: Sequence[tuple[str, bool]]) -> list[int]:
    """`uids` (ascending, announced) in SORT order: bodies without stored keys get them first (invariant 3), then
    the store sorts (`Store.sort_uids`, in its reader thread: the event loop only filters the answer)."""
    if not uids:
        return []
    sel = sel_of(s)
    missing = await s.store.list_sort_rows(sel.id, uids[0], uids[-1], unknown_only=True)
    if missing:
        await ensure_keys(s, missing)
    ordered = await s.store.sort_uids(sel.id, [(_STORE_KEYS[k], r) for k, r in criteria], uids[0], uids[-1])
    wanted = set(uids)
    out: list[int] = []
    for k in range(0, len(ordered), SLICE_ROWS):
        out.extend(u for u in ordered[k:k + SLICE_ROWS] if u in wanted)
        await asyncio.sleep(0)
    return out


async def thread_rows(s: Session, uids: Sequence[int], orders: Sequence[Sequence[tuple[str, bool]]] = ()
                      ) -> tuple[ThreadColumns, list[list[int]] | None]:
    """The `ThreadColumns` of `uids` (ascending, announced), keys filled in (invariant 3), and for each of
    `orders` (`Store.sort_uids` criteria) the indexes of those messages in that order. Bodies without stored keys
    get them first, as for SORT; then the rows and the orders are read at once (reader threads: the store sorts).
    If some body's keys could not be stored (`ensure_keys` still computed them), its message takes the computed
    keys and the orders are None (the store sorted other keys): the caller sorts the rows itself."""
    if not uids:
        return ThreadColumns(), [[] for _ in orders]
    sel = sel_of(s)
    wanted = set(uids)
    missing = [r for r in await s.store.list_sort_rows(sel.id, uids[0], uids[-1], unknown_only=True)
               if r.uid in wanted]
    computed = {r.uid: (r.uid, r.internal_date if r.sent is None else r.sent, r.subject, r.reply, r.message_id,
                        r.references)
                for r in (await ensure_keys(s, missing) if missing else ())}
    reading = asyncio.ensure_future(s.store.thread_rows(sel.id, uids[0], uids[-1]))
    try:
        sorted_uids = await asyncio.gather(*(s.store.sort_uids(sel.id, criteria, uids[0], uids[-1])
                                             for criteria in orders))
    finally:
        stored = await reading
    # The reads are separate transactions: a message expunged between them is left out of all (SORT and THREAD
    # drop what is expunged meanwhile, `matched`); the messages present in every order are kept.
    present: set[int] | None = None
    for order in sorted_uids:
        present = set(order) if present is None else present.intersection(order)
        await asyncio.sleep(0)
    out = stored
    if not (len(stored) == len(wanted) == (len(present) if present is not None else len(stored))
            and wanted.issuperset(stored.uids) and (present is None or present.issuperset(stored.uids))):
        out = ThreadColumns()  # not exactly the wanted messages: copied, `SLICE_ROWS` at a time
        for k in range(0, len(stored), SLICE_ROWS):
            for i in range(k, min(k + SLICE_ROWS, len(stored))):
                uid = stored.uids[i]
                if uid in wanted and (present is None or uid in present):
                    out.add(*stored.row(i))
            await asyncio.sleep(0)
    exact = True  # every computed key equals the stored one
    for uid, row in computed.items():
        i = bisect.bisect_left(out.uids, uid)
        if i < len(out) and out.uids[i] == uid and out.row(i) != row:
            out.set(i, *row)
            exact = False
    if not exact:
        return out, None  # the store sorted keys other than these: invariant 3 kept, its orders dropped
    index: dict[int, int] = {}
    for k in range(0, len(out), SLICE_ROWS):
        index.update((out.uids[i], i) for i in range(k, min(k + SLICE_ROWS, len(out))))
        await asyncio.sleep(0)
    positions: list[list[int]] = []
    for order in sorted_uids:
        at: list[int] = []
        for k in range(0, len(order), SLICE_ROWS):
            at.extend(index[u] for u in order[k:k + SLICE_ROWS] if u in index)
            await asyncio.sleep(0)
        positions.append(at)
    return out, positions


def _is_all(key: P.Key) -> bool:
    return key.op == "ALL" or (key.op == "AND" and all(isinstance(k, P.Key) and _is_all(k) for k in key.args))


async def matched(s: Session, key: P.Key, uid_cmd: bool) -> Sequence[int]:
    """The UIDs the search program matches (`search.run_search`); for ALL, the announced UIDs without reading
    the store: SORT and THREAD read the rows anyway and drop those expunged meanwhile, which is what the
    search would have dropped (a UID announced was stored before, and a stored message only ever leaves)."""
    if _is_all(key):
        return array("I", sel_of(s).uids)
    return await run_search(s, key, uid_cmd)


async def message_numbers(s: Session, uids: Sequence[int]) -> list[int]:
    """The selected mailbox's message numbers of `uids`, in their order, `SLICE_ROWS` at a time with a yield
    between slices, so a 100,000-message answer does not hold the event loop."""
    sel = sel_of(s)
    out: list[int] = []
    if len(uids) < 64:
        return [sel.msn(u) for u in uids]
    # A table of every announced UID (its index is its number) once, then one lookup per UID: a binary
    # search per UID in Python cost ~20 % of the first SORT after an arrival.
    view = sel.uids
    numbers: dict[int, int] = {}
    for k in range(0, len(view), SLICE_ROWS):
        numbers.update(zip(view[k:k + SLICE_ROWS], range(k + 1, k + 1 + SLICE_ROWS)))
        await asyncio.sleep(0)
    get = numbers.get
    for k in range(0, len(uids), SLICE_ROWS):
        out.extend([get(u, 0) for u in uids[k:k + SLICE_ROWS]])
        await asyncio.sleep(0)
    return out


def check_program(charset: str, key: P.Key) -> None:
    """The charset and the key count, as SEARCH checks them."""
    if charset not in CHARSETS:
        raise No("Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")  # RFC 5256 §3, RFC 9051 §6.4.4
    if count_keys(key) > MAX_SEARCH_KEYS:
        raise No(f"Too many search keys (at most {MAX_SEARCH_KEYS})", "LIMIT")  # RFC 5530 §3


def esearch(s: Session, cmd: P.Command, returns: tuple[str, ...], partial: tuple[int, int] | None,
            numbers: Sequence[int]) -> None:
    """`* ESEARCH (TAG "t") [UID] ...` for results in their answer order (RFC 5267 §3.1): MIN and MAX are the
    first and the last."""
    # RFC 5267 §4.1: UPDATE and CONTEXT return no data of their own; alone they answer as RETURN () (ALL)
    opts = {o for o in returns if o not in P.NO_DATA_OPTIONS} or ({"ALL"} if partial is None else set())
    line = b"* ESEARCH (TAG " + encoder.quoted(cmd.tag) + b")"
    if cmd.uid:
        line += b" UID"
    if numbers and "MIN" in opts:
        line += b" MIN %d" % numbers[0]
    if numbers and "MAX" in opts:
        line += b" MAX %d" % numbers[-1]
    if numbers and "ALL" in opts:
        line += b" ALL " + ordered_set(numbers)
    if partial is not None:
        line += b" " + partial_item(partial, numbers)
    if "COUNT" in opts:
        line += b" COUNT %d" % len(numbers)
    s.write(line + b"\r\n")


async def sort(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.SortArgs)
    check_program(a.charset, a.key)
    sel = sel_of(s)
    resolved: dict[int, Container[int]] | None = {} if check_update(s, cmd, a.returns) else None
    if resolved is not None:
        # RFC 5267 §4.3 CONTEXT=SORT: the context keeps the program's sets as resolved now and the results in
        # sort order, so this answer is computed afresh (no ALL shortcut, no kept answer)
        found = await run_search(s, a.key, cmd.uid, None, resolved)  # invariant 1
        in_order = await sorted_uids(s, found, a.criteria)
        esearch(s, cmd, a.returns or (), a.partial, in_order if cmd.uid else await message_numbers(s, in_order))
        start_context(s, cmd, a.key, resolved, a.criteria, in_order)
        return "", "SORT completed"
    uids = await matched(s, a.key, cmd.uid)  # invariant 1
    cache = cache_of(s.store)
    key = ("SORT", sel.id, a.criteria, await s.store.content_version(sel.id), digest(uids),
           cmd.uid or digest(sel.uids))  # invariant 4
    if a.returns is None:  # the plain answer is kept as its bytes
        line: bytes | None = cache.get((*key, "line"))
        if line is not None:
            s.write(b"* SORT")
            for k in range(0, len(line), WRITE_CHUNK):
                s.write(line[k:k + WRITE_CHUNK])
                await s.maybe_flush()
            s.write(b"\r\n")
            return "", "SORT completed"
    numbers: Sequence[int] | None = cache.get(key)
    if numbers is None:
        version = key[3]
        ordered = await placed_arrivals(s, a.criteria, version, uids)  # invariant 5
        if ordered is None:
            ordered = await sorted_uids(s, uids, a.criteria)
        keep_order(s, a.criteria, version, uids, ordered)
        numbers = ordered if cmd.uid else await message_numbers(s, ordered)
        cache.put(key, array("I", numbers))
    if a.returns is None:
        s.write(b"* SORT")
        pieces = []
        for k in range(0, len(numbers), SLICE_ROWS):
            pieces.append(b"".join(b" %d" % n for n in numbers[k:k + SLICE_ROWS]))
            s.write(pieces[-1])
            await s.maybe_flush()
        s.write(b"\r\n")
        cache.put((*key, "line"), b"".join(pieces))
    else:
        esearch(s, cmd, a.returns, a.partial, numbers)
    return "", "SORT completed"
