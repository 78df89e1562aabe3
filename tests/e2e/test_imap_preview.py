"""PREVIEW (RFC 8970) end to end with imapclient and a raw client: FETCH PREVIEW gives the first text part,
normalised, at most 256 characters, kept per body after the first ask; PREVIEW (LAZY) answers NIL until then;
PREVIEW does not set \\Seen."""

from __future__ import annotations

from typing import Any

import imapclient
import pytest
from imap_support import Raw, wire_imap

ADDR = "ann@example.org"
PW = "ann-secret"
PLAIN = b"From: ann@example.org\r\nSubject: plain\r\n\r\nDear Bob,\r\n\r\n  the   minutes\r\nare attached.\r\n"
HTML = ("From: ann@example.org\r\nSubject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<html><head><style>p{}</style></head><body><p>Grüße&nbsp;aus <b>Köln</b></p>" + "<p>more</p>" * 100
        + "</body></html>\r\n").encode()
NO_TEXT = b"From: ann@example.org\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4\r\n"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    return server


def test_fetch_preview(imap: Any) -> None:
    c = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=30)
    c.login(ADDR, PW)
    assert b"PREVIEW" in c.capabilities()
    for raw in (PLAIN, HTML, NO_TEXT):
        c.append("INBOX", raw)
    c.select_folder("INBOX")
    lazy = c.fetch([1, 2, 3], ["PREVIEW (LAZY)"])
    assert [lazy[u][b"PREVIEW"] for u in (1, 2, 3)] == [None, None, None]  # §4.1: not computed yet
    got = c.fetch([1, 2, 3], ["PREVIEW", "FLAGS"])
    assert got[1][b"PREVIEW"] == b"Dear Bob, the minutes are attached."
    html = got[2][b"PREVIEW"].decode("utf-8")
    assert html.startswith("Grüße aus Köln more more") and len(html) == 256  # characters, not octets (§3)
    assert got[3][b"PREVIEW"] == b""  # no text: an empty preview, not NIL (NIL only with LAZY)
    assert all(b"\\Seen" not in got[u][b"FLAGS"] for u in (1, 2, 3))
    lazy = c.fetch([1, 2, 3], ["PREVIEW (LAZY)"])  # kept since the first ask: readily available
    assert [lazy[u][b"PREVIEW"] for u in (1, 2, 3)] == [got[u][b"PREVIEW"] for u in (1, 2, 3)]
    c.logout()
    user = imap.run(imap.store.get_user(ADDR))
    infos = imap.run(imap.store.list_messages(imap.run(imap.store.get_mailbox(user.id, "INBOX")).id))
    kept = imap.run(imap.store.read_previews([m.blob_id for m in infos]))
    assert kept[infos[0].blob_id] == "Dear Bob, the minutes are attached."


def test_preview_wire_forms(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.login(ADDR, PW)
    r.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(HTML), HTML))
    assert r.until(b"a")[-1].startswith(b"a OK")
    r.cmd("b SELECT INBOX")
    lines = r.cmd("c UID FETCH 1 (PREVIEW)")
    # RFC 8970 §6: PREVIEW nstring; UTF-8 text goes out as a literal (8-bit is not allowed in a quoted string)
    assert lines[0].startswith(b"* 1 FETCH (UID 1 PREVIEW {") and "Grüße".encode() in lines[0]
    assert r.cmd("d FETCH 1 (PREVIEW (FOO))")[-1].startswith(b"d BAD")
    assert r.cmd("e FETCH 1 PREVIEW (LAZY)")[0].startswith(b"* 1 FETCH (PREVIEW {")
    r.close()
