"""RETURN (UPDATE) at work: each change of the selected mailbox re-evaluated against the saved searching commands
(RFC 5267 §4.3, CONTEXT=SEARCH and CONTEXT=SORT), and CANCELUPDATE (§4.3.5).

Theory of operation
-------------------
`Session.report_selected` writes the selected mailbox's untagged responses (state.py `report`: EXPUNGE or
VANISHED, FETCH, EXISTS) and then hands `follow` the changes it just reported, this session's own included
(their FETCHes were written by the STORE that made them, but the results still change), together with those
NOTIFY kept for the contexts alone (a FlagChange the NOTIFY settings do not ask for: notify.py). So an ADDTO for
an arrival comes after its EXISTS and names a valid message number (§4.3.3), and it comes wherever the change is
reported: at the end of a command, during IDLE, or between commands under NOTIFY SELECTED (§4.3.2: "MAY be sent
at any time").

`follow` looks only at the messages the changes name (the cost of an update follows the change, not the
mailbox): their records (one point read each, or one range read for a large batch), their metadata only if the
program has text or Date-header keys, evaluated by SEARCH's own matcher (`search.matching`) with the sequence
sets as the command resolved them. A message that matches and is not a result is added; one that is a result
and no longer matches (or is gone from the store) is removed. Expunges announced in this batch were removed by
`Selected.expunged` before their EXPUNGE (context.py); one still held back (RFC 9051 §7.5.1: not during FETCH,
STORE, SEARCH) is removed here, REMOVEFROM first and its EXPUNGE later, as RFC 5267 §4.3.4's example shows.

SORT contexts place an addition by binary search over the results in their sort order: each probe reads one
message's stored sort keys (`Store.list_sort_rows` over one UID), compared as `Store.sort_uids` orders them
(`sort_key`: the same columns, REVERSE per key, ties by UID ascending), so an arrival costs about log2(results)
point reads, and the keys probed are kept per context (a message's sort keys never change) up to `KEY_CACHE`.
Past `BULK` additions in one batch (a STORE over a range) the store sorts the results and the additions together
(`sort.sorted_uids`, one read of their UID span) and each addition is placed at its final position.

Invariants
1. Every line is built from the context state as changed by the lines before it (context.py invariant 2), and a
   message number in it is that of the view when it is written.
2. No message other than those the changes name is read, save the probes of a SORT insertion (at most about
   log2(results) + 1 per added message, and at most `BULK` messages placed so), or one sort of the results'
   span when more than `BULK` are added at once.
3. A context whose mailbox this session may no longer read (ACL revoked, RFC 4314) is told nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from postroom.store.api import Change, ChangeKind, MessageInfo

from . import parser as P
from .arguments import sel_of
from .context import UpdateContext, removal_lines
from .errors import Result
from .objectid import ensure_keys
from .search import matching
from .session import Session
from .sort import sort_key, sorted_uids
from .state import Selected

KEY_CACHE = 4096  # sort keys kept per SORT context (probed messages); past it the cache starts again
POINT_READS = 64  # messages in one batch read one by one; more are read as one UID range
BULK = 32  # additions to a SORT context placed by binary search one by one; more are sorted with the results

async def _records(s: Session, sel: Selected, uids: list[int]) -> dict[int, MessageInfo]:
    if len(uids) <= POINT_READS:
        out = {}
        for u in uids:
            m = await s.store.get_message(sel.id, u)
            if m is not None:
                out[u] = m
        return out
    wanted = set(uids)
    return {m.uid: m for m in await s.store.list_messages(sel.id, min(uids), max(uids)) if m.uid in wanted}


async def _key_of(s: Session, sel: Selected, ctx: UpdateContext, uid: int) -> tuple[Any, ...] | None:
    """The sort key of `uid` (None if it is no longer in the store), from the context's cache or one read."""
    cache: dict[int, tuple[Any, ...]] = ctx.keys
    k = cache.get(uid)
    if k is not None:
        return k
    rows = await s.store.list_sort_rows(sel.id, uid, uid)
    if rows and not rows[0].known:
        rows = await ensure_keys(s, rows)
    if not rows:
        return None
    assert ctx.criteria is not None
    if len(cache) >= KEY_CACHE:
        cache.clear()
    k = cache[uid] = sort_key(rows[0], ctx.criteria)
    return k


async def _add_many(s: Session, sel: Selected, ctx: UpdateContext, add: list[int], items: list[bytes]) -> None:
    """Many additions at once (a STORE over a range): the results and the additions sorted together by the store,
    one sort of their span, instead of a binary search each; the ADDTO places them in their final order, each at
    its final position (every result before it is in place by then). A result gone from the store meanwhile
    is removed first (RFC 5267 §4.3.4)."""
    assert ctx.criteria is not None
    new = set(add)
    ordered = await sorted_uids(s, sorted({*ctx.results, *add}), ctx.criteria)
    present = set(ordered)
    lost = [u for u in ctx.results if u not in present]
    if lost:
        items.append(ctx.remove(lost, sel.msn))
    placed = [(i + 1, u) for i, u in enumerate(ordered) if u in new]
    ctx.replace(ordered)
    if placed:
        items.append(ctx.addto(placed, sel.msn))


async def _add_sorted(s: Session, sel: Selected, ctx: UpdateContext, add: list[int], items: list[bytes]) -> None:
    """Insert `add` (UIDs that now match) at their places in SORT order, appending the ADDTO items, and a
    REMOVEFROM for any probed result found gone from the store meanwhile (its expunge not yet seen here)."""
    if len(add) > BULK:
        await _add_many(s, sel, ctx, add, items)
        return
    placed: list[tuple[int, int]] = []
    for uid in sorted(add):
        new = await _key_of(s, sel, ctx, uid)
        if new is None:
            continue  # expunged meanwhile: its change comes later
        lo, hi = 0, len(ctx.results)
        while lo < hi:
            mid = (lo + hi) // 2
            probe = ctx.results[mid]
            k = await _key_of(s, sel, ctx, probe)
            if k is None:  # RFC 5267 §4.3.4: a REMOVEFROM may precede the EXPUNGE
                if placed:
                    items.append(ctx.addto(placed, sel.msn))
                    placed = []
                items.append(ctx.remove([probe], sel.msn))
                lo, hi = 0, len(ctx.results)
                continue
            if k < new:
                lo = mid + 1
            else:
                hi = mid
        ctx.insert(lo, uid)
        placed.append((lo + 1, uid))
    if placed:
        items.append(ctx.addto(placed, sel.msn))


async def follow(s: Session, sel: Selected, changes: Sequence[Change]) -> None:
    """Write the ADDTO / REMOVEFROM updates of every context for `changes` (module doc), once the responses
    reporting them are written."""
    if not sel.contexts or not sel.may("r"):  # invariant 3
        return
    gone: set[int] = set()
    touched: dict[int, None] = {}
    for ch in changes:
        if ch.kind is ChangeKind.EXPUNGE:
            gone.add(ch.uid)
            touched.pop(ch.uid, None)
        elif ch.kind is ChangeKind.APPEND or ch.kind is ChangeKind.FLAGS:
            if ch.uid not in gone:
                touched[ch.uid] = None
    # expunges still held back: their REMOVEFROM now, their EXPUNGE later (RFC 5267 §4.3.4)
    lines = removal_lines(sel.contexts, sorted(u for u in gone if sel.msn(u)), sel.msn) if gone else []
    uids = [u for u in touched if sel.msn(u)]  # only the client's view (context.py invariant 1)
    if uids:
        records = await _records(s, sel, uids)
        for ctx in list(sel.contexts.values()):
            hits = await matching(s, ctx.key, ctx.sets, [records[u] for u in uids if u in records])
            items: list[bytes] = []
            drop = [u for u in uids if u not in hits and ctx.has(u)]
            if drop:
                items.append(ctx.remove(drop, sel.msn))
            add = [u for u in uids if u in hits and not ctx.has(u)]
            if add and ctx.criteria is None:
                items.append(ctx.add_search(add, sel.msn))
            elif add:
                await _add_sorted(s, sel, ctx, add, items)
            if items:
                lines.append(ctx.line(items))
    s.write(*lines)


async def cancelupdate(s: Session, cmd: P.Command) -> Result:
    """RFC 5267 §4.3.5: no more updates for the contexts of the tags named. A tag with no context (never one,
    refused with NOUPDATE, or cancelled already) is no error: there is nothing of it to send."""
    a = cmd.args
    assert isinstance(a, P.Names)
    sel = sel_of(s)
    for tag in a.items:
        sel.contexts.pop(tag, None)
    return "", "No further updates"
