"""Third-party IMAP clients from Debian against the real server: isync's mbsync (a full two-way sync of a
populated account, flags changed on both sides, synced again, compared) and curl (imap:// LIST, FETCH,
SEARCH over STARTTLS; imaps://).

Needs the Debian packages `isync` and `curl`; the tests are skipped, naming the package, where they are
missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from imap_support import fill, message, wire_imap

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest, Flag, StoreMode

ADDR = "ann@example.org"
PW = "ann-secret"

needs_mbsync = pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync not installed (Debian: isync)")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (Debian: curl)")


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


# --- curl -----------------------------------------------------------------------------------------------

def curl(server: Any, url_path: str, *extra: str, imaps: bool = False) -> str:
    host = server.config.server.hostname
    port = server.port("imaps" if imaps else "imap")
    scheme = "imaps" if imaps else "imap"
    cmd = ["curl", "-sS", "--max-time", "20", "--resolve", f"{host}:{port}:127.0.0.1",
           "--cacert", str(server.config.cert_path), "--user", f"{ADDR}:{PW}",
           *([] if imaps else ["--ssl-reqd"]), *extra, f"{scheme}://{host}:{port}/{url_path}"]
    res = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode("utf-8", "replace")


@needs_curl
def test_curl_list_fetch_search(server: Any) -> None:
    fill(server, ADDR, PW, 3)
    listing = curl(server, "")
    assert '* LIST (\\HasNoChildren) "/" "INBOX"' in listing and "\\Sent" in listing
    assert curl(server, "INBOX/;UID=2") == message(2).decode()
    assert curl(server, "INBOX/;UID=3;SECTION=HEADER.FIELDS%20(SUBJECT)").strip() == "Subject: note 3"
    assert curl(server, "INBOX?SUBJECT%20%22note%202%22").strip() == "* SEARCH 2"
    assert curl(server, "INBOX", "-X", "UID FETCH 1:* (FLAGS)").count("FETCH") == 3
    assert curl(server, "INBOX/;UID=1", imaps=True) == message(1).decode()


# --- mbsync ---------------------------------------------------------------------------------------------

def maildir_flags(folder: Path) -> dict[str, str]:
    """Message-ID -> Maildir flags of each message in a local Maildir folder."""
    out = {}
    for sub in ("cur", "new"):
        for f in (folder / sub).iterdir():
            mid = next(line for line in f.read_text().splitlines() if line.lower().startswith("message-id:"))
            out[mid.split(":", 1)[1].strip()] = f.name.partition(":2,")[2]
    return out


def mbsync(server: Any, tmp_path: Path) -> None:
    rc = tmp_path / "mbsyncrc"
    local = tmp_path / "mail"
    local.mkdir(exist_ok=True)
    rc.write_text(
        f"IMAPAccount postroom\nHost {server.config.server.hostname}\nPort {server.port('imaps')}\n"
        f"User {ADDR}\nPass {PW}\nSSLType IMAPS\nCertificateFile {server.config.cert_path}\n\n"
        f"IMAPStore remote\nAccount postroom\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        f"Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\n")
    env = {**os.environ, "HOME": str(tmp_path)}
    # The certificate names "localhost", which resolves to the loopback address the server listens on.
    res = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, timeout=60, env=env, check=False)
    assert res.returncode == 0, (res.stdout + res.stderr).decode()


@needs_mbsync
def test_mbsync_two_way_sync(server: Any, tmp_path: Path) -> None:
    if server.config.server.hostname != "localhost":
        pytest.skip("the test certificate must name localhost")
    mid = fill(server, ADDR, PW, 5)
    mbsync(server, tmp_path)
    inbox = tmp_path / "mail" / "INBOX"
    flags = maildir_flags(inbox)
    assert len(flags) == 5 and all(v == "" for v in flags.values())
    assert (tmp_path / "mail" / "Sent").is_dir() and (tmp_path / "mail" / "Archive").is_dir()

    # Far side: flag message 2, delete message 5, deliver a new one. Near side: mark message 1 seen and add one.
    server.run(server.store.store_flags(mid, [2], StoreMode.ADD, int(Flag.FLAGGED)))
    server.run(server.store.store_flags(mid, [5], StoreMode.ADD, int(Flag.DELETED)))
    server.run(server.store.expunge(mid))
    server.run(server.store.deliver([mid], AppendRequest(raw=message(6), meta=compute_meta(message(6)).to_bytes())))
    for f in [*(inbox / "cur").iterdir(), *(inbox / "new").iterdir()]:
        if "<m1@example.org>" in f.read_text():
            f.rename(inbox / "cur" / (f.name.partition(":2,")[0] + ":2,S"))
    (inbox / "new" / "1700000000.local.host").write_bytes(message(7).replace(b"\r\n", b"\n"))

    mbsync(server, tmp_path)
    mbsync(server, tmp_path)  # a second run finds nothing left to do
    remote = {m.uid: m for m in server.run(server.store.list_messages(mid))}
    local = maildir_flags(inbox)
    assert set(local) == {f"<m{i}@example.org>" for i in (1, 2, 3, 4, 6, 7)}
    assert len(remote) == 6
    assert remote[1].flags & Flag.SEEN and local["<m2@example.org>"] == "F"
    assert local["<m1@example.org>"] == "S"
    raws = [server.run(server.store.read_message(m.blob_id)) for m in remote.values()]
    assert any(b"<m7@example.org>" in r for r in raws)
