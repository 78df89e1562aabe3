"""MULTIAPPEND (RFC 3502) syntax: several messages in one APPEND, framed and parsed whole, byte by byte and at
random splits; what is not RFC 3502 §6 syntax is BAD (ParseError)."""

from __future__ import annotations

import pytest
from imap_frames import events, splits

from postroom.imap import parser as P

# RFC 3502 §6: append = "APPEND" SP mailbox 1*append-message; append-message = append-opts SP append-data;
# append-opts = [SP flag-list] [SP date-time]
COMMAND = (b'm1 APPEND Drafts (\\Seen) {5}\r\nfirst {6+}\r\nsecond'
           b' (\\Flagged $Work) "05-Feb-2024 10:00:00 +0000" ~{3}\r\nt\x00d'
           b' "06-Feb-2024 11:30:00 +0100" {4+}\r\nlast\r\n')




def check(evs: list[object]) -> None:
    lits = [e for e in evs if isinstance(e, P.LiteralRequest)]
    assert [(e.size, e.sync, e.binary, e.verb) for e in lits] == [
        (5, True, False, "APPEND"), (6, False, False, "APPEND"), (3, True, True, "APPEND"), (4, False, False, "APPEND")]
    raw = evs[-1]
    assert isinstance(raw, P.RawCommand) and raw.data == COMMAND
    args = P.parse_command(raw.data).args
    assert isinstance(args, P.AppendArgs)
    assert args.mailbox == "Drafts"
    assert args.messages() == (
        P.AppendMessage(("\\Seen",), None, b"first", False),
        P.AppendMessage((), None, b"second", False),
        P.AppendMessage(("\\Flagged", "$Work"), 1707127200.0, b"t\x00d", True),
        P.AppendMessage((), 1707215400.0, b"last", False),  # 11:30 +0100 is 10:30 UTC
    )


def test_multiappend_whole() -> None:
    check(events([COMMAND]))


def test_multiappend_byte_by_byte() -> None:
    check(events([COMMAND[i:i + 1] for i in range(len(COMMAND))]))


@pytest.mark.parametrize("seed", range(40))
def test_multiappend_random_splits(seed: int) -> None:
    check(events(splits(COMMAND, seed)))


def test_single_append_is_one_message() -> None:
    args = P.parse_command(b"a APPEND INBOX {2}\r\nhi\r\n").args
    assert isinstance(args, P.AppendArgs) and args.more == () and len(args.messages()) == 1


@pytest.mark.parametrize("line", [
    b"a APPEND INBOX {2}\r\nhi (\\Seen)\r\n",  # flags with no message after them
    b"a APPEND INBOX {2}\r\nhi junk\r\n",  # not a message
    b'a APPEND INBOX {2}\r\nhi "05-Feb-2024 10:00:00 +0000"\r\n',  # a date-time with no message
    b"a APPEND INBOX {2}\r\nhi{2}\r\nho\r\n",  # no SP between messages
    b"a APPEND INBOX {2}\r\nhi  {2}\r\nho\r\n",  # two
])
def test_multiappend_bad_syntax(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        P.parse_command(line)
