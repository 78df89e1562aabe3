"""Connection counts shared by the worker processes of one `postroom serve` (issue 17 item 1).

Theory of operation
-------------------
With `server.workers` above 1 every worker accepts from the same listening sockets, but `limits.connections_total`
and `limits.connections_per_ip` are limits of the server, not of one worker. The parent makes one anonymous
shared memory map (`mmap(-1)`, `MAP_SHARED`) before it forks; every worker inherits it. The map holds one region
per worker slot; a worker writes only its own region and reads all of them:

    region   = total (u32, padded to 8 bytes) + `slots` entries
    entry    = key (16 bytes: BLAKE2b of the client address) + count (u32)

A worker admits a connection when the sum of the totals is below `connections_total` and the sum of the
address's counts is below `connections_per_ip`, and then counts it in its own region. The check and the count
are one step under an `fcntl.flock` of a lock file in the data folder (opened by each process for itself: a
descriptor inherited across fork would share one lock between the processes), so a burst of connections at
several workers cannot overshoot a limit. The kernel drops the lock of a process that dies holding it.

An address's entry is found by probing from its key's first four bytes (linear probing); an entry whose count
fell to 0 keeps its key and is reused by the next new address that probes past it. The parent zeroes the region
of a worker that died (`reset`) before it starts the replacement, so the connections of a dead worker are not
counted forever.

Invariants
1. A region is written only by its worker (and by the parent while no worker runs in that slot).
2. `admit` counts the connection in the same locked step in which it checked the limits: the limits cannot be
   overshot by connections admitted concurrently in different workers.
3. Memory is fixed at start: `workers * (8 + slots * 20)` bytes; a flood of distinct addresses only reuses
   entries whose count is 0.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path

_HEADER = 8
_ENTRY = 20  # 16-byte key + u32 count
_KEY = 16


def _key(ip: str) -> bytes:
    return hashlib.blake2b(ip.encode(), digest_size=_KEY).digest()


class SharedCounts:
    """Per-worker connection counts in one shared map (module doc). `workers`: the number of slots;
    `slots`: entries per region (at least 4 x `connections_total` keeps probes short); `lock_path`: the file
    whose flock serialises `admit`/`release` across processes (created if missing). Must be made before the
    fork; each worker then calls `bind(slot)`."""

    def __init__(self, workers: int, slots: int, lock_path: Path) -> None:
        if workers < 1 or slots < 1:
            raise ValueError("SharedCounts needs at least one worker and one slot")
        self.workers = workers
        self.slots = slots
        self.lock_path = lock_path
        self._region = _HEADER + slots * _ENTRY
        self._map = mmap.mmap(-1, workers * self._region, flags=mmap.MAP_SHARED)
        self.slot = -1  # this process's region (set by `bind` in a worker)
        self._lock_fd = -1
        self._lock_pid = -1
        self._where: dict[str, int] = {}  # ip -> offset of its entry in this worker's region

    def bind(self, slot: int) -> None:
        """This process is the worker of `slot` (0-based): it counts in that region from now on."""
        if not 0 <= slot < self.workers:
            raise ValueError(f"no worker slot {slot}")
        self.slot = slot
        self._where = {}

    def _locked(self) -> int:
        if self._lock_pid != os.getpid():  # invariant 2: a descriptor of this process's own (module doc)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_pid = os.getpid()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self._lock_fd

    def _find(self, base: int, key: bytes) -> tuple[int, int]:
        """(offset of `key`'s entry in the region at `base` or -1, offset of the first entry with count 0 on its
        probe path or -1)."""
        m = self._map
        start = int.from_bytes(key[:4], "little") % self.slots
        free = -1
        for i in range(self.slots):
            at = base + _HEADER + ((start + i) % self.slots) * _ENTRY
            stored = m[at:at + _KEY]
            count = struct.unpack_from("<I", m, at + _KEY)[0]
            if stored == key:
                return at, free
            if count == 0:
                if free < 0:
                    free = at
                if stored == bytes(_KEY):  # never used: the key is not further on
                    return -1, free
        return -1, free

    def total(self) -> int:
        """Connections open in every worker."""
        return sum(struct.unpack_from("<I", self._map, w * self._region)[0] for w in range(self.workers))

    def count(self, ip: str) -> int:
        """Connections from `ip` open in every worker."""
        key, n = _key(ip), 0
        for w in range(self.workers):
            at, _ = self._find(w * self._region, key)
            if at >= 0:
                n += struct.unpack_from("<I", self._map, at + _KEY)[0]
        return n

    def admit(self, ip: str, total_limit: int, per_ip_limit: int) -> str | None:
        """Count a connection from `ip` in this worker's region if the server-wide counts allow it; returns
        None when admitted, else the refusal reason ("total" or "per-ip") and counts nothing (invariant 2)."""
        fd = self._locked()
        try:
            if self.total() >= total_limit:
                return "total"
            if self.count(ip) >= per_ip_limit:
                return "per-ip"
            base = self.slot * self._region
            at = self._where.get(ip, -1)
            key = _key(ip)
            if at < 0:
                at, free = self._find(base, key)
                if at < 0:
                    if free < 0:  # every entry busy (connections_total raised past the map by a reload)
                        return "total"
                    at = free
                    self._map[at:at + _KEY] = key
                self._where[ip] = at
            struct.pack_into("<I", self._map, at + _KEY, struct.unpack_from("<I", self._map, at + _KEY)[0] + 1)
            struct.pack_into("<I", self._map, base, struct.unpack_from("<I", self._map, base)[0] + 1)
            return None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def release(self, ip: str) -> None:
        """An admitted connection from `ip` ended in this worker."""
        fd = self._locked()
        try:
            base = self.slot * self._region
            at = self._where.get(ip, -1)
            if at < 0:
                return
            left = max(0, struct.unpack_from("<I", self._map, at + _KEY)[0] - 1)
            struct.pack_into("<I", self._map, at + _KEY, left)
            if left == 0:
                del self._where[ip]  # the entry keeps its key for reuse (module doc)
            struct.pack_into("<I", self._map, base, max(0, struct.unpack_from("<I", self._map, base)[0] - 1))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def reset(self, slot: int) -> None:
        """Forget every count of `slot` (the parent, after its worker died: invariant 1)."""
        fd = self._locked()
        try:
            base = slot * self._region
            self._map[base:base + self._region] = bytes(self._region)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
