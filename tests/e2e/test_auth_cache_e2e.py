"""The auth cache and the login refusal log end to end: real clients (imaplib, poplib, smtplib) over implicit TLS,
the argon2 checks counted on `/metrics` (`postroom_password_checks_total`), the password changed by the real
`postroom user passwd` in a process of its own, and the `throttled` / `locked` log lines read by Debian's
fail2ban-regex with the filter the docs ship (docs/fail2ban/postroom.conf). Clients use 127.0.0.2 and 127.0.0.3
(loopback on Linux) to play other addresses."""

from __future__ import annotations

import logging
import os
import poplib
import re
import shutil
import smtplib
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from imap_support import wire_imap
from test_auth_e2e import imap_login

from postroom.cli import LOG_FORMAT

ROOT = Path(__file__).resolve().parents[2]
PW = "correct horse battery"
NEW = "a new horse battery staple"
ALICE = "alice@example.org"


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


def checks(server: Any) -> dict[str, float]:
    """postroom_password_checks_total by `how`, scraped from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port('http')}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {how: float(n) for how, n in re.findall(r'^postroom_password_checks_total\{how="(\w+)"\} (\S+)$',
                                                    text, re.M)}


def test_logins_after_the_first_run_no_argon2(server: Any) -> None:
    server.add_user(ALICE, PW)
    assert imap_login(server, ALICE, PW)
    assert checks(server) == {"argon2": 1.0}
    assert imap_login(server, ALICE, PW, source="127.0.0.2")
    pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=server.tls_client_context(), timeout=30)
    try:
        pop.user(ALICE)
        assert pop.pass_(PW).startswith(b"+OK")
    finally:
        pop.quit()
    with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=server.tls_client_context(),
                          timeout=30) as smtp:
        assert smtp.login(ALICE, PW)[0] == 235
    assert checks(server) == {"argon2": 1.0, "cache": 3.0}
    assert not imap_login(server, ALICE, "not the password")  # a wrong one is still checked, and fails
    assert checks(server) == {"argon2": 2.0, "cache": 3.0}


def test_passwd_in_another_process_ends_the_remembered_login_at_once(server: Any, tmp_path: Path) -> None:
    server.add_user(ALICE, PW)
    assert imap_login(server, ALICE, PW)
    assert imap_login(server, ALICE, PW)
    assert checks(server) == {"argon2": 1.0, "cache": 1.0}
    conf = tmp_path / "admin.toml"
    conf.write_text(f'[server]\ndata_dir = "{server.config.data_path}"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "postroom", "--config", str(conf), "user", "passwd", ALICE,
                           "--password-stdin"], input=NEW + "\n", text=True, capture_output=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert not imap_login(server, ALICE, PW)
    assert imap_login(server, ALICE, NEW)
    assert checks(server) == {"argon2": 3.0, "cache": 1.0}


@pytest.mark.parametrize("server_overrides", [{"auth": {
    "max_failures_per_ip": 2, "max_failures_per_user": 3, "max_delay_seconds": 1, "trusted_networks": ["127.0.0.3"],
}}])
def test_throttled_and_locked_lines_match_the_fail2ban_filter(server: Any, caplog: pytest.LogCaptureFixture,
                                                              tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="postroom.auth")
    server.add_user(ALICE, PW)
    for _ in range(3):  # the 3rd waits 1 s (2 failures free per address) and locks (alice, 127.0.0.2)
        assert not imap_login(server, ALICE, "wrong password", source="127.0.0.2")
    assert not imap_login(server, ALICE, PW, source="127.0.0.2")  # refused: locked
    for _ in range(6):  # a trusted address: never slowed, never locked
        assert not imap_login(server, ALICE, "wrong password", source="127.0.0.3")
    assert imap_login(server, ALICE, PW, source="127.0.0.3")
    lines = [r.getMessage() for r in caplog.records if r.name == "postroom.auth"]
    assert any(m.startswith("login result=throttled ip=127.0.0.2 user=alice@example.org delay=1.000 reason=")
               for m in lines)
    assert sum(m.startswith("login result=locked ip=127.0.0.2 user=alice@example.org ") for m in lines) == 2
    assert not any("ip=127.0.0.3" in m and "result=failed" not in m for m in lines)
    assert any(m.startswith("login result=failed ip=127.0.0.3 user=alice@example.org trusted=yes") for m in lines)

    fail2ban = shutil.which("fail2ban-regex")
    if fail2ban is None:
        pytest.skip("fail2ban-regex not installed (apt-get install fail2ban)")
    log = tmp_path / "postroom.log"
    formatter = logging.Formatter(LOG_FORMAT)  # the lines as `postroom serve` writes them
    log.write_text("".join(formatter.format(r) + "\n" for r in caplog.records))
    out = subprocess.run([fail2ban, "-o", "ip", str(log), str(ROOT / "docs" / "fail2ban" / "postroom.conf")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["127.0.0.2"] * 4  # two throttled, two locked; the trusted address never
