"""rspamd end to end (postroom/inbound/rspamd.py, issue 12 item 8): Debian's `rspamd` started by the test on a
loopback high port with a minimal configuration of its own (no stock modules, so no network lookups; its DNS
is the tests' loopback DNS server), smtplib to Postroom's MX listener, the stored messages checked.

rspamd decides by its own rules: the GTUBE string is its built-in "reject" (rspamd's GTUBE symbol), and a few
test rules in Lua score a message by words in its Subject, so each action of rspamd's protocol is reached:
"add header" at 6, "rewrite subject" at 8 (rspamd's own `subject` template), "greylist" at 4. One rule scores
only when every request header Postroom sent (IP, Helo, From, Rcpt, Queue-Id) reached rspamd as it should.
"""

from __future__ import annotations

import email
import email.policy
import grp
import logging
import os
import pwd
import signal
import smtplib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from dns_support import ZoneThread

from tests.conftest import require_command

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

RULES = r"""
local function subject_has(task, word)
  local s = task:get_subject() or ''
  return string.find(s, word, 1, true) ~= nil
end
local function envelope_ok(task)
  local from = task:get_from('smtp')
  local rcpts = task:get_recipients('smtp')
  return subject_has(task, 'TEST-ENVELOPE')
    and tostring(task:get_from_ip()) == '127.0.0.1'
    and task:get_helo() == 'helo.example'
    and from ~= nil and from[1].addr == 'alice@a.example'
    and rcpts ~= nil and #rcpts == 2 and rcpts[1].addr == 'bob@b.test' and rcpts[2].addr == 'carol@b.test'
    and string.find(task:get_queue_id() or '', '.', 1, true) ~= nil
end
rspamd_config.POSTROOM_TEST_HEADER = {
  callback = function(task) return subject_has(task, 'TEST-ADD-HEADER') end, score = 7.0 }
rspamd_config.POSTROOM_TEST_SUBJECT = {
  callback = function(task) return subject_has(task, 'TEST-REWRITE-SUBJECT') end, score = 9.0 }
rspamd_config.POSTROOM_TEST_GREYLIST = {
  callback = function(task) return subject_has(task, 'TEST-GREYLIST') end, score = 5.0 }
rspamd_config.POSTROOM_TEST_ENVELOPE = { callback = envelope_ok, score = 6.5 }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rspamd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require_command("rspamd")
    zone = ZoneThread()  # rspamd's resolver: the tests' own DNS (nothing here asks it; nothing else is asked)
    work = tmp_path_factory.mktemp("rspamd")
    (work / "rules.lua").write_text(RULES)
    port = free_port()
    (work / "rspamd.conf").write_text(f"""
options {{
  pidfile = "{work}/rspamd.pid";
  dns {{ nameserver = ["127.0.0.1:{zone.dns.port}"]; timeout = 1s; retransmits = 1; }}
  hs_cache_dir = "{work}";
  tempdir = "{work}";
}}
logging {{ type = "file"; filename = "{work}/rspamd.log"; level = "info"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}
actions {{ reject = 15; rewrite_subject = 8; add_header = 6; greylist = 4; subject = "***SPAM*** %s"; }}
lua = "{work}/rules.lua";
""")
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    proc = subprocess.Popen([binary, "-f", "-i", "-c", str(work / "rspamd.conf"), "-u", user, "-g", group],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # rspamd compiles its URL and language tables at start
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.read().strip() == b"pong":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (work / "rspamd.log").read_text() if (work / "rspamd.log").exists() else ""
                pytest.fail(f"rspamd did not start: {log[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # the main process stops its workers
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        zone.close()


@pytest.fixture
def checks() -> bool:
    return False


@pytest.fixture
def server_overrides(rspamd_url: str, checks: bool, request: pytest.FixtureRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"rspamd": {"url": rspamd_url, "timeout_seconds": 20}}
    if checks:  # the inbound checks and the built-in score on too, with a DNS of the test's own
        zone = request.getfixturevalue("checks_zone")
        out |= {"delivery": {"dns_servers": [f"127.0.0.1:{zone.dns.port}"]},
                "inbound": {"spf": True, "dkim": True, "dmarc": True, "dns_timeout_seconds": 1.0,
                            "score": {"junk_threshold": 4.0}}}
    return out


@pytest.fixture
def checks_zone() -> Iterator[ZoneThread]:
    z = ZoneThread()
    z.add("a.example", "TXT", "v=spf1 ip4:192.0.2.1 -all")  # SPF fails from loopback
    z.add("_dmarc.a.example", "TXT", "v=DMARC1; p=none")  # DMARC fails, and p=none applies nothing
    yield z
    z.close()


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("bob@b.test")
    server.add_user("carol@b.test")
    return server


def messages(server: Any, address: str, name: str) -> list[tuple[bytes, frozenset[str]]]:
    async def go() -> list[tuple[bytes, frozenset[str]]]:
        user = await server.store.get_user(address)
        box = await server.store.get_mailbox(user.id, name)
        return [(await server.store.read_message(m.blob_id), m.keywords)
                for m in await server.store.list_messages(box.id)]

    return list(server.run(go()))


def message(subject: str, body: bytes = b"Hello Bob.\r\n") -> bytes:
    return (f"From: Alice <alice@a.example>\r\nTo: bob@b.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@a.example>\r\n\r\n").encode() + body


def send(server: Any, raw: bytes, rcpts: tuple[str, ...] = ("bob@b.test",)) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), local_hostname="helo.example", timeout=60) as c:
        c.sendmail("alice@a.example", list(rcpts), raw)


def parsed(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def test_gtube_is_rejected(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.smtp.message")
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(srv, message("gtube", GTUBE + b"\r\n"))
    assert (info.value.smtp_code, info.value.smtp_error[:5]) == (550, b"5.7.1")
    assert messages(srv, "bob@b.test", "INBOX") == [] and messages(srv, "bob@b.test", "Junk") == []
    [line] = [r.getMessage() for r in caplog.records if "refused=rspamd" in r.getMessage()]
    assert "rspamd=reject" in line


def test_greylist_action_is_a_temporary_refusal(srv: Any) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(srv, message("TEST-GREYLIST"))
    assert (info.value.smtp_code, info.value.smtp_error[:5]) == (451, b"4.7.1")
    assert messages(srv, "bob@b.test", "INBOX") == []


def test_add_header_goes_to_junk_with_the_score(srv: Any) -> None:
    send(srv, message("TEST-ADD-HEADER"))
    assert messages(srv, "bob@b.test", "INBOX") == []
    [(raw, keywords)] = messages(srv, "bob@b.test", "Junk")
    assert keywords == frozenset({"$Junk"})
    msg = parsed(raw)
    assert msg["X-Spam"] == "Yes; score=7.00; required=15.00"
    assert msg["Subject"] == "TEST-ADD-HEADER"


@pytest.mark.parametrize("size", [0, 2 << 20])  # in memory, and staged in a file (past STAGING_THRESHOLD)
def test_rewrite_subject_replaces_the_subject(srv: Any, size: int) -> None:
    body = b"Hello Bob.\r\n" + (b"x" * 78 + b"\r\n") * (size // 80)
    send(srv, message("hi TEST-REWRITE-SUBJECT", body))
    [(raw, keywords)] = messages(srv, "bob@b.test", "Junk")
    assert keywords == frozenset({"$Junk"})
    msg = parsed(raw)
    assert msg.get_all("Subject") == ["***SPAM*** hi TEST-REWRITE-SUBJECT"]  # the old one is gone
    assert msg["X-Spam"] == "Yes; score=9.00; required=15.00"
    assert raw.endswith(body)


def test_clean_mail_is_delivered_and_the_envelope_reaches_rspamd(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.smtp.message")
    send(srv, message("nothing to see"))
    [(raw, keywords)] = messages(srv, "bob@b.test", "INBOX")
    assert keywords == frozenset() and parsed(raw)["X-Spam"] is None
    assert any("rspamd=no-action" in r.getMessage() for r in caplog.records)
    # The envelope rule scores only if IP, Helo, From, both Rcpt and Queue-Id arrived as sent.
    send(srv, message("TEST-ENVELOPE"), rcpts=("bob@b.test", "carol@b.test"))
    for user in ("bob@b.test", "carol@b.test"):
        [(raw, _)] = messages(srv, user, "Junk")
        assert parsed(raw)["X-Spam"] == "Yes; score=6.50; required=15.00"


@pytest.mark.parametrize("server_overrides", [{"rspamd": {"url": f"http://127.0.0.1:{free_port()}",
                                                          "timeout_seconds": 5}}])
def test_rspamd_unreachable_delivers_and_logs(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom")
    server.add_user("bob@b.test")
    send(server, message("TEST-REWRITE-SUBJECT", GTUBE + b"\r\n"))
    [(raw, keywords)] = messages(server, "bob@b.test", "INBOX")
    assert keywords == frozenset() and parsed(raw)["Subject"] == "TEST-REWRITE-SUBJECT"
    assert any("rspamd=unavailable" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("checks", [True])
def test_rspamd_decides_over_the_built_in_score(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    """When rspamd answers, its action decides; the built-in score (here 2.5 spf_fail + 0.5 dkim_none + 2
    dmarc_fail = 5, over the junk threshold of 4) is only logged (inbound/score.py)."""
    caplog.set_level(logging.INFO, logger="postroom.smtp.message")
    send(srv, message("nothing to see"))
    [(raw, keywords)] = messages(srv, "bob@b.test", "INBOX")
    assert keywords == frozenset() and parsed(raw)["X-Postroom-Score"].startswith("5 (spf_fail=2.5")
    line = next(r.getMessage() for r in caplog.records if r.name == "postroom.smtp.message")
    assert "rspamd=no-action" in line and "score_role=logged" in line and "score=5" in line
