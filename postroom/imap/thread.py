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

After arrivals. Besides the answer's bytes (`ordercache`), the last answer per mailbox, algorithm and form
(UID or sequence numbers) is kept as a `Kept`: the forest, each thread's text, the threads' date keys, and for
REFERENCES the id table and parents of step 1 and the base subjects of step 6. When only arrivals moved the
content version (as SORT's sort.py invariant 5: the kept matched UIDs start the new ones, at most
`sort.ARRIVALS_MAX` new ones, with stored keys), each arrival, the highest sequence number so far and so the
last message step 1 handles, is placed into it where RFC 5256 §3 gives provably the same answer as computing
again, and refused otherwise (the answer is then computed again and kept from there):

* ORDEREDSUBJECT, always: the message joins its base subject's thread in date order; if it is the earliest,
  it becomes the thread's first message (the parent of the others) and the thread moves to its date.
* REFERENCES, when step 1 makes no link but the message's own: its Message-ID is new or a duplicate of a
  message's (1.A: it gets a unique one), not an id a dummy holds (it would take the dummy's children); every
  reference is a known id; each link 1.A would make between two consecutive references exists already or
  would close a loop. With references, its parent is the last one, which must be a message: under a message
  steps 2-6 leave it where it is (they move dummies and whole root trees), and step 7 puts it among its
  siblings by date; the tree's first message, so its place, does not change. Without references it is a new
  root, placed by date (step 5), if its base subject is empty or no root had it (step 6 merges nothing).
  Under a dummy, a new dummy, a new link between old messages, or a subject step 6 would merge: refused.

Only the thread it joined is written again, so a placement costs a few binary searches and that thread's
text, bounded by `SLICE_ROWS` (a larger thread is refused); the answer is the threads' texts joined.

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
6. An answer computed from arrivals placed into a `Kept` one is byte for byte the answer computed again over
   all the messages (module doc "After arrivals"; tests/unit/test_imap_sort.py compares them on random
   mailboxes). A `Kept` is changed only in one synchronous stretch, by the command that finds it still kept
   for the version it read, so no command sees it half changed; one partly changed is dropped. A `Kept` is
   kept only if its rows are the store's at the version it is kept under (read again after computing) and its
   keys the stored ones; at most `STATES_MAX` per store, a few hundred bytes per message each.
"""

from __future__ import annotations

import bisect
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, TypeVar

from postroom.store.api import ThreadColumns

from . import parser as P
from .arguments import sel_of
from .errors import Bad, Result
from .ordercache import cache_of, digest
from .session import Session
from .sort import (
    ARRIVALS_MAX,
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


_T = TypeVar("_T")
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
        # REFERENCES only, for `Kept`: the id table and the parents as step 1 left them, and the base subjects
        # step 6 put in its table
        self.ids: dict[str, int] = {}
        self.parent1: list[int] = []
        self.subjects: set[str] = set()

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
    f.ids, f.parent1 = ids, list(parent)
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
    f.subjects = set(table)
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
    """RFC 5256 §4 thread-list of every root, one bytes per root (the answer is their concatenation): a node
    with one child is followed by it in the same list ("1 2"), two or more children are nested lists
    ("1 (2)(3)"), a dummy has no number ("((2)(3))"). `numbers[row]` is what the client sees (sequence number
    or UID). Iterative (invariant 2)."""
    out: list[bytes] = []
    cur: list[bytes] = []
    stack: list[int | bytes | None] = []
    for root in reversed(roots):
        stack.append(None)  # the end of a root's tree
        stack.append(root)
    n = 0
    while stack:
        item = stack.pop()
        if item is None:
            out.append(b"".join(cur))
            cur = []
            continue
        if isinstance(item, bytes):
            cur.append(item)
            continue
        x = item
        nums: list[bytes] = []
        while f.row[x] >= 0:
            nums.append(b"%d" % numbers[f.row[x]])
            if len(f.kids[x]) != 1:
                break
            x = f.kids[x][0]
        kids = f.kids[x]
        cur.append(b"(" + b" ".join(nums) + (b" " if nums and kids else b""))
        stack.append(b")")
        stack.extend(reversed(kids))
        n += len(nums) + 1
        if n >= SLICE_ROWS:
            n = 0
            yield
    return out


def _now(steps: Steps[_T]) -> _T:
    """Run `steps` to the end without yielding (for work bounded by `SLICE_ROWS`: invariant 2)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def _group_text(rows: Sequence[int], numbers: Sequence[int]) -> bytes:
    """One ORDEREDSUBJECT thread as `render` writes it: the first message, the parent of the others in order
    (RFC 5256 §3): "(1)", "(1 2)" (one child continues the list), "(1 (2)(3))"."""
    if len(rows) == 1:
        return b"(%d)" % numbers[rows[0]]
    if len(rows) == 2:
        return b"(%d %d)" % (numbers[rows[0]], numbers[rows[1]])
    return b"(%d " % numbers[rows[0]] + b"".join(b"(%d)" % numbers[r] for r in rows[1:]) + b")"


class Kept:
    """A THREAD answer kept with what the next one needs to place arrivals into it (invariant 6).

    `dates[row]` are the rows' sent dates (sequence order: a row's key in every "by date" is `(dates[row],
    row)`, invariant 5), `numbers[row]` what the client sees, `roots` the threads in answer order with
    `root_keys` (the key of each tree's first message, ascending) and `pieces` (each thread's RFC 5256 §4
    text). REFERENCES keeps its forest `f` with step 1's id table and parents (`f.ids`, `f.parent1`) and
    step 6's base subjects (`f.subjects`); ORDEREDSUBJECT keeps each base subject's rows in date order
    (`groups`, the first one being the thread's root). `arrive` places one arrival or refuses; an answer is
    `b"".join(pieces)`."""

    def __init__(self, algorithm: str, dates: list[float], numbers: list[int], f: _Forest, roots: list[int],
                 root_keys: list[tuple[float, int]], pieces: list[bytes], groups: dict[str, list[int]]) -> None:
        self.algorithm = algorithm
        self.dates = dates
        self.numbers = numbers
        self.f = f
        self.roots = roots  # REFERENCES: nodes of `f`; ORDEREDSUBJECT: rows
        self.root_keys = root_keys
        self.pieces = pieces
        self.groups = groups

    def _key(self, row: int) -> tuple[float, int]:
        return (self.dates[row], row)

    def answer(self) -> bytes:
        """The thread-list: the threads' texts in order."""
        return b"".join(self.pieces)

    def _place_root(self, key: tuple[float, int], root: int, text: bytes) -> None:
        at = bisect.bisect_left(self.root_keys, key)
        self.root_keys.insert(at, key)
        self.roots.insert(at, root)
        self.pieces.insert(at, text)

    def _root_at(self, key: tuple[float, int]) -> int:
        at = bisect.bisect_left(self.root_keys, key)
        assert self.root_keys[at] == key
        return at

    def arrive(self, date: float, subject: str, message_id: str | None, references: str, number: int) -> bool:
        """Place the next message (the next row in sequence order: its UID is above every kept one) into the
        answer if that gives what computing it again would (invariant 6), and say so; False leaves everything
        as it was (the caller computes the answer again). Work: about `SLICE_ROWS` steps at most."""
        if self.algorithm == "REFERENCES":
            return self._arrive_references(date, subject, message_id, references, number)
        return self._arrive_ordered(date, subject, number)

    def _add_row(self, date: float, number: int) -> int:
        self.dates.append(date)
        self.numbers.append(number)
        return len(self.dates) - 1

    def _arrive_ordered(self, date: float, subject: str, number: int) -> bool:
        group = self.groups.get(subject)
        if group is not None and len(group) >= SLICE_ROWS:
            return False  # its text is written again: bounded (invariant 2)
        i = self._add_row(date, number)
        key = self._key(i)
        if group is None:  # a new base subject: a thread of its own, by its date
            self.groups[subject] = [i]
            self._place_root(key, i, _group_text([i], self.numbers))
        elif self._key(group[0]) < key:  # a child of the thread's first message, in date order
            at = self._root_at(self._key(group[0]))
            group.insert(bisect.bisect_left([self._key(r) for r in group], key), i)
            self.pieces[at] = _group_text(group, self.numbers)
        else:  # the thread's new first message: the others become its children, the thread moves to its date
            at = self._root_at(self._key(group[0]))
            del self.root_keys[at], self.roots[at], self.pieces[at]
            group.insert(0, i)
            self._place_root(key, i, _group_text(group, self.numbers))
        return True

    def _is_ancestor1(self, x: int, node: int) -> bool | None:
        """Whether `x` is `node` or one of its ancestors as step 1 linked them (a link from `node` to `x` would
        close a loop); None if that takes more than `SLICE_ROWS` steps."""
        parent1 = self.f.parent1
        for _ in range(SLICE_ROWS):
            if node < 0:
                return False
            if node == x:
                return True
            node = parent1[node]
        return None

    def _arrive_references(self, date: float, subject: str, message_id: str | None, references: str,
                           number: int) -> bool:
        # RFC 5256 §3 step by step, for a message processed last in step 1 (the highest sequence number). The
        # answer moves only by this message when step 1 links nothing but it: its Message-ID is new or held by
        # a message already (1.A: a duplicate gets a unique one; a dummy holding it would give it children),
        # every reference is a known id, and each link 1.A would make between consecutive references exists
        # already or would close a loop. Then it is either a child of its last reference, which must be a
        # message (under a dummy, steps 3-4 would move it), or a root (no references): a root whose base
        # subject is empty or no root had (steps 5-6: nothing merges with it).
        f = self.f
        known = f.ids.get(message_id) if message_id else None
        if known is not None and f.row[known] < 0:
            return False
        prev = -1
        for ref in references.split():
            x = f.ids.get(ref)
            if x is None:
                return False  # a new dummy
            if prev >= 0 and f.parent1[x] < 0 and self._is_ancestor1(x, prev) is not True:
                return False  # step 1.A would link x under prev (or the check is too long)
            prev = x
        if prev >= 0:
            if f.row[prev] < 0:
                return False
            root, size = prev, 0  # the final tree holding the parent (steps 4-7 keep a message's children)
            while f.parent[root] >= 0 and size < SLICE_ROWS:
                root, size = f.parent[root], size + 1
            stack = [root]
            while stack and size < SLICE_ROWS:
                stack.extend(f.kids[stack.pop()])
                size += 1
            if size >= SLICE_ROWS:
                return False  # its text is written again: bounded (invariant 2)
        elif subject and subject in f.subjects:
            return False  # step 6 would merge it with the thread of that subject
        i = self._add_row(date, number)
        key = self._key(i)
        node = f.new(i)
        f.parent1.append(prev)
        if message_id and known is None:
            f.ids[message_id] = node
        if prev < 0:
            if subject:
                f.subjects.add(subject)
            self._place_root(key, node, _now(render(f, [node], self.numbers))[0])
            return True
        # (7) a sibling of the parent's children in date order; the tree's first message stays, so its place too
        kids = f.kids[prev]
        at = bisect.bisect_left([self._key(f.row[k]) for k in kids], key)
        f.parent[node] = prev
        f.kids[prev] = [*kids[:at], node, *kids[at:]]
        at = self._root_at(self._key(_first_row(f, root)))
        self.pieces[at] = _now(render(f, [root], self.numbers))[0]
        return True


_Slot = tuple[tuple[int, ...], "array[int]", tuple[int, bytes], Kept]  # version, matched UIDs, announced, answer


def kept_answer(algorithm: str, rows: ThreadColumns, f: _Forest, roots: list[int], numbers: Sequence[int]
                ) -> Steps[Kept]:
    """The `Kept` of an answer just computed by `references` or `ordered_subject` over `rows` (its dates taken
    over, not copied: they grow with arrivals), `numbers[row]` what the client sees. In slices (invariant 2)."""
    pieces = yield from render(f, roots, numbers)
    dates = rows.dates
    keys: list[tuple[float, int]] = []
    groups: dict[str, list[int]] = {}
    kept_roots = roots
    if algorithm == "REFERENCES":
        # step 6's dummies are not in step 1's table: their parents there are none
        f.parent1.extend([-1] * (len(f.row) - len(f.parent1)))
        for k in range(0, len(roots), SLICE_ROWS):
            keys.extend((dates[r], r) for r in (_first_row(f, x) for x in roots[k:k + SLICE_ROWS]))
            yield
    else:  # a thread is its first message and that one's children (`ordered_subject`); roots are rows here
        kept_roots = [f.row[x] for x in roots]
        n = 0
        for x in roots:
            r = f.row[x]
            keys.append((dates[r], r))
            groups[rows.subjects[r]] = [r, *(f.row[k] for k in f.kids[x])]
            n += 1 + len(f.kids[x])
            if n >= SLICE_ROWS:
                n = 0
                yield
    return Kept(algorithm, dates, list(numbers), f, kept_roots, keys, pieces, groups)


STATES_MAX = 4  # `Kept` answers per store (one per mailbox, algorithm and form): invariant 6
_STATES: weakref.WeakKeyDictionary[object, OrderedDict[tuple[int, str, bool], _Slot]] = weakref.WeakKeyDictionary()


def _states_of(store: object) -> OrderedDict[tuple[int, str, bool], _Slot]:
    states = _STATES.get(store)
    if states is None:
        states = _STATES[store] = OrderedDict()
    return states


def _keep(s: Session, algorithm: str, uid_form: bool, slot: _Slot) -> None:
    states = _states_of(s.store)
    key = (sel_of(s).id, algorithm, uid_form)
    states.pop(key, None)
    states[key] = slot
    while len(states) > STATES_MAX:
        states.popitem(last=False)


async def _after_arrivals(s: Session, algorithm: str, uid_form: bool, version: tuple[int, ...],
                          uids: Sequence[int]) -> bytes | None:
    """The answer for `uids` from the `Kept` one of the mailbox, algorithm and form when only arrivals moved the
    version since (invariant 6), else None: as `sort.placed_arrivals`, the kept matched UIDs must be the start
    of `uids` and the rest (at most `ARRIVALS_MAX`) new, with stored keys; for sequence numbers, the session's
    announced UIDs must start with those the kept numbers were for."""
    sel = sel_of(s)
    states = _states_of(s.store)
    slot_key = (sel.id, algorithm, uid_form)
    slot = states.get(slot_key)
    if slot is None:
        return None
    was, matched, announced, kept = slot
    if was[1:] != version[1:] or was[0] > version[0] or len(uids) < len(matched):
        return None  # something left or was re-keyed (content_version)
    extra = list(uids[len(matched):])
    if len(extra) > ARRIVALS_MAX or (extra and extra[0] < was[0]) or array("I", uids[:len(matched)]) != matched:
        return None  # not only arrivals: the search matched other old messages this time
    if not uid_form and (len(sel.uids) < announced[0] or digest(sel.uids[:announced[0]]) != announced[1]):
        return None  # the kept sequence numbers are not this session's
    if not extra:
        return kept.answer()  # the same messages (the session has not learnt of the arrivals yet): kept as it was
    rows = ThreadColumns()
    wanted = set(extra)
    if any(r.uid in wanted for r in await s.store.list_sort_rows(sel.id, extra[0], extra[-1],
                                                                   unknown_only=True)):
        return None  # keys not stored: computed again (`sort.thread_rows` fills them)
    stored = await s.store.thread_rows(sel.id, extra[0], extra[-1])
    for i in range(len(stored)):
        if stored.uids[i] in wanted:
            rows.add(*stored.row(i))
    if rows.uids != extra or await s.store.content_version(sel.id) != version:
        return None  # one left, or a change committed while reading (the reads may mix two states)
    # From here on nothing awaits: the kept answer changes in one go, and only the one still kept.
    if states.get(slot_key) is not slot:
        return None
    for i in range(len(rows)):
        number = rows.uids[i] if uid_form else sel.msn(rows.uids[i])
        if not kept.arrive(rows.dates[i], rows.subjects[i], rows.message_ids[i], rows.references[i], number):
            del states[slot_key]  # partly placed: computed again, and kept from there
            return None
    _keep(s, algorithm, uid_form, (version, array("I", uids), (len(sel.uids), digest(sel.uids)), kept))
    return kept.answer()


async def thread(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.ThreadArgs)
    if a.algorithm not in ALGORITHMS:
        raise Bad(f"Unknown threading algorithm {a.algorithm}")  # RFC 5256 §3: only the advertised ones
    check_program(a.charset, a.key)
    sel = sel_of(s)
    uids = await matched(s, a.key, cmd.uid)  # invariant 1
    cache = cache_of(s.store)
    version = await s.store.content_version(sel.id)
    key = ("THREAD", sel.id, a.algorithm, version, digest(uids), cmd.uid or digest(sel.uids))  # invariant 4
    answer: bytes | None = cache.get(key)
    if answer is None:
        answer = await _after_arrivals(s, a.algorithm, cmd.uid, version, uids)  # invariant 6
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
        row_uids = array("I", rows.uids)
        announced = (len(sel.uids), digest(sel.uids))
        kept = await drive(kept_answer(a.algorithm, rows, forest, roots, numbers))
        answer = kept.answer()
        if orders is not None and await s.store.content_version(sel.id) == version:
            # the rows are the store's at `version` (unchanged since: every read saw it), keys as stored
            _keep(s, a.algorithm, cmd.uid, (version, row_uids, announced, kept))
    cache.put(key, answer)
    s.write(b"* THREAD" + (b" " if answer else b""))
    for k in range(0, len(answer), WRITE_CHUNK):
        s.write(answer[k:k + WRITE_CHUNK])
        await s.maybe_flush()
    s.write(b"\r\n")
    return "", "THREAD completed"
