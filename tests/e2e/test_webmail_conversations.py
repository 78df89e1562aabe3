"""The conversation view (issue 10 item 3; web/conversations.py): messages grouped by the thread id stored at
delivery, the same one IMAP's THREADID answers (RFC 8474 §5.2; REFERENCES threading, RFC 5256 §3), a row per
conversation with its count, unread count and newest date, each conversation on exactly one page, and the
conversation page listing its messages; another user's thread is a 404."""

from __future__ import annotations

import imaplib
import re
from typing import Any

import pytest
from web_support import deliver, mailbox_id, signed_in

from postroom.store.api import Flag

ALICE, BOB, PW = "alice@example.org", "bob@example.org", "conv-pass-1"
CONV = re.compile(r'<tr class="[^"]*" data-uid="(\d+)">.*?href="/mail/box/\d+/(?:thread/)?(\d+)">([^<]*)</a>'
                  r'</td>\s*<td class="count-cell">(\d+)', re.S)


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"web": {"page_size": 2}}


def _mail(subject: str, msgid: str, refs: str = "", date: str = "Mon, 01 Jan 2024 10:00:00 +0000") -> bytes:
    head = f"From: Pat <pat@example.net>\r\nTo: alice@example.org\r\nSubject: {subject}\r\nDate: {date}\r\n" \
           f"Message-ID: <{msgid}>\r\n"
    if refs:
        head += f"In-Reply-To: <{refs.split()[-1]}>\r\nReferences: " + " ".join(f"<{r}>" for r in refs.split()) + "\r\n"
    return (head + "\r\nbody\r\n").encode()


def test_conversations_group_by_stored_thread_and_page_once(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    u = {}
    u["plans"] = deliver(server, alice, _mail("Plans", "p1@x"), flags=int(Flag.SEEN))
    u["other"] = deliver(server, alice, _mail("Other thing", "o1@x"))
    u["re1"] = deliver(server, alice, _mail("Re: Plans", "p2@x", "p1@x"), flags=int(Flag.SEEN))
    u["solo"] = deliver(server, alice, _mail("Solo", "s1@x"), flags=int(Flag.SEEN))
    u["re2"] = deliver(server, alice, _mail("Re: Plans", "p3@x", "p1@x p2@x"))
    box = mailbox_id(server, alice)
    c = signed_in(server, ALICE, PW)
    rows: list[tuple[int, int, str, int]] = []
    params: dict[str, Any] = {"view": "conversations"}
    pages = 0
    while True:
        r = c.get(f"/mail/box/{box}", params=params)
        assert r.status_code == 200
        pages += 1
        rows += [(int(a), int(b), s, int(n)) for a, b, s, n in CONV.findall(r.text)]
        nxt = re.search(r'\?view=conversations&amp;below=(\d+)" rel="next"', r.text)
        if nxt is None:
            break
        params = {"view": "conversations", "below": nxt.group(1)}
    # Newest conversation first, at its newest message; each once; counts by the RFC 5256 REFERENCES links.
    assert [(newest, subject, n) for newest, _, subject, n in rows] == \
        [(u["re2"], "Re: Plans", 3), (u["solo"], "Solo", 1), (u["other"], "Other thing", 1)]
    assert pages == 2
    # The thread ids are IMAP's THREADID (RFC 8474): the same groups.
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context())
    try:
        imap.login(ALICE, PW)
        imap.select("INBOX", readonly=True)
        typ, data = imap.uid("FETCH", "1:*", "(THREADID)")
        assert typ == "OK"
        threadid = {int(m.group(1)): m.group(2) for m in
                    (re.search(rb"UID (\d+).*THREADID \(([^)]+)\)", d if isinstance(d, bytes) else d[0])
                     for d in data) if m}
    finally:
        imap.logout()
    assert threadid[u["plans"]] == threadid[u["re1"]] == threadid[u["re2"]] != threadid[u["other"]]
    # The conversation page: its three messages, oldest first; unread marked.
    plans_tid = rows[0][1]
    r = c.get(f"/mail/box/{box}/thread/{plans_tid}")
    assert r.status_code == 200
    listed = [int(x) for x in re.findall(rf'href="/mail/box/{box}/(\d+)"', r.text)]
    assert listed == [u["plans"], u["re1"], u["re2"]]
    assert "3 messages in Inbox" in r.text
    assert r.text.count("Unread. ") == 1
    # The list row says how many are unread.
    first = c.get(f"/mail/box/{box}", params={"view": "conversations"}).text
    assert "3 <span class=\"meta\">(1 unread)</span>" in first


def test_another_users_thread_is_not_found(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    deliver(server, bob, _mail("Bob's", "b1@x"))
    deliver(server, bob, _mail("Re: Bob's", "b2@x", "b1@x"))
    tids = server.run(server.store.thread_ids(mailbox_id(server, bob)))
    c = signed_in(server, ALICE, PW)
    for tid in set(tids.values()):
        assert c.get(f"/mail/box/{mailbox_id(server, alice)}/thread/{tid}").status_code == 404
        assert c.get(f"/mail/box/{mailbox_id(server, bob)}/thread/{tid}").status_code == 404
