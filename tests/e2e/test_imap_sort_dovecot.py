"""SORT and THREAD answers identical to Dovecot's on the same mailbox (tests/data/sortthread).

The mailbox (`mailbox/*.eml`, internal dates in `internaldates.json`) and Dovecot 2.3's answer to every
command (`expected.json`) were made by `tests/data/sortthread/generate.py`. Here the messages are APPENDed to
a Postroom server with the same internal dates (so metadata and sort keys come from the real APPEND path),
the same commands are sent and the untagged answers compared, tags aside. Where Dovecot departs from RFC 5256,
`DIFFERENCES` names the command, says why, and gives the RFC's answer, which Postroom must give instead.
"""

from __future__ import annotations

import imaplib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.imap_support import Raw, wire_imap

DATA = Path(__file__).resolve().parents[1] / "data" / "sortthread"
EXPECTED: dict[str, list[str]] = json.loads((DATA / "expected.json").read_text())
COMMANDS = [c for c in EXPECTED if c != "CAPABILITY"]
USER, PASSWORD = "sorter@example.org", "sort-password"

# command -> (why Dovecot's answer is not RFC 5256's, the RFC's answer). Empty: none found on this mailbox.
DIFFERENCES: dict[str, tuple[str, list[str]]] = {}


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def loaded(server: Any, monkeypatch: pytest.MonkeyPatch) -> Raw:
    wire_imap(monkeypatch)
    server.add_user(USER, PASSWORD)
    dates = json.loads((DATA / "mailbox" / "internaldates.json").read_text())
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    client.login(USER, PASSWORD)
    for name in sorted(dates):
        raw = (DATA / "mailbox" / name).read_bytes()
        typ, _ = client.append("INBOX", "", imaplib.Time2Internaldate(dates[name]), raw)
        assert typ == "OK"
    client.logout()
    raw_client = Raw(server.port("imap"))
    raw_client.login(USER, PASSWORD)
    assert raw_client.cmd("s SELECT INBOX")[-1].startswith(b"s OK")
    return raw_client


def _untagged(lines: list[bytes]) -> list[str]:
    assert lines[-1].split(b" ")[1] == b"OK", lines[-1]
    return [re.sub(r'\(TAG "[^"]*"\)', '(TAG "t")', ln.decode().rstrip("\r\n")) for ln in lines[:-1]]


def test_sort_and_thread_answers_are_dovecots(loaded: Raw) -> None:
    """Every command of the fixture: Postroom's untagged answer is Dovecot's (or, where named, the RFC's)."""
    mismatches = []
    for command in COMMANDS:
        got = _untagged(loaded.cmd("t " + command))
        want = [re.sub(r'\(TAG "[^"]*"\)', '(TAG "t")', line) for line in EXPECTED[command]]
        if command in DIFFERENCES:
            want = DIFFERENCES[command][1]
        if got != want:
            mismatches.append(f"{command}\n  got:  {got}\n  want: {want}")
    assert not mismatches, "\n".join(mismatches)


def test_capabilities_name_what_dovecot_and_the_rfcs_call_them(loaded: Raw) -> None:
    caps = loaded.cmd("c CAPABILITY")[0].split()
    for name in (b"SORT", b"SORT=DISPLAY", b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT", b"ESORT"):
        assert name in caps
        assert name.decode() in EXPECTED["CAPABILITY"][0].split()


@pytest.mark.parametrize("late", [1, 6, 15])
def test_thread_after_arrivals_is_dovecots_on_the_whole_mailbox(server: Any, monkeypatch: pytest.MonkeyPatch,
                                                                late: int) -> None:
    """thread.py invariant 6: THREAD answered on all but the last `late` messages, those APPENDed by another
    session, THREAD again: each answer is Dovecot's on the whole mailbox (what computing it again gives), and
    some arrivals were placed into the kept answers rather than computed again."""
    from postroom.imap.thread import Kept

    placed: list[bool] = []
    real = Kept.arrive

    def counted(self: Kept, *args: Any) -> bool:
        placed.append(real(self, *args))
        return placed[-1]

    monkeypatch.setattr(Kept, "arrive", counted)
    wire_imap(monkeypatch)
    server.add_user(USER, PASSWORD)
    dates = json.loads((DATA / "mailbox" / "internaldates.json").read_text())
    names = sorted(dates)
    writer = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    writer.login(USER, PASSWORD)

    def append(name: str) -> None:
        raw = (DATA / "mailbox" / name).read_bytes()
        assert writer.append("INBOX", "", imaplib.Time2Internaldate(dates[name]), raw)[0] == "OK"

    for name in names[:-late]:
        append(name)
    reader = Raw(server.port("imap"))
    reader.login(USER, PASSWORD)
    assert reader.cmd("s SELECT INBOX")[-1].startswith(b"s OK")
    commands = [c for c in COMMANDS if "THREAD" in c]
    for command in commands:
        _untagged(reader.cmd("t " + command))  # kept for the messages so far
    for name in names[-late:]:
        append(name)
    writer.logout()
    assert reader.cmd("n NOOP")[-1].startswith(b"n OK")  # the reader learns of the arrivals
    for command in commands:
        assert _untagged(reader.cmd("t " + command)) == EXPECTED[command], command
    assert any(placed)
