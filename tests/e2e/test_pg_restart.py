"""A node outlives its database: PostgreSQL stopped and started again under a running `postroom serve`
(docs/SCALING.md, "When the database fails or restarts").

A PostgreSQL of the test's own (tests/pgcluster.py) is stopped by its PID, either the "fast" way (SIGINT: every
connection closed, a checkpoint) or as a crash (SIGKILL of the postmaster: crash recovery at the next start),
then started again on the same folder and port. While it is down a local recipient gets a temporary `451`.
The node is never touched: once the database answers again, SMTP accepts and stores mail, a new IMAP login
works, and a session that goes into IDLE afterwards is told of a delivery (the change feed's LISTEN connection
was made again).

`test_answers_while_the_database_is_down`: what clients are told during the outage, each protocol's standard
temporary failure (store/api.py `StoreUnavailable`): IMAP `NO [UNAVAILABLE]` (RFC 5530 §3) with the session
kept, POP3 `-ERR [SYS/TEMP]` (RFC 3206 §4), SMTP `451 4.3.0` (RFC 5321 §4.2.1, RFC 3463 §3.4), the webmail's
sign-in a 503 with Retry-After (RFC 9110 §15.6.4); an IDLE that
began before the outage keeps waiting and reports a delivery after it; the node logs the outage in a bounded
number of lines, with no traceback.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from imap_support import Raw
from web_support import csrf_of

from tests.e2e.test_serve import tls_context
from tests.e2e.test_serve_postgresql import start_on

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def own_cluster() -> Iterator[Any]:
    """A PostgreSQL this test alone uses (the session's shared one is never stopped under other tests)."""
    from tests.pgcluster import Cluster, available

    reason = available()
    if reason is not None:
        pytest.skip(reason)
    cluster = Cluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        assert smtp.sendmail("someone@example.test", ["demo@localhost"],
                             f"Subject: {subject}\r\nFrom: someone@example.test\r\n\r\nhello\r\n") == {}


@contextlib.contextmanager
def node(tmp_path: Path, url: str) -> Iterator[tuple[Any, dict[str, int], list[str], str]]:
    """A node on `url` (`start_on`): (process, ports, its log lines as they come, the demo password); stopped by
    its PID at the end. The log is read all the time: a full stderr pipe would block the node's logging."""
    proc, ports = start_on(tmp_path, url)
    log: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        yield proc, ports, log, (tmp_path / "data" / "demo-password").read_text().strip()
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(10)


def login(port: int, tmp_path: Path, password: str) -> Raw:
    r = Raw(port, tls_context(tmp_path), timeout=30)
    assert r.cmd(f'l LOGIN demo@localhost "{password}"')[-1].startswith(b"l OK")
    r.cmd("e ENABLE IMAP4rev2")  # no \Recent in the answers below
    return r


@pytest.mark.parametrize("crash", [False, True], ids=["fast-shutdown", "crash"])
def test_node_serves_again_after_the_database_restarts(tmp_path: Path, own_cluster: Any, crash: bool) -> None:
    with node(tmp_path, own_cluster.create_database()) as (proc, ports, log, password):
        send(ports["smtp"], "before")

        own_cluster.halt(crash=crash)
        # While the database is down a local recipient is refused for now (RFC 5321 §4.2.1: 4yz, the sender
        # keeps the message and retries), never 5yz: the domain is still ours, the store just cannot say so.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(ports["smtp"], "during")
        code, text = refused.value.recipients["demo@localhost"]
        assert code == 451 and text.startswith(b"4.3.0"), (code, text)  # RFC 3463 §3.4: mail system status
        own_cluster.resume()

        send(ports["smtp"], "after")  # the pool makes new connections: no restart of the node
        r = login(ports["imaps"], tmp_path, password)
        assert b"* 2 EXISTS\r\n" in r.cmd("s SELECT INBOX")
        r.send(b"i IDLE\r\n")
        assert r.line() == b"+ idling\r\n"
        send(ports["smtp"], "while idling")
        assert r.line() == b"* 3 EXISTS\r\n"  # pushed: the feed listens again
        r.send(b"DONE\r\n")
        assert r.line() == b"i OK IDLE terminated\r\n"
        assert proc.poll() is None
    assert any("the change feed listens again" in line for line in log), "".join(log)[-3000:]


def wait_for(log: list[str], text: str) -> None:
    """Until a line of the node's log contains `text` (a condition, not a timing assertion: the test's
    timeout bounds it)."""
    while not any(text in line for line in log):
        time.sleep(0.05)


def imap_session(port: int, tmp_path: Path, password: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context(tmp_path), timeout=30)
    m.login("demo@localhost", password)
    return m


@pytest.mark.parametrize("crash", [False, True], ids=["fast-shutdown", "crash"])
def test_answers_while_the_database_is_down(tmp_path: Path, own_cluster: Any, crash: bool) -> None:
    with node(tmp_path, own_cluster.create_database()) as (proc, ports, log, password):
        send(ports["smtp"], "before")
        m = imap_session(ports["imaps"], tmp_path, password)
        assert m.select("INBOX") == ("OK", [b"1"])
        idler = login(ports["imaps"], tmp_path, password)
        assert b"* 1 EXISTS\r\n" in idler.cmd("s SELECT INBOX")
        idler.send(b"i IDLE\r\n")
        assert idler.line() == b"+ idling\r\n"

        own_cluster.halt(crash=crash)
        outage_begins = len(log)
        wait_for(log, "the change feed's PostgreSQL connection was lost")
        # RFC 5530 §3 UNAVAILABLE, "temporary failure because a subsystem is down"; the session stays.
        typ, data = m.fetch("1", "(FLAGS)")
        assert (typ, data[0][:13]) == ("NO", b"[UNAVAILABLE]"), (typ, data)
        typ, data = m.noop()  # its work is the report of changes, which cannot be read now
        assert (typ, data[0][:13]) == ("NO", b"[UNAVAILABLE]"), (typ, data)
        with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
            imap_session(ports["imaps"], tmp_path, password)  # LOGIN
        pop = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], context=tls_context(tmp_path), timeout=30)
        pop.user("demo@localhost")
        with pytest.raises(poplib.error_proto) as refused_pop:
            pop.pass_(password)
        assert refused_pop.value.args[0].startswith(b"-ERR [SYS/TEMP]"), refused_pop.value  # RFC 3206 §4
        pop.quit()
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(ports["smtp"], "during")
        code, text = refused.value.recipients["demo@localhost"]
        assert code == 451 and text.startswith(b"4.3.0"), (code, text)  # RFC 5321 §4.2.1, RFC 3463 §3.4
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['http']}", timeout=30) as web:
            form = web.get("/mail/")  # signed out: the form needs no store
            assert form.status_code == 200, form.text[:300]
            page = web.post("/mail/signin", data={"csrf": csrf_of(form.text), "username": "demo@localhost",
                                                  "password": password})
        # RFC 9110 §15.6.4 503 Service Unavailable, §10.2.3 Retry-After
        assert (page.status_code, page.headers.get("retry-after")) == (503, "30"), page.text[:300]
        # Seconds of outage: every retry of the queue dispatcher, the pool and the change feed (each about once a
        # second per worker) logged a traceback before; now each kind logs once per interval.
        time.sleep(3)
        outage_log = log[outage_begins:]
        own_cluster.resume()

        # The same IMAP session works again, not reconnected.
        typ, data = m.fetch("1", "(FLAGS)")
        assert typ == "OK" and b"1 (FLAGS" in data[0], (typ, data)
        assert m.noop()[0] == "OK"
        wait_for(log, "the change feed listens again")
        send(ports["smtp"], "after")
        # The IDLE begun before the outage kept waiting (idle.py invariant 3) and reports the delivery.
        while (line := idler.line()) != b"* 2 EXISTS\r\n":
            assert not line.startswith(b"i "), line
        idler.send(b"DONE\r\n")
        assert idler.line() == b"i OK IDLE terminated\r\n"
        assert m.noop()[0] == "OK" and m.response("EXISTS")[1][-1] == b"2"
        m.logout()
        assert proc.poll() is None
    text = "".join(outage_log)
    assert "Traceback" not in text, text[-5000:]
    # One line per failure kind per interval (store/api.py OutageLog), plus one line per session ended.
    assert len(outage_log) <= 30, text[-5000:]
