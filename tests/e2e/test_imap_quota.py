"""QUOTA (RFC 9208) end to end: the capabilities, GETQUOTAROOT / GETQUOTA with the store's counters (STORAGE in
units of 1024 octets, §5.1; MESSAGE, §5.2), SETQUOTA refused, and `NO [OVERQUOTA]` (§4.3, RFC 5530 §3) for
APPEND, MULTIAPPEND, CATENATE, COPY; a MOVE within the user is never refused. Raw bytes where the answer is
pinned down, imaplib and imapclient for interoperability."""

from __future__ import annotations

import imaplib
import logging
from typing import Any

import imapclient
import pytest
from imap_support import Raw, fill, message, wire_imap

USER, OTHER = "quota@example.org", "other@example.org"
PW = "secret-password"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


@pytest.fixture
def imap(server: Any) -> Any:
    """USER with 3 messages in INBOX, a storage limit of 4 KiB and a message limit of 5."""
    server.add_user(USER, PW)
    server.add_user(OTHER, PW)
    fill(server, USER, PW, 3)
    server.run(server.store.set_user_quota(USER, storage=4096, messages=5))
    return server


def login(server: Any, address: str = USER) -> Raw:
    r = Raw(server.port("imap"))
    r.login(address, PW)
    return r


def ok(lines: list[bytes]) -> list[bytes]:
    assert b" OK " in lines[-1], lines
    return lines[:-1]


def used(server: Any) -> tuple[int, int]:
    user = server.run(server.store.get_user(USER))
    q = server.run(server.store.get_quota(user.id))
    return q.storage, q.messages


def test_capabilities_and_getquotaroot_bytes(imap: Any) -> None:
    r = login(imap)
    caps = r.cmd("c CAPABILITY")[0].split()
    assert {b"QUOTA", b"QUOTA=RES-STORAGE", b"QUOTA=RES-MESSAGE"} <= set(caps)
    assert b"QUOTASET" not in caps  # SETQUOTA is the administrator's
    storage, messages = used(imap)
    assert messages == 3
    lines = ok(r.cmd("g GETQUOTAROOT INBOX"))
    assert lines == [b'* QUOTAROOT "INBOX" ""\r\n',
                     b'* QUOTA "" (STORAGE %d 4 MESSAGE 3 5)\r\n' % (storage // 1024)]
    assert ok(r.cmd('q GETQUOTA ""')) == [lines[1]]
    assert b"NO [NONEXISTENT]" in r.cmd('q GETQUOTA "User quota"')[-1]
    assert b"NO [NONEXISTENT]" in r.cmd("g GETQUOTAROOT Nowhere")[-1]
    assert b"NO [NOPERM]" in r.cmd('s SETQUOTA "" (STORAGE 100000)')[-1]
    assert b"BAD" in r.cmd('s SETQUOTA "" STORAGE')[-1]
    r.close()


def test_other_mailboxes_share_the_root_and_a_domain_quota_is_a_second_root(imap: Any) -> None:
    imap.run(imap.store.set_domain_quota("example.org", 1024 * 1024))
    r = login(imap)
    ok(r.cmd("c CREATE Projects"))
    lines = ok(r.cmd("g GETQUOTAROOT Projects"))
    assert lines[0] == b'* QUOTAROOT "Projects" "" "example.org"\r\n'
    assert lines[2] == b'* QUOTA "example.org" (STORAGE %d 1024)\r\n' % (used(imap)[0] // 1024)
    r.close()
    # A user without any limit has no root at all (RFC 9208 §7: a quota-list holds at least one resource).
    o = login(imap, OTHER)
    imap.run(imap.store.set_domain_quota("example.org", 0))
    assert ok(o.cmd("g GETQUOTAROOT INBOX")) == [b'* QUOTAROOT "INBOX"\r\n']
    o.close()


def test_writes_over_quota_are_no_overquota_and_logged(imap: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    r = login(imap)
    ok(r.cmd("c CREATE Keep"))
    before = used(imap)
    big = b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"
    r.send(b"a APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
    assert r.until(b"a")[-1].startswith(b"a NO [OVERQUOTA]")
    # MULTIAPPEND (RFC 3502): all or nothing; 3 + 3 > 5 messages.
    small = [b"Subject: s%d\r\n\r\nhi\r\n" % i for i in range(3)]
    r.send(b"m APPEND Keep" + b"".join(b" {%d+}\r\n" % len(m) + m for m in small) + b"\r\n")
    assert r.until(b"m")[-1].startswith(b"m NO [OVERQUOTA]")
    ok(r.cmd("s SELECT INBOX"))
    assert r.cmd("k COPY 1:3 Keep")[-1].startswith(b"k NO [OVERQUOTA]")  # 6 messages > 5
    assert used(imap) == before  # nothing stored by any of them
    ok(r.cmd("n APPEND Keep {2+}\r\nhi"))  # one message: 4 of 5 fits, and 80 % brings a warning mail (5 of 5)
    assert used(imap)[1] == 5
    assert r.cmd("n APPEND Keep {2+}\r\nho")[-1].startswith(b"n NO [OVERQUOTA]")
    r.send(b'c APPEND Keep CATENATE (TEXT {5+}\r\nhello)\r\n')  # RFC 4469: the same path
    assert r.until(b"c")[-1].startswith(b"c NO [OVERQUOTA]")
    ok(r.cmd("v MOVE 1:3 Keep"))  # within the user: usage unchanged, never refused
    assert used(imap)[1] == 5
    r.close()
    refused = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("refused ")]
    assert len(refused) == 5, refused  # APPEND, MULTIAPPEND, COPY, APPEND, CATENATE
    assert all("reason=over-quota" in line and f"user={USER}" in line for line in refused), refused


def test_imaplib_and_imapclient_read_the_quota(imap: Any) -> None:
    storage, _ = used(imap)
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=10)
    c.login(USER, PW)
    typ, data = c.getquotaroot("INBOX")
    assert typ == "OK"
    assert data == [[b'"INBOX" ""'], [b'"" (STORAGE %d 4 MESSAGE 3 5)' % (storage // 1024)]]
    typ, data = c.getquota('""')
    assert typ == "OK" and data == [b'"" (STORAGE %d 4 MESSAGE 3 5)' % (storage // 1024)]
    typ, data = c.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"y" * 8000 + b"\r\n")
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]"), data
    c.logout()
    client = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    client.login(USER, PW)
    roots, quotas = client.get_quota_root("INBOX")
    assert roots.mailbox == "INBOX" and roots.quota_roots == [""]
    assert [(q.quota_root, q.resource, q.usage, q.limit) for q in quotas] == [
        ("", "STORAGE", storage // 1024, 4), ("", "MESSAGE", 3, 5)]
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="OVERQUOTA"):
        client.append("INBOX", message(9) + b"z" * 6000)
    client.logout()


def test_append_past_80_percent_brings_one_warning_mail(imap: Any) -> None:
    imap.run(imap.store.set_user_quota(USER, storage=40960, messages=0))  # storage alone decides here
    r = login(imap)
    storage, _ = used(imap)
    body = b"Subject: filler\r\n\r\n" + b"f" * (int(40960 * 0.85) - storage - 19) + b"\r\n"
    r.send(b"a APPEND Drafts {%d+}\r\n" % len(body) + body + b"\r\n")
    ok(r.until(b"a"))
    ok(r.cmd("b APPEND Drafts {5+}\r\nsmall"))  # still past 80 %: no second warning
    ok(r.cmd("s SELECT INBOX"))
    subjects = ok(r.cmd("f FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])"))
    warnings = [line for line in subjects if b"Your mailbox is 80 % full" in line]
    assert len(warnings) == 1, subjects
    assert any(b"postmaster@example.org" in line for line in subjects), subjects
    r.close()


def test_a_synchronizing_append_that_cannot_fit_is_refused_before_its_literal(imap: Any) -> None:
    r = login(imap)
    r.send(b"a APPEND INBOX (\\Seen) {50000}\r\n")
    reply = r.line()  # no "+ " continuation: the answer comes first (RFC 9051 §7.5)
    assert reply.startswith(b"a NO [OVERQUOTA]"), reply
    ok(r.cmd("n NOOP"))  # the session goes on; nothing of the literal was expected
    # A literal that fits is accepted as usual, and a mailbox given as a literal is checked by the store.
    r.send(b"b APPEND INBOX {4}\r\n")
    assert r.line().startswith(b"+ ")
    r.send(b"tiny\r\n")
    ok(r.until(b"b"))
    r.send(b"c APPEND {5}\r\n")
    assert r.line().startswith(b"+ ")
    r.send(b"INBOX {9000}\r\n")
    assert r.line().startswith(b"+ ")  # the target is not known early here: read, then refused by the store
    r.send(b"Subject: late\r\n\r\n" + b"l" * (9000 - 17) + b"\r\n")  # the literal, then the command's end
    assert r.until(b"c")[-1].startswith(b"c NO [OVERQUOTA]")
    r.close()


def test_status_deleted_storage_is_what_expunge_would_free(imap: Any) -> None:
    r = login(imap)
    big = b"Subject: big\r\n\r\n" + b"d" * 2100 + b"\r\n"  # 2,118 octets: 2 units of 1024
    imap.run(imap.store.set_user_quota(USER, storage=0, messages=0))
    r.send(b"a APPEND INBOX (\\Deleted) {%d+}\r\n" % len(big) + big + b"\r\n")
    ok(r.until(b"a"))
    ok(r.cmd("s SELECT INBOX"))
    ok(r.cmd("f STORE 1 +FLAGS.SILENT (\\Deleted)"))
    first = imap.run(imap.store.list_messages(imap.run(imap.store.get_mailbox(
        imap.run(imap.store.get_user(USER)).id, "INBOX")).id))[0].size
    lines = ok(r.cmd("t STATUS INBOX (DELETED DELETED-STORAGE)"))
    # RFC 9208 §4.2.2: the sum of RFC822.SIZE of the \Deleted messages, in units of 1024 octets (rounded down).
    assert lines == [b'* STATUS "INBOX" (DELETED 2 DELETED-STORAGE %d)\r\n' % ((first + len(big)) // 1024)]
    ok(r.cmd("e EXPUNGE"))
    assert ok(r.cmd("t STATUS INBOX (DELETED-STORAGE)"))[-1] == b'* STATUS "INBOX" (DELETED-STORAGE 0)\r\n'
    r.close()


def test_move_into_another_users_mailbox_counts_against_the_owners_quota(imap: Any) -> None:
    other = imap.run(imap.store.get_user(OTHER))
    shared = imap.run(imap.store.create_mailbox(other.id, "Drop"))
    imap.run(imap.store.set_acl(shared.id, USER, "lrswite"))
    imap.run(imap.store.set_user_quota(OTHER, messages=2))
    r = login(imap)
    ok(r.cmd("s SELECT INBOX"))
    target = '"Other Users/other@example.org/Drop"'
    assert r.cmd(f"m MOVE 1:3 {target}")[-1].startswith(b"m NO [OVERQUOTA]")  # 3 > 2 of the owner's
    assert used(imap)[1] == 3  # nothing moved
    ok(r.cmd(f"m MOVE 1:2 {target}"))  # fits the owner's quota; the mover's usage goes down
    assert used(imap)[1] == 1
    lines = ok(r.cmd(f"g GETQUOTAROOT {target}"))
    assert lines == [b'* QUOTAROOT ' + target.encode() + b"\r\n"]  # the owner's quota is not shown to others
    r.close()
