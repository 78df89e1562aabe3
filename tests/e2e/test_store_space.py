"""A full disk and crash leftovers (issue 11 item 10).

* The data folder on a 2 MB tmpfs (root only; skipped otherwise): a message that does not fit gets SMTP
  `452 4.3.1` (RFC 3463 §3.4 "mail system full", RFC 5321 §4.2.2 "insufficient system storage"), not
  `451 4.3.0`, and IMAP APPEND `NO [OVERQUOTA]` with a text saying why (RFC 5530 §3), not `NO [SERVERBUG]`;
  whether the staging file, a blob file or SQLite (SQLITE_FULL) ran out. The sessions go on, and once space is
  back mail is accepted again.
* Four APPENDs killed mid-literal (`kill -9` of `postroom serve`) left their staging files for an hour; the next
  start, alone with the store, removes them at once.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imap_support import wire_imap
from serve_support import start_serve

USER = "full@example.org"
PW = "disk-full-password"


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    data = tmp_path / "data"
    _mount_tmpfs(data, "2m")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


@pytest.fixture
def server_overrides(tiny_disk: Path) -> dict[str, Any]:  # mounts before the server fixture starts
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def srv(server: Any, monkeypatch: pytest.MonkeyPatch, tiny_disk: Path) -> Any:
    assert Path(server.config.data_path) == tiny_disk
    wire_imap(monkeypatch)
    server.add_user(USER, PW)
    return server


def fill(data: Path, leave: int) -> Path:
    """Fill the file system of `data` up to `leave` bytes free; returns the filler file."""
    filler = data / "filler"
    free = shutil.disk_usage(data).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def message(size: int) -> bytes:
    line = b"w" * 76 + b"\r\n"
    return b"From: a@remote.test\r\nSubject: full\r\n\r\n" + line * (size // len(line))


def smtp_reply(port: int, raw: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("full.test")
        c.mail("a@remote.test")
        c.rcpt(USER)
        code, text = c.data(raw)
        assert c.noop()[0] == 250  # the session goes on
        return code, text


def test_smtp_and_append_answer_a_full_disk_with_its_own_codes(srv: Any, tiny_disk: Path) -> None:
    port = srv.port("smtp")
    # A large body: the staging file (or the blob file) fills the disk.
    code, text = smtp_reply(port, message(3 * 1024 * 1024))
    assert (code, text[:5]) == (452, b"4.3.1"), text
    imap = imaplib.IMAP4("127.0.0.1", srv.port("imap"), timeout=30)
    try:
        imap.login(USER, PW)
        typ, data = imap.append("INBOX", None, None, message(3 * 1024 * 1024))
        assert typ == "NO" and b"[OVERQUOTA]" in data[0] and b"disk space" in data[0], data
        # Small bodies go into the database: SQLite runs out (SQLITE_FULL, or the file write before it).
        filler = fill(tiny_disk, 16 * 1024)
        code, text = smtp_reply(port, message(100 * 1024))
        assert (code, text[:5]) == (452, b"4.3.1"), text
        typ, data = imap.append("INBOX", None, None, message(100 * 1024))
        assert typ == "NO" and b"[OVERQUOTA]" in data[0], data
        assert imap.noop()[0] == "OK"
        # Space back: mail is accepted again.
        filler.unlink()
        code, _ = smtp_reply(port, message(10 * 1024))
        assert code == 250
        typ, data = imap.append("INBOX", None, None, message(10 * 1024))
        assert typ == "OK", data
    finally:
        imap.logout()


# --------------------------------------------------------------------------------------------------------
# Crash leftovers swept at start-up


def _serve(conf: Path) -> tuple[subprocess.Popen[str], int]:
    proc, ports = start_serve(conf)
    return proc, ports["imap"]


def _half_append(port: int, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(f"a1 LOGIN {USER} {PW}\r\n".encode())
    while not f.readline().startswith(b"a1 "):
        pass
    sock.sendall(b"a2 APPEND INBOX {%d}\r\n" % size)
    assert f.readline().startswith(b"+")
    sock.sendall(b"x" * (size // 2))
    return sock


@pytest.mark.timeout(180)
def test_staging_files_of_killed_appends_are_swept_at_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    conf = tmp_path / "postroom.toml"
    conf.write_text(f'[server]\ndata_dir = "{data}"\n[listeners]\nimap = "127.0.0.1:0"\n'
                    + "".join(f'{n} = ""\n' for n in ("smtp", "submission", "submissions", "imaps", "pop3",
                                                      "pop3s", "http", "https"))
                    + "[auth]\nallow_plaintext = true\n[delivery]\nenabled = false\n"
                    + "[inbound]\nspf = false\ndkim = false\ndmarc = false\narc = false\n")
    subprocess.run([sys.executable, "-m", "postroom", "--config", str(conf), "domain", "add", "example.org"],
                   check=True, capture_output=True, env={**os.environ,
                                                         "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    subprocess.run([sys.executable, "-m", "postroom", "--config", str(conf), "user", "add", USER, "--password",
                    PW], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    staging = data / "blobs" / "staging"
    proc, port = _serve(conf)
    socks = []
    try:
        socks = [_half_append(port, 30 * 1024 * 1024) for _ in range(4)]  # 4 x 15 MB written, then killed
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
                len(list(staging.iterdir())) < 4 or sum(p.stat().st_size for p in staging.iterdir()) < 50 << 20):
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for s in socks:
            s.close()
    left = list(staging.iterdir())
    assert len(left) == 4 and sum(p.stat().st_size for p in left) >= 50 << 20  # the crash's leftovers
    proc, _ = _serve(conf)  # alone with the store: sweeps at once, not after an hour
    try:
        assert list(staging.iterdir()) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
