"""SAVEDATE (RFC 8514) end to end with imaplib and imapclient: FETCH SAVEDATE is when the message was saved to the
mailbox (APPEND, COPY, MOVE), not its internal date; SEARCH SAVEDBEFORE / SAVEDON / SAVEDSINCE /
SAVEDATESUPPORTED; a message stored before schema 12 answers NIL and is searched by its internal date."""

from __future__ import annotations

import datetime as dt
import imaplib
import re
import sqlite3
import time
from typing import Any

import imapclient
import pytest
from imap_support import wire_imap

ADDR = "ann@example.org"
PW = "ann-secret"
MSG = b"From: ann@example.org\r\nSubject: saved\r\n\r\nhello\r\n"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    return server


def imap_day(ts: float) -> str:
    return time.strftime("%d-%b-%Y", time.gmtime(ts))


def set_save_date(server: Any, mailbox: str, uid: int, value: float | None) -> None:
    """Write a save date as an older Postroom would have left it (NULL) or as if saved long ago."""
    if getattr(server.store, "path", None) is None:  # POSTROOM_TEST_STORE=postgresql: no SQLite file to write
        pytest.skip("writes an SQLite row as an older Postroom left it")
    user = server.run(server.store.get_user(ADDR))
    mbox = server.run(server.store.get_mailbox(user.id, mailbox))
    conn = sqlite3.connect(server.store.path)
    with conn:
        conn.execute("UPDATE messages SET save_date = ? WHERE mailbox_id = ? AND uid = ?", (value, mbox.id, uid))
    conn.close()


def test_fetch_and_search_savedate(imap: Any) -> None:
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=30)
    c.login(ADDR, PW)
    assert "SAVEDATE" in c.capabilities
    before = time.time()
    typ, _ = c.append("INBOX", None, imaplib.Time2Internaldate(dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC)), MSG)
    assert typ == "OK"
    c.select("INBOX")
    typ, data = c.fetch("1", "(INTERNALDATE SAVEDATE)")
    line = data[0].decode()
    assert 'INTERNALDATE " 1-Jan-2020 12:00:00 +0000"' in line  # RFC 9051 date-day-fixed
    m = re.search(r'SAVEDATE "([^"]+)"', line)
    assert m is not None
    saved = dt.datetime.strptime(m.group(1).strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()
    assert before - 1 <= saved <= time.time() + 1  # RFC 8514 §3: when it was saved, not its internal date
    today = imap_day(saved)
    assert c.search(None, f"SAVEDON {today}") == ("OK", [b"1"])
    assert c.search(None, f"ON {today}") == ("OK", [b""])  # the internal date is 2020
    assert c.search(None, f"SAVEDSINCE {today}") == ("OK", [b"1"])
    assert c.search(None, f"SAVEDBEFORE {today}") == ("OK", [b""])
    assert c.search(None, "SAVEDBEFORE 2-Jan-2020") == ("OK", [b""])
    assert c.search(None, "SAVEDATESUPPORTED") == ("OK", [b"1"])
    # A copy is saved anew (RFC 8514 §3), so is a moved message; the original keeps its save date.
    set_save_date(imap, "INBOX", 1, 1_500_000_000.0)  # as if appended in July 2017
    assert c.copy("1", "Archive")[0] == "OK"
    typ, data = c.fetch("1", "(SAVEDATE)")
    assert b'SAVEDATE "14-Jul-2017 02:40:00 +0000"' in data[0]
    assert c.search(None, "SAVEDON 14-Jul-2017") == ("OK", [b"1"])
    c.select("Archive")
    typ, data = c.fetch("1", "(SAVEDATE)")
    assert b"2017" not in data[0] and b"2020" not in data[0]
    c.logout()


def test_unknown_save_date_is_nil_and_searched_by_internal_date(imap: Any) -> None:
    c = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=30)
    c.login(ADDR, PW)
    c.append("INBOX", MSG, msg_time=dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.UTC))
    c.append("INBOX", MSG)
    set_save_date(imap, "INBOX", 1, None)  # stored before schema 12: not recorded
    c.select_folder("INBOX")
    got = c.fetch([1, 2], ["SAVEDATE"])
    assert got[1][b"SAVEDATE"] is None  # RFC 8514 §4.2: NIL where the storage has no save date
    assert got[2][b"SAVEDATE"] is not None
    # RFC 8514 §4.3: without a save date, the SAVED* keys use the internal date
    assert c.search(["SAVEDON", "4-Mar-2021"]) == [1]
    assert c.search(["SAVEDBEFORE", "5-Mar-2021"]) == [1]
    assert c.search(["SAVEDSINCE", "5-Mar-2021"]) == [2]
    assert c.search(["SAVEDATESUPPORTED"]) == [1, 2]
    assert c.search(["OR", "SAVEDON", "4-Mar-2021", "SUBJECT", "nothing-like-this"]) == [1]  # with metadata keys
    c.logout()
