"""Line ends and NUL in message content: the one check, and the one repair, used on every way into the queue.

Theory of operation
-------------------
RFC 5322 §2.3 and RFC 5321 §2.3.8: in a message, CR and LF MUST only occur together as CRLF; RFC 5322 §2.3
and RFC 2045 §2.7/§2.8 (7bit and 8bit data, the only kinds Postroom accepts: it never offers BINARYMIME) also
exclude NUL. A receiver that ends DATA on something other than CRLF "." CRLF (a bare CR or LF before or after
the dot) can be fooled into reading a second message out of one that carries stray CR or LF: SMTP smuggling
(CVE-2023-51764 family). So content with a stray CR, a stray LF or a NUL never leaves Postroom, and the decision
lives here, once:

* `stray(data)` names the first fault ("bare CR", "bare LF", "NUL") or returns None. It is three C-speed
  counts and a find, no loop per byte.
* `Checker` is the same test over content that arrives in pieces (SMTP DATA and BDAT stream to a staging file):
  a CR at the end of one piece and an LF at the start of the next are one CRLF.
* `normalise(data)` is the repair for content a local program handed over (`postroom sendmail`): line ends
  (LF, CRLF, CR LF) become CRLF and every stray CR and every NUL becomes a space, as Postfix's cleanup does
  with `cleanup_replace_stray_cr_lf = yes` (Postfix 3.9).

Who uses which (one rule per entry, see docs/ARCHITECTURE.md "Stray CR, LF and NUL"):

    SMTP DATA and BDAT, every listener     refused: 550 5.6.0 (smtp/protocol.py, `Checker`)
    postroom sendmail                      repaired: `normalise` (sendmail.py)
    the router's door (Router.accept)      refused, whatever the caller (`stray`): imports of other entries,
                                           list copies, forwards and held posts all pass this door
    DSNs (delivery/dsn.py)                 made by Postroom with CRLF lines; the attached original passed the door
    the outbound client (delivery/client)  last line of defence: refuses to send content `stray` objects to

Invariants
1. `stray(x) is None` exactly when a `Checker` fed x in any split reports no fault.
2. `stray(normalise(x)) is None` for every x.
3. `normalise(x) == x` when `stray(x) is None` and x is empty or ends in CRLF.
"""

from __future__ import annotations

BARE_CR = "bare CR"
BARE_LF = "bare LF"
NUL = "NUL"


def stray(data: bytes | bytearray) -> str | None:
    """The fault of `data` (`BARE_CR`, `BARE_LF` or `NUL`), or None if every CR and LF is part of a CRLF and
    there is no NUL (RFC 5322 §2.3, RFC 5321 §2.3.8)."""
    if b"\x00" in data:
        return NUL
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf:
        return BARE_CR
    if data.count(b"\n") != crlf:
        return BARE_LF
    return None


class Checker:
    """`stray` over content fed in pieces (a CRLF may be split between two pieces). Memory: one flag."""

    def __init__(self) -> None:
        self._after_cr = False
        self.fault: str | None = None

    def feed(self, piece: bytes | bytearray) -> str | None:
        """Check the next piece; returns the fault found so far (it sticks), or None."""
        if self.fault is not None or not piece:
            return self.fault
        start, end = 0, len(piece)
        if self._after_cr:
            if piece[0] != 0x0A:
                self.fault = BARE_CR
                return self.fault
            start = 1
        self._after_cr = end > start and piece[end - 1] == 0x0D
        if self._after_cr:
            end -= 1
        self.fault = stray(piece if (start, end) == (0, len(piece)) else piece[start:end])
        return self.fault

    def finish(self) -> str | None:
        """The content is complete: a CR at its very end is bare."""
        if self.fault is None and self._after_cr:
            self.fault = BARE_CR
        return self.fault


def normalise(data: bytes) -> bytes:
    """Every line end (CRLF, or a lone LF) as CRLF; a CR not followed by LF and every NUL as a space (module
    doc). The result has no stray CR, LF or NUL (invariant 2)."""
    if stray(data) is None:
        return data
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b" ").replace(b"\x00", b" ")
    return text.replace(b"\n", b"\r\n")


class CrlfCounter:
    """`crlf_size` of a body fed in pieces (a file read in chunks): a CR at the end of one piece and an LF at
    the start of the next are one CRLF, not a bare LF."""

    def __init__(self) -> None:
        self.octets = 0  # bytes fed
        self.bare_lf = 0  # LFs not preceded by CR
        self._last = b""  # the last byte fed

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Count the next piece of the body (`octets`, `bare_lf`); pieces may split a CRLF. A bytes or bytearray
        piece is counted where it is (a memoryview is copied: it has no `count`)."""
        data = chunk if isinstance(chunk, (bytes, bytearray)) else bytes(chunk)
        if not data:
            return
        self.bare_lf += data.count(b"\n") - data.count(b"\r\n")
        if data[:1] == b"\n" and self._last == b"\r":
            self.bare_lf -= 1
        self.octets += len(data)
        self._last = bytes(data[-1:])

    @property
    def size(self) -> int:
        """The octets fed with every bare LF counted as CRLF and an unterminated last line ended (+2)."""
        unterminated = 2 if self.octets and self._last != b"\n" else 0
        return self.octets + self.bare_lf + unterminated


def crlf_size(data: bytes) -> int:
    """Octets of `data` in canonical form: every line ended by CRLF (RFC 5322 §2.1), i.e. each bare LF counted
    as CRLF and a last line without a line end counted with one. This is what POP3 sends for a stored body
    (`pop3.protocol.dot_stuff`, before byte-stuffing) and so what LIST/STAT/RETR announce (RFC 1939 §11).
    Two C-speed passes; a body stored with CRLF throughout (anything SMTP accepted) gives len(data) (+2 if it
    does not end in CRLF)."""
    counter = CrlfCounter()
    counter.feed(data)
    return counter.size
