"""Third-party POP3 clients against the real server: Debian's fetchmail (keep and delete modes, each run twice
to prove nothing is fetched twice) and curl (pop3:// with STLS and without TLS, pop3s://).

Needs the Debian packages `fetchmail` and `curl`; the tests are skipped, saying so, where they are missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from postroom.store.api import AppendRequest

ADDR = "fred@example.org"
PW = "fred-secret"

needs_fetchmail = pytest.mark.skipif(shutil.which("fetchmail") is None,
                                     reason="fetchmail not installed (Debian package: fetchmail)")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (Debian package: curl)")


def message(i: int) -> bytes:
    return f"From: a@example.org\r\nTo: {ADDR}\r\nSubject: note {i}\r\n\r\nbody {i}\r\n.dot line {i}\r\n".encode()


def fill(server: Any, count: int) -> int:
    user = server.add_user(ADDR, PW)
    inbox = server.run(server.store.get_mailbox(user.id, "INBOX"))
    server.run(server.store.append_many(inbox.id, [AppendRequest(raw=message(i)) for i in range(1, count + 1)]))
    return int(inbox.id)


def stored(server: Any, mailbox_id: int) -> int:
    return len(server.run(server.store.list_messages(mailbox_id)))


# --- fetchmail ------------------------------------------------------------------------------------------


def fetchmail(server: Any, tmp_path: Path, *, keep: bool, ssl: bool) -> tuple[int, list[bytes], str]:
    """One fetchmail run; returns its exit code, the messages its MDA got (this run), and its output."""
    out_dir = tmp_path / "delivered"
    out_dir.mkdir(exist_ok=True)
    before = set(out_dir.iterdir())
    rc = tmp_path / "fetchmailrc"
    port = server.port("pop3s" if ssl else "pop3")
    tls = (f"ssl sslcertck sslcertfile {server.config.cert_path} sslcommonname localhost" if ssl
           else f"sslproto tls1.2+ sslcertck sslcertfile {server.config.cert_path} sslcommonname localhost")
    rc.write_text(
        f'poll 127.0.0.1 with proto POP3 port {port} uidl\n'
        f'  user "{ADDR}" there with password "{PW}" is "{os.environ.get("USER", "root")}" here\n'
        f'  {"keep" if keep else "nokeep"} {tls}\n'
        f'  mda "cat > {out_dir}/msg.$$"\n')
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)}
    proc = subprocess.run(["fetchmail", "-f", str(rc), "-i", str(tmp_path / "fetchids"), "--nodetach",
                           "--nosyslog", "-v"], env=env, capture_output=True, text=True, timeout=60)
    got = [p.read_bytes() for p in sorted(set(out_dir.iterdir()) - before)]
    return proc.returncode, got, proc.stdout + proc.stderr


@needs_fetchmail
@pytest.mark.parametrize("ssl", [True, False], ids=["pop3s", "stls"])
def test_fetchmail_keep_mode_fetches_each_message_once(server: Any, tmp_path: Path, ssl: bool) -> None:
    inbox = fill(server, 3)
    code, got, log = fetchmail(server, tmp_path, keep=True, ssl=ssl)
    assert code == 0, log  # 0: mail was retrieved
    assert sorted(re.search(rb"Subject: (note \d)", g).group(1) for g in got) == [b"note 1", b"note 2", b"note 3"]
    assert all(b".dot line" in g for g in got)  # un-stuffed back to the stored text
    assert stored(server, inbox) == 3  # keep: still on the server
    code, got, log = fetchmail(server, tmp_path, keep=True, ssl=ssl)
    assert code == 1 and got == [], log  # 1: no new mail; UIDL told fetchmail it had them all
    # A new message arrives: only it is fetched.
    server.run(server.store.append(inbox, AppendRequest(raw=message(4))))
    code, got, log = fetchmail(server, tmp_path, keep=True, ssl=ssl)
    assert code == 0 and len(got) == 1 and b"note 4" in got[0], log


@needs_fetchmail
def test_fetchmail_delete_mode(server: Any, tmp_path: Path) -> None:
    inbox = fill(server, 3)
    code, got, log = fetchmail(server, tmp_path, keep=False, ssl=True)
    assert code == 0 and len(got) == 3, log
    assert stored(server, inbox) == 0  # deleted at QUIT
    code, got, log = fetchmail(server, tmp_path, keep=False, ssl=True)
    assert code == 1 and got == [], log


# --- curl -----------------------------------------------------------------------------------------------


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, timeout=60)


@needs_curl
def test_curl_pop3s_list_and_retrieve(server: Any) -> None:
    fill(server, 2)
    base = f"pop3s://127.0.0.1:{server.port('pop3s')}"
    listing = curl("-k", "-u", f"{ADDR}:{PW}", base + "/")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split(b"\r\n")[:2] == [b"1 %d" % len(message(1)), b"2 %d" % len(message(2))]
    one = curl("-k", "-u", f"{ADDR}:{PW}", base + "/2")
    assert one.returncode == 0 and one.stdout == message(2), one.stderr
    bad = curl("-k", "-u", f"{ADDR}:wrong", base + "/1")
    assert bad.returncode != 0


@needs_curl
def test_curl_pop3_with_stls(server: Any) -> None:
    fill(server, 1)
    url = f"pop3://127.0.0.1:{server.port('pop3')}/1"
    got = curl("--ssl-reqd", "--cacert", str(server.config.cert_path), "-k", "-u", f"{ADDR}:{PW}", url)
    assert got.returncode == 0 and got.stdout == message(1), got.stderr
    # Without TLS the password is refused: neither USER nor PLAIN/LOGIN is on offer.
    plain = curl("-u", f"{ADDR}:{PW}", url)
    assert plain.returncode != 0


@needs_curl
@pytest.mark.parametrize("server_overrides", [{"auth": {"allow_plaintext": True}}])
def test_curl_pop3_plaintext_when_allowed(server: Any) -> None:
    fill(server, 1)
    got = curl("-u", f"{ADDR}:{PW}", f"pop3://127.0.0.1:{server.port('pop3')}/1")
    assert got.returncode == 0 and got.stdout == message(1), got.stderr
