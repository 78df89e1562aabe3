"""THREAD and UID THREAD (RFC 5256 §3): the ORDEREDSUBJECT and REFERENCES algorithms.

Theory of operation
-------------------
Like SORT (sort.py), THREAD evaluates its search program with SEARCH's code and reads the matching messages'
keys as columns (`sort.thread_rows`, from the store's narrow per-message rows, `Store.thread_rows`): the
Message-ID, the references (References, else the first msg-id of In-Reply-To), the base subject's collation
key, whether its extraction removed a reply / forward marker, and the sent date (else the internal date, RFC
5256 §2.2; ties broken by sequence number). The orders "by date" and "by subject, then date" come from the
store's sorter in the same go (invariant 5). The algorithms run on those columns alone, as generators that
yield between slices of work (`sort.drive`), on integer node arrays (`_Forest`): no recursion, so a reply chain
100,000 deep costs what a flat mailbox does, and no object per message (profiled on 100,000: the garbage
collector's passes over such objects were a fifth of the time).

REFERENCES follows RFC 5256 §3 step by step (the step numbers are in the code): (1) link messages by their
references, with dummies for ids no message has, the first message of a duplicated Message-ID keeping it and
no link made that would close a loop; (2) the root set; (3) childless dummies go; (4) dummies are pruned,
promoting their children (at the root only a single child); (5) the root set sorted by date (a dummy by its
first child); (6) threads with the same base subject merged by the four rules; (7) every set of siblings
sorted by date, the deepest first. The stored per-message thread id (`Store.thread_ids`, OBJECTID) is not
used: THREAD's answer is defined over the messages the search matched, which only the algorithm gives.

ORDEREDSUBJECT (RFC 5256 §3): messages sorted by base subject then sent date; each run of one subject is a
thread whose first message is the parent of the others; threads ordered by their first message's sent date.

Answer: `* THREAD (...)(...)` (RFC 5256 §4 thread-list: a chain is "1 2 3", branches are nested lists).

Invariants
1. THREAD answers exactly the messages SEARCH would, each once.
2. No synchronous stretch handles more than about `sort.SLICE_ROWS` nodes (or one `sort.SORT_CHUNK` sort).
3. A loop check walks at most the ancestors of one node, and none when the child has no children (a new
   message has none), so step 1 is linear in the references in practice.
4. An answer is kept (`ordercache`, as SORT's: sort.py invariant 4) and sent again only under an equal key.
5. Every "by date" of the algorithms is one order of the rows, (sent date, sequence number) (`in_order`), read
   from the store's sorter (`Store.sort_uids`, in a reader thread) and turned into a rank per row; nodes are then
   ordered by placing them at their first message's rank, not by comparing keys. The store's order is used only
   when every row's keys are the stored ones (`sort.thread_rows`), else it is sorted here from the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from postroom.store.api import ThreadColumns

from . import parser as P
from .messages import sel_of
from .ordercache import cache_of, digest
from .session import ONLY_SELECTED, Bad, Result, Session, command
from .sort import (
    SLICE_ROWS,
    WRITE_CHUNK,
    Steps,
    check_program,
    drive,
    matched,
    message_numbers,
    sorted_steps,
    thread_rows,
)

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
BY_DATE = (("date", False),)  # `Store.sort_uids` criteria of `in_order(rows)` (invariant 5)
BY_SUBJECT = (("subject", False), ("date", False))  # of `in_order(rows, by_subject=True)`


_LEAF: list[int] = []  # the children of every node that has none: never changed in place (`_Forest.link`)


class _Forest:
    """Nodes 0..n-1: `row` is the row index of a message, -1 for a dummy; `parent` -1 for none; `kids`. A node
    without children shares `_LEAF` (one list, not one per message: 100,000 lists made at once would cost
    several passes of the garbage collector); `link` gives it a list of its own. Only `link` and `unlink` change
    a children list in place."""

    def __init__(self) -> None:
        self.row: list[int] = []
        self.parent: list[int] = []
        self.kids: list[list[int]] = []

    def new(self, row: int) -> int:
        self.row.append(row)
        self.parent.append(-1)
        self.kids.append(_LEAF)
        return len(self.row) - 1

    def link(self, parent: int, child: int) -> None:
        self.parent[child] = parent
        kids = self.kids[parent]
        if kids is _LEAF:
            self.kids[parent] = [child]
        else:
            kids.append(child)

    def unlink(self, child: int) -> None:
        p = self.parent[child]
        self.kids[p].remove(child)
        self.parent[child] = -1

    def would_loop(self, parent: int, child: int) -> int:
        """0 if `parent` may become `child`'s parent, else -1 (RFC 5256 §3 step 1: no link that would introduce
        a loop), or the ancestors walked (>0) when it may: invariant 3."""
        if parent == child:
            return -1
        if not self.kids[child]:
            return 0  # a node without children is nobody's ancestor
        walked = 1
        p = parent
        while p >= 0:
            if p == child:
                return -1
            p = self.parent[p]
            walked += 1
        return walked


def in_order(rows: ThreadColumns, by_subject: bool = False) -> Steps[list[int]]:
    """The indexes of `rows` (sequence order) by sent date (RFC 5256 §2.2: the Date, else the internal date),
    ties by sequence number; with `by_subject`, by base subject first (ORDEREDSUBJECT). What `Store.sort_uids`
    gives for ("date") and ("subject", "date"); sorted here when the store's order cannot be used (invariant 5)."""
    keyed: list[tuple[Any, ...]] = []
    dates, subjects = rows.dates, rows.subjects
    for k in range(0, len(rows), SLICE_ROWS):
        end = min(k + SLICE_ROWS, len(rows))
        if by_subject:
            keyed.extend((subjects[i], dates[i], i) for i in range(k, end))
        else:
            keyed.extend((dates[i], i) for i in range(k, end))
        yield
    ordered = yield from sorted_steps(keyed)
    return [key[-1] for key in ordered]


def _ranks(order: Sequence[int]) -> Steps[list[int]]:
    """rank[i] = the place of row i in `order` (a permutation of the row indexes)."""
    rank = [0] * len(order)
    for k in range(0, len(order), SLICE_ROWS):
        for j in range(k, min(k + SLICE_ROWS, len(order))):
            rank[order[j]] = j
        yield
    return rank


def _first_row(f: _Forest, x: int) -> int:
    """The row of `x`, or of its first descendant that is a message (RFC 5256 §3 step 5: a dummy sorts by its
    first child)."""
    while f.row[x] < 0 and f.kids[x]:
        x = f.kids[x][0]
    return f.row[x]


def _by_date(f: _Forest, rank: Sequence[int], nodes: Sequence[int]) -> Steps[list[int]]:
    """`nodes` (roots of distinct trees, so of distinct first rows) by the date rank of their first row: placed
    into a slot per rank and read out in order, no comparison sort (invariant 5)."""
    slots = [-1] * len(rank)
    for k in range(0, len(nodes), SLICE_ROWS):
        for x in nodes[k:k + SLICE_ROWS]:
            slots[rank[_first_row(f, x)]] = x
        yield
    out: list[int] = []
    for k in range(0, len(slots), SLICE_ROWS):
        out.extend(x for x in slots[k:k + SLICE_ROWS] if x >= 0)
        yield
    return out


def references(rows: ThreadColumns, by_date: Sequence[int] | None = None) -> Steps[tuple[_Forest, list[int]]]:
    """RFC 5256 §3 REFERENCES over `rows` (sequence order): the forest and its ordered roots. `by_date` is
    `in_order(rows)` if the caller has it (from the store)."""
    if by_date is None:
        by_date = yield from in_order(rows)
    rank = yield from _ranks(by_date)
    f = _Forest()
    ids: dict[str, int] = {}
    work = 0
    row, parent, make, lookup = f.row, f.parent, f.new, ids.get  # lists only appended to: bound once
    # (1) Link messages by their references.
    for i, (mid, refs) in enumerate(zip(rows.message_ids, rows.references)):
        node = -1
        if mid:
            known = lookup(mid)
            if known is None:
                node = ids[mid] = make(i)
            elif row[known] < 0:
                node = known  # the dummy made for this id is this message
                row[known] = i
            # else (1.A): a duplicate Message-ID; only the first message keeps it, this one gets a unique one
        if node < 0:
            node = make(i)  # (1.A): no valid Message-ID: a unique one
        prev = -1
        for ref in refs.split():
            x = lookup(ref)
            if x is None:
                x = ids[ref] = make(-1)  # (1.A) a dummy for an id no message has (yet)
            if prev >= 0 and parent[x] < 0:
                walked = f.would_loop(prev, x)
                if walked >= 0:
                    f.link(prev, x)  # (1.A) each reference the parent of the next, unless it has one or loops
                work += abs(walked)
            prev = x
        # (1.B) The last reference is the parent; an earlier parent (a truncated References) is dropped, and
        # without references the message now has none.
        if parent[node] >= 0:
            f.unlink(node)
        if prev >= 0:
            walked = f.would_loop(prev, node)
            if walked >= 0:
                f.link(prev, node)
            work += abs(walked)
        work += 1
        if work >= SLICE_ROWS:
            work = 0
            yield
    # (2) The root set.
    roots = [x for x in range(len(f.row)) if f.parent[x] < 0]
    yield
    # (3) and (4): dummies without children go; a dummy with children gives them to its parent (at the root
    # only a single child is promoted). A dummy below the root hands its children, and those of the dummies
    # below it, to its nearest ancestor that is a message or a root: each dummy is expanded once.
    owners = {p for x, p in enumerate(f.parent) if f.row[x] < 0 and p >= 0 and (f.row[p] >= 0 or f.parent[p] < 0)}
    for n, node in enumerate(owners):
        new: list[int] = []
        stack = list(reversed(f.kids[node]))
        while stack:
            k = stack.pop()
            if f.row[k] >= 0:
                f.parent[k] = node
                new.append(k)
            else:
                stack.extend(reversed(f.kids[k]))
                f.kids[k] = _LEAF
        f.kids[node] = new
        if n % SLICE_ROWS == SLICE_ROWS - 1:
            yield
    top: list[int] = []
    for x in roots:
        if f.row[x] >= 0:
            top.append(x)
        elif len(f.kids[x]) == 1:
            only = f.kids[x][0]
            f.parent[only] = -1
            top.append(only)
        elif f.kids[x]:
            top.append(x)
    yield
    # (5) The root set by date; a dummy's children first, then the dummy by its first child.
    for x in top:
        if f.row[x] < 0:
            f.kids[x].sort(key=lambda k: rank[_first_row(f, k)])
    top = yield from _by_date(f, rank, top)
    # (6) Threads with the same base subject are merged.
    table: dict[str, int] = {}
    subjects, replies, kids = rows.subjects, rows.replies, f.kids
    # (6.B.i) The subject of each root: its message's, or a dummy's first child's (steps 5 and 6 leave a root's
    # first child where it is, so it is read once here).
    subject_of: list[str] = []
    for k in range(0, len(top), SLICE_ROWS):
        subject_of.extend(subjects[row[x] if row[x] >= 0 else row[kids[x][0]]] for x in top[k:k + SLICE_ROWS])
        yield
    for n, x in enumerate(top):
        subject = subject_of[n]
        if not subject:
            continue  # (6.B.ii)
        t = table.get(subject)
        if t is None:
            table[subject] = x
        elif f.row[t] >= 0 and (f.row[x] < 0 or (replies[f.row[t]] and not replies[f.row[x]])):
            table[subject] = x  # (6.B.iv)
        if n % SLICE_ROWS == SLICE_ROWS - 1:
            yield
    removed: set[int] = set()
    kept = list(top)
    for n, x in enumerate(top):
        if n % SLICE_ROWS == SLICE_ROWS - 1:
            yield
        if x in removed or f.parent[x] >= 0:
            continue  # merged already (a table entry that a new dummy took in)
        subject = subject_of[n]
        t = table.get(subject) if subject else None
        if t is None or t == x:
            continue  # (6.C.ii), (6.C.iv)
        removed.add(x)
        if f.row[t] < 0 and f.row[x] < 0:  # both dummies: the children become siblings
            for k in f.kids[x]:
                f.link(t, k)
            f.kids[x] = _LEAF
        elif f.row[t] < 0 or (replies[f.row[x]] and not replies[f.row[t]]):
            f.link(t, x)  # a child of the one in the table (a sibling of its children)
        else:  # a new dummy holds both and takes the table's place
            d = f.new(-1)
            f.link(d, t)
            f.link(d, x)
            table[subject] = d
            kept.append(d)
    final = [x for x in kept if x not in removed and f.parent[x] < 0]
    # (7) Every set of siblings by date, the deepest first: only the root can hold dummies now (step 4 left
    # none below it, step 6 makes them there), whose children are messages, so every set is sorted by its
    # messages' own dates and a dummy then by its first child.
    def by_rank(k: int) -> int:
        return rank[row[k]]

    for k in range(0, len(f.kids), SLICE_ROWS):
        for siblings in f.kids[k:k + SLICE_ROWS]:
            if len(siblings) > 1:
                siblings.sort(key=by_rank)
        yield
    final = yield from _by_date(f, rank, final)
    return f, final


def ordered_subject(rows: ThreadColumns, by_subject: Sequence[int] | None = None,
                    by_date: Sequence[int] | None = None) -> Steps[tuple[_Forest, list[int]]]:
    """RFC 5256 §3 ORDEREDSUBJECT: by base subject then sent date; each subject's first message is the parent
    of the others; threads by their first message's date. `by_subject` and `by_date` are `in_order(rows, True)`
    and `in_order(rows)` if the caller has them (from the store)."""
    if by_subject is None:
        by_subject = yield from in_order(rows, by_subject=True)
    if by_date is None:
        by_date = yield from in_order(rows)
    rank = yield from _ranks(by_date)
    f = _Forest()
    roots: list[int] = []
    last_subject: str | None = None
    parent = -1
    subjects = rows.subjects
    for n, i in enumerate(by_subject):
        node = f.new(i)
        subject = subjects[i]
        if subject == last_subject:
            f.link(parent, node)
        else:
            roots.append(node)
            parent = node
            last_subject = subject
        if n % SLICE_ROWS == SLICE_ROWS - 1:
            yield
    roots = yield from _by_date(f, rank, roots)
    return f, roots


def render(f: _Forest, roots: Sequence[int], numbers: Sequence[int]) -> Steps[list[bytes]]:
    """RFC 5256 §4 thread-list of every root: a node with one child is followed by it in the same list ("1 2"),
    two or more children are nested lists ("1 (2)(3)"), a dummy has no number ("((2)(3))"). `numbers[row]` is
    what the client sees (sequence number or UID). Iterative (invariant 2)."""
    out: list[bytes] = []
    stack: list[int | bytes] = list(reversed(roots))
    n = 0
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        x = item
        nums: list[bytes] = []
        while f.row[x] >= 0:
            nums.append(b"%d" % numbers[f.row[x]])
            if len(f.kids[x]) != 1:
                break
            x = f.kids[x][0]
        kids = f.kids[x]
        out.append(b"(" + b" ".join(nums) + (b" " if nums and kids else b""))
        stack.append(b")")
        stack.extend(reversed(kids))
        n += len(nums) + 1
        if n >= SLICE_ROWS:
            n = 0
            yield
    return out


@command("THREAD", ONLY_SELECTED)
@command("UID THREAD", ONLY_SELECTED)
async def thread(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.ThreadArgs)
    if a.algorithm not in ALGORITHMS:
        raise Bad(f"Unknown threading algorithm {a.algorithm}")  # RFC 5256 §3: only the advertised ones
    check_program(a.charset, a.key)
    sel = sel_of(s)
    uids = await matched(s, a.key, cmd.uid)  # invariant 1
    cache = cache_of(s.store)
    key = ("THREAD", sel.id, a.algorithm, await s.store.content_version(sel.id), digest(uids),
           cmd.uid or digest(sel.uids))  # invariant 4
    answer: bytes | None = cache.get(key)
    if answer is None:
        if a.algorithm == "REFERENCES":
            rows, orders = await thread_rows(s, uids, [BY_DATE])
            steps = references(rows, *(orders or ()))
        else:
            rows, orders = await thread_rows(s, uids, [BY_SUBJECT, BY_DATE])
            steps = ordered_subject(rows, *(orders or ()))
        forest, roots = await drive(steps)
        numbers: Sequence[int] = rows.uids
        if not cmd.uid:
            numbers = await message_numbers(s, numbers)
        pieces = await drive(render(forest, roots, numbers))
        answer = b"".join(pieces)
        cache.put(key, answer)
    s.write(b"* THREAD" + (b" " if answer else b""))
    for k in range(0, len(answer), WRITE_CHUNK):
        s.write(answer[k:k + WRITE_CHUNK])
        await s.maybe_flush()
    s.write(b"\r\n")
    return "", "THREAD completed"
