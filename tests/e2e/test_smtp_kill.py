"""An acknowledgement is a promise: 20 concurrent SMTP senders, `postroom serve` killed with SIGKILL at random
moments and restarted; every message that got `250` is in the mailbox exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from postroom.auth.passwords import make_credentials
from postroom.store import open_store

SENDERS = 20
ROUNDS = 3
USER = "sink@example.org"
TOKEN = re.compile(rb"^Subject: (kill-\d+-\d+-\d+)\r$", re.M)


def _start(conf: Path) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout's code
    proc = subprocess.Popen([sys.executable, "-m", "postroom", "--config", str(conf), "serve", "--log-level",
                             "warning"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        text += line
        if line.startswith("Stop with"):
            break
    m = re.search(r"^\s+smtp\s+127\.0\.0\.1:(\d+)", text, re.M)
    if m is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"no banner: {text!r}")
    return proc, int(m.group(1))


def _sender(port: int, rnd: int, me: int, stop: threading.Event, acked: list[str]) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                while not stop.is_set():
                    n += 1
                    token = f"kill-{rnd}-{me}-{n}"
                    body = (f"Subject: {token}\r\nFrom: s{me}@remote.test\r\n\r\n" + "x" * 4000 + "\r\n").encode()
                    if c.sendmail(f"s{me}@remote.test", [USER], body) == {}:
                        acked.append(token)  # list.append is atomic under the GIL
        except (OSError, smtplib.SMTPException):
            if stop.wait(0.05):
                return


async def _setup(data: Path) -> None:
    store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
    await store.open()
    try:
        await store.add_domain("example.org")
        h, scram = make_credentials("kill-test-password")
        await store.add_user(USER, h, scram)
    finally:
        await store.close()


async def _tokens(data: Path) -> Counter[str]:
    store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
    await store.open()
    try:
        user = await store.get_user(USER)
        assert user is not None
        box = await store.get_mailbox(user.id, "INBOX")
        assert box is not None
        found: Counter[str] = Counter()
        for info in await store.list_messages(box.id):
            raw = await store.read_message(info.blob_id)
            m = TOKEN.search(raw)
            assert m is not None
            found[m.group(1).decode()] += 1
        return found
    finally:
        await store.close()


@pytest.mark.timeout(240)
def test_kill_9_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "postroom.toml"
    listeners = "\n".join(f'{n} = "127.0.0.1:0"' for n in ("smtp", "submission", "submissions"))
    off = "\n".join(f'{n} = ""' for n in ("imap", "imaps", "pop3", "pop3s", "http", "https"))
    conf.write_text(f'[server]\ndata_dir = "{data}"\n[listeners]\n{listeners}\n{off}\n'
                    f'[limits]\nconnections_per_ip = 100\n'
                    f'[inbound]\nspf = false\ndkim = false\ndmarc = false\narc = false\n')
    asyncio.run(_setup(data))
    rng = random.Random()
    acked: list[str] = []
    for rnd in range(ROUNDS):
        proc, port = _start(conf)
        stop = threading.Event()
        threads = [threading.Thread(target=_sender, args=(port, rnd, i, stop, acked), daemon=True)
                   for i in range(SENDERS)]
        try:
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.5))  # a random moment, mid-traffic
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stop.set()
            for t in threads:
                t.join(15)
    found = asyncio.run(_tokens(data))
    assert acked, "no message was acknowledged at all"
    missing = [t for t in acked if found[t] != 1]
    assert missing == [], f"{len(missing)} acknowledged messages not stored exactly once"
    assert all(n == 1 for n in found.values())  # nothing stored twice, acknowledged or not
