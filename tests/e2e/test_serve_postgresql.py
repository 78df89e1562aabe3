"""`postroom serve` on the PostgreSQL engine (issue 16 item 2): mail in over SMTP, out again over IMAP and
POP3, every byte of it stored in a real PostgreSQL (tests/pgcluster.py), nothing in an SQLite file."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import smtplib
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_serve import LISTENERS, stop, tls_context


def start_on(tmp_path: Path, url: str, extra: str = "") -> tuple[Any, dict[str, int]]:
    """`postroom serve --demo` with `store.url = url` (test_serve.start's configuration plus the store), and
    `extra` (TOML, whole tables: "[queue]\nlease_seconds = 3\n") appended to its configuration text; with its own
    `[inbound]` table, the default one (SPF, DKIM and DMARC off) is left out."""
    import os
    import re
    import subprocess
    import sys
    import time

    conf = tmp_path / "postroom.toml"
    lines = [f'[server]\ndata_dir = "{tmp_path / "data"}"\nshutdown_grace_seconds = 2\n[store]\nurl = "{url}"',
             "[listeners]"]
    lines += [f'{name} = "127.0.0.1:0"' for name in LISTENERS]
    if "[inbound]" not in extra:  # (an `extra` with its own [inbound] table says what it checks)
        lines += ["[inbound]", "spf = false", "dkim = false", "dmarc = false"]  # they would ask the system's DNS
    conf.write_text("\n".join(lines) + "\n" + extra)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "postroom", "--config", str(conf), "serve", "--demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    banner = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner.append(line)
        if line.startswith("Stop with"):
            break
    text = "".join(banner)
    if not text.rstrip().endswith("SIGTERM."):
        proc.kill()
        raise AssertionError(f"no banner; stdout={text!r} stderr={proc.stderr.read() if proc.stderr else ''}")
    return proc, {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s+127\.0\.0\.1:(\d+)", text, re.M)}


async def _stored_bodies(url: str) -> list[bytes]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT string_agg(c.data, ''::bytea ORDER BY c.n) FROM blob_chunks c"
                                " JOIN messages m ON m.blob_id = c.id GROUP BY c.id")
        return [bytes(r[0]) for r in rows]
    finally:
        await conn.close()


@pytest.mark.timeout(120)
def test_smtp_in_imap_and_pop3_out_on_postgresql(tmp_path: Path, pg_cluster: Any) -> None:
    url = pg_cluster.create_database()
    proc, ports = start_on(tmp_path, url)
    try:
        password = (tmp_path / "data" / "demo-password").read_text().strip()
        body = b"Subject: on PostgreSQL\r\nFrom: someone@example.test\r\n\r\n" + b"line of text\r\n" * 2000
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as smtp:
            assert smtp.sendmail("someone@example.test", ["demo@localhost"], body) == {}

        ctx = tls_context(tmp_path)
        imap = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=ctx, timeout=10)
        imap.login("demo@localhost", password)
        assert imap.select("INBOX") == ("OK", [b"1"])
        typ, data = imap.uid("FETCH", "1", "(BODY.PEEK[])")
        assert typ == "OK" and isinstance(data[0], tuple)
        fetched = data[0][1]
        assert fetched.endswith(body)  # the server put its trace fields (Received, Return-Path) in front
        imap.logout()

        pop = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], context=ctx, timeout=10)
        pop.user("demo@localhost")
        pop.pass_(password)
        assert b"\r\n".join(pop.retr(1)[1]) + b"\r\n" == fetched
        pop.quit()

        # The body is in PostgreSQL, and no SQLite database was made beside the data.
        assert asyncio.run(_stored_bodies(url)) == [fetched]
        assert not (tmp_path / "data" / "postroom.db").exists()
    finally:
        stop(proc)


@pytest.fixture
def server_overrides(pg_cluster: Any) -> dict[str, Any]:
    """The in-process server of tests/e2e/conftest.py, on a PostgreSQL database of its own."""
    return {"auth": {"allow_plaintext": True}, "store": {"url": pg_cluster.create_database()}}


def test_idle_on_postgresql_hears_what_postroom_sendmail_delivers(server: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16's cross-process feed on PostgreSQL: `postroom sendmail`, its own process, delivers into the
    database; the session in IDLE on the server is pushed EXISTS within FEED_WAIT (LISTEN/NOTIFY)."""
    from imap_support import wire_imap

    from tests.e2e.test_change_feed import ADDR, PW, done, idling, postroom, pushed

    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    a = idling(server.port("imap"))
    conf = tmp_path / "admin.toml"
    conf.write_text(f'[server]\ndata_dir = "{server.config.data_path}"\n[store]\nurl = "{server.config.store_url}"\n'
                    '[delivery]\nenabled = false\n[inbound]\nspf = false\ndkim = false\ndmarc = false\n')
    postroom(conf, "sendmail", "-f", "cron@example.org", ADDR, stdin=b"Subject: from cron\n\nnightly report\n")
    assert pushed(a) == b"* 1 EXISTS\r\n"
    done(a)
    assert b"Subject: from cron\r\n" in a.cmd("f FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")[0]
