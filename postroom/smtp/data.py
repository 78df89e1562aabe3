"""DATA and BDAT: receiving a message body, unstuffed and checked as it arrives, held or handed out in pieces.

Theory of operation
-------------------
`BodyReader` is the body of one transaction, whichever command carries it. `protocol.ServerCore` owns one, and
switches its reader mode to DATA or BDAT; in that mode it asks the reader for the next event:

    DATA  (RFC 5321 §4.1.1.4)  `read_data` finds CRLF "." CRLF with bytes.find in the receive buffer, and unstuffs
                               (`syntax.dot_unstuff`, RFC 5321 §4.5.2) and checks a piece of whole lines of about
                               `DATA_PIECE` bytes at a time; the end line is `END`.
    BDAT  (RFC 3030 §2)        `read_chunk` takes exactly the chunk's size, no unstuffing (BINARYMIME is not
                               offered, so chunks carry 7bit or 8bit lines, RFC 3030 §3); the chunk's end is `END`.

Each piece goes through `keep`: the size is counted against `max_size`, the line ends and NULs are checked across
pieces (`mime.lineends.Checker`), and the bytes are appended to one buffer, unstuffed once. Past `spill_at` the
buffer goes out as a `BodyData` event (the session writes it to its staging file) and a new one starts.

Invariants
1. The reader holds at most about `DATA_PIECE` plus one `receive_data` of unread DATA (in the core's receive
   buffer) and `spill_at` of body; past `max_size` a body is counted and dropped as it arrives, never kept, and
   answered 552 5.3.4 at its end (RFC 1870 §6).
2. Any CR not followed by LF, LF not preceded by CR, or NUL refuses the whole body (550 5.6.0; SMTP smuggling,
   CVE-2023-51766 family); after such a fault the rest is counted as read and not kept.
3. A DATA piece never ends between CR and LF (so a stuffed dot after it is seen) and a DATA body ends only at
   CRLF "." CRLF, the CRLF before the dot being the body's last line end (or the DATA command's own).
4. A body that fails or is forgotten after some of it went out as `BodyData` leaves `discard_pending` set: the
   core then emits one `BodyDiscarded`.
"""

from __future__ import annotations

from typing import Final

from postroom.mime.lineends import NUL, Checker
from postroom.net.receivebuffer import NEED_DATA, NeedData, ReceiveBuffer

from . import replies as R
from .events import BodyData
from .syntax import Reply, dot_unstuff

DATA_PIECE = 64 * 1024  # DATA is unstuffed and checked in pieces of about this many bytes (invariant 1)


class End:
    """The type of `END`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Final = End()  # the end line of DATA, or the last byte of a BDAT chunk, was read


class BodyReader:
    """The body of one transaction (DATA or BDAT chunks), unstuffed; `max_size` and `spill_at` in octets (a
    `spill_at` of 0: never hand out pieces). Raises nothing: faults are kept in `fault` (a Reply)."""

    def __init__(self, max_size: int, spill_at: int) -> None:
        self.max_size = max_size
        self.spill_at = spill_at
        self.buf = bytearray()  # bytes not yet handed out as BodyData
        self.size = 0  # octets so far, handed out or not
        self.spilled = False  # some went out as BodyData
        self.discard_pending = False  # a BodyDiscarded event is due (invariant 4)
        self.fault: Reply | None = None  # too big or stray CR/LF/NUL: the rest is counted, not kept
        self._lines = Checker()
        self._line_start = True  # DATA: the unread data starts a line (so "." CRLF there ends the data)
        self.chunk_left = 0  # BDAT: octets of the current chunk still to read
        self._keep_chunk = False  # BDAT: the chunk belongs to the body (else it is read and dropped)

    # --- DATA ----------------------------------------------------------------------------------------------------
    def start_data(self, rb: ReceiveBuffer) -> None:
        """DATA was accepted (354): the body starts with the bytes after the DATA line."""
        self._line_start = True  # the CRLF that ended the DATA line counts before a final "." (RFC 5321 §4.1.1.4)
        rb.scanned = 0

    def read_data(self, rb: ReceiveBuffer) -> BodyData | End | NeedData:
        """Consume DATA from `rb`: a `BodyData` to hand out, `END` after the end line, or `NEED_DATA`."""
        buf = rb.data
        while True:
            if self._line_start:
                if buf[:3] == b".\r\n":
                    rb.drop(3)
                    return END
                if len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
                    return NEED_DATA
            i = buf.find(b"\r\n.\r\n", max(0, rb.scanned - 4))
            if i >= 0:
                cut = i + 2  # the rest starts with "." CRLF at a line start: the end, next time round
            elif len(buf) < DATA_PIECE:
                rb.scanned = len(buf)
                return NEED_DATA
            else:
                # Invariant 3: hand on whole lines; one longer than a piece is cut, never between CR and LF.
                j = buf.rfind(b"\r\n")
                cut = j + 2 if j >= 0 else len(buf) - (buf[-1] == 0x0D)
            ev = self._data_piece(rb, cut)
            if ev is not None:
                return ev

    def _data_piece(self, rb: ReceiveBuffer, n: int) -> BodyData | None:
        """Unstuff and keep the next `n` bytes of DATA; they never end between CR and LF."""
        piece = rb.take(n)
        start = self._line_start
        self._line_start = piece.endswith(b"\r\n")
        if self.fault is not None:
            return None  # counted as read, not kept (invariant 1)
        return self.keep(dot_unstuff(piece, start))  # RFC 5321 §4.5.2

    # --- BDAT ----------------------------------------------------------------------------------------------------
    def start_chunk(self, size: int, keep: bool) -> None:
        """A BDAT chunk of `size` octets follows; `keep`: it belongs to the body (else it is read and dropped).
        A body that the chunk would take past `max_size` fails now: the chunk is skipped (RFC 1870 §6)."""
        self.chunk_left = size
        self._keep_chunk = keep
        if keep and self.fault is None and self.size + size > self.max_size:
            self.fail(R.R552_TOO_BIG)

    def read_chunk(self, rb: ReceiveBuffer) -> BodyData | End | NeedData:
        """Consume the chunk from `rb`: a `BodyData` to hand out, `END` once it is all read, or `NEED_DATA`."""
        take = min(self.chunk_left, len(rb))
        ev: BodyData | None = None
        if take:
            if self._keep_chunk:
                ev = self.keep(rb.take(take))
            else:
                rb.drop(take)
            self.chunk_left -= take
        if ev is not None:
            return ev
        return NEED_DATA if self.chunk_left else END

    # --- the body ------------------------------------------------------------------------------------------------
    def keep(self, raw: bytes | bytearray) -> BodyData | None:
        """Account for the next bytes of the body: past `max_size` or at a stray CR/LF/NUL the body fails and
        the rest is only counted (invariants 1 and 2); past `spill_at` they go out as `BodyData`."""
        if self.fault is not None:
            return None
        self.size += len(raw)
        if self.size > self.max_size:
            self.fail(R.R552_TOO_BIG)  # RFC 1870 §6 / RFC 5321 §4.5.3.1.10
            return None
        fault = self._lines.feed(raw)
        if fault is not None:
            self.fail(R.R550_NUL if fault == NUL else R.R550_BARE_LINE_ENDING)
            return None
        self.buf += raw
        if self.spill_at and (self.spilled or len(self.buf) >= self.spill_at):
            data, self.buf = self.buf, bytearray()
            self.spilled = True
            return BodyData(data)
        return None

    def fail(self, reply: Reply) -> None:
        """The body will be refused with `reply` at its end; what went out already is to be discarded."""
        self.fault = reply
        self.buf.clear()
        if self.spilled:
            self.spilled = False
            self.discard_pending = True

    def finish(self) -> Reply | None:
        """The body is complete: its fault (a stray CR at the very end counts), or None if it is a message."""
        if self.fault is None and self._lines.finish() is not None:
            self.fail(R.R550_BARE_LINE_ENDING)
        return self.fault

    def take(self) -> bytes:
        """The bytes not handed out yet, after `finish` said None; the session has any spilled file now."""
        data = bytes(self.buf)
        self.spilled = False
        self.buf = bytearray()
        return data

    def reset(self) -> None:
        """Forget the body (end of transaction); a spilled one leaves `discard_pending` (invariant 4)."""
        if self.spilled:
            self.discard_pending = True
        self.buf = bytearray()
        self.size = 0
        self.spilled = False
        self.fault = None
        self._lines = Checker()
