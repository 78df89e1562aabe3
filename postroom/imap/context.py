"""Update contexts (RFC 5267 §4.3; CONTEXT=SEARCH, CONTEXT=SORT): what a `RETURN (UPDATE)` leaves behind.

Theory of operation
-------------------
A SEARCH, UID SEARCH, SORT or UID SORT with the UPDATE return option leaves an `UpdateContext` in the selected
mailbox's state (`Selected.contexts`, keyed by the command's tag): the parsed search program; the sets its
sequence sets, UID sets, `$`, EMAILID and THREADID keys were resolved to when the command ran (RFC 5267 §4.3:
"any message sequence numbers used in the search program are evaluated at the time the command is received"),
kept as UID ranges; the sort criteria (None for SEARCH, whose requested order is mailbox order, §4.1); and
`results`, the matching UIDs in the requested order, as the client was told them and as every ADDTO and
REMOVEFROM since has changed them.

This module is the pure half: membership, positions and the ESEARCH lines. `update.py` evaluates the messages a
change touched against the saved program (the cost follows the changed messages, never the mailbox) and asks
this module for the lines; `Selected.expunged` (state.py), the one place that announces removals, asks it for
the REMOVEFROM of expunged results.

* SEARCH contexts use context position 0, which §4.3.3 and §4.3.4 allow for SEARCH, with the set in mailbox
  order, the shortest set syntax (as the RFC recommends): `ADDTO (0 32768:32769)`.
* SORT contexts name positions. An insertion at position p puts the first number of its set there (§4.3.3);
  insertions at consecutive positions fold into one pair, the RFC's preferred `ADDTO (1 2731:2733)`. A removal
  names the position its first result had before removal, a run of adjacent results in one pair (§4.3.4).
* Message numbers (SEARCH and SORT without UID) are written from the view at the moment the line is written:
  a REMOVEFROM for an expunged message goes before its EXPUNGE or VANISHED, an ADDTO for an arrival after its
  EXISTS (§4.3.3, §4.3.4), so every number is valid when the client reads it.

Invariants
1. `results` holds each UID at most once, in the requested order, and only UIDs of the client's view;
   `members` holds the same UIDs ascending (membership by bisection).
2. Every change to `results` is written in the line built with it, in the order made (§4.3.2: the client
   processes the items in order, so the server keeps them "such that the results are maintained in the
   requested order").
3. Memory per context: 8 bytes per result plus the saved program and its resolved sets as ranges; at most
   `MAX_CONTEXTS` contexts per session (one selected mailbox at a time), past which UPDATE is refused with
   `NO [NOUPDATE "tag"]` (§4.3.1).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import encoder
from .parser import Key
from .results import ordered_set

MAX_CONTEXTS = 10  # RFC 5267 §4.3.1: "at least one updating context per client, and SHOULD provide more"
_MANY = 16  # removals past which the positions are found with one pass over the results


class UidRanges(Container[int]):
    """A set of UIDs kept as sorted ranges (two arrays): a resolved sequence set of a saved program costs its
    ranges, not its members."""

    __slots__ = ("starts", "ends")

    def __init__(self, uids: Iterable[int]) -> None:
        self.starts = array("I")
        self.ends = array("I")
        for u in sorted(set(uids)):
            if self.ends and u == self.ends[-1] + 1:
                self.ends[-1] = u
            else:
                self.starts.append(u)
                self.ends.append(u)

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        i = bisect.bisect_right(self.starts, uid) - 1
        return i >= 0 and uid <= self.ends[i]


@dataclass(eq=False)
class UpdateContext:
    """One searching command's UPDATE context (module doc)."""

    tag: str
    uid: bool  # UID SEARCH / UID SORT: the updates name UIDs, else message numbers (§4.3.2)
    key: Key
    sets: dict[int, Container[int]]  # id(key node) -> its resolved set (search.py `_Ctx.sets`)
    criteria: tuple[tuple[str, bool], ...] | None  # SORT's criteria; None: SEARCH, mailbox order
    results: array[int] = field(default_factory=lambda: array("I"))  # requested order (invariant 1)
    members: array[int] = field(default_factory=lambda: array("I"))  # the same, ascending
    keys: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # SORT keys probed (update.py), bounded there

    @classmethod
    def create(cls, tag: str, uid: bool, key: Key, sets: dict[int, Container[int]],
               criteria: tuple[tuple[str, bool], ...] | None, results: Sequence[int]) -> UpdateContext:
        """A context whose client holds `results` (UIDs, in the requested order)."""
        members = array("I", sorted(results))
        # a SEARCH context's requested order is mailbox order: one array serves as both (invariant 1)
        return cls(tag, uid, key, sets, criteria, members if criteria is None else array("I", results), members)

    def has(self, uid: int) -> bool:
        i = bisect.bisect_left(self.members, uid)
        return i < len(self.members) and self.members[i] == uid

    def number(self, uid: int, msn: Callable[[int], int]) -> int:
        """How the updates name `uid`: itself for UID SEARCH / UID SORT, else its message number now (§4.3.2)."""
        return uid if self.uid else msn(uid)

    def line(self, items: Sequence[bytes]) -> bytes:
        """`* ESEARCH (TAG "t") [UID] item...` (RFC 5267 §4.3: the search correlator of the searching command)."""
        head = b"* ESEARCH (TAG " + encoder.quoted(self.tag) + b")" + (b" UID" if self.uid else b"")
        return head + b"".join(b" " + i for i in items) + b"\r\n"

    # ---- additions
    def add_search(self, uids: Iterable[int], msn: Callable[[int], int]) -> bytes:
        """SEARCH: insert `uids` (not yet results) in mailbox order; `ADDTO (0 set)`, or b"" if none."""
        added = sorted(set(uids))
        if len(added) > _MANY:  # one merge, not an insertion (a move of the array's tail) per message
            self.members = self.results = array("I", sorted({*self.members, *added}))
        else:
            for u in added:
                bisect.insort(self.members, u)  # `results` is the same array (create)
        return b"ADDTO (0 " + ordered_set([self.number(u, msn) for u in added]) + b")" if added else b""

    def replace(self, ordered: Sequence[int]) -> None:
        """SORT: the results are now `ordered` (the old ones and additions, in the requested order)."""
        self.results = array("I", ordered)
        self.members = array("I", sorted(ordered))

    def insert(self, index: int, uid: int) -> None:
        """SORT: `uid` at 0-based `index` of the requested order (update.py found the index)."""
        self.results.insert(index, uid)
        bisect.insort(self.members, uid)

    def addto(self, placed: Sequence[tuple[int, int]], msn: Callable[[int], int]) -> bytes:
        """SORT: `ADDTO (p set ...)` for (1-based position, UID) insertions in the order made; insertions at
        consecutive positions share one pair (§4.3.3's preferred form)."""
        groups: list[tuple[int, list[int]]] = []
        for pos, uid in placed:
            if groups and pos == groups[-1][0] + len(groups[-1][1]):
                groups[-1][1].append(self.number(uid, msn))
            else:
                groups.append((pos, [self.number(uid, msn)]))
        return b"ADDTO (" + b" ".join(b"%d %s" % (p, ordered_set(ns)) for p, ns in groups) + b")" if groups else b""

    # ---- removals
    def remove(self, uids: Iterable[int], msn: Callable[[int], int]) -> bytes:
        """Drop those of `uids` that are results: `REMOVEFROM (...)` (message numbers as `msn` gives them now), or
        b"" if none was a result."""
        gone = sorted({u for u in uids if self.has(u)})
        if not gone:
            return b""
        nums = [self.number(u, msn) for u in gone]
        if self.criteria is None:
            self.members = self.results = array("I", (u for u in self.members if not _in(gone, u)))
            return b"REMOVEFROM (0 " + ordered_set(nums) + b")"
        numbered = dict(zip(gone, nums))
        if len(gone) > _MANY:
            index = {u: i for i, u in enumerate(self.results)}
            at = sorted(index[u] for u in gone)
        else:
            at = sorted(self.results.index(u) for u in gone)
        groups: list[tuple[int, list[int]]] = []
        for done, i in enumerate(at):
            pos = i - done + 1  # §4.3.4: its position once the earlier ones are gone
            n = numbered[self.results[i]]
            if groups and pos == groups[-1][0]:
                groups[-1][1].append(n)
            else:
                groups.append((pos, [n]))
        drop = set(gone)
        self.results = array("I", (u for u in self.results if u not in drop))
        self.members = array("I", (u for u in self.members if u not in drop))
        return b"REMOVEFROM (" + b" ".join(b"%d %s" % (p, ordered_set(ns)) for p, ns in groups) + b")"


def _in(ascending: Sequence[int], u: int) -> bool:
    i = bisect.bisect_left(ascending, u)
    return i < len(ascending) and ascending[i] == u


def removal_lines(contexts: dict[str, UpdateContext], uids: Sequence[int], msn: Callable[[int], int]) -> list[bytes]:
    """The REMOVEFROM lines for `uids` about to be announced as expunged (state.py `Selected.expunged`): before
    the EXPUNGE / VANISHED, while their message numbers are valid (RFC 5267 §4.3.4)."""
    out: list[bytes] = []
    for ctx in contexts.values():
        item = ctx.remove(uids, msn)
        if item:
            out.append(ctx.line([item]))
    return out
