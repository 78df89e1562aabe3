"""The any-state and not-authenticated commands against the real server (imap/auth.py): CAPABILITY, NOOP,
LOGOUT, LOGIN, AUTHENTICATE (PLAIN, SCRAM-SHA-256, SASL-IR), ID, ENABLE. STARTTLS and LOGINDISABLED:
test_imap_security.py; UNAUTHENTICATE: test_imap_unauthenticate.py."""

# ruff: noqa: F811 (the fixtures imported from ann_support are test arguments: pytest's way)
from __future__ import annotations

from typing import Any

from ann_support import ADDR, PW, imap, server_overrides, srv  # noqa: F401 (fixtures)
from imap_support import Raw


def test_greeting_capability_noop_logout(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert r.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    caps = r.cmd("a CAPABILITY")
    assert caps[0].startswith(b"* CAPABILITY ") and b"STARTTLS" in caps[0] and b"AUTH=PLAIN" in caps[0]
    for word in (b"IDLE", b"UIDPLUS", b"MOVE", b"LITERAL+", b"NAMESPACE", b"ID", b"ENABLE", b"UNSELECT",
                 b"SPECIAL-USE", b"LIST-EXTENDED", b"LIST-STATUS", b"CHILDREN", b"ESEARCH", b"SEARCHRES",
                 b"SASL-IR", b"BINARY", b"APPENDLIMIT=", b"STATUS=SIZE"):
        assert word in caps[0]
    assert r.cmd("b NOOP") == [b"b OK NOOP completed\r\n"]
    assert r.cmd("c SELECT INBOX")[-1].startswith(b"c BAD ")
    assert r.cmd("d LOGOUT") == [b"* BYE Logging out\r\n", b"d OK LOGOUT completed\r\n"]


def test_login_and_failures(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert r.cmd('a LOGIN ann@example.org "wrong"') == [b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    assert r.cmd("b LOGIN nobody@example.org x") == [b"b NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    ok = r.cmd(f"c LOGIN {ADDR} {PW}")[-1]
    assert ok.startswith(b"c OK [CAPABILITY IMAP4rev1 ") and b"AUTH=" not in ok and b"STARTTLS" not in ok
    assert r.cmd(f"d LOGIN {ADDR} {PW}")[-1].startswith(b"d BAD ")  # already authenticated


def test_authenticate_plain_with_and_without_initial_response(imap: Any) -> None:
    import base64

    token = base64.b64encode(f"\0{ADDR}\0{PW}".encode()).decode()
    r = Raw(imap.port("imap"))
    assert r.cmd(f"a AUTHENTICATE PLAIN {token}")[-1].startswith(b"a OK [CAPABILITY ")
    r = Raw(imap.port("imap"))
    r.send(b"a AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ \r\n"
    r.send(token.encode() + b"\r\n")
    assert r.line().startswith(b"a OK ")
    r = Raw(imap.port("imap"))
    r.send(b"a AUTHENTICATE PLAIN\r\n")
    r.line()
    r.send(b"*\r\n")
    assert r.line() == b"a BAD Authentication cancelled\r\n"
    assert r.cmd("b AUTHENTICATE PLAIN !!!")[-1].startswith(b"b BAD")
    assert r.cmd("c AUTHENTICATE X-UNKNOWN")[-1].startswith(b"c NO")


def test_authenticate_scram_sha_256(imap: Any) -> None:
    import base64
    import hashlib
    import hmac

    r = Raw(imap.port("imap"))
    first_bare = f"n={ADDR},r=clientnonce123"
    r.send(b"a AUTHENTICATE SCRAM-SHA-256 " + base64.b64encode(("n,," + first_bare).encode()) + b"\r\n")
    server_first = base64.b64decode(r.line()[2:].strip()).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", PW.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_msg = f"{first_bare},{server_first},{without_proof}".encode()
    sig = hmac.new(stored, auth_msg, hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
    r.send(base64.b64encode(f"{without_proof},p={proof}".encode()) + b"\r\n")
    final = r.line()
    assert final.startswith(b"+ ") and base64.b64decode(final[2:].strip()).startswith(b"v=")
    r.send(b"\r\n")
    assert r.line().startswith(b"a OK ")


def test_id_and_enable(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert r.cmd('a ID ("name" "test")')[0] == b'* ID ("name" "Postroom" "version" "0.1.0")\r\n'
    assert r.cmd("b ENABLE IMAP4rev2")[-1].startswith(b"b BAD")  # authenticated state only
    r.login(ADDR, PW)
    assert r.cmd("c ENABLE IMAP4rev2 CONDSTORE") == [b"* ENABLED IMAP4rev2 CONDSTORE\r\n",
                                                     b"c OK ENABLE completed\r\n"]


def test_login_with_bytes_that_are_not_utf8(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert r.cmd(b'a LOGIN "ann@example.org" "\xff\xfe"') == [
        b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    assert r.cmd(b"b LOGIN {5}\r\n\xff\xfe\xfd\xfc\xfb pw")[-1].startswith(b"b NO [AUTHENTICATIONFAILED]")
