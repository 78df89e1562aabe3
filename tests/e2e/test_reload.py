"""Reload (issue 13 item 4), one server per data folder and certificate files that must exist (item 8).

`postroom serve` runs as a real process; the test edits its configuration file and sends SIGHUP or runs
`postroom reload`, then checks with real clients what new sessions get: the SMTP SIZE of RFC 1870 §4 (EHLO's
"SIZE <limit>" keyword), the certificate served on imaps and submissions (compared by SHA-256 fingerprint), the
outbound route a new delivery takes. The server's log (stderr, a file here) has one `reload result=` line per
reload; a refused reload names its reason and changes nothing.
"""

from __future__ import annotations

import hashlib
import imaplib
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerHandle
from outbound_support import SmtpPeer

from postroom import config as config_mod
from postroom.net.tls import ensure_certificate

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def postroom(conf: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postroom", "--config", str(conf), *args], input=input,
                          capture_output=True, text=True, env=ENV, timeout=60)


class Serve:
    """`postroom --config conf serve` with its log in a file; ports from the banner."""

    def __init__(self, conf: Path, log: Path) -> None:
        self.log = log
        self.err = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "postroom", "--config", str(conf), "serve"],
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, env=ENV)
        assert self.proc.stdout is not None
        text = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Stop with" not in text:
            line = self.proc.stdout.readline()
            if not line:
                break
            text += line
        self.ports = {n: int(p) for n, p in re.findall(r"^\s+(\w+)\s+127\.0\.0\.1:(\d+)", text, re.M)}
        if "Stop with" not in text:
            self.stop()
            raise AssertionError(f"no banner: {text!r}; log: {log.read_text()}")

    def log_lines(self, word: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if word in line]

    def wait_log(self, word: str, count: int, timeout: float = 30.0) -> str:
        """The `count`-th log line containing `word`, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.log_lines(word)
            if len(lines) >= count:
                return lines[count - 1]
            time.sleep(0.05)
        raise AssertionError(f"no {count}th line with {word!r} in the log:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()


def write_conf(conf: Path, data: Path, *, size: int, tls: tuple[Path, Path] | None = None,
               smtp: str = "127.0.0.1:0", extra: str = "") -> None:
    # One process: these tests read its reload lines one by one (each worker logs its own: test_workers.py).
    lines = [f'[server]\ndata_dir = "{data}"\nshutdown_grace_seconds = 1\nworkers = 1',
             "[listeners]", f'smtp = "{smtp}"', 'submission = ""', 'submissions = "127.0.0.1:0"', 'imap = ""',
             'imaps = "127.0.0.1:0"', 'pop3 = ""', 'pop3s = ""', 'http = ""', 'https = ""',
             f"[limits]\nmessage_size = {size}", "[delivery]\nenabled = false"]
    if tls is not None:
        lines.append(f'[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"')
    conf.write_text("\n".join(lines) + "\n" + extra)


def ehlo_size(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        return int(smtp.esmtp_features["size"])  # RFC 1870 §4: "SIZE" SP the maximum in octets


def served_fingerprint(port: int) -> str:
    """SHA-256 of the certificate a TLS handshake on `port` shows (implicit TLS: imaps, submissions)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Path], Serve]]:
    started: list[Serve] = []

    def start(conf: Path) -> Serve:
        s = Serve(conf, tmp_path / f"serve{len(started)}.log")
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.mark.timeout(180)
def test_sighup_and_postroom_reload_apply_limits_and_certificate(tmp_path: Path,
                                                                 serve: Callable[[Path], Serve]) -> None:
    conf, data = tmp_path / "postroom.toml", tmp_path / "data"
    write_conf(conf, data, size=100000)
    srv = serve(conf)
    if os.geteuid() == 0:  # CI runs as root without server.user: the loud warning (process.py)
        assert srv.log_lines("running as root"), srv.log.read_text()
    assert ehlo_size(srv.ports["smtp"]) == 100000
    generated = data / "tls" / "cert.pem"
    assert served_fingerprint(srv.ports["imaps"]) == file_fingerprint(generated)

    # An SMTP session opened before the reload keeps its settings (app.py, "Reload").
    early = smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=10)
    try:
        early.ehlo("early.test")
        # A new certificate and a new limit, applied by SIGHUP without a restart.
        new_cert, new_key = tmp_path / "new" / "cert.pem", tmp_path / "new" / "key.pem"
        ensure_certificate(new_cert, new_key, "reloaded.test")
        write_conf(conf, data, size=200000, tls=(new_cert, new_key))
        srv.proc.send_signal(signal.SIGHUP)
        line = srv.wait_log("reload result=", 1)
        assert "result=applied" in line and "limits.message_size" in line and "tls.certificate" in line, line
        assert f"certificate=sha256:{file_fingerprint(new_cert)}" in line
        assert ehlo_size(srv.ports["smtp"]) == 200000
        assert served_fingerprint(srv.ports["imaps"]) == file_fingerprint(new_cert)
        assert served_fingerprint(srv.ports["submissions"]) == file_fingerprint(new_cert)
        early.ehlo("early.test")
        assert int(early.esmtp_features["size"]) == 100000
    finally:
        early.close()

    # An invalid file keeps the running configuration, and the log line says why.
    conf.write_text(conf.read_text().replace("message_size = 200000", "message_size = 0"))
    srv.proc.send_signal(signal.SIGHUP)
    line = srv.wait_log("reload result=", 2)
    assert "result=refused" in line and "limits.message_size must be at least 1" in line, line
    assert ehlo_size(srv.ports["smtp"]) == 200000
    # `postroom reload` checks the file first: it tells the operator and does not signal the server.
    done = postroom(conf, "reload")
    assert done.returncode == 2 and "limits.message_size must be at least 1" in done.stderr, done
    assert len(srv.log_lines("reload result=")) == 2

    # A certificate file that does not parse: refused, naming the file; the previous certificate is served.
    write_conf(conf, data, size=300000, tls=(new_cert, new_key))
    new_cert.write_text("not a certificate\n")
    srv.proc.send_signal(signal.SIGHUP)
    line = srv.wait_log("reload result=", 3)
    assert "result=refused" in line and str(new_cert) in line and "not a PEM certificate" in line, line
    assert ehlo_size(srv.ports["smtp"]) == 200000
    ensure_certificate(tmp_path / "third" / "cert.pem", tmp_path / "third" / "key.pem", "third.test")
    third = tmp_path / "third" / "cert.pem"
    assert served_fingerprint(srv.ports["imaps"]) != file_fingerprint(third)

    # `postroom reload` finds the server by the PID file in the data folder and signals it; a changed
    # listener address is kept (sockets are bound) and named as needing a restart.
    write_conf(conf, data, size=300000, tls=(third, tmp_path / "third" / "key.pem"), smtp="127.0.0.1:1")
    done = postroom(conf, "reload")
    assert done.returncode == 0 and f"PID {srv.proc.pid}" in done.stdout, done
    line = srv.wait_log("reload result=", 4)
    assert "result=applied" in line and "restart_needed=listeners.smtp" in line, line
    assert "WARNING" in line
    assert ehlo_size(srv.ports["smtp"]) == 300000  # still on its old port
    assert served_fingerprint(srv.ports["imaps"]) == file_fingerprint(third)
    assert "Traceback" not in srv.log.read_text()


def test_reload_without_a_running_server_says_so(tmp_path: Path) -> None:
    conf = tmp_path / "postroom.toml"
    write_conf(conf, tmp_path / "data", size=100000)
    done = postroom(conf, "reload")
    assert done.returncode == 1, done
    assert "no postroom serve is running on the data folder" in done.stderr and str(tmp_path / "data") in done.stderr


@pytest.mark.timeout(180)
def test_second_serve_on_one_data_folder_is_refused(tmp_path: Path, serve: Callable[[Path], Serve]) -> None:
    conf = tmp_path / "postroom.toml"
    write_conf(conf, tmp_path / "data", size=100000)
    first = serve(conf)
    pid_file = tmp_path / "data" / "postroom.pid"
    assert pid_file.read_text().strip() == str(first.proc.pid)
    second = subprocess.run([sys.executable, "-m", "postroom", "--config", str(conf), "serve"],
                            capture_output=True, text=True, env=ENV, timeout=60)
    assert second.returncode == 1
    assert f"another postroom serve (PID {first.proc.pid}) is running on the data folder" in second.stderr
    assert "Traceback" not in second.stderr
    # Admin commands and sendmail keep working beside the running server.
    assert postroom(conf, "domain", "add", "example.test").returncode == 0
    assert postroom(conf, "user", "add", "u@example.test", "--password-stdin", input="long-password\n").returncode == 0
    done = postroom(conf, "sendmail", "-f", "u@example.test", "u@example.test",
                    input="Subject: beside\n\nthe server\n")
    assert done.returncode == 0, done
    # A crashed server (SIGKILL: no clean-up at all) does not block the next start: the kernel dropped its lock.
    first.proc.kill()
    first.proc.wait()
    assert pid_file.read_text().strip() == str(first.proc.pid)  # stale, and ignored
    third = serve(conf)
    assert pid_file.read_text().strip() == str(third.proc.pid)
    assert ehlo_size(third.ports["smtp"]) == 100000
    # Without server.user too, the data folder is private (umask 077, process.py): the database and its
    # -wal/-shm, the message files, the secret, the generated key and certificate, the PID file.
    data = tmp_path / "data"
    entries = [data] + [Path(root) / name for root, dirs, files in os.walk(data) for name in dirs + files]
    assert {"postroom.db", "postroom.db-wal", "server-secret", "key.pem", "postroom.pid"} <= {p.name for p in entries}
    loose = [(str(p), oct(p.lstat().st_mode)) for p in entries if p.lstat().st_mode & 0o077]
    assert loose == []


def test_configured_certificate_must_exist_and_parse(tmp_path: Path) -> None:
    conf, data = tmp_path / "postroom.toml", tmp_path / "data"
    missing = tmp_path / "certs" / "mail.pem"
    write_conf(conf, data, size=100000, tls=(missing, tmp_path / "certs" / "mail.key"))
    for command in ("check", "serve"):
        done = postroom(conf, command)
        assert done.returncode == 2, done
        assert f"tls.cert names {missing}, which does not exist" in done.stderr, done.stderr
        assert "another server using that port" not in done.stderr and "Traceback" not in done.stderr
    assert not missing.exists() and not missing.parent.exists()  # nothing generated there

    # A key that is not PEM; a key that belongs to another certificate: each named with its problem.
    ensure_certificate(tmp_path / "a" / "cert.pem", tmp_path / "a" / "key.pem", "a.test")
    ensure_certificate(tmp_path / "b" / "cert.pem", tmp_path / "b" / "key.pem", "b.test")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    write_conf(conf, data, size=100000, tls=(tmp_path / "a" / "cert.pem", garbage))
    done = postroom(conf, "serve")
    assert done.returncode == 2 and f"{garbage} is not a PEM private key" in done.stderr, done.stderr
    write_conf(conf, data, size=100000, tls=(tmp_path / "a" / "cert.pem", tmp_path / "b" / "key.pem"))
    done = postroom(conf, "check")
    assert done.returncode == 2 and "does not belong to the certificate" in done.stderr, done.stderr
    # The built-in location is still generated, and `check` says so before the first start.
    write_conf(conf, data, size=100000)
    done = postroom(conf, "check")
    assert done.returncode == 0 and "generated at the first start" in done.stdout, done


# ---------------------------------------------------------------------------------------------------------
# In-process: a reload changes the route the next delivery takes (delivery.routes), and the limits of new
# sessions, in the server `app.Postroom` runs.


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"delivery": {"enabled": True, "poll_seconds": 0.05, "retry_seconds": [3600]},
            "smtp": {"relay_networks": ["127.0.0.1/32"]}}


def _wait(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_reload_changes_the_route_of_the_next_delivery(server: ServerHandle) -> None:
    first, second = SmtpPeer(), SmtpPeer()
    server.run(first.start())
    server.run(second.start())
    try:
        pr = server.postroom
        base = config_mod.merge({"server": {"data_dir": str(pr.config.data_path)},
                                 "listeners": {n: "127.0.0.1:0" for n in ("smtp", "http")}},
                                {"delivery": {"enabled": True, "poll_seconds": 0.05, "retry_seconds": [3600]},
                                 "smtp": {"relay_networks": ["127.0.0.1/32"]}})

        def reload(route_port: int, size: int, plaintext: bool = False) -> None:
            cfg = config_mod.load(None, config_mod.merge(base, {
                "delivery": {"routes": {"far.test": f"127.0.0.1:{route_port}"}}, "limits": {"message_size": size},
                "auth": {"allow_plaintext": plaintext}}))
            assert server.run(pr.reload(cfg)) is True

        def imap_capabilities() -> tuple[str, ...]:
            imap = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=10)
            try:
                return tuple(imap.capabilities)
            finally:
                imap.logout()

        reload(first.port, 100000)
        # RFC 9051 §6.2.3: LOGINDISABLED while plaintext logins are refused (auth.allow_plaintext = false).
        assert "LOGINDISABLED" in imap_capabilities() and "APPENDLIMIT=100000" in imap_capabilities()
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
            smtp.ehlo("c.test")
            assert int(smtp.esmtp_features["size"]) == 100000
            smtp.sendmail("a@client.test", ["x@far.test"], b"Subject: one\r\n\r\nfirst route\r\n")
        _wait(lambda: first.delivered)
        reload(second.port, 150000, plaintext=True)
        caps = imap_capabilities()
        assert "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps and "APPENDLIMIT=150000" in caps, caps
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
            smtp.ehlo("c.test")
            assert int(smtp.esmtp_features["size"]) == 150000
            smtp.sendmail("a@client.test", ["y@far.test"], b"Subject: two\r\n\r\nsecond route\r\n")
        _wait(lambda: second.delivered)
        assert len(first.delivered) == 1 and b"second route" in second.delivered[0].data
        # The listeners the in-process server runs differ from `base` (it has every listener): a restart is
        # needed for those, and they keep their running addresses.
        assert pr.config.listeners == server.config.listeners
    finally:
        server.run(first.close())
        server.run(second.close())


def test_unit_reload_keeps_restart_only_settings() -> None:
    from postroom.app import config_changes, keep_restart_only

    old = config_mod.load(None, {"listeners": {"smtp": "127.0.0.1:2525"}, "server": {"data_dir": "/a"}})
    new = config_mod.load(None, {"listeners": {"smtp": "127.0.0.1:2526"}, "server": {"data_dir": "/b",
                                 "hostname": "mx.example"}, "limits": {"recipients": 5}})
    kept, restart = keep_restart_only(old, new)
    assert sorted(restart) == ["listeners.smtp", "server.data_dir"]
    assert kept.listeners == old.listeners and kept.server.data_dir == "/a"
    assert sorted(config_changes(old, kept)) == ["limits.recipients", "server.hostname"]


def test_unknown_server_user_is_refused_by_check_and_serve(tmp_path: Path) -> None:
    conf = tmp_path / "postroom.toml"
    write_conf(conf, tmp_path / "data", size=100000)
    conf.write_text(conf.read_text().replace("[server]\n", '[server]\nuser = "no-such-user-zz"\n'))
    for command in ("check", "serve"):
        done = postroom(conf, command)
        assert done.returncode == 2, done
        assert "there is no system user 'no-such-user-zz'" in done.stderr and "Traceback" not in done.stderr
    assert postroom(conf, "reload").returncode == 1  # nothing runs: said, not signalled


def test_unit_door_reconfigure_keeps_counts_and_applies_new_limits() -> None:
    from postroom.smtp.door import Door

    old = config_mod.load(None, {"smtp": {"client_message_rate": 2}}).smtp
    door = Door(old)
    now = 600.0  # the start of a minute window
    assert door.message_allowed("192.0.2.1", now) and door.message_allowed("192.0.2.1", now)
    assert not door.message_allowed("192.0.2.1", now)  # the third in this minute
    assert door.greylist is None
    door.reconfigure(config_mod.load(None, {"smtp": {"client_message_rate": 4, "greylist_seconds": 60,
                                                     "screen_exempt": ["192.0.2.0/24"]}}).smtp)
    assert door.message_allowed("192.0.2.1", now)  # the fourth: counted with the three before
    assert not door.message_allowed("192.0.2.1", now)
    assert door.greylist is not None and door.greylist.delay == 60 and door.exempt("192.0.2.9")
