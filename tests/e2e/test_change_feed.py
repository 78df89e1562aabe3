"""Issue 16 item 1, end to end: an open IMAP session hears of what other processes commit to the store.

`postroom sendmail`, `postroom import` and a second process writing the same store (tests/store/feed_writer.py)
run as real processes beside a running server; a session in IDLE is pushed `EXISTS`, `FETCH` and `EXPUNGE`
(RFC 9051 §7.5.1: during IDLE, a command in progress, every kind may be sent), and one doing NOOP sees them at
the NOOP (RFC 9051 §6.1.2: NOOP is the way to poll for updates). FEED_WAIT is the issue's bound: "within 1 s"
of the other process's commit (the commit is done when that process has exited, or printed its change).
A server stalled (SIGSTOP) while another process writes past the change table's pruning resyncs its session
when it runs again; a writer killed with SIGKILL mid-way wedges nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from imap_support import Raw, fill, message, wire_imap
from serve_support import start_serve

ROOT = Path(__file__).resolve().parents[2]
WRITER = ROOT / "tests" / "store" / "feed_writer.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ADDR = "ann@example.org"
PW = "ann-secret"
FEED_WAIT = 1.0
SYSTEM = b"\\Seen \\Answered \\Flagged \\Deleted \\Draft"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


def conf_for(data: Path, tmp_path: Path) -> Path:
    """A configuration for the admin commands: the running server's data folder, nothing else."""
    conf = tmp_path / "admin.toml"
    conf.write_text(f'[server]\ndata_dir = "{data}"\n[delivery]\nenabled = false\n'
                    '[inbound]\nspf = false\ndkim = false\ndmarc = false\narc = false\n')
    return conf


def postroom(conf: Path, *args: str, stdin: bytes | None = None) -> None:
    subprocess.run([sys.executable, "-m", "postroom", "--config", str(conf), *args], input=stdin, check=True,
                   capture_output=True, env=ENV, timeout=60)


def writer(data: Path, *ops: str, keep: int | None = None) -> list[str]:
    """Run the second process to its end; its output lines (one JSON change each, then "done")."""
    cmd = [sys.executable, str(WRITER), str(data), ADDR, *ops]
    out = subprocess.run(cmd + (["--keep", str(keep)] if keep is not None else []), check=True,
                         capture_output=True, env=ENV, timeout=60).stdout.decode().splitlines()
    assert out[-1] == "done"
    return out


def idling(port: int) -> Raw:
    r = Raw(port)
    r.login(ADDR, PW)
    r.cmd("e ENABLE IMAP4rev2")  # no \Recent: the lines below are the same for every run
    assert r.cmd("s SELECT INBOX")[-1].startswith(b"s OK")
    r.send(b"i IDLE\r\n")
    assert r.line() == b"+ idling\r\n"
    return r


def pushed(r: Raw) -> bytes:
    """The next line the server pushes, within FEED_WAIT (the other process has committed already)."""
    r.sock.settimeout(FEED_WAIT)
    try:
        return r.line()
    finally:
        r.sock.settimeout(10)


def done(r: Raw) -> None:
    r.send(b"DONE\r\n")
    assert r.line() == b"i OK IDLE terminated\r\n"


def deliver_by(source: str, data: Path, tmp_path: Path) -> tuple[int, bytes]:
    """Have another process deliver to ADDR's INBOX; returns how many messages it added, and the last one's
    Subject."""
    if source == "postroom sendmail":
        postroom(conf_for(data, tmp_path), "sendmail", "-f", "cron@example.org", ADDR,
                 stdin=b"Subject: from cron\n\nnightly report\n")
        return 1, b"from cron"
    if source == "postroom import":
        mbox = tmp_path / "old.mbox"
        mbox.write_bytes(b"".join(b"From ann@example.org Mon Feb  5 10:00:00 2024\n"
                                  + message(i).replace(b"\r\n", b"\n") + b"\n" for i in (1, 2, 3)))
        postroom(conf_for(data, tmp_path), "import", "--user", ADDR, str(mbox))
        return 3, b"note 3"
    writer(data, "append:2")  # a second process opening the same store
    return 2, b"from another process 2"


@pytest.mark.parametrize("source", ["postroom sendmail", "postroom import", "another process"])
def test_idle_and_noop_see_what_another_process_delivers(server: Any, tmp_path: Path, source: str) -> None:
    server.add_user(ADDR, PW)
    a = idling(server.port("imap"))
    b = Raw(server.port("imap"))
    b.login(ADDR, PW)
    b.cmd("e ENABLE IMAP4rev2")
    assert b.cmd("s SELECT INBOX")[-1].startswith(b"s OK")
    n, subject = deliver_by(source, server.config.data_path, tmp_path)
    want = b"* %d EXISTS\r\n" % n
    # IDLE: pushed (one EXISTS per batch the feed read, each within FEED_WAIT)
    lines = [pushed(a)]
    while lines[-1] != want:
        assert lines[-1].endswith(b" EXISTS\r\n"), lines
        lines.append(pushed(a))
    # NOOP polls (RFC 9051 §6.1.2): the arrivals are there within FEED_WAIT of the commit
    deadline = time.monotonic() + FEED_WAIT
    seen: list[bytes] = []
    while want not in seen and time.monotonic() < deadline:
        seen += b.cmd("n NOOP")[:-1]
    assert want in seen and all(line.endswith(b" EXISTS\r\n") for line in seen)
    done(a)
    assert b"Subject: %s\r\n" % subject in a.cmd(f"f FETCH {n} BODY.PEEK[HEADER.FIELDS (SUBJECT)]")[0]


def test_idle_sees_appends_flags_and_expunges_of_another_process(server: Any) -> None:
    data = server.config.data_path
    fill(server, ADDR, PW, 2)
    a = idling(server.port("imap"))
    writer(data, "append:1")
    assert pushed(a) == b"* 3 EXISTS\r\n"
    writer(data, "flags:1:+\\Seen")
    assert pushed(a) == b"* 1 FETCH (FLAGS (\\Seen) UID 1)\r\n"
    writer(data, "flags:3:+$Important")  # a keyword new to the mailbox: FLAGS first (RFC 9051 §7.3.5)
    assert [pushed(a) for _ in range(3)] == [
        b"* FLAGS (" + SYSTEM + b" $Important)\r\n",
        b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Important \\*)] Flags permitted\r\n",
        b"* 3 FETCH (FLAGS ($Important) UID 3)\r\n"]
    writer(data, "flags:2:+\\Deleted")
    assert pushed(a) == b"* 2 FETCH (FLAGS (\\Deleted) UID 2)\r\n"
    writer(data, "expunge")
    assert pushed(a) == b"* 2 EXPUNGE\r\n"
    done(a)
    assert a.cmd("u UID SEARCH ALL")[0] == b'* ESEARCH (TAG "u") UID ALL 1,3\r\n'


def test_a_writer_killed_mid_way_wedges_no_session(server: Any, tmp_path: Path) -> None:
    data = server.config.data_path
    box_id = fill(server, ADDR, PW, 0)
    a = idling(server.port("imap"))
    proc = subprocess.Popen([sys.executable, str(WRITER), str(data), ADDR, "forever"], stdout=subprocess.PIPE,
                            env=ENV)
    try:
        assert proc.stdout is not None
        for _ in range(10):
            assert proc.stdout.readline()  # ten committed
        seen = [pushed(a)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of whatever it was doing
        proc.wait()
    stored = len(server.run(server.store.list_messages(box_id)))
    while seen[-1] != b"* %d EXISTS\r\n" % stored:  # every message it committed is announced
        assert seen[-1].endswith(b" EXISTS\r\n"), (stored, seen)
        seen.append(pushed(a))
    postroom(conf_for(data, tmp_path), "sendmail", "-f", "cron@example.org", ADDR, stdin=b"Subject: after\n\nx\n")
    assert pushed(a) == b"* %d EXISTS\r\n" % (stored + 1)  # and the next writer's commit still arrives
    done(a)


@pytest.mark.timeout(120)
def test_a_stalled_server_resyncs_its_session_after_the_pruning(tmp_path: Path) -> None:
    """The server is stopped (SIGSTOP) while another process changes the mailbox and keeps only 2 rows of the
    change table: when the server runs again, what it missed is gone from the table, so its session re-reads
    the mailbox and reports the difference, exactly."""
    data = tmp_path / "data"
    conf = tmp_path / "postroom.toml"
    conf.write_text(f'[server]\ndata_dir = "{data}"\n[listeners]\nimap = "127.0.0.1:0"\n'
                    + "".join(f'{n} = ""\n' for n in ("smtp", "submission", "submissions", "imaps", "pop3",
                                                      "pop3s", "http", "https"))
                    + "[auth]\nallow_plaintext = true\n[delivery]\nenabled = false\n"
                    + "[inbound]\nspf = false\ndkim = false\ndmarc = false\narc = false\n")
    postroom(conf, "domain", "add", "example.org")
    postroom(conf, "user", "add", ADDR, "--password", PW)
    writer(data, "append:5")
    proc, ports = start_serve(conf)
    try:
        a = idling(ports["imap"])
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            writer(data, "flags:1:+\\Seen", "flags:2:+\\Deleted", "expunge", "append:3", keep=2)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        # RFC 9051 §7.5.1: in IDLE the expunge may be sent; the arrivals and the flag change follow
        assert [pushed(a) for _ in range(3)] == [b"* 2 EXPUNGE\r\n", b"* 1 FETCH (FLAGS (\\Seen) UID 1)\r\n",
                                                 b"* 7 EXISTS\r\n"]
        done(a)
        assert a.cmd("u UID SEARCH ALL")[0] == b'* ESEARCH (TAG "u") UID ALL 1,3:8\r\n'
        assert a.cmd("n NOOP") == [b"n OK NOOP completed\r\n"]  # nothing reported twice
    finally:
        proc.kill()
        proc.wait()
