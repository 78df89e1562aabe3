"""The QUOTA commands' syntax (RFC 9208 §7) fed to the sans-I/O reader whole, byte by byte and at random splits;
the QUOTA responses of imap/quota.py (units and roots from RFC 9208 §5.1, §5.2)."""

from __future__ import annotations

import random

import pytest

from postroom.imap import parser as P
from postroom.imap import quota
from postroom.store.api import QuotaUsage


def chunkings(data: bytes) -> list[list[bytes]]:
    rnd = random.Random(9208)
    out = [[data], [data[i:i + 1] for i in range(len(data))]]
    for _ in range(5):
        cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 8))))
        out.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])])
    return out


def parse_fed(chunks: list[bytes]) -> P.Command:
    """The one command the chunks carry, every literal accepted."""
    f = P.Framer(max_line=1000, max_command=10_000)
    commands: list[P.Command] = []
    for chunk in chunks:
        f.feed(chunk)
        while (ev := f.next_event()) is not P.NEED_DATA:
            if isinstance(ev, P.LiteralRequest):
                f.accept_literal()
            else:
                assert isinstance(ev, P.RawCommand), ev
                commands.append(P.parse_command(ev.data))
    assert len(commands) == 1
    return commands[0]


@pytest.mark.parametrize("data, name, args", [
    # RFC 9208 §4.2's example: GETQUOTA "" (the empty root)
    (b'G0001 GETQUOTA ""\r\n', "GETQUOTA", P.QuotaArgs("")),
    (b"G0001 getquota {10+}\r\nUser quota\r\n", "GETQUOTA", P.QuotaArgs("User quota")),
    (b"G0002 GETQUOTA example.org\r\n", "GETQUOTA", P.QuotaArgs("example.org")),
    # §4.3's example: GETQUOTAROOT INBOX
    (b"G0002 GETQUOTAROOT INBOX\r\n", "GETQUOTAROOT", P.MailboxArg("INBOX")),
    (b'G0003 GETQUOTAROOT "Other Users/bob@example.org/Work"\r\n', "GETQUOTAROOT",
     P.MailboxArg("Other Users/bob@example.org/Work")),
    # §4.1.3's example: SETQUOTA "" (STORAGE 512); resource names are case-insensitive atoms
    (b'S0000 SETQUOTA "" (STORAGE 512)\r\n', "SETQUOTA", P.QuotaArgs("", (("STORAGE", 512),))),
    (b'S0001 SETQUOTA "" (storage 512 MESSAGE 10000)\r\n', "SETQUOTA",
     P.QuotaArgs("", (("STORAGE", 512), ("MESSAGE", 10000)))),
    (b'S0002 SETQUOTA "" ()\r\n', "SETQUOTA", P.QuotaArgs("", ())),  # §7: the list may be empty
    (b'S0003 SETQUOTA x (STORAGE 9223372036854775807)\r\n', "SETQUOTA",
     P.QuotaArgs("x", (("STORAGE", (1 << 63) - 1),))),  # number64
])
def test_quota_commands_parse_however_split(data: bytes, name: str, args: P.Args) -> None:
    for chunks in chunkings(data):
        cmd = parse_fed(chunks)
        assert (cmd.name, cmd.args, cmd.uid) == (name, args, False)


@pytest.mark.parametrize("data", [
    b"a GETQUOTA\r\n",
    b'a GETQUOTA "" extra\r\n',
    b"a GETQUOTAROOT\r\n",
    b"a GETQUOTAROOT INBOX Sent\r\n",
    b'a SETQUOTA ""\r\n',
    b'a SETQUOTA "" STORAGE 512\r\n',  # the list needs its parentheses
    b'a SETQUOTA "" (STORAGE)\r\n',  # a resource needs its limit
    b'a SETQUOTA "" (STORAGE -1)\r\n',
    b'a SETQUOTA "" (STORAGE 9223372036854775808)\r\n',  # past number64
    b'a SETQUOTA "" (STORAGE 1  MESSAGE 2)\r\n',
    b'a SETQUOTA "" (STORAGE 1\r\n',
    b"a UID GETQUOTA x\r\n",
])
def test_malformed_quota_commands_are_parse_errors(data: bytes) -> None:
    for chunks in chunkings(data):
        with pytest.raises(P.ParseError):
            parse_fed(chunks)


def usage(**kw: int) -> QuotaUsage:
    values = {"user_id": 1, "storage": 0, "messages": 0, "storage_limit": 0, "message_limit": 0,
              "domain_storage": 0, "domain_storage_limit": 0}
    values.update(kw)
    return QuotaUsage(**values)


def test_roots_and_quota_response_bytes() -> None:
    # §5.1: STORAGE in units of 1024 octets; §5.2: MESSAGE is a count. Only resources with a limit are listed.
    q = usage(storage=10 * 1024 + 1023, messages=12, storage_limit=512 * 1024, message_limit=1000)
    found = quota.roots(q, "example.org")
    assert found == {"": [("STORAGE", 10, 512), ("MESSAGE", 12, 1000)]}
    assert quota.quota_response("", found[""]) == b'* QUOTA "" (STORAGE 10 512 MESSAGE 12 1000)\r\n'
    assert quota.roots(usage(storage=5000), "example.org") == {}  # no limit: no root (quota-list is 1*)
    both = quota.roots(usage(message_limit=5, domain_storage=3 * 1024, domain_storage_limit=100 * 1024), "ex.org")
    assert both == {"": [("MESSAGE", 0, 5)], "ex.org": [("STORAGE", 3, 100)]}
    assert quota.quota_response("ex.org", both["ex.org"]) == b'* QUOTA "ex.org" (STORAGE 3 100)\r\n'


@pytest.mark.parametrize("line, target", [
    (b"a APPEND INBOX {5}\r\n", "INBOX"),
    (b'a append "My &AOQ-pfel" (\\Seen) "05-Feb-2024 10:00:00 +0000" {5+}\r\n', "My &AOQ-pfel"),
    (b"a APPEND {5}\r\n", None),  # the name is the literal: the store checks later
    (b"a UID APPEND INBOX {5}\r\n", None),
    (b"a SETMETADATA INBOX (/private/x {5}\r\n", None),
    (b"a APPEND \"unterminated {5}\r\n", None),
])
def test_append_target_of_a_first_line(line: bytes, target: str | None) -> None:
    from postroom.imap.session import append_target

    assert append_target(line, "a") == target


def test_status_takes_deleted_storage_however_split() -> None:
    data = b"a STATUS INBOX (MESSAGES DELETED-STORAGE)\r\n"  # RFC 9208 §4.2.2, §7 status-att
    for chunks in chunkings(data):
        cmd = parse_fed(chunks)
        assert isinstance(cmd.args, P.StatusArgs) and cmd.args.items == ("MESSAGES", "DELETED-STORAGE")
