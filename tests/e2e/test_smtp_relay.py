"""The open-relay matrix: address tricks against the MX listener. None may reach the outbound queue."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

LOCAL = "example.org"
VICTIM = "victim@outside.test"

# (MAIL FROM, RCPT TO as sent on the wire, options for MAIL)
TRICKS: list[tuple[str, str, str]] = [
    ("<spammer@bad.test>", f"<{VICTIM}>", "plain relay"),
    ("<spammer@bad.test>", f"<@{LOCAL}:{VICTIM}>", "source route through us"),
    ("<spammer@bad.test>", f"<@{LOCAL},@relay.test:{VICTIM}>", "source route, two hops"),
    ("<spammer@bad.test>", f"<victim%outside.test@{LOCAL}>", "percent hack"),
    ("<spammer@bad.test>", f"<outside.test!victim@{LOCAL}>", "bang path"),
    ("<spammer@bad.test>", f"<{VICTIM}@{LOCAL}>", "double @"),
    ("<spammer@bad.test>", f'<"{VICTIM}"@{LOCAL}>', "quoted local part with @"),
    ("<spammer@bad.test>", f'<"victim%outside.test"@{LOCAL}>', "quoted percent hack"),
    ("<spammer@bad.test>", f'<"outside.test!victim"@{LOCAL}>', "quoted bang path"),
    ("<spammer@bad.test>", "<victim@outside.test.>", "trailing dot"),
    ("<spammer@bad.test>", f"<victim@{LOCAL}.outside.test>", "our domain as a prefix"),
    ("<spammer@bad.test>", f"<victim@outside{LOCAL}>", "our domain as a suffix without dot"),
    ("<spammer@bad.test>", "<victim@[127.0.0.1]>", "IPv4 literal of the server"),
    ("<spammer@bad.test>", "<victim@[IPv6:::1]>", "IPv6 literal"),
    ("<spammer@bad.test>", "<victim@127.0.0.1>", "bare IP as domain"),
    ("<spammer@bad.test>", "<VICTIM@OUTSIDE.TEST>", "upper case"),
    ("<spammer@bad.test>", "<Victim@Outside.Test>", "mixed case"),
    ("<>", f"<{VICTIM}>", "null sender"),
    (f"<alice@{LOCAL}>", f"<{VICTIM}>", "forged local sender"),
    (f"<alice@{LOCAL.upper()}>", f"<{VICTIM}>", "forged local sender, upper case"),
    ("<spammer@bad.test>", "<victim@localhost>", "localhost (not a local domain here)"),
    ("<spammer@bad.test>", "<postmaster@outside.test>", "remote postmaster"),
    ("<spammer@bad.test>", f"<{VICTIM}", "unclosed path"),
    ("<spammer@bad.test>", VICTIM, "no angle brackets"),
    ("<spammer@bad.test>", "<victim>", "no domain"),
    ("<spammer@bad.test>", f"<{VICTIM}%{LOCAL}>", "percent in the domain"),
    ("<spammer@bad.test>", f"<{VICTIM}> NOTIFY=NEVER", "with DSN parameters"),
    ("<spammer@bad.test>", "<victim@exämple.org>", "non-ASCII look-alike of our domain"),
    ("<spammer@bad.test>", f"<victim\\@outside.test@{LOCAL}>", "escaped @"),
    ("<spammer@bad.test>", f"<@:{VICTIM}>", "empty source route"),
    # SRS forms (delivery/srs.py) made up by the sender: the hash is not one this server made
    ("<spammer@bad.test>", f"<SRS0=AAAA=AB=outside.test=victim@{LOCAL}>", "forged SRS0"),
    ("<>", f"<SRS0=AAAA=AB=outside.test=victim@{LOCAL}>", "forged SRS0, null sender"),
    ("<spammer@bad.test>", f"<SRS1=AAAA=outside.test==AAAA=AB=x.test=victim@{LOCAL}>", "forged SRS1"),
    ("<spammer@bad.test>", f"<srs0=x@{LOCAL}>", "malformed SRS0"),
]


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"limits": {"errors_per_session": 200}}  # every trick is one refusal; keep one session for all


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user(f"alice@{LOCAL}", "secret-password-1")
    return server


def cmd(c: smtplib.SMTP, line: str) -> tuple[int, bytes]:
    c.send(line.encode("utf-8") + b"\r\n")  # smtplib's docmd only speaks ASCII
    return c.getreply()


def test_open_relay_matrix(srv: Any) -> None:
    results: dict[str, tuple[int, bytes]] = {}
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("localhost")  # claiming to be the server itself changes nothing
        for mail_from, rcpt, name in TRICKS:
            code, _ = cmd(c, f"MAIL FROM:{mail_from}")
            assert code == 250, name
            results[name] = cmd(c, f"RCPT TO:{rcpt}")
            c.docmd("RSET")
        # And with SMTPUTF8, the look-alike domain parses and is simply not ours.
        assert c.docmd("MAIL FROM:<spammer@bad.test> SMTPUTF8")[0] == 250
        results["non-ASCII look-alike with SMTPUTF8"] = cmd(c, "RCPT TO:<victim@exämple.org>")
        c.docmd("RSET")
        # MX does not offer AUTH, so "authenticating" cannot open the relay.
        assert c.docmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldC1wYXNzd29yZC0x")[0] == 502
        c.docmd("RSET")
    assert len(results) >= 20
    relayed = {name: r for name, r in results.items() if r[0] < 400}
    assert relayed == {}, relayed
    # The right refusal for the right reason: relaying is 5.7.1, unknown local users 5.1.1, bad syntax 501.
    assert results["plain relay"] == (550, b"5.7.1 Relaying denied")
    assert results["source route through us"] == (550, b"5.7.1 Relaying denied")
    assert results["percent hack"] == (550, b"5.1.1 No such user here")
    assert results["bang path"] == (550, b"5.1.1 No such user here")
    assert results["quoted local part with @"] == (550, b"5.1.1 No such user here")
    assert results["IPv4 literal of the server"] == (550, b"5.7.1 Relaying denied")
    assert results["null sender"] == (550, b"5.7.1 Relaying denied")
    assert results["trailing dot"][0] == 501
    assert all(results[n][0] == 550 and b"SRS" in results[n][1] for n in results if "SRS" in n)
    assert results["non-ASCII look-alike of our domain"][0] == 553
    assert srv.run(srv.store.queue_list()) == []


def test_relay_refused_even_after_a_local_recipient(srv: Any) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("x")
        c.mail("spammer@bad.test")
        assert c.rcpt(f"alice@{LOCAL}")[0] == 250
        assert c.rcpt(VICTIM)[0] == 550
        assert c.data(b"Subject: x\r\n\r\nspam\r\n")[0] == 250
    assert srv.run(srv.store.queue_list()) == []
