"""The in-process server fixture itself: it starts, serves, keeps data, and stops."""

from __future__ import annotations

import urllib.request

from postroom.store.api import AppendRequest


def test_fixture_serves_and_stores(server) -> None:
    user = server.add_user("carol@example.org")
    inbox = server.run(server.store.get_mailbox(user.id, "INBOX"))
    result = server.run(server.store.append(inbox.id, AppendRequest(raw=b"Subject: x\r\n\r\nhi\r\n")))
    assert result.uid == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port('http')}/healthz", timeout=10) as resp:
        assert resp.status == 200
    assert set(server.postroom.addresses) >= {"smtp", "imaps", "pop3", "http"}
