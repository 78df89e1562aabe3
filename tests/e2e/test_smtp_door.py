"""Defence at the door end to end (smtp/door.py): the pregreet test, connection and message rates on the MX,
per-user send limits on submission; every refusal is temporary or names the protocol error, and is logged with
its reason. The tests' client is on loopback, which is exempt by default: these servers exempt nothing."""

from __future__ import annotations

import logging
import smtplib
import socket
from typing import Any

import pytest

PW = "secret-password-1"


def _overrides(**smtp: Any) -> dict[str, Any]:
    return {"smtp": {"screen_exempt": [], "greet_delay_seconds": 0, **smtp}}


@pytest.mark.parametrize("server_overrides", [_overrides(greet_delay_seconds=1.5)])
def test_pregreet_talker_refused_patient_client_passes(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.refusal")  # the one refusal format (net/listener.log_refusal)
    with socket.create_connection(("127.0.0.1", server.port("smtp")), timeout=10) as s:
        s.sendall(b"EHLO bot.example\r\n")  # before the greeting: a bot that does not read replies
        reply = s.recv(1000)
        assert reply.startswith(b"554 5.5.1 "), reply  # RFC 5321 §3.1: the client waits for the greeting
        assert s.recv(1000) == b""  # and the connection is closed
    assert any(r.getMessage().startswith("refused protocol=smtp listener=smtp ") and "what=connect code=554"
               in r.getMessage() and r.getMessage().endswith("reason=pregreet") for r in caplog.records)
    # a client that waits for the greeting is served, and passes from then on
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as c:
        assert c.ehlo("mx.example")[0] == 250
    assert server.postroom.services.door.passes.passed("127.0.0.1", __import__("time").time())
    with socket.create_connection(("127.0.0.1", server.port("smtp")), timeout=10) as s:
        s.sendall(b"EHLO mx.example\r\n")  # talking at once is fine now: it passed within the day
        assert s.recv(1000).startswith(b"220 ")


@pytest.mark.parametrize("server_overrides", [_overrides(client_connection_rate=2)])
def test_connection_rate(server: Any) -> None:
    for _ in range(2):
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as c:
            assert c.noop()[0] == 250
    with pytest.raises(smtplib.SMTPConnectError) as err:
        smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10)
    assert err.value.smtp_code == 421 and err.value.smtp_error.startswith(b"4.7.0")
    # submission is not the MX: not counted
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as c:
        assert c.noop()[0] == 250


@pytest.mark.parametrize("server_overrides", [_overrides(client_message_rate=2)])
def test_message_rate(server: Any) -> None:
    server.add_user("bob@example.org", PW)
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as c:
        for _ in range(2):
            c.sendmail("a@sender.example", ["bob@example.org"], b"Subject: x\r\n\r\nhi\r\n")
        code, text = c.mail("a@sender.example")
        assert (code, text[:5]) == (450, b"4.7.1")


@pytest.mark.parametrize("server_overrides", [{"smtp": {"submission_messages_per_hour": 2,
                                                        "submission_recipients_per_hour": 3}}])
def test_submission_send_limits(server: Any) -> None:
    server.add_user("bob@example.org", PW)
    for name in ("carol", "dave", "erin"):
        server.add_user(f"{name}@example.org", PW)
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as c:
        c.starttls(context=server.tls_client_context())
        c.login("bob@example.org", PW)
        c.sendmail("bob@example.org", ["carol@example.org", "dave@example.org"],
                   b"From: bob@example.org\r\nSubject: 1\r\n\r\nhi\r\n")
        # one recipient left this hour: the second RCPT of the next message is refused
        assert c.mail("bob@example.org")[0] == 250
        assert c.rcpt("erin@example.org")[0] == 250
        code, text = c.rcpt("carol@example.org")
        assert (code, text[:5]) == (450, b"4.7.1"), text
        c.data(b"From: bob@example.org\r\nSubject: 2\r\n\r\nhi\r\n")
        # two messages sent: the third MAIL is refused until the hour turns
        code, text = c.mail("bob@example.org")
        assert (code, text[:5]) == (450, b"4.7.1"), text
    # another user is not affected
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as c:
        c.starttls(context=server.tls_client_context())
        c.login("carol@example.org", PW)
        assert c.mail("carol@example.org")[0] == 250


def test_loopback_is_exempt_by_default(server: Any) -> None:
    """The default: the greeting comes at once for a loopback client (screen_exempt), whatever it sends first."""
    with socket.create_connection(("127.0.0.1", server.port("smtp")), timeout=10) as s:
        s.sendall(b"EHLO local\r\n")
        assert s.recv(1000).startswith(b"220 ")


@pytest.mark.parametrize("server_overrides", [_overrides(greylist_seconds=300)])
def test_greylisting(server: Any) -> None:
    server.add_user("bob@example.org", PW)
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as c:
        c.ehlo("mx.sender.example")
        c.mail("a@sender.example")
        assert c.rcpt("nobody@example.org")[0] == 550  # unknown users are refused for good, not greylisted
        code, text = c.rcpt("bob@example.org")
        assert code == 450 and text.startswith(b"4.7.1 Greylisted, please try again in ")
    # the retry after the delay passes (the server's greylist is asked as if 5 minutes had gone by)
    grey = server.postroom.services.door.greylist
    key = (grey.network("127.0.0.1"), "a@sender.example", "bob@example.org")
    first, passed = grey._seen[key]
    grey._seen[key] = (first - 300, passed)
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as c:
        assert c.sendmail("a@sender.example", ["bob@example.org"], b"Subject: x\r\n\r\nhi\r\n") == {}
