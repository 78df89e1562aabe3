"""A staged message read through a bounded window: the bytes operations the MIME scan uses, never the whole file.

Theory of operation
-------------------
A large message arrives in a staging file (SMTP DATA past its threshold, an IMAP APPEND literal), often with a
few header lines kept in memory before it (the trace fields SMTP delivery adds: `prefix`). `compute_meta` reads
its input only through a handful of `bytes` methods, always with explicit offsets: `len`, `raw[i]`, `raw[a:b]`,
`find(sub, start, end)`, `count(sub, start, end)`, `startswith(prefix, pos)` and `sub in raw`
(structure.py, text.py, headers.py `split_fields`, meta.py `minimal_meta`). `StagedMessage` offers exactly
those over `prefix + file`, so `meta.compute_meta_staged` runs the same code over a 50 MB file holding about
one `WINDOW` of it (measured: bench/smtp_memory.py, bench/RESULTS.md 2026-12-01 "memory9") instead of a
50 MB buffer.

* The window: one cached run of at most `WINDOW` bytes (`os.pread` from the file, joined with the prefix where
  it overlaps). An operation that falls inside it is a slice or a `bytes.find` on it with bounds (no copy);
  one that does not loads a new window at its start, `BACK` bytes early (the scan looks one or two bytes
  behind a delimiter it found). The scan moves forward, so a level reads its region about once.
* `find` over a region longer than the window searches window after window, each overlapping the last by
  `len(sub) - 1` bytes, so a match across a window edge is found; `count` of one byte adds the windows'
  counts, of a longer needle repeats `find` (non-overlapping, as `bytes.count`).
* A slice is read for the caller as asked (it is the caller's to bound: `text.part_text` reads at most about
  1 MiB of a part, a header block is read whole by `split_fields`).

Invariants
1. Every method answers exactly as the same method of `bytes(prefix + file)` would, for any offsets, negative and
   out of range included (tests/unit/test_mime_staged.py: against bytes, byte by byte and at random windows).
2. At most one window (`WINDOW` bytes, or the largest single `raw[i:j]` asked) is held between calls.
3. The file is read, never written; it must not change while in use: a file shorter than its size at open is
   OSError (`ShrunkError`), never a silent answer over other bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import overload

WINDOW = 1024 * 1024  # bytes held at a time (invariant 2)
BACK = 256  # bytes a window starts before the offset that made it load (module doc)


class ShrunkError(OSError):
    """The staged file ended before the size it had when opened (invariant 3)."""


class StagedMessage:
    """`prefix + the bytes of path`, read through one window (module doc). A context manager: closes the file.
    Raises OSError when the file cannot be opened."""

    def __init__(self, prefix: bytes, path: Path, window: int = WINDOW) -> None:
        self._prefix = bytes(prefix)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._file_size = os.fstat(self._fd).st_size
        except OSError:
            os.close(self._fd)
            raise
        self._len = len(self._prefix) + self._file_size
        self._window = max(16, window)
        self._back = min(BACK, self._window // 4)
        self._wstart = 0
        self._wdata = b""

    # -- lifetime ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file and drop the window (idempotent)."""
        self._wdata = b""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StagedMessage:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------------------------

    def _read(self, start: int, end: int) -> bytes:
        """The octets [start, end) (0 <= start <= end <= len), from the prefix and the file. Raises ShrunkError."""
        lp = len(self._prefix)
        head = self._prefix[start:end] if start < lp else b""
        fstart, fend = max(start, lp) - lp, end - lp
        if fend <= fstart:
            return head
        chunks = [head] if head else []
        pos = fstart
        while pos < fend:
            data = os.pread(self._fd, fend - pos, pos)
            if not data:
                raise ShrunkError(f"staged file ended at {pos} of {self._file_size} bytes")
            chunks.append(data)
            pos += len(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _load(self, pos: int, need: int) -> tuple[int, bytes]:
        """The window (start, data), made to hold [pos, pos + need) clipped to the end (need <= the window)."""
        w0, data = self._wstart, self._wdata
        want = min(self._len, pos + need)
        if w0 <= pos < w0 + len(data) and want <= w0 + len(data):
            return w0, data
        w0 = max(0, pos - self._back)
        self._wdata = b""  # invariant 2: the old window is gone before the new one is read
        data = self._read(w0, min(self._len, w0 + max(self._window, need + pos - w0)))
        self._wstart, self._wdata = w0, data
        return w0, data

    def _bounds(self, start: int | None, end: int | None) -> tuple[int, int]:
        """start, end as `bytes.find` reads them: None is the edge, negative counts from the end, then clipped."""
        n = self._len
        s = 0 if start is None else (start + n if start < 0 else start)
        e = n if end is None else (end + n if end < 0 else end)
        return max(0, s), max(0, min(n, e))

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, key: int) -> int: ...

    @overload
    def __getitem__(self, key: slice) -> bytes: ...

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            start, stop, step = key.indices(self._len)
            if step != 1:
                return self._read(*sorted((start, stop)))[::step] if start != stop else b""  # not used by mime
            if stop <= start:
                return b""
            w0, data = self._wstart, self._wdata
            if w0 <= start and stop <= w0 + len(data):
                return data[start - w0 : stop - w0]
            return self._read(start, stop)
        i = key - self._wstart
        if 0 <= i < len(self._wdata):  # inside the window: most look-ups
            return self._wdata[i]
        i = key + self._len if key < 0 else key
        if not 0 <= i < self._len:
            raise IndexError("index out of range")
        w0, data = self._load(i, 1)
        return data[i - w0]

    def find(self, sub: bytes, start: int | None = None, end: int | None = None) -> int:
        """As `bytes.find` (invariant 1); the region is searched window by window (module doc)."""
        w0, data = self._wstart, self._wdata
        if start is not None and end is not None and w0 <= start <= end <= w0 + len(data) and sub:
            i = data.find(sub, start - w0, end - w0)  # the region is inside the window (0 <= start <= end)
            return i if i < 0 else w0 + i
        raw_start = 0 if start is None else (start + self._len if start < 0 else start)
        if raw_start > self._len:
            return -1
        s, e = self._bounds(start, end)
        m = len(sub)
        if m == 0:
            return s if s <= e else -1
        if m > self._window // 2:  # a needle as long as a window: read the region whole (not used by mime)
            i = self._read(s, e).find(sub) if e - s >= m else -1
            return -1 if i < 0 else s + i
        pos = s
        while e - pos >= m:
            w0, data = self._load(pos, m)
            stop = min(e, w0 + len(data))
            i = data.find(sub, pos - w0, stop - w0)
            if i >= 0:
                return w0 + i
            if stop >= e:
                return -1
            pos = stop - m + 1
        return -1

    def count(self, sub: bytes, start: int | None = None, end: int | None = None) -> int:
        """As `bytes.count` (invariant 1): non-overlapping occurrences of `sub` in the region."""
        w0, data = self._wstart, self._wdata
        if start is not None and end is not None and w0 <= start <= end <= w0 + len(data) and sub:
            return data.count(sub, start - w0, end - w0)  # the region is inside the window
        raw_start = 0 if start is None else (start + self._len if start < 0 else start)
        if raw_start > self._len:
            return 0
        s, e = self._bounds(start, end)
        m = len(sub)
        if m == 0:
            return e - s + 1 if s <= e else 0
        n = 0
        if m == 1:
            pos = s
            while pos < e:
                w0, data = self._load(pos, 1)
                stop = min(e, w0 + len(data))
                n += data.count(sub, pos - w0, stop - w0)
                pos = stop
            return n
        pos = s
        while (i := self.find(sub, pos, e)) >= 0:
            n += 1
            pos = i + m
        return n

    def startswith(self, prefix: bytes, start: int | None = None, end: int | None = None) -> bool:
        """As `bytes.startswith` with one prefix (invariant 1)."""
        w0, data = self._wstart, self._wdata
        if start is not None and w0 <= start and start + len(prefix) <= w0 + len(data) and (
                end is None or w0 <= end <= w0 + len(data)):  # inside the window
            return data.startswith(prefix, start - w0, None if end is None else end - w0)
        raw_start = 0 if start is None else (start + self._len if start < 0 else start)
        if raw_start > self._len:
            return False
        s, e = self._bounds(start, end)
        if s + len(prefix) > e:
            return False
        return self[s : s + len(prefix)] == prefix if prefix else True

    def endswith(self, suffix: bytes, start: int | None = None, end: int | None = None) -> bool:
        """As `bytes.endswith` with one suffix (invariant 1)."""
        raw_start = 0 if start is None else (start + self._len if start < 0 else start)
        if raw_start > self._len:
            return False
        s, e = self._bounds(start, end)
        if e - s < len(suffix):
            return False
        return self[e - len(suffix) : e] == suffix if suffix else True

    def __contains__(self, sub: bytes | int) -> bool:
        return self.find(bytes((sub,)) if isinstance(sub, int) else sub) >= 0
