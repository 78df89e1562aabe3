"""Answers of SORT and THREAD kept while the mailbox's messages stay the same (issue 14's performance goals).

Theory of operation
-------------------
A SORT or THREAD answer depends only on the messages the search matched, the sort keys of their bodies, the
criteria or algorithm, and (for the non-UID forms) the session's sequence numbers. Keys never change while a
message stays in its mailbox, except when the store writes them again (`Store.content_version`, whose value
moves with every arrival, removal and key rewrite, and not with flag changes). So an answer is kept under

    (what, mailbox id, criteria or algorithm, content version, digest of the matched UIDs,
     UID form or digest of the session's announced UIDs)

and the next command with the same key sends it without reading a row or sorting again; a webmail that asks
for the same view after each flag change gets it from here. The digests are BLAKE2b over the UIDs as 32-bit
integers (16 bytes: a collision would need 2^64 tries by someone who cannot choose the UIDs anyway).

The version is read before the answer is computed, so an answer may come from a later state than the version
it is kept under, never an earlier one. The version moves with every change an answer depends on, so such an
entry can only be found by a command that read the same version before that change was committed; that
command might as well have read the store after the change (its own reads come later too), so what it is sent
is an answer it could have computed. Once the change is committed nobody reads that version again.

SORT also keeps its last order per (mailbox, criteria) with the version and the matched UIDs it was computed
for (`sort.placed_arrivals`, sort.py invariant 5): when only arrivals moved the version, the next SORT places
them into that order instead of sorting the mailbox, and checks the version again after its reads (unchanged:
every read saw one state).

THREAD keeps its last answer per (mailbox, algorithm, form) apart, as a forest with each thread's text
(`thread.Kept`, thread.py invariant 6), and places arrivals into it where RFC 5256 §3 gives the same answer.

One cache per store object (a process may hold several in tests), shared by that store's sessions.

Invariants
1. A kept answer is used only under an equal key, so it is byte for byte what computing it again would give.
2. The cache holds at most `MAX_ENTRIES` answers and `MAX_BYTES` bytes of them per store; the least recently
   used go first. An answer larger than `MAX_BYTES / 4` is not kept.
3. Looking up costs one point read of the store (`content_version`) and one pass over the UIDs (the digest),
   on the event loop: a 100,000-message mailbox's 400 KB are hashed in about a millisecond.
"""

from __future__ import annotations

import hashlib
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

MAX_ENTRIES = 64
MAX_BYTES = 64 * 1024 * 1024


def digest(uids: Sequence[int]) -> bytes:
    """16 bytes naming a list of UIDs (32-bit, RFC 9051 §2.3.1.1), order included."""
    data = uids.tobytes() if isinstance(uids, array) and uids.typecode == "I" else array("I", uids).tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


class AnswerCache:
    """Least recently used answers (bytes or an array of numbers) under hashable keys (module doc)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        """The answer kept under `key`, or None."""
        got = self._items.get(key)
        if got is None:
            return None
        self._items.move_to_end(key)
        return got[0]

    def put(self, key: Hashable, value: bytes | array[int] | tuple[Any, ...]) -> None:
        """Keep `value` under `key` (invariant 2: not if it is over a quarter of the byte budget). A tuple is
        counted by its bytes and arrays (other items as 200 bytes)."""
        size = _size(value)
        if size > self.max_bytes // 4:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= old[1]
        self._items[key] = (value, size)
        self.size += size
        while len(self._items) > self.max_entries or self.size > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.size -= dropped

    def __len__(self) -> int:
        return len(self._items)


def _size(value: object) -> int:
    if isinstance(value, array):
        return len(value) * value.itemsize + 200
    if isinstance(value, bytes):
        return len(value) + 200
    if isinstance(value, tuple):
        return sum(_size(v) for v in value) + 200
    return 200


_CACHES: weakref.WeakKeyDictionary[object, AnswerCache] = weakref.WeakKeyDictionary()


def cache_of(store: object) -> AnswerCache:
    """The answer cache of a store object, made on first use and dropped with the store."""
    cache = _CACHES.get(store)
    if cache is None:
        cache = _CACHES[store] = AnswerCache()
    return cache
