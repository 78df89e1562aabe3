"""`server.event_loop`: the same server on the standard library's loop and on uvloop, through everything that
depends on the loop's transports: implicit TLS (the ClientHello can reach the connection before the TLS layer
does: uvloop starts reading right after connection_made), STARTTLS and STLS (`loop.start_tls`), IMAP COMPRESS
inside TLS, the metadata worker processes (pipes), and `postroom serve`'s signal handlers (SIGTERM ends it
cleanly). Real clients: imaplib, poplib, smtplib."""

from __future__ import annotations

import email.message
import imaplib
import importlib.util
import poplib
import signal
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest
from imap_support import Raw, wire_imap
from serve_support import start_serve
from test_imap_compress import Deflated

from postroom import config as config_mod
from postroom.app import loop_factory

ALICE = "alice@example.org"
PW = "correct horse battery"
NO_UVLOOP = pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
LOOPS = ["asyncio", pytest.param("uvloop", marks=NO_UVLOOP)]


@pytest.fixture(params=LOOPS)
def server_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"server": {"event_loop": request.param}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


def loop_kind(server: Any) -> str:
    return type(server.loop).__module__.partition(".")[0]


def test_the_configured_loop_runs(server: Any) -> None:
    assert loop_kind(server) == server.config.server.event_loop


def test_implicit_tls_and_starttls_on_every_protocol(server: Any) -> None:
    server.add_user(ALICE, PW)
    ctx = server.tls_client_context()
    for _ in range(3):  # several handshakes: the first bytes must reach the TLS layer every time
        c = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=ctx, timeout=30)
        assert c.login(ALICE, PW)[0] == "OK"
        c.logout()
    c = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=30)
    assert c.starttls(ssl_context=ctx)[0] == "OK"
    assert c.login(ALICE, PW)[0] == "OK"
    c.logout()
    p = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=ctx, timeout=30)
    p.user(ALICE)
    assert p.pass_(PW).startswith(b"+OK")
    p.quit()
    p3 = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=30)
    assert p3.stls(context=ctx).startswith(b"+OK")
    p3.user(ALICE)
    assert p3.pass_(PW).startswith(b"+OK")
    p3.quit()
    with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=ctx, timeout=30) as s:
        assert s.login(ALICE, PW)[0] == 235
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as s:
        assert s.starttls(context=ctx)[0] == 220
        assert s.login(ALICE, PW)[0] == 235


def test_compress_inside_tls_and_a_large_message_through_the_workers(server: Any) -> None:
    server.add_user(ALICE, PW)
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "bob@example.net", ALICE, "large"
    line = "A line of text for the metadata worker."
    msg.set_content((line + "\n") * 2000)  # 82,000 bytes: its metadata is computed in a worker process
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
        s.send_message(msg)
    raw = Raw(server.port("imaps"), ctx=server.tls_client_context())
    assert isinstance(raw.sock, ssl.SSLSocket)
    raw.login(ALICE, PW)
    assert raw.cmd("z COMPRESS DEFLATE") == [b"z OK DEFLATE active\r\n"]
    z = Deflated(raw.sock)
    assert z.cmd("1 SELECT INBOX")[-1].startswith(b"1 OK [READ-WRITE]")
    got = z.cmd("2 FETCH 1 (BODYSTRUCTURE ENVELOPE)")
    assert got[-1] == b"2 OK FETCH completed\r\n"
    size = (len(line) + 2) * 2000  # CRLF line ends on the wire (RFC 9051 §7.5.2: body size in octets, lines)
    assert b'BODYSTRUCTURE ("text" "plain" ("charset" "utf-8") NIL NIL "7bit" %d 2000 ' % size in got[0]
    assert b'"large"' in got[0]


@pytest.mark.parametrize("loop", LOOPS)
def test_serve_stops_on_sigterm(tmp_path: Path, loop: str) -> None:
    conf = tmp_path / "postroom.toml"
    off = "\n".join(f'{name} = ""' for name in config_mod.LISTENER_NAMES if name not in ("imap", "imaps"))
    conf.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nevent_loop = "{loop}"\n'
                    f'[listeners]\nimap = "127.0.0.1:0"\nimaps = "127.0.0.1:0"\n{off}\n')
    proc, ports = start_serve(conf)
    try:
        raw = Raw(ports["imaps"], ctx=ssl._create_unverified_context())
        assert raw.greeting.startswith(b"* OK")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_auto_takes_uvloop_when_it_imports() -> None:
    made = loop_factory("auto")()
    try:
        expected = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
        assert type(made).__module__.partition(".")[0] == expected
    finally:
        made.close()
    with pytest.raises(config_mod.ConfigError, match="server.event_loop must be one of"):
        config_mod.load(None, {"server": {"event_loop": "trio"}})
