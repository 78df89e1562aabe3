"""Refusals are logged with their reason, one structured line each (issue 13, item 8): relay denied, list policy,
failed SMTP AUTH, IMAP and POP3 logins. The documented fail2ban filter (docs/ARCHITECTURE.md, "Log lines")
is checked against the real lines with Debian's fail2ban-regex when it is installed."""

from __future__ import annotations

import imaplib
import logging
import poplib
import re
import shutil
import smtplib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from postroom.store.api import ListPolicy

PW = "correct horse battery"
# The filter docs/ARCHITECTURE.md gives for fail2ban (a jail's failregex): failed logins of every protocol.
FAIL2BAN_FAILREGEX = r"refused protocol=\S+ listener=\S+ id=\S+ ip=<HOST> what=login "


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    # Far from the lockout, so every attempt below reaches the password check.
    return {"auth": {"max_failures_per_ip": 50, "max_failures_per_user": 50, "max_delay_seconds": 0}}


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "postroom.refusal"]


def test_refusals_are_logged_with_their_reason(server: Any, caplog: pytest.LogCaptureFixture,
                                               tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="postroom.refusal")
    server.add_user("alice@example.org", PW)
    server.run(server.store.create_list("team@example.org", "alice@example.org", ListPolicy.MEMBERS))
    ctx = server.tls_client_context()
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as c:
        c.ehlo("client.test")
        c.mail("stranger@far.test")
        assert c.rcpt("someone@elsewhere.test")[0] == 550
        assert c.rcpt("team@example.org")[0] == 550
        assert c.rcpt("nobody@example.org")[0] == 550
    with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=ctx, timeout=10) as c:
        c.ehlo("client.test")
        c.user, c.password = "alice@example.org", "wrong password"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.auth("PLAIN", c.auth_plain)  # one attempt (login() would go on to try LOGIN too)
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=ctx, timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("alice@example.org", "wrong password")
    imap.logout()
    pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=ctx, timeout=10)
    pop.user("ghost@example.org")
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong password")
    pop.quit()

    lines = refusals(caplog)
    assert len(lines) == 6, lines
    relay, members, unknown, smtp_auth, imap_login, pop_login = lines
    head = r"refused protocol=(\w+) listener=(\w+) id=\S+ ip=127\.0\.0\.1 what=(\w+) "
    assert re.match(head, relay)
    assert relay.endswith('from=stranger@far.test to=someone@elsewhere.test reason="Relaying denied"'), relay
    assert "code=550 esc=5.7.1" in relay
    assert members.endswith('to=team@example.org reason="Only members may post to this list"'), members
    assert unknown.endswith('to=nobody@example.org reason="No such user here"'), unknown
    for line, protocol, listener in ((smtp_auth, "smtp", "submissions"), (imap_login, "imap", "imaps"),
                                     (pop_login, "pop3", "pop3s")):
        m = re.match(head, line)
        assert m and m.groups() == (protocol, listener, "login"), line
        assert "reason=" in line and "wrong password" not in line  # the reason, never the password
    assert "user=alice@example.org" in smtp_auth and "user=alice@example.org" in imap_login
    assert "user=ghost@example.org" in pop_login

    # fail2ban, as an operator would configure it, finds the three failed logins and the address.
    if shutil.which("fail2ban-regex") is None:
        pytest.skip("fail2ban-regex not installed (Debian package fail2ban)")
    log = tmp_path / "postroom.log"
    log.write_text("".join(f"2026-12-01 02:50:00,000 INFO postroom.refusal {line}\n" for line in lines))
    proc = subprocess.run(["fail2ban-regex", "--print-all-matched", str(log), FAIL2BAN_FAILREGEX],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"Lines: 6 lines, 0 ignored, 3 matched, 3 missed", proc.stdout), proc.stdout
    assert re.search(r"127\.0\.0\.1\s+\(", proc.stdout) or "127.0.0.1" in proc.stdout, proc.stdout
