"""Sans-I/O IMAP framing: cutting a byte stream into commands, lines and literals (RFC 9051 §4.3, §7.5; RFC 7888).

Theory of operation
-------------------
A command is one line, unless the line ends in a literal announcement `{n}` (synchronizing), `{n+}`
(non-synchronizing, LITERAL+, RFC 7888) or `~{n}` / `~{n+}` (literal8, RFC 3516): then n bytes of literal
follow, and after them the command line goes on. `feed(bytes)` appends; `next_event()` returns one of:

* `NEED_DATA`: nothing complete is buffered;
* `LiteralRequest(size, sync, tag, binary, verb)`: a literal is announced. The session must answer with
  `accept_literal()` (and, when `sync`, send the `+` continuation request, RFC 9051 §7.5) or
  `reject_literal()` (and send a tagged NO/BAD). A rejected synchronizing literal is never sent by the client,
  so the framer forgets the command; a rejected non-synchronizing literal is on its way anyway, so the framer
  skips its bytes and the rest of the command (RFC 7888 §4, invariant 4);
* `RawCommand(data)`: the whole command, lines and literals as received (for `parser.parse_command`);
* `FramingError(tag, text)`: a line or a command was longer than the limits ("Line too long" when `max_line`
  cut in, "Command too long" when the command's `max_command` did, "Too many literals"); its bytes were
  dropped and the next event starts with the next command.

Refused commands and their literals (RFC 9051 §4.3, RFC 7888 §4): a literal's octets are data, never command
text. Whenever the framer drops a command line (too long, the command too long, too many literals, a rejected
literal), it still looks at how that line ended. `{n+}` or `~{n+}`: the client sends those n octets without
waiting, so they are skipped (counted, not kept), and the command's text goes on after them; its next lines are
dropped the same way, without a second error, until one ends without a literal announcement. `{n}` or `~{n}`:
the client waits for a `+` that a refused command never gets, so nothing of it follows. An overlong line's tail
is dropped as it arrives, so only its last `WINDOW` bytes are kept to recognise the announcement.

A command line may be as long as what is left of `max_command`, and no longer than `max_line`. The IMAP session
makes both the command limit (`limits.imap_command_length`): in IMAP the whole command is what is limited
(RFC 9051 §4 leaves the number to the server), so a long ID (RFC 2971 §3.3) or SEARCH fits on one line.

`next_line(limit)` takes one bare line (IDLE's `DONE`, an AUTHENTICATE response) from the same stream, with a
limit of its own (default `max_line`).

`accept_literal(external=True)` lets the session take the literal's bytes itself (a large APPEND message is
streamed to a file, never buffered here): `take_external(n)` hands out what is already buffered, the session
reads the rest from its connection, then `external_done()` resumes framing. The command text keeps an empty
literal (`{0}`, `~{0}`) in its place, so the parser sees a well-formed command.

Invariants
1. Nothing here raises on any input; every byte sequence gives events.
2. At most `max_command` bytes of command text (and of one line, at most `max_line`; of a bare line, its own
   limit) are buffered; literal bytes count against the size the session accepted, never more.
3. A line's tail past `max_line` is dropped as it arrives (never buffered), up to and including its LF; only
   its last `WINDOW` bytes are kept (invariant 4).
4. No byte inside a literal is ever framed as a command line: every path that drops a command line checks its
   end for a non-synchronizing announcement and skips that literal, and the lines of a refused command that
   follow, up to one that ends without an announcement (`_dropped_line_end`). Skipping counts bytes and keeps
   none, whatever n is (up to 20 digits, as for any announcement).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postroom.net.receivebuffer import NEED_DATA as NEED_DATA  # re-exported: the sessions import it from here
from postroom.net.receivebuffer import TOO_LONG, ReceiveBuffer
from postroom.net.receivebuffer import NeedData as _NeedData

MAX_LITERALS = 1000  # literals in one command
WINDOW = 32  # last bytes of a dropped line kept to see its literal announcement: `~{` 20 digits `+}\r\n` is 26
# NEED_DATA, the one marker of the cores, comes from net/receivebuffer.py (re-exported above).


@dataclass(frozen=True, slots=True)
class LiteralRequest:
    """A literal announcement `{size}` / `{size+}` / `~{size}` (module doc): `size` octets; `sync` unless LITERAL+
    (RFC 7888); the session answers with `Framer.accept_literal` or `Framer.reject_literal` before the next event."""

    size: int
    sync: bool
    tag: str
    binary: bool = False  # literal8 (~{n})
    verb: str = ""  # the command's verb (UID skipped), so the session can give APPEND a larger limit


@dataclass(frozen=True, slots=True)
class RawCommand:
    """One whole command as received: its lines (CRLF included) and its literals' octets, for
    `parser.parse_command`."""

    data: bytes


@dataclass(frozen=True, slots=True)
class FramingError:
    """A command dropped for a limit (module doc: "Line too long", "Command too long", "Too many literals"): the
    session answers `tag BAD text` (RFC 9051 §7.1.3); `tag` is "*" when the line had none."""

    tag: str
    text: str


Event = _NeedData | LiteralRequest | RawCommand | FramingError

_LITERAL_END = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\r?\n\Z")
_TAG = re.compile(rb"[\x21-\x7e]+")
_TAG_BAD = frozenset(b'(){%*"\\+')

_LINE, _DECIDE, _LITERAL, _SKIP, _EXTERNAL = range(5)


def guess_tag(line: bytes) -> str:
    """The tag at the start of a line, or "*" when there is no valid one (for the BAD answer)."""
    m = _TAG.match(line)
    if not m or m.end() >= len(line) or line[m.end()] != 0x20 or any(c in _TAG_BAD for c in m.group()):
        return "*"
    return m.group().decode("ascii")


class Framer:
    """The framing state of one connection's input (module doc). Limits in octets: `max_line` for one line,
    `max_command` for a command's text (its lines, not its literals)."""

    def __init__(self, max_line: int = 8192, max_command: int = 65536) -> None:
        self.max_line = max_line
        self.max_command = max_command
        self._in = ReceiveBuffer(keep_tail=WINDOW)  # net/receivebuffer.py; a dropped line's end in `.tail`
        self._parts: list[bytes] = []
        self._text = 0  # command text bytes (not literals) so far
        self._state = _LINE
        self._need = 0  # literal bytes still expected (_LITERAL / _SKIP)
        self._request: LiteralRequest | None = None
        self._drop_command = False  # the line being dropped is command text (its end may announce a literal)
        self._discard_command = False  # dropping the rest of a command after a refused non-sync literal
        self._tag = "*"

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out (check before STARTTLS: pipelined plaintext)."""
        return len(self._in) + sum(len(p) for p in self._parts)

    @property
    def command_bytes(self) -> int:
        """Bytes of the command being framed held here so far (its lines and in-memory literals)."""
        return sum(len(p) for p in self._parts)

    @property
    def first_line(self) -> bytes:
        """The first line of the command being framed (with its literal announcement), b"" before one."""
        return self._parts[0] if self._parts else b""

    @property
    def in_literal(self) -> bool:
        """The next bytes expected are literal data (accepted, skipped or external), not a line."""
        return self._state in (_LITERAL, _SKIP, _EXTERNAL)

    @property
    def in_command(self) -> bool:
        """A command is partly received (text or a literal of it), so the next bytes belong to it."""
        return bool(self._parts) or self._state != _LINE

    def feed(self, data: bytes) -> None:
        """Append received bytes (any split: a line or literal may come in many pieces). Never raises (invariant 1)."""
        if self._in.feed(data):  # invariant 3: a dropped line's tail went as it arrived; invariant 4: its end kept
            self._dropped_line_end()

    def reset(self) -> None:
        """Forget everything buffered (after STARTTLS)."""
        self.__init__(self.max_line, self.max_command)  # type: ignore[misc]

    def _take_line(self, limit: int, text: str = "Line too long", command: bool = False
                   ) -> bytes | None | FramingError:
        """The next line (with its end) if it is complete and at most `limit` bytes; FramingError(text) if it
        is longer (its bytes are dropped, invariant 3); None if more bytes are needed. For a `command` line,
        the caller must call `_dropped_line_end()` after a FramingError if the buffer is not `discarding` (the
        line end was already here); otherwise `feed()` calls it when the line end arrives (invariant 4)."""
        data = self._in.data
        head = bytes(data[:64]) if len(data) >= limit and not self._parts else b""  # a tag, should it be too long
        line = self._in.take_line(limit)
        if line is NEED_DATA:
            return None
        if line is TOO_LONG:
            tag = guess_tag(head) if not self._parts else self._tag
            self._drop_command = command
            return FramingError(tag, text)
        assert isinstance(line, bytes)
        return line

    def _take_command_line(self) -> bytes | None | FramingError:
        if self._discard_command:  # a refused command's text is dropped, not counted: only its lines are capped
            return self._take_line(self.max_line, command=True)
        left = self.max_command - self._text  # invariant 2: the command's text, not only this line, is capped
        if left <= self.max_line:
            return self._take_line(max(left, 1), "Command too long", command=True)
        return self._take_line(self.max_line, command=True)

    def _dropped_line_end(self) -> None:
        """The line being dropped has ended (its last bytes are in the buffer's `tail`). If it was command text
        ending in a non-synchronizing literal announcement, skip that literal and go on dropping the command
        (invariant 4); otherwise the refused command is over."""
        window, self._in.tail = self._in.tail, b""
        if not self._drop_command:
            return  # a bare line (IDLE, AUTHENTICATE) has no literals
        self._drop_command = False
        m = _LITERAL_END.search(window)
        if m and m.group(3):
            # RFC 7888 §4: the client sends a non-synchronizing literal without waiting, refused or not.
            self._state, self._need, self._discard_command = _SKIP, int(m.group(2)), True
        else:
            # A synchronizing literal (RFC 9051 §7.5) is only sent after a `+`, which a refused command never
            # gets: nothing of this command follows, and the next line is the next command.
            self._state, self._discard_command = _LINE, False

    def next_line(self, limit: int | None = None) -> bytes | None | FramingError:
        """One bare line without its line end (IDLE, AUTHENTICATE), or None if none is complete yet.
        `limit` (default `max_line`) counts the line end; a longer line is FramingError("Line too long")."""
        line = self._take_line(self.max_line if limit is None else limit)
        if isinstance(line, bytes):
            return line.rstrip(b"\r\n")
        return line

    def next_event(self) -> Event:
        """The next event (module doc): `NEED_DATA`, a `LiteralRequest`, a `RawCommand` or a `FramingError`.
        Raises RuntimeError only for misuse: while a `LiteralRequest` waits for `accept_literal` / `reject_literal`."""
        while True:
            if self._state == _DECIDE:
                raise RuntimeError("accept_literal() or reject_literal() first")
            if self._state == _EXTERNAL:
                raise RuntimeError("external_done() first")
            if self._state in (_LITERAL, _SKIP):
                n = min(self._need, len(self._in))
                if n:
                    if self._state == _LITERAL:
                        self._parts.append(self._in.take(n))
                    else:
                        self._in.drop(n)
                    self._need -= n
                if self._need:
                    return NEED_DATA
                self._state = _LINE
                self._in.scanned = 0
            line = self._take_command_line()
            if line is None:
                return NEED_DATA
            if isinstance(line, FramingError):
                refused = self._discard_command  # this command was refused before: no second answer
                self._abandon()
                if not self._in.discarding:  # its line end is already here (invariant 4)
                    self._dropped_line_end()
                if refused:
                    continue
                return line
            if not self._parts and not self._discard_command:
                self._tag = guess_tag(line)
            self._text += len(line)
            if self._text > self.max_command and not self._discard_command:
                tag = self._tag
                m = _LITERAL_END.search(line)
                self._abandon()
                if m and m.group(3):  # the client will send this non-sync literal regardless
                    self._state, self._need, self._discard_command = _SKIP, int(m.group(2)), True
                return FramingError(tag, "Command too long")
            m = _LITERAL_END.search(line)
            if self._discard_command:
                if m and m.group(3):
                    self._state, self._need = _SKIP, int(m.group(2))
                    continue
                self._abandon()
                continue
            self._parts.append(line)
            if m is None:
                data = b"".join(self._parts)
                self._abandon()
                return RawCommand(data)
            if len(self._parts) > 2 * MAX_LITERALS:
                tag = self._tag
                self._abandon()
                if m.group(3):
                    self._state, self._need, self._discard_command = _SKIP, int(m.group(2)), True
                return FramingError(tag, "Too many literals")
            words = self._parts[0].split(None, 3)
            verb = words[1].upper() if len(words) > 1 else b""
            if verb == b"UID" and len(words) > 2:
                verb = words[2].upper()
            self._request = LiteralRequest(int(m.group(2)), not m.group(3), self._tag, bool(m.group(1)),
                                           verb[:20].decode("ascii", "replace"))
            self._state = _DECIDE
            return self._request

    def accept_literal(self, *, external: bool = False) -> None:
        """Take the announced literal: its octets become part of the command (or, `external`, the session reads them
        itself: `take_external`, `external_done`). Only right after a `LiteralRequest`."""
        assert self._state == _DECIDE and self._request is not None
        self._state, self._need = (_EXTERNAL if external else _LITERAL), self._request.size
        self._request = None
        if external:  # the command text gets an empty literal in place of this one
            line = self._parts[-1]
            m = _LITERAL_END.search(line)
            assert m is not None
            self._parts[-1] = line[: m.start()] + m.group(1) + b"{0}\r\n"

    def take_external(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` buffered bytes of the external literal being read (may be b"")."""
        assert self._state == _EXTERNAL
        data = self._in.take(min(self._need, max_bytes))
        self._need -= len(data)
        return data

    @property
    def external_need(self) -> int:
        """Bytes of the external literal not yet taken (from here or, by the session, from the connection)."""
        return self._need if self._state == _EXTERNAL else 0

    def external_done(self, read_elsewhere: int) -> None:
        """The session read `read_elsewhere` bytes of the external literal from the connection itself."""
        assert self._state == _EXTERNAL and read_elsewhere == self._need and not (read_elsewhere and self._in.data)
        self._state, self._need, self._in.scanned = _LINE, 0, 0

    def reject_literal(self) -> None:
        """Refuse the announced literal: the command is dropped, and a non-synchronizing literal's octets skipped as
        they arrive (RFC 7888 §4, invariant 4). Only right after a `LiteralRequest`."""
        assert self._state == _DECIDE and self._request is not None
        req = self._request
        self._abandon()
        if not req.sync:  # RFC 7888 §4: the bytes come anyway; drop them and the rest of the command
            self._state, self._need, self._discard_command = _SKIP, req.size, True

    def _abandon(self) -> None:
        self._parts = []
        self._text = 0
        self._state = _LINE
        self._request = None
        self._discard_command = False
