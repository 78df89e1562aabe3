"""CATENATE (RFC 4469) end to end: messages joined from TEXT literals and URLs (RFC 5092) of messages and
sections, byte-exact against what FETCH BODY.PEEK[...] answers; a 3 MiB part joined through a staging file;
BADURL (RFC 4469 §5) for other users' mailboxes without "r", a UIDVALIDITY that differs, a missing UID or
section; TOOBIG past APPENDLIMIT; all or nothing inside MULTIAPPEND (RFC 3502 §3); no staging file left."""

from __future__ import annotations

import re
from typing import Any

import pytest
from imap_support import Raw, wire_imap
from test_imap_append_stream import big_message, staging

from postroom.imap.session import STREAM_LITERAL_MIN

ANN, BOB, PW = "ann@example.org", "bob@example.org", "secret-pw"
HOST = "mail.example.org"
LIMIT = 8 * 1024 * 1024

SOURCE = (b"From: Bob <bob@example.org>\r\nTo: ann@example.org\r\nSubject: the draft\r\n"
          b"Message-ID: <src1@example.org>\r\nMIME-Version: 1.0\r\n"
          b'Content-Type: multipart/mixed; boundary="xx"\r\n\r\npreamble\r\n'
          b"--xx\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part, keep it\r\n"
          b'--xx\r\nContent-Type: application/octet-stream; name="a.bin"\r\nContent-Transfer-Encoding: base64\r\n'
          b"\r\nAAECAwQFBgc=\r\n--xx--\r\n")


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}, "server": {"hostname": HOST}, "limits": {"message_size": LIMIT}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ANN, PW)
    server.add_user(BOB, PW)
    return server


def login(server: Any, who: str = ANN) -> Raw:
    r = Raw(server.port("imap"), timeout=60)
    r.login(who, PW)
    return r


def ok(lines: list[bytes]) -> list[bytes]:
    assert b" OK" in lines[-1], lines[-1]
    return lines


def literal_of(lines: list[bytes]) -> bytes:
    """The data of the one literal in a FETCH answer."""
    joined = b"".join(lines)
    m = re.search(rb"\{(\d+)\}\r\n", joined)
    assert m is not None, joined
    return joined[m.end():m.end() + int(m.group(1))]


def fetch(r: Raw, mailbox: str, uid: int, item: str) -> bytes:
    ok(r.cmd(f"f1 EXAMINE {mailbox}"))
    return literal_of(ok(r.cmd(f"f2 UID FETCH {uid} (BODY.PEEK[{item}])")))


def put(r: Raw, mailbox: str, raw: bytes) -> int:
    r.send(b"p APPEND %s {%d+}\r\n%s\r\n" % (mailbox.encode(), len(raw), raw))
    m = re.search(rb"APPENDUID \d+ (\d+)", r.until(b"p")[-1])
    assert m is not None
    return int(m.group(1))


def uidvalidity(r: Raw, mailbox: str) -> int:
    line = ok(r.cmd(f"s STATUS {mailbox} (UIDVALIDITY)"))[0]
    m = re.search(rb"UIDVALIDITY (\d+)", line)
    assert m is not None
    return int(m.group(1))


def catenate(r: Raw, tag: bytes, mailbox: bytes, parts: list[bytes | str]) -> list[bytes]:
    """APPEND mailbox CATENATE (...): bytes are TEXT parts (LITERAL+), str URL parts."""
    out = []
    for p in parts:
        out.append(b"TEXT {%d+}\r\n%s" % (len(p), p) if isinstance(p, bytes) else b'URL "%s"' % p.encode())
    r.send(tag + b" APPEND " + mailbox + b" CATENATE (" + b" ".join(out) + b")\r\n")
    return r.until(tag)


def test_capability(imap: Any) -> None:
    r = login(imap)
    caps = r.cmd("c CAPABILITY")[0].split()
    assert b"CATENATE" in caps and not any(c.startswith(b"URLAUTH") for c in caps)  # URLAUTH is not offered


def test_text_and_url_parts_byte_exact(imap: Any) -> None:
    r = login(imap)
    uid = put(r, "INBOX", SOURCE)
    v = uidvalidity(r, "INBOX")
    pieces = {item: fetch(r, "INBOX", uid, item) for item in ("HEADER", "1.MIME", "1", "2.MIME", "2", "TEXT", "")}
    ok(r.cmd("x SELECT INBOX"))  # relative URLs (";UID=...") are relative to the selected mailbox
    boundary = b"\r\n--xx\r\n"
    parts: list[bytes | str] = [
        f"/INBOX;UIDVALIDITY={v}/;UID={uid}/;SECTION=HEADER", b"preamble" + boundary,
        f";UID={uid}/;SECTION=1.MIME", f";uid={uid}/;section=1", boundary,
        f"imap://{ANN.replace('@', '%40')}@{HOST}/INBOX/;UID={uid}/;SECTION=2.MIME",
        f"//{HOST}/inbox;UIDVALIDITY={v}/;UID={uid}/;SECTION=2", b"\r\n--xx--\r\n",
    ]
    answer = catenate(r, b"a", b"Drafts", parts)[-1]
    assert re.match(rb"a OK \[APPENDUID \d+ 1\]", answer), answer
    want = (pieces["HEADER"] + b"preamble" + boundary + pieces["1.MIME"] + pieces["1"] + boundary
            + pieces["2.MIME"] + pieces["2"] + b"\r\n--xx--\r\n")
    assert want == SOURCE  # the parts make up the source again, so the join is byte-exact
    assert fetch(r, "Drafts", 1, "") == want
    # The existing append path ran: metadata (BODYSTRUCTURE), the full-text index, the thread keys.
    ok(r.cmd("y SELECT Drafts"))
    bs = b"".join(ok(r.cmd("z UID FETCH 1 (BODYSTRUCTURE THREADID)")))
    assert b'"application" "octet-stream" ("name" "a.bin")' in bs and b"THREADID (" in bs
    assert ok(r.cmd('s SEARCH BODY "keep it"'))[0] == b"* SEARCH 1\r\n"
    # Whole messages, TEXT, a HEADER.FIELDS section and a PARTIAL, as BODY.PEEK[...] gives them
    ok(r.cmd("w SELECT INBOX"))
    answer = catenate(r, b"b", b"Drafts", [f";UID={uid}/;SECTION=HEADER.FIELDS%20(SUBJECT%20FROM)",
                                           b"\r\n", f";UID={uid}/;SECTION=TEXT/;PARTIAL=10.9",
                                           f"/INBOX/;UID={uid}/;PARTIAL=0.4", f"/INBOX/;UID={uid}"])[-1]
    assert answer.startswith(b"b OK [APPENDUID"), answer
    fields = literal_of(ok(r.cmd(f"g UID FETCH {uid} (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")))
    assert fields == b"From: Bob <bob@example.org>\r\nSubject: the draft\r\n\r\n"
    assert fetch(r, "Drafts", 2, "") == fields + b"\r\n" + pieces["TEXT"][10:19] + SOURCE[:4] + SOURCE
    assert list(staging(imap).iterdir()) == []
    r.close()


def test_large_parts_go_through_a_staging_file(imap: Any) -> None:
    r = login(imap)
    big = big_message(3 * STREAM_LITERAL_MIN)  # a 3 MiB source message
    uid = put(r, "INBOX", big)
    text = b"X-Filler: " + b"y" * (3 * STREAM_LITERAL_MIN) + b"\r\n"  # a 3 MiB TEXT literal: staged
    answer = catenate(r, b"a", b"INBOX", [b"X-Top: 1\r\n", text, f"/INBOX/;UID={uid}"])[-1]
    assert answer.startswith(b"a OK [APPENDUID"), answer
    m = re.search(rb"APPENDUID \d+ (\d+)", answer)
    assert m is not None
    joined = fetch(r, "INBOX", int(m.group(1)), "")
    assert joined == b"X-Top: 1\r\n" + text + big
    assert fetch(r, "INBOX", int(m.group(1)), "2") == fetch(r, "INBOX", uid, "2")  # parsed as the source was
    assert list(staging(imap).iterdir()) == []
    r.close()


def test_badurl(imap: Any) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd("c CREATE Shared"))
    put(bob, "Shared", SOURCE)
    ann = login(imap)
    uid = put(ann, "INBOX", SOURCE)
    v = uidvalidity(ann, "INBOX")
    shared = "/Other%20Users/bob@example.org/Shared/;UID=1"
    bad = [
        shared,  # another user's mailbox, no right on it
        f"/INBOX;UIDVALIDITY={v + 1}/;UID={uid}",  # a UIDVALIDITY that differs
        f"/INBOX/;UID={uid + 5}",  # no such message
        f"/INBOX/;UID={uid}/;SECTION=7",  # no such part
        f"/Nowhere/;UID={uid}",
        f";UID={uid}",  # relative, but no mailbox is selected
        f"imap://elsewhere.example.org/INBOX/;UID={uid}",
        f"/INBOX/;UID={uid}/;URLAUTH=anonymous:internal:0123456789abcdef0123456789abcdef",  # not offered
        "/INBOX/;UID=1]",
    ]
    for i, url in enumerate(bad):
        answer = catenate(ann, b"b%d" % i, b"INBOX", [b"Subject: x\r\n\r\n", url])[-1]
        esc = url.replace("]", "%5D").encode()
        assert answer.startswith(b"b%d NO [BADURL %s] " % (i, esc)), answer  # RFC 4469 §5, the URL as sent
    # "l" alone does not let Ann read it (RFC 4314 §4: "r"); "lr" does
    ok(bob.cmd(f"g SETACL Shared {ANN} l"))
    assert catenate(ann, b"c", b"INBOX", [shared])[-1].startswith(b"c NO [BADURL")
    ok(bob.cmd(f"h SETACL Shared {ANN} lr"))
    answer = catenate(ann, b"d", b"INBOX", [b"X-Via: share\r\n", shared])[-1]
    assert answer.startswith(b"d OK [APPENDUID"), answer
    m = re.search(rb"APPENDUID \d+ (\d+)", answer)
    assert m is not None
    assert fetch(ann, "INBOX", int(m.group(1)), "") == b"X-Via: share\r\n" + SOURCE
    ok(ann.cmd("e SELECT INBOX"))
    assert ok(ann.cmd("f UID SEARCH ALL"))[0] == b"* SEARCH %d %d\r\n" % (uid, int(m.group(1)))  # nothing else
    ann.close()
    bob.close()


def test_toobig_as_the_parts_are_joined(imap: Any) -> None:
    r = login(imap)
    big = big_message(3 * STREAM_LITERAL_MIN)
    uid = put(r, "INBOX", big)
    assert 2 * len(big) < LIMIT < 3 * len(big)
    answer = catenate(r, b"a", b"INBOX", [f"/INBOX/;UID={uid}"] * 3)[-1]
    assert answer.startswith(b"a NO [TOOBIG]"), answer  # RFC 4469 §5; RFC 7889 APPENDLIMIT
    assert catenate(r, b"b", b"INBOX", [b""])[-1].startswith(b"b NO [CANNOT]")  # an empty message
    ok(r.cmd("c SELECT INBOX"))
    assert ok(r.cmd("d UID SEARCH ALL"))[0] == b"* SEARCH %d\r\n" % uid
    assert list(staging(imap).iterdir()) == []
    r.close()


def test_all_or_nothing_inside_multiappend(imap: Any) -> None:
    r = login(imap)
    uid = put(r, "INBOX", SOURCE)
    plain = b"Subject: plain\r\n\r\nhello\r\n"
    big = big_message(2 * STREAM_LITERAL_MIN, salt=4)  # a staged plain message in the same command
    # RFC 3502 §3 / RFC 4469 §3: the third message's URL names nothing, so none of the three is stored.
    r.send(b"a APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s CATENATE (URL \"/INBOX/;UID=%d\") CATENATE (TEXT {2+}\r\n"
           b"X: URL \"/INBOX/;UID=999\")\r\n" % (len(plain), plain, len(big), big, uid))
    assert r.until(b"a")[-1].startswith(b"a NO [BADURL /INBOX/;UID=999]")
    ok(r.cmd("b SELECT INBOX"))
    assert ok(r.cmd("c UID SEARCH ALL"))[0] == b"* SEARCH %d\r\n" % uid
    # The same without the bad part: all four in one transaction, consecutive UIDs (RFC 4315 §3 APPENDUID)
    r.send(b"d APPEND INBOX (\\Flagged) {%d+}\r\n%s {%d+}\r\n%s CATENATE (URL \";UID=%d\") CATENATE (TEXT {3+}\r\n"
           b"X:  URL \";UID=%d/;SECTION=TEXT\")\r\n" % (len(plain), plain, len(big), big, uid, uid))
    answer = r.until(b"d")[-1]
    assert re.match(rb"d OK \[APPENDUID \d+ %d:%d\]" % (uid + 1, uid + 4), answer), answer
    assert fetch(r, "INBOX", uid + 1, "") == plain
    assert fetch(r, "INBOX", uid + 2, "") == big
    assert fetch(r, "INBOX", uid + 3, "") == SOURCE
    assert fetch(r, "INBOX", uid + 4, "") == b"X: " + fetch(r, "INBOX", uid, "TEXT")
    flags = b"".join(ok(r.cmd(f"e UID FETCH {uid + 1} FLAGS")))
    assert b"\\Flagged" in flags
    assert list(staging(imap).iterdir()) == []
    r.close()
