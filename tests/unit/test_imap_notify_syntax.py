"""NOTIFY (RFC 5465 §8), COMPRESS (RFC 4978 §5) and UNAUTHENTICATE (RFC 8437) through the sans-I/O framer and
parser: fed whole, byte by byte and at random splits, literals included; the §5 / §6.1 / §8 rules that make a
NOTIFY BAD."""

from __future__ import annotations

import pytest
from test_imap_parser import drive, splits

from postroom.imap import parser as P

NOTIFY = (b'n1 NOTIFY SET STATUS (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]) '
          b'MessageExpunge FlagChange)) (subtree (Lists {5}\r\nWork/) (MessageNew MessageExpunge)) '
          b'(mailboxes "a b" (MailboxName SubscriptionChange)) (personal NONE)\r\n'
          b"n2 notify none\r\n"
          b"z1 COMPRESS deflate\r\n"
          b"u1 UNAUTHENTICATE\r\n")


def parsed(chunks: list[bytes]) -> list[P.Command]:
    return [P.parse_command(ev.data) for ev in drive(chunks) if isinstance(ev, P.RawCommand)]


EXPECTED = [
    P.Command("n1", "NOTIFY", P.NotifyArgs((
        P.NotifyGroup("SELECTED", (), ("MessageNew", "MessageExpunge", "FlagChange"), (
            P.FetchAtt("UID"),
            P.FetchAtt("BODY[]", P.Section((), "HEADER.FIELDS", ("FROM", "SUBJECT")),
                       "HEADER.FIELDS (FROM SUBJECT)", None, True))),
        P.NotifyGroup("SUBTREE", ("Lists", "Work/"), ("MessageNew", "MessageExpunge")),
        P.NotifyGroup("MAILBOXES", ("a b",), ("MailboxName", "SubscriptionChange")),
        P.NotifyGroup("PERSONAL", (), ()),
    ), status=True)),
    P.Command("n2", "NOTIFY", P.NotifyArgs(None)),
    P.Command("z1", "COMPRESS", P.Names(("DEFLATE",))),
    P.Command("u1", "UNAUTHENTICATE", None),
]


def test_whole() -> None:
    assert parsed([NOTIFY]) == EXPECTED


def test_byte_by_byte() -> None:
    assert parsed([NOTIFY[i:i + 1] for i in range(len(NOTIFY))]) == EXPECTED


@pytest.mark.parametrize("seed", range(30))
def test_random_splits(seed: int) -> None:
    assert parsed(splits(NOTIFY, seed)) == EXPECTED


def parse(line: bytes) -> P.Command:
    return P.parse_command(line + b"\r\n")


def test_forms() -> None:
    # event names are case-insensitive and come out as RFC 5465 spells them; unknown ones are kept for BADEVENT
    g = parse(b"a notify set (Inboxes (messagenew MESSAGEEXPUNGE X-Other))").args
    assert isinstance(g, P.NotifyArgs) and g.groups == (
        P.NotifyGroup("INBOXES", (), ("MessageNew", "MessageExpunge", "X-Other")),)
    g = parse(b"a NOTIFY SET (selected-delayed NONE) (subscribed (MailboxName))").args
    assert isinstance(g, P.NotifyArgs) and [x.filter for x in g.groups or ()] == ["SELECTED-DELAYED", "SUBSCRIBED"]
    g = parse(b"a NOTIFY SET (mailboxes inbox (MessageNew MessageExpunge))").args
    assert isinstance(g, P.NotifyArgs) and g.groups and g.groups[0].mailboxes == ("INBOX",)


@pytest.mark.parametrize("line", [
    b"a NOTIFY",
    b"a NOTIFY SET",
    b"a NOTIFY NONE (personal NONE)",
    b"a NOTIFY SET STATUS",
    b"a NOTIFY SET (personal)",
    b"a NOTIFY SET (personal ())",
    b"a NOTIFY SET (nowhere (MessageNew MessageExpunge))",
    b"a NOTIFY SET (subtree (MessageNew MessageExpunge))",
    b"a NOTIFY SET (mailboxes () (MailboxName))",
    b"a NOTIFY SET (personal (MessageNew))",  # §5: MessageNew and MessageExpunge together
    b"a NOTIFY SET (personal (MessageExpunge))",
    b"a NOTIFY SET (personal (FlagChange MailboxName))",  # §5: FlagChange needs both
    b"a NOTIFY SET (personal (MailboxName MailboxName))",
    b"a NOTIFY SET (selected (MessageNew MessageExpunge MailboxName))",  # §6.1: message events only
    b"a NOTIFY SET (selected NONE) (selected-delayed NONE)",  # §8: one of them
    b"a NOTIFY SET (selected (MessageNew (NOSUCH) MessageExpunge))",
    b"a NOTIFY SET (selected (MessageNew (UID) MessageExpunge)",
    b"a COMPRESS",
    b"a COMPRESS DEFLATE MORE",
    b"a UNAUTHENTICATE now",
])
def test_bad(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        parse(line)
