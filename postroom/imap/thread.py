"""THREAD and UID THREAD (RFC 5256 §3): the ORDEREDSUBJECT and REFERENCES algorithms.

Theory of operation
-------------------
Like SORT (sort.py), THREAD evaluates its search program with SEARCH's code and reads the matching messages'
keys as narrow columns (`sort.sort_rows`): the Message-ID, the references (References, else the first msg-id
of In-Reply-To), the base subject's collation key, whether its extraction removed a reply / forward marker,
and the sent date (else the internal date, RFC 5256 §2.2; ties broken by sequence number). The algorithms run
on those rows alone, as generators that yield between slices of work (`sort.drive`), on integer node arrays
(`_Forest`): no recursion, so a reply chain 100,000 deep costs what a flat mailbox does.

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
"""

from __future__ import annotations

from collections.abc import Sequence

from postroom.store.api import ThreadRow

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
    thread_rows,
    sorted_steps,
)

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class _Forest:
    """Nodes 0..n-1: `row` is the row index of a message, -1 for a dummy; `parent` -1 for none; `kids`."""

    def __init__(self) -> None:
        self.row: list[int] = []
        self.parent: list[int] = []
        self.kids: list[list[int]] = []

    def new(self, row: int) -> int:
        self.row.append(row)
        self.parent.append(-1)
        self.kids.append([])
        return len(self.row) - 1

    def link(self, parent: int, child: int) -> None:
        self.parent[child] = parent
        self.kids[parent].append(child)

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


def _date_key(rows: Sequence[ThreadRow], i: int) -> tuple[float, int]:
    return (rows[i].date, i)  # RFC 5256 §2.2 (the sent date, else the internal date), ties by sequence number


def references(rows: Sequence[ThreadRow]) -> Steps[tuple[_Forest, list[int]]]:
    """RFC 5256 §3 REFERENCES over `rows` (sequence order): the forest and its ordered roots."""
    f = _Forest()
    ids: dict[str, int] = {}
    work = 0
    # (1) Link messages by their references.
    for i, r in enumerate(rows):
        node = -1
        mid = r.message_id
        if mid:
            known = ids.get(mid)
            if known is None:
                node = ids[mid] = f.new(i)
            elif f.row[known] < 0:
                node = known  # the dummy made for this id is this message
                f.row[known] = i
            # else (1.A): a duplicate Message-ID; only the first message keeps it, this one gets a unique one
        if node < 0:
            node = f.new(i)  # (1.A): no valid Message-ID: a unique one
        prev = -1
        for ref in r.references.split():
            x = ids.get(ref)
            if x is None:
                x = ids[ref] = f.new(-1)  # (1.A) a dummy for an id no message has (yet)
            if prev >= 0 and f.parent[x] < 0:
                walked = f.would_loop(prev, x)
                if walked >= 0:
                    f.link(prev, x)  # (1.A) each reference the parent of the next, unless it has one or loops
                work += abs(walked)
            prev = x
        # (1.B) The last reference is the parent; an earlier parent (a truncated References) is dropped, and
        # without references the message now has none.
        if f.parent[node] >= 0:
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
                f.kids[k] = []
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
            f.kids[x].sort(key=lambda k: _first_key(f, rows, k))
    top = yield from _by_date(f, rows, top)
    # (6) Threads with the same base subject are merged.
    table: dict[str, int] = {}

    def subject_of(x: int) -> str:
        return rows[f.row[x] if f.row[x] >= 0 else f.row[f.kids[x][0]]].subject  # (6.B.i)

    for n, x in enumerate(top):
        subject = subject_of(x)
        if not subject:
            continue  # (6.B.ii)
        t = table.get(subject)
        if t is None:
            table[subject] = x
        elif f.row[t] >= 0 and (f.row[x] < 0 or (rows[f.row[t]].reply and not rows[f.row[x]].reply)):
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
        subject = subject_of(x)
        t = table.get(subject) if subject else None
        if t is None or t == x:
            continue  # (6.C.ii), (6.C.iv)
        removed.add(x)
        if f.row[t] < 0 and f.row[x] < 0:  # both dummies: the children become siblings
            for k in f.kids[x]:
                f.link(t, k)
            f.kids[x] = []
        elif f.row[t] < 0 or (rows[f.row[x]].reply and not rows[f.row[t]].reply):
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
    for n, kids in enumerate(f.kids):
        if len(kids) > 1:
            kids.sort(key=lambda k: _date_key(rows, f.row[k]))
        if n % SLICE_ROWS == SLICE_ROWS - 1:
            yield
    final = yield from _by_date(f, rows, final)
    return f, final


def _first_key(f: _Forest, rows: Sequence[ThreadRow], x: int) -> tuple[float, int]:
    while f.row[x] < 0 and f.kids[x]:
        x = f.kids[x][0]
    return _date_key(rows, f.row[x])


def _by_date(f: _Forest, rows: Sequence[ThreadRow], nodes: list[int]) -> Steps[list[int]]:
    keyed: list[tuple[float, int, int]] = []
    for k in range(0, len(nodes), SLICE_ROWS):
        keyed.extend((*_first_key(f, rows, x), x) for x in nodes[k:k + SLICE_ROWS])
        yield
    ordered = yield from sorted_steps(keyed)
    return [k[-1] for k in ordered]


def ordered_subject(rows: Sequence[ThreadRow]) -> Steps[tuple[_Forest, list[int]]]:
    """RFC 5256 §3 ORDEREDSUBJECT: by base subject then sent date; each subject's first message is the parent
    of the others; threads by their first message's date."""
    keyed: list[tuple[str, float, int]] = []
    for k in range(0, len(rows), SLICE_ROWS):
        keyed.extend((rows[i].subject, *_date_key(rows, i)) for i in range(k, min(k + SLICE_ROWS, len(rows))))
        yield
    ordered = yield from sorted_steps(keyed)
    f = _Forest()
    roots: list[int] = []
    last_subject: str | None = None
    parent = -1
    for n, (subject, _, i) in enumerate(ordered):
        node = f.new(i)
        if subject == last_subject:
            f.link(parent, node)
        else:
            roots.append(node)
            parent = node
            last_subject = subject
        if n % SLICE_ROWS == SLICE_ROWS - 1:
            yield
    roots = yield from _by_date(f, rows, roots)
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
        rows = await thread_rows(s, uids)
        algorithm = references if a.algorithm == "REFERENCES" else ordered_subject
        forest, roots = await drive(algorithm(rows))
        numbers = [r.uid for r in rows]
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
