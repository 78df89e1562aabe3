"""Large SMTP messages go through a staging file (issue 11 item 2): a body past `STAGING_THRESHOLD` is written
to the store's staging directory as it arrives, and the router stores and queues it from there
(`Store.deliver_file`, `Store.enqueue_file`). Byte-exact round trips by DATA and BDAT to a local user, a forward
(the queue) and a list; data past SIZE answered 552 5.3.4; no staging file outlives its message."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest
from test_smtp_e2e import inbox, queue, raw_dialogue, split_prepended

from postroom.store.api import STAGING_THRESHOLD, ListPolicy

LIMIT = 8 * 1024 * 1024


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"limits": {"message_size": LIMIT}}


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("alice@example.org")
    server.add_user("carol@example.org")
    server.run(server.store.add_alias("fwd@example.org", ["alice@example.org", "someone@far.test"]))
    return server


def big_body(size: int) -> bytes:
    lines = [b"From: Bob <bob@remote.test>", b"Subject: large", b""]
    n = 0
    while n < size:
        line = b"." * (n % 3) + b"%09d " % n + b"x" * (n % 120)  # many lines starting with dots
        lines.append(line)
        n += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def staged(srv: Any) -> list[Path]:
    return list(Path(srv.store.staging_dir()).iterdir())


def test_data_past_threshold_to_user_forward_and_queue_byte_exact(srv: Any) -> None:
    body = big_body(3 * STAGING_THRESHOLD)
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as c:
        assert c.sendmail("bob@remote.test", ["fwd@example.org", "carol@example.org"], body) == {}
    for who in ("alice@example.org", "carol@example.org"):
        [stored] = inbox(srv, who)
        (rp, _), rest = split_prepended(stored)
        assert rp == b"Return-Path: <bob@remote.test>\r\n" and rest == body
    [entry] = queue(srv)
    assert [r.rcpt for r in entry.recipients] == ["someone@far.test"]
    queued = srv.run(srv.store.read_message(entry.blob_id))
    assert queued.startswith(b"Received: ") and queued.endswith(body) and b"Return-Path" not in queued[:100]
    assert entry.size == len(queued)
    assert staged(srv) == []


def test_bdat_past_threshold_to_list_byte_exact(srv: Any) -> None:
    srv.run(srv.store.create_list("team@example.org", "alice@example.org", ListPolicy.OPEN))
    srv.run(srv.store.add_list_member("team@example.org", "carol@example.org"))
    body = big_body(2 * STAGING_THRESHOLD)
    half = len(body) // 2
    script = (b"EHLO raw.test\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<team@example.org>\r\n"
              b"BDAT %d\r\n" % half + body[:half] + b"BDAT %d LAST\r\n" % (len(body) - half) + body[half:]
              + b"QUIT\r\n")
    out = raw_dialogue(srv.port("smtp"), script)
    assert b"250 2.0.0 OK queued as" in out
    [stored] = inbox(srv, "carol@example.org")
    assert stored.startswith(b"Return-Path: <team-bounces@example.org>\r\nList-Id: <team.example.org>\r\n")
    assert stored.endswith(body)
    assert staged(srv) == []


def test_data_past_size_is_552_and_leaves_nothing(srv: Any) -> None:
    line = b"y" * 998 + b"\r\n"
    script = (b"EHLO raw.test\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
              + line * (2 * LIMIT // len(line)) + b".\r\nNOOP\r\nQUIT\r\n")
    out = raw_dialogue(srv.port("smtp"), script)
    assert b"552 5.3.4" in out and out.rstrip().endswith(b"221 2.0.0 Bye")  # RFC 1870 §6; the session goes on
    assert inbox(srv, "alice@example.org") == []
    assert staged(srv) == []
