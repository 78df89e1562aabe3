"""SRS end to end (issue 12 item 6; delivery/srs.py, router invariant 12): a forward leaves with an SRS0 envelope
sender in the forwarding domain, its bounce to that address reaches the original sender, the body is untouched;
direct relays, local senders and the null sender keep their sender; made-up SRS addresses are refused."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from postroom.auth.secret import load_or_create
from postroom.delivery import srs

LOCAL = "local.test"
MSG = b"From: Alice <alice@sender.example>\r\nSubject: fwd me\r\nDKIM-Signature: v=1; d=sender.example\r\n\r\nbody\r\n"


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user(f"bob@{LOCAL}", "secret-password-1")
    server.run(server.store.add_alias(f"fwd@{LOCAL}", ["Carol@Remote.Test"]))
    server.run(server.store.add_alias(f"both@{LOCAL}", [f"bob@{LOCAL}", "dave@remote.test"]))
    return server


def send(srv: Any, sender: str, rcpts: list[str], msg: bytes = MSG) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("mx.sender.example")
        refused = c.sendmail(sender, rcpts, msg)
        assert refused == {}


def queued(srv: Any) -> list[tuple[str, list[str], bytes]]:
    out = []
    for e in srv.run(srv.store.queue_list()):
        out.append((e.mail_from, [r.rcpt for r in e.recipients], srv.run(srv.store.read_message(e.blob_id))))
    return out


def test_forward_gets_srs_sender_and_its_bounce_goes_back(srv: Any) -> None:
    send(srv, "alice@sender.example", [f"fwd@{LOCAL}"])
    [(sender, rcpts, body)] = queued(srv)
    assert rcpts == ["Carol@remote.test"]  # router invariant 10: the local part keeps its case
    local, _, domain = sender.rpartition("@")
    assert local.startswith("SRS0=") and domain == LOCAL
    secret = load_or_create(srv.postroom.config.data_path)
    assert srs.reverse(local, secret) == "alice@sender.example"
    assert body.endswith(MSG)  # forwarded bytes untouched (signed headers included)

    # the next hop bounces to the SRS address: accepted on the MX (no AUTH) and sent to the original sender
    for e in srv.run(srv.store.queue_list()):
        srv.run(srv.store.queue_delete(e.id))
    send(srv, "", [sender], b"Subject: Undelivered\r\n\r\nbounce\r\n")
    [(bounce_sender, bounce_rcpts, _)] = queued(srv)
    assert (bounce_sender, bounce_rcpts) == ("", ["alice@sender.example"])


def test_who_keeps_their_sender(srv: Any) -> None:
    send(srv, "", [f"fwd@{LOCAL}"])  # the null sender stays null (a bounce being forwarded)
    send(srv, f"bob@{LOCAL}", [f"fwd@{LOCAL}"])  # a sender in a local domain: SPF passes as it is
    assert sorted(s for s, _, _ in queued(srv)) == ["", f"bob@{LOCAL}"]


def test_alias_with_local_and_remote_targets(srv: Any) -> None:
    send(srv, "alice@sender.example", [f"both@{LOCAL}"])
    [(sender, rcpts, _)] = queued(srv)
    assert sender.startswith("SRS0=") and rcpts == ["dave@remote.test"]
    # the local copy keeps the real sender in its Return-Path
    user = srv.run(srv.store.get_user(f"bob@{LOCAL}"))
    inbox = srv.run(srv.store.get_mailbox(user.id, "INBOX"))
    [info] = srv.run(srv.store.list_messages(inbox.id))
    assert srv.run(srv.store.read_message(info.blob_id)).startswith(b"Return-Path: <alice@sender.example>\r\n")


def test_direct_relay_by_a_user_keeps_the_sender(srv: Any) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=10) as c:
        c.starttls(context=srv.tls_client_context())
        c.login(f"bob@{LOCAL}", "secret-password-1")
        c.sendmail(f"bob@{LOCAL}", ["erin@remote.test"], b"From: bob@local.test\r\nSubject: x\r\n\r\nhi\r\n")
    [(sender, rcpts, _)] = queued(srv)
    assert (sender, rcpts) == (f"bob@{LOCAL}", ["erin@remote.test"])


def test_expired_or_altered_srs_addresses_are_refused(srv: Any) -> None:
    secret = load_or_create(srv.postroom.config.data_path)
    old = srs.forward("alice@sender.example", LOCAL, secret, now=1_000_000_000.0)  # 2001: long expired
    good = srs.forward("alice@sender.example", LOCAL, secret)
    altered = good.replace("=alice@", "=mallory@")
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("x")
        c.mail("")
        for addr in (old, altered):
            code, text = c.rcpt(addr)
            assert code == 550 and text.startswith(b"5.1.1") and b"SRS" in text, (addr, text)
        assert c.rcpt(good)[0] == 250
