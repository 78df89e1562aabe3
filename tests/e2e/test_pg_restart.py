"""A node outlives its database: PostgreSQL stopped and started again under a running `postroom serve`
(docs/SCALING.md, "When the database fails or restarts").

A PostgreSQL of the test's own (tests/pgcluster.py) is stopped by its PID, either the "fast" way (SIGINT: every
connection closed, a checkpoint) or as a crash (SIGKILL of the postmaster: crash recovery at the next start),
then started again on the same folder and port. While it is down a local recipient gets a temporary `451`.
The node is never touched: once the database answers again, SMTP accepts and stores mail, a new IMAP login
works, and a session that goes into IDLE afterwards is told of a delivery (the change feed's LISTEN connection
was made again).
"""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imap_support import Raw

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


def login(port: int, tmp_path: Path, password: str) -> Raw:
    r = Raw(port, tls_context(tmp_path), timeout=30)
    assert r.cmd(f'l LOGIN demo@localhost "{password}"')[-1].startswith(b"l OK")
    r.cmd("e ENABLE IMAP4rev2")  # no \Recent in the answers below
    return r


@pytest.mark.parametrize("crash", [False, True], ids=["fast-shutdown", "crash"])
def test_node_serves_again_after_the_database_restarts(tmp_path: Path, own_cluster: Any, crash: bool) -> None:
    proc, ports = start_on(tmp_path, own_cluster.create_database())
    # The node's log is read all the time: a full stderr pipe would block its (synchronous) logging.
    log: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        password = (tmp_path / "data" / "demo-password").read_text().strip()
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
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(10)
    assert any("the change feed listens again" in line for line in log), "".join(log)[-3000:]
