"""`postroom serve --demo` as a real process: every listener accepts, TLS where configured, HTTP health and
metrics answer, SIGTERM stops it cleanly."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https")


def start(tmp_path: Path, demo: bool = True) -> tuple[subprocess.Popen[str], dict[str, int], str]:
    conf = tmp_path / "postroom.toml"
    lines = [f'[server]\ndata_dir = "{tmp_path / "data"}"\nshutdown_grace_seconds = 2\n[listeners]']
    lines += [f'{name} = "127.0.0.1:0"' for name in LISTENERS]
    # The checks would ask the system's DNS.
    lines += ["[inbound]", "spf = false", "dkim = false", "dmarc = false", "arc = false"]
    conf.write_text("\n".join(lines) + "\n")
    # `python -m postroom` from this checkout (not whatever `postroom` the venv's script points at).
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "postroom", "--config", str(conf), "serve"] + ["--demo"] * demo,
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
    ports = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s+127\.0\.0\.1:(\d+)", text, re.M)}
    return proc, ports, text


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err
    return err


def tls_context(tmp_path: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tmp_path / "data" / "tls" / "cert.pem"))
    ctx.check_hostname = False  # the certificate names "localhost"; the test connects to 127.0.0.1 by number
    return ctx


@pytest.mark.timeout(120)
def test_serve_demo_all_listeners(tmp_path: Path) -> None:
    proc, ports, text = start(tmp_path)
    try:
        assert set(ports) == set(LISTENERS), text
        password_file = tmp_path / "data" / "demo-password"
        password = password_file.read_text().strip()
        assert password in text and "demo@localhost" in text
        assert os.stat(password_file).st_mode & 0o777 == 0o600
        ctx = tls_context(tmp_path)

        # SMTP (issue 4): a message to the demo user through the MX listener; submission over implicit TLS.
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as smtp:
            assert smtp.sendmail("someone@example.test", ["demo@localhost"], b"Subject: hi\r\n\r\nhello\r\n") == {}
        with smtplib.SMTP_SSL("127.0.0.1", ports["submissions"], timeout=10, context=ctx) as smtps:
            smtps.login("demo@localhost", password)

        imap = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=ctx, timeout=10)  # IMAP (issue 5)
        imap.login("demo@localhost", password)
        assert imap.select("INBOX", readonly=True) == ("OK", [b"1"])  # the message sent over SMTP above
        imap.logout()
        pop = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], context=ctx, timeout=10)  # POP3 (issue 6)
        pop.user("demo@localhost")
        pop.pass_(password)
        assert pop.stat()[0] == 1  # the message sent over SMTP above
        pop.quit()

        # Implicit TLS really is TLS with our certificate.
        with socket.create_connection(("127.0.0.1", ports["imaps"]), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
                assert tls.recv(200).startswith(b"* OK [CAPABILITY IMAP4rev1 ")

        # Admin commands work while the server runs: they share its store, and the server sees the change.
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        admin = [sys.executable, "-m", "postroom", "--config", str(tmp_path / "postroom.toml")]
        subprocess.run([*admin, "domain", "add", "example.test"], check=True, env=env, capture_output=True,
                       timeout=60)
        subprocess.run([*admin, "user", "add", "newbie@example.test", "--password-stdin"], input="fresh-password\n",
                       text=True, check=True, env=env, capture_output=True, timeout=60)
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as smtp:
            assert smtp.sendmail("someone@example.test", ["newbie@example.test"], b"Subject: hi\r\n\r\nx\r\n") == {}
        imap = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=ctx, timeout=10)
        imap.login("newbie@example.test", "fresh-password")
        assert imap.select("INBOX", readonly=True) == ("OK", [b"1"])
        imap.logout()

        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/healthz", timeout=10) as resp:
            assert resp.status == 200 and b'"ok"' in resp.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert re.search(r'postroom_sessions_total\{protocol="smtp"\} [1-9]', body), body
    finally:
        err = stop(proc)
    assert password not in err  # logs never carry passwords
    assert "session protocol=smtp" in err

    # A second start keeps the demo user and its password.
    proc, ports, text = start(tmp_path)
    try:
        assert password in text
    finally:
        stop(proc)


@pytest.mark.timeout(120)
def test_banner_names_a_real_user_or_says_how_to_add_one(tmp_path: Path) -> None:
    # Issue 13: without --demo the banner named demo@localhost, who does not exist.
    proc, ports, text = start(tmp_path, demo=False)
    stop(proc)
    assert "demo@localhost" not in text
    assert "no user yet: postroom domain add example.org; postroom user add you@example.org" in text
    assert f"health      curl http://127.0.0.1:{ports['http']}/healthz" in text
    assert f"metrics     curl http://127.0.0.1:{ports['http']}/metrics" in text
    # the Quickstart's promise: the banner says where the webmail is
    assert f"webmail     http://127.0.0.1:{ports['http']}/" in text
    if "https" in ports:
        assert f"webmail     https://127.0.0.1:{ports['https']}/" in text
    conf = str(tmp_path / "postroom.toml")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for argv, stdin in ((["domain", "add", "example.test"], ""),
                        (["user", "add", "first@example.test", "--password-stdin"], "long-password\n")):
        done = subprocess.run([sys.executable, "-m", "postroom", "--config", conf, *argv], input=stdin, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    proc, ports, text = start(tmp_path, demo=False)
    try:
        assert "demo@localhost" not in text and "no user yet" not in text
        assert "['first@example.test']" in text and "-u 'first@example.test:PASSWORD'" in text
        # The line the banner prints does deliver (the user is real).
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as smtp:
            assert smtp.sendmail("you@example.org", ["first@example.test"], b"Subject: hello\r\n\r\nHi!\r\n") == {}
    finally:
        stop(proc)


def test_banner_commands_reach_wildcard_listeners_through_loopback(tmp_path: Path) -> None:
    # "*:port" listeners (`postroom setup` writes them) bind every address: the banner lists them as "*" and its
    # commands use loopback, not an unconnectable "0.0.0.0" or an empty host.
    from postroom import config as config_mod
    from postroom.app import Postroom, banner

    server = Postroom(config_mod.load(None, {"server": {"data_dir": str(tmp_path)}}))
    server.addresses = {"smtp": ("", 25), "imaps": ("::", 993), "pop3s": ("192.0.2.7", 995), "http": ("0.0.0.0", 80)}
    text = banner(server, None, "a@example.test")
    assert text.startswith("Postroom is running (configuration built-in defaults; data in ")
    assert "  smtp         *:25  (plain)" in text and "  http         *:80  (HTTP)" in text
    assert "curl http://127.0.0.1:80/healthz" in text and "smtplib.SMTP('127.0.0.1', 25)" in text
    assert "imaps://[::1]:993/INBOX" in text and "pop3s://192.0.2.7:995/1" in text
