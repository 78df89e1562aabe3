"""The NOTIFY command (RFC 5465) end to end: one session NOTIFYing, outside IDLE and in it, another session (or
an SMTP delivery) changing things; expected responses from the RFC's text (§5.1-§5.5, §5.8, §6). The change
notification every session gets without NOTIFY is tested in test_imap_changes.py (IDLE: test_imap_idle.py)."""

from __future__ import annotations

import re
import smtplib
import socket
from typing import Any

import pytest
from imap_support import Raw, fill, message, wire_imap

ADDR = "nia@example.org"
PW = "nia-secret"
SUPPORTED = (b"(MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange MailboxMetadataChange "
             b"ServerMetadataChange)")


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


def session(server: Any, select: str | None = "INBOX") -> Raw:
    r = Raw(server.port("imap"))
    r.login(ADDR, PW)
    r.cmd("e ENABLE IMAP4rev2")  # no \Recent: which session claims it first is not what these tests are about
    if select:
        assert r.cmd(f"s SELECT {select}")[-1].startswith(b"s OK")
    return r


def nothing_more(r: Raw, wait: float = 0.5) -> bool:
    """True if the server sends nothing within `wait` seconds."""
    r.sock.settimeout(wait)
    try:
        return r.sock.recv(1, socket.MSG_PEEK) == b""
    except TimeoutError:
        return True
    finally:
        r.sock.settimeout(10)


def uidvalidity(server: Any, name: str) -> int:
    u = server.run(server.store.get_user(ADDR))
    return int(server.run(server.store.get_mailbox(u.id, name)).uidvalidity)


def test_capability_is_advertised(server: Any) -> None:
    fill(server, ADDR, PW, 0)
    assert b"NOTIFY" in Raw(server.port("imap")).cmd("c CAPABILITY")[0].split()


def test_notifications_arrive_between_commands(server: Any) -> None:
    """No command in progress: STATUS for other mailboxes (§5.1-§5.3), EXISTS + the MessageNew FETCH and flag
    changes of the selected one (§5.2, §5.1), LIST for MailboxName and SubscriptionChange (§5.4, §5.5); the
    expunge waits for a command (RFC 9051 §7.5.1)."""
    fill(server, ADDR, PW, 2)
    a, b = session(server), session(server, select=None)
    assert a.cmd("n NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]) MessageExpunge "
                 "FlagChange)) (personal (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))"
                 ) == [b"n OK NOTIFY completed\r\n"]
    b.cmd(b"1 APPEND Archive {%d+}\r\n" % len(message(3)) + message(3))
    arch = uidvalidity(server, "Archive")
    assert a.line() == b'* STATUS "Archive" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n' % arch
    b.cmd(b"2 APPEND INBOX {%d+}\r\n" % len(message(4)) + message(4))
    assert a.line() == b"* 3 EXISTS\r\n"
    assert a.line() == b"* 3 FETCH (UID 3 BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: note 4\r\n\r\n)\r\n"
    b.cmd("3 SELECT INBOX")
    b.cmd("4 STORE 1 +FLAGS.SILENT (\\Flagged \\Deleted)")
    assert a.line() == b"* 1 FETCH (FLAGS (\\Flagged \\Deleted) UID 1)\r\n"
    b.cmd("5 EXPUNGE")
    assert nothing_more(a)  # RFC 9051 §7.5.1: no EXPUNGE while no command is in progress
    assert a.cmd("6 NOOP") == [b"* 1 EXPUNGE\r\n", b"6 OK NOOP completed\r\n"]
    b.cmd("7 CREATE Lists/ietf")
    assert [a.line(), a.line()] == [b'* LIST () "/" "Lists"\r\n', b'* LIST () "/" "Lists/ietf"\r\n']
    b.cmd("8 RENAME Lists/ietf Lists/imap")
    assert a.line() == b'* LIST () "/" "Lists/imap" ("OLDNAME" ("Lists/ietf"))\r\n'  # RFC 5465 §5.4
    b.cmd("9 SUBSCRIBE Lists/imap")
    assert a.line() == b'* LIST (\\Subscribed) "/" "Lists/imap"\r\n'  # §5.5
    b.cmd("10 UNSUBSCRIBE Lists/imap")
    assert a.line() == b'* LIST () "/" "Lists/imap"\r\n'
    b.cmd("11 DELETE Lists/imap")
    assert a.line() == b'* LIST (\\NonExistent) "/" "Lists/imap"\r\n'
    assert nothing_more(a)


def test_smtp_delivery_is_a_status_for_inbox_when_another_mailbox_is_selected(server: Any) -> None:
    fill(server, ADDR, PW, 1)
    a = session(server, select="Archive")
    assert a.cmd("n NOTIFY SET (selected (MessageNew MessageExpunge)) (inboxes (MessageNew MessageExpunge))"
                 )[-1] == b"n OK NOTIFY completed\r\n"
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        assert smtp.sendmail("someone@example.test", [ADDR], message(2)) == {}
    inbox = uidvalidity(server, "INBOX")
    assert a.line() == b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d UNSEEN 2)\r\n' % inbox


def test_status_carries_highestmodseq_once_condstore_is_on(server: Any) -> None:
    """RFC 5465 §5.2 with RFC 7162 §3.1.7: once CONDSTORE is enabled, a notification's STATUS also carries
    HIGHESTMODSEQ (a flag change moves nothing else STATUS shows)."""
    fill(server, ADDR, PW, 1)
    a = session(server, select=None)
    assert a.cmd("e ENABLE CONDSTORE")[-1] == b"e OK ENABLE completed\r\n"
    a.cmd("s SELECT Archive")
    assert a.cmd("n NOTIFY SET (selected (MessageNew MessageExpunge)) (inboxes (MessageNew MessageExpunge))"
                 )[-1] == b"n OK NOTIFY completed\r\n"
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        assert smtp.sendmail("someone@example.test", [ADDR], message(2)) == {}
    inbox = uidvalidity(server, "INBOX")
    line = a.line()
    assert line.startswith(b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d UNSEEN 2 HIGHESTMODSEQ ' % inbox)


def test_notifications_in_idle_with_selected_delayed(server: Any) -> None:
    """RFC 5465 §4: in IDLE the NOTIFY events are sent as they happen, EXPUNGE included (a command is in
    progress); SELECTED-DELAYED holds the selected mailbox's events for such a command (§6.1)."""
    fill(server, ADDR, PW, 1)
    a, b = session(server, select="Archive"), session(server, select=None)
    assert a.cmd("n NOTIFY SET (selected-delayed (MessageNew MessageExpunge)) (inboxes (MessageNew MessageExpunge))"
                 )[-1] == b"n OK NOTIFY completed\r\n"
    b.cmd(b"1 APPEND Archive {%d+}\r\n" % len(message(2)) + message(2))
    b.cmd(b"2 APPEND INBOX {%d+}\r\n" % len(message(3)) + message(3))
    inbox = uidvalidity(server, "INBOX")
    # the INBOX event is told at once; Archive's arrival waits for a command (SELECTED-DELAYED)
    assert a.line() == b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d UNSEEN 2)\r\n' % inbox
    assert nothing_more(a)
    a.send(b"i IDLE\r\n")
    assert a.line() == b"+ idling\r\n"
    assert a.line() == b"* 1 EXISTS\r\n"
    b.cmd("3 SELECT Archive")
    b.cmd("4 STORE 1 +FLAGS.SILENT (\\Deleted)")  # FlagChange was not asked for: nothing
    b.cmd("5 EXPUNGE")
    assert a.line() == b"* 1 EXPUNGE\r\n"
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("someone@example.test", [ADDR], message(4))
    assert a.line() == b'* STATUS "INBOX" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY %d UNSEEN 3)\r\n' % inbox
    a.send(b"DONE\r\n")
    assert a.line() == b"i OK IDLE terminated\r\n"


def test_notify_set_status_sends_the_initial_statuses(server: Any) -> None:
    """RFC 5465 §3.1: with STATUS, a STATUS response for each matching mailbox other than the selected one,
    before NOTIFY's OK; without it, none."""
    fill(server, ADDR, PW, 2)
    a = session(server)
    lines = a.cmd("n NOTIFY SET STATUS (selected (MessageNew MessageExpunge)) (personal (MessageNew MessageExpunge))")
    assert [re.sub(rb"UIDVALIDITY \d+", b"UIDVALIDITY v", x) for x in lines] == [
        b'* STATUS "%s" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY v UNSEEN 0)\r\n' % name
        for name in (b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash")] + [b"n OK NOTIFY completed\r\n"]
    assert a.cmd("m NOTIFY SET (subtree Sent (MessageNew MessageExpunge))") == [b"m OK NOTIFY completed\r\n"]
    assert a.cmd("o NOTIFY SET STATUS (mailboxes (Sent Nowhere) (MessageNew MessageExpunge))")[:-1] == [
        b'* STATUS "Sent" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY %d UNSEEN 0)\r\n' % uidvalidity(server, "Sent")]


def test_filters_and_none(server: Any) -> None:
    """§6: SUBTREE covers a name and what is under it, MAILBOXES only the names; the first group that covers a
    mailbox with NONE silences it; NOTIFY NONE silences everything, the selected mailbox included."""
    fill(server, ADDR, PW, 1)
    a, b = session(server), session(server, select=None)
    for name in ("Lists", "Lists/a", "Other"):
        b.cmd(f"c CREATE {name}")
    assert a.cmd("n NOTIFY SET (selected (MessageNew MessageExpunge)) (subtree Lists/a NONE) "
                 "(subtree Lists (MessageNew MessageExpunge))")[-1] == b"n OK NOTIFY completed\r\n"
    for name in ("Lists/a", "Other", "Lists"):
        b.cmd(b"1 APPEND %s {%d+}\r\n" % (name.encode(), len(message(5))) + message(5))
    assert a.line().startswith(b'* STATUS "Lists" (MESSAGES 1 ')  # not Lists/a (NONE), not Other
    assert nothing_more(a)
    assert a.cmd("m NOTIFY NONE") == [b"m OK NOTIFY completed\r\n"]
    b.cmd(b"2 APPEND INBOX {%d+}\r\n" % len(message(6)) + message(6))
    b.cmd(b"3 APPEND Lists {%d+}\r\n" % len(message(6)) + message(6))
    assert nothing_more(a)
    assert a.cmd("4 NOOP") == [b"4 OK NOOP completed\r\n"]  # NONE: the selected mailbox too (§3.1)
    # asking again: what was not told is told now
    assert a.cmd("o NOTIFY SET (selected (MessageNew MessageExpunge))") == [b"* 2 EXISTS\r\n",
                                                                          b"o OK NOTIFY completed\r\n"]


def test_refused_settings(server: Any) -> None:
    fill(server, ADDR, PW, 0)
    a = session(server)
    # RFC 5465 §3.1: unsupported events are NO [BADEVENT] naming those that are supported; nothing changes
    assert a.cmd("1 NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))") == [
        b"1 NO [BADEVENT " + SUPPORTED + b"] Unsupported NOTIFY event AnnotationChange\r\n"]
    assert a.cmd("2 NOTIFY SET (personal (ServerMetadataChange ExtraEvent))")[0].startswith(b"2 NO [BADEVENT ")
    assert a.cmd("3 NOTIFY SET (personal (Whatever))")[0].startswith(b"3 NO [BADEVENT ")
    # RFC 5465 §5: MessageNew and MessageExpunge together; FlagChange needs them: BAD
    assert a.cmd("4 NOTIFY SET (personal (MessageNew))")[0].startswith(b"4 BAD")
    assert a.cmd("5 NOTIFY SET (selected (FlagChange))")[0].startswith(b"5 BAD")
    # one selected filter, message events only (§6.1, §8)
    assert a.cmd("6 NOTIFY SET (selected NONE) (selected-delayed NONE)")[0].startswith(b"6 BAD")
    assert a.cmd("7 NOTIFY SET (selected (MailboxName))")[0].startswith(b"7 BAD")
    assert a.cmd("8 NOTIFY SET (elsewhere (MailboxName))")[0].startswith(b"8 BAD")
    assert a.cmd("9 NOTIFY")[0].startswith(b"9 BAD")
    assert a.cmd("10 NOOP") == [b"10 OK NOOP completed\r\n"]


def test_overflow_is_notificationoverflow_then_none(server: Any) -> None:
    """RFC 5465 §5.8: a session too far behind gets NOTIFICATIONOVERFLOW and is as after NOTIFY NONE."""
    fill(server, ADDR, PW, 1)
    a = session(server)
    assert a.cmd("n NOTIFY SET (selected (MessageNew MessageExpunge)) (personal (MessageNew MessageExpunge))"
                 )[-1] == b"n OK NOTIFY completed\r\n"
    u = server.run(server.store.get_user(ADDR))
    archive = server.run(server.store.get_mailbox(u.id, "Archive"))
    from postroom.store.api import AppendRequest
    # one write of more changes than a subscription holds (hub.DEFAULT_MAXSIZE): the feed overflows
    n = server.store.hub.maxsize + 10
    server.run(server.store.append_many(archive.id, [AppendRequest(raw=message(i)) for i in range(n)]))
    assert a.line() == b"* OK [NOTIFICATIONOVERFLOW] Too many notifications; NOTIFY is now NONE\r\n"
    fill(server, ADDR, PW, 1)  # one more in INBOX: NONE now, so not told
    assert nothing_more(a)
    assert a.cmd("1 NOOP") == [b"1 OK NOOP completed\r\n"]
    assert a.cmd("2 NOTIFY SET STATUS (selected (MessageNew MessageExpunge)) (mailboxes Archive (MessageNew "
                 "MessageExpunge))") == [
        b"* 2 EXISTS\r\n",
        b'* STATUS "Archive" (MESSAGES %d UIDNEXT %d UIDVALIDITY %d UNSEEN %d)\r\n' % (
            n, n + 1, archive.uidvalidity, n),
        b"2 OK NOTIFY completed\r\n"]


def test_unauthenticate_forgets_notify(server: Any) -> None:
    fill(server, ADDR, PW, 0)
    a = session(server, select=None)
    assert a.cmd("n NOTIFY SET (personal (MessageNew MessageExpunge))")[-1] == b"n OK NOTIFY completed\r\n"
    assert a.cmd("u UNAUTHENTICATE")[0].startswith(b"u OK")
    fill(server, ADDR, PW, 1)
    assert nothing_more(a)
    a.login(ADDR, PW)
    fill(server, ADDR, PW, 1)
    assert nothing_more(a)  # a new login has no NOTIFY settings


def test_subscribed_filter_follows_the_subscriptions(server: Any) -> None:
    """§6.4: SUBSCRIBED is the subscriptions as they are when an event happens; unsubscribing a name is told to
    a client that watched it."""
    fill(server, ADDR, PW, 0)
    a, b = session(server, select=None), session(server, select=None)
    b.cmd("1 CREATE News")
    assert a.cmd("n NOTIFY SET (subscribed (MessageNew MessageExpunge SubscriptionChange))")[-1].startswith(b"n OK")
    b.cmd(b"2 APPEND News {%d+}\r\n" % len(message(1)) + message(1))
    assert nothing_more(a)  # News is not subscribed
    b.cmd("3 SUBSCRIBE News")
    assert a.line() == b'* LIST (\\Subscribed) "/" "News"\r\n'
    b.cmd(b"4 APPEND News {%d+}\r\n" % len(message(2)) + message(2))
    assert a.line().startswith(b'* STATUS "News" (MESSAGES 2 UIDNEXT 3 ')
    b.cmd("5 UNSUBSCRIBE News")
    assert a.line() == b'* LIST () "/" "News"\r\n'
    b.cmd(b"6 APPEND News {%d+}\r\n" % len(message(3)) + message(3))
    assert nothing_more(a)


def test_too_many_groups_is_limit(server: Any) -> None:
    fill(server, ADDR, PW, 0)
    a = session(server, select=None)
    many = " ".join(f"(mailboxes m{i} (MessageNew MessageExpunge))" for i in range(101))
    assert a.cmd(f"1 NOTIFY SET {many}")[0].startswith(b"1 NO [LIMIT]")
    names = " ".join(f"m{i}" for i in range(1001))
    assert a.cmd(f"2 NOTIFY SET (mailboxes ({names}) (MessageNew MessageExpunge))")[0].startswith(b"2 NO [LIMIT]")


def test_imapclient_idles_with_notify(server: Any) -> None:
    """imapclient (which has no NOTIFY method) sends the command raw, then IDLEs on Archive: a delivery to INBOX
    reaches it as a STATUS response it parses."""
    from imapclient import IMAPClient

    fill(server, ADDR, PW, 0)
    c = IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False, timeout=10)
    c.login(ADDR, PW)
    assert b"NOTIFY" in c.capabilities()
    c.select_folder("Archive")
    import imaplib  # imapclient drives an imaplib.IMAP4 (subclass) underneath
    imaplib.Commands.setdefault("NOTIFY", ("AUTH", "SELECTED"))
    typ, _ = c._imap._simple_command("NOTIFY", "SET (selected (MessageNew MessageExpunge)) "
                                                "(inboxes (MessageNew MessageExpunge))")
    assert typ == "OK"
    c.idle()
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("someone@example.test", [ADDR], message(1))
    got = c.idle_check(timeout=10)
    c.idle_done()
    inbox = uidvalidity(server, "INBOX")
    assert got == [(b"STATUS", b"INBOX", (b"MESSAGES", 1, b"UIDNEXT", 2, b"UIDVALIDITY", inbox, b"UNSEEN", 1))]
    c.logout()
