"""CREATE-SPECIAL-USE (RFC 6154 §3) end to end with imaplib: CREATE name (USE (\\Sent)), LIST shows the use,
refusals are `NO [USEATTR]` and create nothing; one mailbox per special use per user."""

from __future__ import annotations

import imaplib
from typing import Any

import pytest
from imap_support import wire_imap

ADDR = "ann@example.org"
PW = "ann-secret"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    c = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=30)
    c.login(ADDR, PW)
    yield c
    c.logout()


def special_uses(c: imaplib.IMAP4) -> dict[str, str]:
    typ, data = c.list('""', "*")
    out = {}
    for line in data:
        assert isinstance(line, bytes)
        attrs, _, name = line.decode().partition(') "/" ')
        uses = [a for a in attrs.strip("(").split() if a in ("\\Sent", "\\Trash", "\\Archive", "\\Drafts", "\\Junk")]
        if uses:
            out[name.strip('"')] = uses[0]
    return out


def test_create_with_a_special_use(client: Any) -> None:
    c = client
    assert "CREATE-SPECIAL-USE" in c.capabilities
    assert c._simple_command("DELETE", "Sent")[0] == "OK"  # new users have one of each (store api)
    typ, data = c._simple_command("CREATE", '"Sent Items" (USE (\\Sent))')
    assert typ == "OK", data
    assert special_uses(c)["Sent Items"] == "\\Sent"
    typ, data = c._simple_command("LIST", '(SPECIAL-USE) "" "*"')
    assert typ == "OK"
    assert any(b'"Sent Items"' in line and b"\\Sent" in line for line in c.untagged_responses.pop("LIST", []))


@pytest.mark.parametrize("params", [
    "(USE (\\Sent))",  # the user has a \Sent mailbox already: one per use (RFC 6154 §3 lets the server choose)
    "(USE (\\All))",  # a virtual mailbox this server does not keep
    "(USE (\\Flagged))",
    "(USE (\\Bogus))",  # not a special use at all (use-attr-ext)
    "(USE (\\Archive \\Trash))",  # one use per mailbox here
])
def test_refused_uses_are_useattr_and_create_nothing(client: Any, params: str) -> None:
    c = client
    typ, data = c._simple_command("CREATE", "Other " + params)
    assert typ == "NO" and data[-1].startswith(b"[USEATTR]"), data
    assert c.select("Other")[0] == "NO"
    assert "Other" not in special_uses(c)


def test_bad_create_parameters(client: Any) -> None:
    for params in ("(FOO (\\Sent))", "(USE (Sent))"):
        with pytest.raises(imaplib.IMAP4.error, match="BAD|CREATE"):
            client._simple_command("CREATE", "Other " + params)
    typ, _ = client._simple_command("CREATE", "Plain (USE ())")
    assert typ == "OK" and "Plain" not in special_uses(client)
