"""One user, ann, on the test server with plain-text login allowed: the fixtures of the IMAP test files named for a
command family (test_imap_append.py, test_imap_auth.py, test_imap_fetch_command.py, test_imap_mailboxes.py,
test_imap_messages.py, test_imap_search.py, test_imap_session.py). A test module imports the fixtures by name;
one that needs other settings defines its own `server_overrides`."""

from __future__ import annotations

from typing import Any

import pytest
from imap_support import Raw, wire_imap

ADDR = "ann@example.org"
PW = "ann-secret"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch, server_overrides: dict[str, Any]) -> None:
    wire_imap(monkeypatch)


@pytest.fixture
def imap(srv: None, server: Any) -> Any:
    """The server with ann added."""
    server.add_user(ADDR, PW)
    return server


def raw(server: Any) -> Raw:
    """A raw IMAP session logged in as ann."""
    r = Raw(server.port("imap"))
    r.login(ADDR, PW)
    return r


def session(server: Any, rev2: bool = False) -> Raw:
    """A raw session as ann with INBOX selected; `rev2` enables IMAP4rev2 first (no \\Recent: which session gets
    it first is a race the tests need not pin down)."""
    r = Raw(server.port("imap"))
    r.login(ADDR, PW)
    if rev2:
        r.cmd("e ENABLE IMAP4rev2")
    assert r.cmd("s SELECT INBOX")[-1].startswith(b"s OK")
    return r
