"""The one receive buffer of the sans-I/O protocol cores (SMTP, POP3, IMAP): bytes in, lines and blocks out.

Theory of operation
-------------------
A core is fed whatever arrived (`feed`) and takes from it complete lines (`take_line`) or counted blocks
(`take`: IMAP literals, BDAT chunks); when nothing complete is buffered it answers `NEED_DATA`, the one marker
all three cores return, and its session reads more. Scanners of their own (SMTP's DATA end, POP3's peeking)
work on `data` directly and keep their place in `scanned`.

Lines end at LF; the core decides whether a bare LF is acceptable and strips the line end. A line longer than
the core's limit is refused without being held: `take_line` returns `TOO_LONG`, drops what is buffered of it
and, when its end has not arrived yet, goes on dropping input up to and including the next LF (`discarding`),
so one long line costs at most `limit` bytes of memory however long it is. A core that must look at the end of
a dropped line (IMAP: a literal announced at the end of a refused command still follows, RFC 7888 §4) asks for
its last `keep_tail` bytes, found in `tail` once the line has ended (`feed` returns True then).

Invariants
1. `data` never holds more than what was fed minus what was taken or dropped; while `discarding`, nothing fed
   is kept until the LF that ends the dropped line.
2. `scanned` bytes at the start of `data` are known to hold no LF (line search starts there): each byte is
   searched once however the input is split. Every method that consumes bytes resets it.
3. The same input gives the same lines and blocks whatever the split into `feed` calls (tests feed whole, byte
   by byte and at random splits).
"""

from __future__ import annotations


class NeedData:
    """The type of `NEED_DATA` (one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


class TooLong:
    """The type of `TOO_LONG` (one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"


NEED_DATA = NeedData()  # nothing complete is buffered: read more and feed it
TOO_LONG = TooLong()  # the next line is longer than the limit: dropped (module essay)


class ReceiveBuffer:
    """Bytes received and not consumed yet (module essay). `keep_tail`: bytes of a dropped line's end to keep."""

    __slots__ = ("data", "scanned", "discarding", "tail", "_keep")

    def __init__(self, keep_tail: int = 0) -> None:
        self.data = bytearray()
        self.scanned = 0
        self.discarding = False
        self.tail = b""
        self._keep = keep_tail

    def __len__(self) -> int:
        return len(self.data)

    def feed(self, data: bytes | bytearray) -> bool:
        """Append `data`; while a too long line is being dropped, drop up to and including its LF first.
        True when that line ended in this data (its last `keep_tail` bytes are then in `tail`)."""
        if self.discarding:
            i = data.find(b"\n")
            if i < 0:
                if self._keep:
                    self.tail = (self.tail + bytes(data[-self._keep:]))[-self._keep:]
                return False
            if self._keep:
                self.tail = (self.tail + bytes(data[max(0, i + 1 - self._keep):i + 1]))[-self._keep:]
            self.discarding = False
            self.data += data[i + 1:]
            return True
        self.data += data
        return False

    def take_line(self, limit: int) -> bytes | NeedData | TooLong:
        """The next line with its LF, if complete and at most `limit` bytes; `NEED_DATA` if more must come;
        `TOO_LONG` if it is longer (dropped; `discarding` tells whether its end is still to come)."""
        buf = self.data
        i = buf.find(b"\n", self.scanned, limit)
        if i >= 0:
            line = bytes(buf[:i + 1])
            del buf[:i + 1]
            self.scanned = 0
            return line
        if len(buf) < limit:
            self.scanned = len(buf)
            return NEED_DATA
        j = buf.find(b"\n", limit)
        if j >= 0:
            if self._keep:
                self.tail = bytes(buf[max(0, j + 1 - self._keep):j + 1])
            del buf[:j + 1]
        else:
            if self._keep:
                self.tail = bytes(buf[-self._keep:])
            buf.clear()
            self.discarding = True
        self.scanned = 0
        return TOO_LONG

    def take(self, n: int) -> bytes:
        """Up to `n` bytes from the start (fewer if fewer are buffered)."""
        buf = self.data
        out = bytes(buf[:n])
        del buf[:n]
        self.scanned = 0
        return out

    def drop(self, n: int) -> None:
        """Consume `n` bytes without copying them."""
        del self.data[:n]
        self.scanned = 0

    def clear(self) -> None:
        """Forget everything buffered, and any line being dropped (after STARTTLS)."""
        self.data.clear()
        self.scanned = 0
        self.discarding = False
        self.tail = b""


__all__ = ["NEED_DATA", "TOO_LONG", "NeedData", "ReceiveBuffer", "TooLong"]
