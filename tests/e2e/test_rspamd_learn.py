"""rspamd learning from users' Junk verdicts end to end (inbound/learn.py, store/sqlite/senders.py invariant 4):
Debian's `rspamd` (a normal and a controller worker, a Bayes classifier) and Debian's `redis-server` (the Bayes
statistics) started by the test on loopback high ports and stopped by PID; Postroom's IMAP listener driven by
imaplib, the messages delivered through SMTP.

What is checked is rspamd's own count of what it learnt, read from its Redis (`HGET BAYES_SPAM learns`, `HGET
BAYES_HAM learns`, the per-class counters rspamd's Redis statistics backend keeps) and from the controller's
`/stat` (`learned`): an IMAP MOVE into Junk and a STORE +FLAGS $Junk each make rspamd learn spam, a MOVE out of
Junk learns ham, a move of spam to Trash learns nothing. The controller requires its password from every
address (`secure_ip` empty): a wrong password is a 401 that leaves the signal to be retried.
"""

from __future__ import annotations

import grp
import imaplib
import json
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
from pathlib import Path
from typing import Any

import pytest
from web_support import deliver, mailbox_id, page_csrf, signed_in

from postroom.config import RspamdConfig
from postroom.inbound.learn import Learner
from tests.conftest import require_command

PASSWORD = "learn-secret-4711"
PW = "secret-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def redis_hget(port: int, key: str, field: str) -> int:
    """One inline Redis command (RESP, https://redis.io/docs/reference/protocol-spec/): HGET key field."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"HGET {key} {field}\r\n".encode())
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
            if not reply.startswith(b"$") or reply.startswith(b"$-1") or reply.count(b"\r\n") >= 2:
                break
    if reply.startswith(b"$-1"):
        return 0
    assert reply.startswith(b"$"), reply
    return int(reply.split(b"\r\n")[1])


class Rspamd:
    def __init__(self, normal: str, controller: str, redis_port: int) -> None:
        self.normal, self.controller, self.redis_port = normal, controller, redis_port

    def learns(self, kind: str) -> int:
        return redis_hget(self.redis_port, "BAYES_SPAM" if kind == "spam" else "BAYES_HAM", "learns")

    def learned(self) -> int:
        req = urllib.request.Request(f"{self.controller}/stat", headers={"Password": PASSWORD})
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(json.loads(r.read())["learned"])


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rspamd]:
    binary = require_command("rspamd")
    redis_binary = require_command("redis-server")
    work = tmp_path_factory.mktemp("rspamd-learn")
    redis_port, normal_port, controller_port = free_port(), free_port(), free_port()
    redis = subprocess.Popen([redis_binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(work)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (work / "rspamd.conf").write_text(f"""
options {{
  pidfile = "{work}/rspamd.pid";
  dns {{ nameserver = ["127.0.0.1:1"]; timeout = 1s; retransmits = 1; }}
  hs_cache_dir = "{work}";
  tempdir = "{work}";
}}
logging {{ type = "file"; filename = "{work}/rspamd.log"; level = "info"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{normal_port}"; count = 1; }}
worker "controller" {{
  bind_socket = "127.0.0.1:{controller_port}"; count = 1;
  password = "{PASSWORD}"; enable_password = "{PASSWORD}"; secure_ip = [];
}}
classifier "bayes" {{
  backend = "redis"; servers = "127.0.0.1:{redis_port}"; min_tokens = 1; min_learns = 1;
  statfile {{ symbol = "BAYES_SPAM"; spam = true; }}
  statfile {{ symbol = "BAYES_HAM"; spam = false; }}
}}
actions {{ reject = 15; add_header = 6; }}
""")
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    proc = subprocess.Popen([binary, "-f", "-i", "-c", str(work / "rspamd.conf"), "-u", user, "-g", group],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    controller = f"http://127.0.0.1:{controller_port}"
    try:
        deadline = time.monotonic() + 180  # rspamd compiles its URL and language tables at start
        while True:
            try:
                with urllib.request.urlopen(f"{controller}/ping", timeout=2) as r:
                    if r.read().strip() == b"pong":
                        break
            except OSError:
                pass
            if proc.poll() is not None or redis.poll() is not None or time.monotonic() > deadline:
                log = (work / "rspamd.log").read_text() if (work / "rspamd.log").exists() else ""
                pytest.fail(f"rspamd or redis-server did not start: {log[-2000:]}")
            time.sleep(0.3)
        yield Rspamd(f"http://127.0.0.1:{normal_port}", controller, redis_port)
    finally:
        stop(proc)
        stop(redis)


@pytest.fixture
def server_overrides(rspamd: Rspamd) -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True},
            "rspamd": {"url": rspamd.normal, "controller_url": rspamd.controller,
                       "controller_password": PASSWORD, "timeout_seconds": 20}}


WORDS = ("quarterly invoice payment reminder attached please review before friday meeting schedule project "
         "budget approval department travel expenses report summary").split()


def message(n: int, subject: str) -> bytes:
    body = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(60))
    return (f"From: Sender {n} <sender{n}@a.example>\r\nTo: bob@b.test\r\nSubject: {subject} {n}\r\n"
            f"Message-ID: <learn-{n}-{time.time_ns()}@a.example>\r\n\r\n{body}\r\n").encode()


def wait_for(what: Any, expected: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while what() < expected:
        assert time.monotonic() < deadline, f"rspamd's count stayed at {what()}, expected {expected}"
        time.sleep(0.2)


def test_moves_into_and_out_of_junk_teach_rspamd(server: Any, rspamd: Rspamd,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.inbound.learn")
    server.add_user("bob@b.test", PW)
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as c:
        for n in range(4):
            c.sendmail(f"sender{n}@a.example", ["bob@b.test"], message(n, "hello"))
    spam0, ham0, learned0 = rspamd.learns("spam"), rspamd.learns("ham"), rspamd.learned()
    with imaplib.IMAP4("127.0.0.1", server.port("imap")) as imap:
        imap.login("bob@b.test", PW)
        imap.select("INBOX")
        typ, _ = imap.uid("MOVE", "1", "Junk")  # RFC 6851 MOVE into the \Junk mailbox: spam
        assert typ == "OK"
        wait_for(lambda: rspamd.learns("spam"), spam0 + 1)
        typ, _ = imap.uid("STORE", "2", "+FLAGS", "($Junk)")  # Thunderbird's "mark as junk": spam
        assert typ == "OK"
        wait_for(lambda: rspamd.learns("spam"), spam0 + 2)
        imap.select("Junk")
        typ, _ = imap.uid("MOVE", "1", "INBOX")  # not spam after all: ham
        assert typ == "OK"
        wait_for(lambda: rspamd.learns("ham"), ham0 + 1)
        assert rspamd.learns("spam") == spam0 + 1  # rspamd relearns: the message left its spam class
        imap.select("INBOX")
        typ, _ = imap.uid("MOVE", "3", "Junk")
        assert typ == "OK"
        wait_for(lambda: rspamd.learns("spam"), spam0 + 2)
        imap.select("Junk")
        typ, _ = imap.uid("MOVE", "2", "Trash")  # deleting spam is not calling it ham
        assert typ == "OK"
    assert rspamd.learned() >= learned0 + 4
    lines = [r.getMessage() for r in caplog.records if r.name == "postroom.inbound.learn"]
    assert sum("result=learned kind=spam" in line for line in lines) == 3
    assert sum("kind=ham" in line for line in lines) == 1
    assert all(PASSWORD not in line for line in lines)

    async def pending() -> int:
        return len(await server.store.due_training_signals(1e12))

    deadline = time.monotonic() + 30
    while server.run(pending()):  # the Trash move left nothing to send, and everything was sent
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert rspamd.learns("ham") == ham0 + 1


def test_wrong_password_is_retried_not_lost(server: Any, rspamd: Rspamd, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.inbound.learn")
    bob = server.add_user("bob@b.test", PW)
    learner = server.postroom.learner
    server.run(learner.stop())  # the test drives a learner of its own, with the wrong password
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as c:
        c.sendmail("sender9@a.example", ["bob@b.test"], message(9, "wrong password"))

    async def go() -> list[Any]:
        box = await server.store.get_mailbox(bob.id, "INBOX")
        [m] = await server.store.list_messages(box.id)
        await server.store.add_training_signals(bob.id, "spam", [m.blob_id], time.time())
        wrong = Learner(server.store, RspamdConfig(controller_url=rspamd.controller,
                                                   controller_password="not-it"))
        await wrong.run_once()
        return await server.store.due_training_signals(1e12)

    spam0 = rspamd.learns("spam")
    [left] = server.run(go())
    assert left.attempts == 1 and rspamd.learns("spam") == spam0
    line = next(r.getMessage() for r in caplog.records if "result=retry" in r.getMessage())
    assert "HTTP 401" in line and "not-it" not in line

    async def right() -> None:
        await server.store.finish_training_signal(left.id, retry_at=0.0)  # due again now
        await Learner(server.store, RspamdConfig(controller_url=rspamd.controller,
                                                 controller_password=PASSWORD)).run_once()

    server.run(right())
    assert rspamd.learns("spam") == spam0 + 1


def test_the_webmails_move_into_junk_teaches_rspamd(server: Any, rspamd: Rspamd) -> None:
    """The webmail's "move" to the Junk folder is the same verdict as IMAP's (the store records it)."""
    bob = server.add_user("bob@b.test", PW)
    uid = deliver(server, bob, message(21, "from the web"))
    inbox, junk = mailbox_id(server, bob), mailbox_id(server, bob, "Junk")
    spam0 = rspamd.learns("spam")
    c = signed_in(server, "bob@b.test", PW)
    token = page_csrf(c, f"/mail/box/{inbox}")
    r = c.post(f"/mail/box/{inbox}", data={"csrf": token, "action": "move", "uid": str(uid), "dest": str(junk)})
    assert r.status_code == 303
    wait_for(lambda: rspamd.learns("spam"), spam0 + 1)
