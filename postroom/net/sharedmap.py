"""A bounded key -> (float, float) table in shared memory, for state the worker processes count together.

Theory of operation
-------------------
The SMTP door (smtp/door.py) counts per client address and per user: connections and messages per minute,
messages and recipients per hour, pregreet passes, greylisting triplets. With `server.workers` > 1 those are
counts of the server, so the parent makes one `SharedMap` before it forks (an anonymous `MAP_SHARED` map every
worker inherits) and each worker's `Door` keeps its tables in it.

    entry = key (16 bytes: BLAKE2b of the table's tag and the key) + a (f64) + b (f64) + touched (f64)

A key's entry is searched in the `PROBE` entries from its hash's position (linear probing); a new key takes
the first empty entry there, or else evicts the one touched longest ago (least recently used, as the
in-memory tables drop theirs). A read-modify-write (`with table.locked(): get ... put`) holds an `fcntl.flock`
of a lock file, opened by each process for itself, so two workers never count the same hit twice or lose one.
The kernel drops the flock of a process that dies.

Invariants
1. Memory is fixed at start: `capacity` x 40 bytes (pages are touched only as keys land on them).
2. `get` and `put` run under `locked()`; a process never holds the lock across an await (the callers are
   synchronous).
3. A key is found wherever it was put, until it is evicted: every entry of its probe window is looked at
   before an empty one or the least recently used one is taken.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_KEY = 16
_ENTRY = _KEY + 24
PROBE = 16
_EMPTY = bytes(_KEY)


class SharedMap:
    """key -> (a, b) for every process forked after it was made (module doc). `capacity`: entries (rounded up
    to a multiple of PROBE); `lock_path`: the file whose flock serialises the processes (created if missing)."""

    def __init__(self, capacity: int, lock_path: Path) -> None:
        self.capacity = max(PROBE, -(-capacity // PROBE) * PROBE)
        self.lock_path = lock_path
        self._map = mmap.mmap(-1, self.capacity * _ENTRY, flags=mmap.MAP_SHARED)
        self._fd = -1
        self._pid = -1
        self._depth = 0

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock of every process for a read-modify-write (re-entrant within the process)."""
        if self._pid != os.getpid():  # a descriptor of this process's own: one inherited would share the lock
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
            self._depth = 0
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    @staticmethod
    def key(tag: str, key: str) -> bytes:
        """The 16-byte key of `key` in the table `tag` (tables share the map, not their keys)."""
        digest = hashlib.blake2b(f"{tag}\0{key}".encode(), digest_size=_KEY).digest()
        return digest if digest != _EMPTY else b"\1" + digest[1:]

    def _find(self, key: bytes) -> tuple[int, bool]:
        """(offset of `key`'s entry, True) or (offset to put it: an empty entry or the LRU one, False)."""
        m = self._map
        start = int.from_bytes(key[:4], "little") % (self.capacity // PROBE) * PROBE
        empty = oldest = -1
        oldest_time = float("inf")
        for i in range(PROBE):
            at = (start + i) * _ENTRY
            stored = m[at:at + _KEY]
            if stored == key:
                return at, True
            if stored == _EMPTY:
                if empty < 0:
                    empty = at
                continue
            touched = struct.unpack_from("<d", m, at + _KEY + 16)[0]
            if touched < oldest_time:
                oldest, oldest_time = at, touched
        return (empty if empty >= 0 else oldest), False

    def get(self, key: bytes) -> tuple[float, float] | None:
        """The values of `key`, or None (never put, or evicted). Call under `locked()`."""
        at, found = self._find(key)
        if not found:
            return None
        a, b = struct.unpack_from("<dd", self._map, at + _KEY)
        return float(a), float(b)

    def put(self, key: bytes, a: float, b: float, now: float) -> None:
        """Set the values of `key`, touched at `now` (seconds; the eviction order). Call under `locked()`."""
        at, found = self._find(key)
        if not found:
            self._map[at:at + _KEY] = key
        struct.pack_into("<ddd", self._map, at + _KEY, a, b, now)
