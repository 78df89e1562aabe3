"""`postroom domain add` (DKIM keys), `postroom dns`, `postroom sendmail` and `postroom queue ...` in a subprocess-free
way: `cli.main` in-process against a store in a temporary data folder."""

from __future__ import annotations

import asyncio
import io
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from postroom import cli
from postroom.mime.lineends import stray
from postroom.sendmail import SendmailError, prepare
from postroom.store import open_store
from postroom.store.api import QueueEntry


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "postroom.toml"
    p.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nhostname = "mx.a.test"\n')
    return p


def run(conf: Path, *args: str, stdin: bytes | None = None, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(stdin)))
    code = cli.main(["--config", str(conf), *args])
    out, err = capsys.readouterr()
    return code, out, err


def queue(conf: Path) -> list[QueueEntry]:
    data = conf.parent / "data"

    async def get() -> list[QueueEntry]:
        store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
        await store.open()
        try:
            return await store.queue_list()
        finally:
            await store.close()

    return asyncio.run(get())


def claim(conf: Path, holder: str) -> None:
    """What a scheduler does: claim the first due recipient for `holder`, with a 5-minute lease."""
    data = conf.parent / "data"

    async def go() -> None:
        store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
        await store.open()
        try:
            assert len((await store.queue_claim(time.time(), holder, 300.0, limit=1)).claimed) == 1
        finally:
            await store.close()

    asyncio.run(go())


def test_domain_add_makes_keys_and_dns_prints_records(conf: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(conf, "domain", "add", "a.test", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "DKIM keys" in out
    code, out, _ = run(conf, "dns", "a.test", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0
    lines = [line for line in out.splitlines() if not line.startswith(";")]
    assert lines[0].split() == ["a.test.", "3600", "IN", "MX", "10", "mx.a.test."]
    assert '"v=spf1 mx -all"' in lines[1]
    assert "._domainkey.a.test." in lines[2] and '"v=DKIM1; k=rsa; p=' in lines[2]
    assert "._domainkey.a.test." in lines[3] and "k=ed25519" in lines[3]
    assert lines[4].startswith("_dmarc.a.test.") and "v=DMARC1" in lines[4]
    code, out, _ = run(conf, "domain", "dkim", "a.test", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "new DKIM keys" in out
    code, _, err = run(conf, "dns", "nowhere.test", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1 and "not a local domain" in err


def test_dns_prints_srv_records_for_the_listeners(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 6186 §3.1-3.3 and RFC 8314 §5.1: one SRV record per submission/access service at its port, implicit
    TLS preferred (lower priority); a service that is not offered has the target "." (RFC 6186 §3.4)."""
    conf = tmp_path / "postroom.toml"
    conf.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nhostname = "mx.a.test"\n'
                    '[listeners]\nsubmissions = "0.0.0.0:465"\nsubmission = "0.0.0.0:587"\nimaps = "[::]:993"\n'
                    'imap = "0.0.0.0:143"\npop3s = ""\npop3 = ""\n')
    run(conf, "domain", "add", "a.test", capsys=capsys, monkeypatch=monkeypatch)
    code, out, _ = run(conf, "dns", "a.test", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0
    records = [line.split() for line in out.splitlines() if not line.startswith(";")]
    srv = [r for r in records if r[3] == "SRV"]
    assert srv == [
        ["_submissions._tcp.a.test.", "3600", "IN", "SRV", "0", "1", "465", "mx.a.test."],
        ["_submission._tcp.a.test.", "3600", "IN", "SRV", "10", "1", "587", "mx.a.test."],
        ["_imaps._tcp.a.test.", "3600", "IN", "SRV", "0", "1", "993", "mx.a.test."],
        ["_imap._tcp.a.test.", "3600", "IN", "SRV", "10", "1", "143", "mx.a.test."],
        ["_pop3s._tcp.a.test.", "3600", "IN", "SRV", "0", "0", "0", "."],
        ["_pop3._tcp.a.test.", "3600", "IN", "SRV", "0", "0", "0", "."],
    ]
    assert ["autoconfig.a.test.", "3600", "IN", "CNAME", "mx.a.test."] in records
    assert ["autodiscover.a.test.", "3600", "IN", "CNAME", "mx.a.test."] in records
    # smtp and http are left at their loopback defaults: said, since no other machine could reach them
    [warning] = [line for line in out.splitlines() if "bind a loopback address" in line]
    assert warning.endswith(": http, https, smtp")


def test_sendmail_then_queue_commands(conf: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run(conf, "domain", "add", "a.test", capsys=capsys, monkeypatch=monkeypatch)
    msg = b"To: bob@b.test\nBcc: secret@c.test\nSubject: cron\n\nline 1\n.\nnot read\n"
    code, _, err = run(conf, "sendmail", "-t", "-f", "cron@a.test", stdin=msg, capsys=capsys,
                       monkeypatch=monkeypatch)
    assert code == 0, err
    [entry] = queue(conf)
    assert entry.mail_from == "cron@a.test"
    assert [r.rcpt for r in entry.recipients] == ["bob@b.test", "secret@c.test"]
    code, out, _ = run(conf, "queue", "list", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and f"{entry.id} " in out and "<cron@a.test>" in out and "2/2" in out
    code, out, _ = run(conf, "queue", "show", str(entry.id), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "bob@b.test  queued" in out and "Subject: cron" in out and "Bcc" not in out
    assert "held by" not in out
    claim(conf, "node1-ab12#4242.c0ffee")  # a running server's scheduler is sending bob's copy
    code, out, _ = run(conf, "queue", "list", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "held by" in out and "node1-ab12#4242.c0ffee" in out
    code, out, _ = run(conf, "queue", "show", str(entry.id), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "bob@b.test  queued  attempts=0  next try now  held by node1-ab12#4242.c0ffee" in out
    assert "secret@c.test  queued  attempts=0  next try now\n" in out
    code, out, _ = run(conf, "queue", "retry", str(entry.id), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "2 recipient(s)" in out
    code, out, _ = run(conf, "queue", "flush", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "2 recipient(s)" in out
    code, out, _ = run(conf, "queue", "delete", str(entry.id), "--yes", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and queue(conf) == []
    code, _, err = run(conf, "queue", "show", str(entry.id), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1
    code, _, err = run(conf, "sendmail", stdin=b"Subject: x\n\nx\n", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "no recipients" in err


def test_prepare(india_time: None) -> None:
    p = prepare(b"Subject: hi\n\nbody\n.\nafter\n", recipients=["b@b.test"], sender=None, extract=False,
                ignore_dots=True, hostname="mx.a.test", user="root", uid=0, now=lambda: 0.0,
                make_id=lambda d: f"<id@{d}>")
    assert p.sender == "root@mx.a.test" and p.recipients == ("b@b.test",)
    # RFC 6409 §8.3 / RFC 5322 §3.3: the server's zone with its real offset, never "-0000" (zone unknown)
    assert p.raw.startswith(b"Received: by mx.a.test (Postroom sendmail) id local from root (uid 0);\r\n\t"
                            b"Thu, 01 Jan 1970 05:30:00 +0530\r\n")
    assert b"\r\nSubject: hi\r\nFrom: root@mx.a.test\r\nDate: Thu, 01 Jan 1970 05:30:00 +0530\r\n" \
           b"Message-ID: <id@mx.a.test>\r\n\r\nbody\r\n.\r\nafter\r\n" in p.raw
    assert b"\n" not in p.raw.replace(b"\r\n", b"")
    p = prepare(b"From: Me <me@a.test>\r\nDate: x\r\nMessage-ID: <m>\r\n\r\nbody\r\n", recipients=["b@b.test"],
                sender="<>", extract=False, ignore_dots=False, hostname="h", user="u")
    assert p.sender == "" and p.raw.count(b"From:") == 1 and p.raw.count(b"Message-ID") == 1
    p = prepare(b"hello world, no header\n", recipients=["b@b.test"], sender="s@a.test", extract=False,
                ignore_dots=False, hostname="h", user="u", full_name="Jo Ann")
    assert b"From: Jo Ann <s@a.test>\r\n" in p.raw and p.raw.endswith(b"\r\n\r\nhello world, no header\r\n")
    with pytest.raises(SendmailError):
        prepare(b"To: x\n\n", recipients=[], sender=None, extract=True, ignore_dots=False, hostname="h", user="u")


def test_prepare_extracts_quoted_local_parts_quoted() -> None:
    # RFC 5321 §4.1.2: the envelope keeps the quotes a local part needs (the header parser removes them).
    p = prepare(b'To: "John Doe" <"john doe"@b.test>, "jane"@b.test\n\nhi\n', recipients=[], sender=None,
                extract=True, ignore_dots=False, hostname="h", user="u")
    assert p.recipients == ('"john doe"@b.test', "jane@b.test")


def test_sendmail_normalises_bare_cr_and_nul(conf: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 11 item 7: this body used to be queued verbatim, a second message smuggled into any receiver that
    # ends DATA on CR "." CRLF. Now each stray CR (and NUL) is a space, as Postfix's cleanup does.
    run(conf, "domain", "add", "a.test", capsys=capsys, monkeypatch=monkeypatch)
    msg = (b"Subject: smuggle\n\nhello\r.\r\nMAIL FROM:<admin@a.test>\r\nRCPT TO:<victim@b.test>\r\nDATA\r\n"
           b"Subject: forged\r\n\x00\r\n.\r\n")
    code, _, err = run(conf, "sendmail", "-i", "-f", "cron@a.test", "bob@b.test", stdin=msg, capsys=capsys,
                       monkeypatch=monkeypatch)
    assert code == 0, err
    [entry] = queue(conf)
    data = conf.parent / "data"

    async def read() -> bytes:
        store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
        await store.open()
        try:
            return await store.read_message(entry.blob_id)
        finally:
            await store.close()

    raw = asyncio.run(read())
    assert stray(raw) is None
    assert b"\r\n\r\nhello .\r\nMAIL FROM:<admin@a.test>\r\n" in raw and b"\r\n \r\n.\r\n" in raw
