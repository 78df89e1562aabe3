"""Two Postroom instances (a.test and b.test) and the tests' own DNS server: outbound delivery end to end.

alice@a.test submits over SMTP (submission, STARTTLS, AUTH) to a; a's queue finds b.test's MX in the tests' DNS
server (MX mx.b.test -> A 127.0.0.1, on b's SMTP port via `delivery.mx_port`), signs with a.test's DKIM keys and
delivers to b's MX listener; b's router stores it in bob's INBOX. The DKIM signature is verified there with the
records `postroom dns a.test` would print, served by the same DNS server.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from conftest import LISTENERS, ServerHandle
from outbound_support import DnsServer

from postroom import config as config_mod
from postroom.app import HANDLER_FACTORIES
from postroom.delivery.dkim import dns_records, generate_keys

pytestmark = pytest.mark.skipif(not HANDLER_FACTORIES["smtp"].__module__.startswith("postroom.smtp"),
                                reason="needs the SMTP server (issue 4) wired in app.HANDLER_FACTORIES")


def start(tmp: Path, name: str, extra: dict[str, Any]) -> ServerHandle:
    base: dict[str, Any] = {
        "server": {"data_dir": str(tmp / name), "shutdown_grace_seconds": 1.0, "hostname": f"mx.{name}"},
        "listeners": {n: "127.0.0.1:0" for n in LISTENERS},
        "auth": {"allow_plaintext": True},
        "delivery": {"poll_seconds": 0.05, "retry_seconds": [3600]},
        "inbound": {"spf": False, "dkim": False, "dmarc": False, "arc": False},  # no DNS here beyond the tests' own
    }
    handle = ServerHandle(config_mod.load(None, config_mod.merge(base, extra)))
    try:
        handle.run(handle.postroom.start())
    except BaseException:
        handle.stop()
        raise
    return handle


class Pair:
    def __init__(self, a: ServerHandle, b: ServerHandle, dns: DnsServer) -> None:
        self.a, self.b, self.dns = a, b, dns


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    b = start(tmp_path, "b.test", {})
    dns = DnsServer()
    b.run(dns.start())  # the DNS server lives in b's event loop thread
    dns.mx["b.test"] = [(10, "mx.b.test")]
    dns.a["mx.b.test"] = ["127.0.0.1"]
    a = None
    try:
        # a's scheduler polls only hourly: mail must leave because queueing it wakes the scheduler.
        a = start(tmp_path, "a.test", {"delivery": {"dns_servers": [f"127.0.0.1:{dns.port}"],
                                                    "mx_port": b.port("smtp"), "poll_seconds": 3600}})
        a.add_user("alice@a.test")
        b.add_user("bob@b.test")
        keys = generate_keys()
        a.run(a.store.set_dkim("a.test", keys.rsa_selector, keys.rsa_pem, keys.ed25519_selector,
                               keys.ed25519_pem))
        domain = a.run(a.store.get_domain("a.test"))
        assert domain is not None
        for rname, rtype, value in dns_records(domain, "mx.a.test"):
            if rtype == "TXT":
                dns.txt[rname.rstrip(".")] = value
        yield Pair(a, b, dns)
    finally:
        if a is not None:
            a.stop()
        b.run(_close(dns))
        b.stop()


async def _close(dns: DnsServer) -> None:
    dns.close()


def submit(a: ServerHandle, rcpts: list[str], body: bytes) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", a.port("submission"), timeout=30) as s:
        s.starttls(context=ctx)
        s.login("alice@a.test", "secret-password")
        s.sendmail("alice@a.test", rcpts, body)


def inbox(h: ServerHandle, address: str) -> list[bytes]:
    async def go() -> list[bytes]:
        user = await h.store.get_user(address)
        assert user is not None
        box = await h.store.get_mailbox(user.id, "INBOX")
        assert box is not None
        return [await h.store.read_message(m.blob_id) for m in await h.store.list_messages(box.id)]

    return h.run(go())


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


MESSAGE = (b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: over the wire\r\n"
           b"Message-ID: <e2e-1@a.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nHello Bob.\r\n")


def test_message_reaches_b_inbox_and_dkim_verifies(pair: Pair) -> None:
    submit(pair.a, ["bob@b.test"], MESSAGE)
    got = wait_for(lambda: inbox(pair.b, "bob@b.test"))
    assert got, "the message did not arrive at b.test"
    [raw] = got
    assert raw.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])
    assert raw.count(b"DKIM-Signature:") == 2

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return pair.dns.txt.get(name.decode().rstrip("."), "").encode()

    signed = raw[raw.index(b"DKIM-Signature:"):]  # b's own Return-Path/Received come after our signing
    verifier = dkimpy.DKIM(signed)
    assert verifier.verify(idx=0, dnsfunc=dnsfunc) and verifier.verify(idx=1, dnsfunc=dnsfunc)
    assert ("b.test", "MX") in pair.dns.queries
    assert wait_for(lambda: pair.a.run(pair.a.store.queue_length()) == 0)


def test_remote_550_brings_a_bounce_to_the_sender_inbox(pair: Pair) -> None:
    submit(pair.a, ["nobody@b.test"], MESSAGE.replace(b"bob@b.test", b"nobody@b.test"))
    got = wait_for(lambda: inbox(pair.a, "alice@a.test"))
    assert got, "no bounce arrived"
    [raw] = got
    assert raw.startswith(b"Return-Path: <>\r\n")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report" and msg["Subject"] == "Undelivered Mail Returned to Sender"
    status = msg.get_payload()[1]  # type: ignore[index]
    per_rcpt = {k: str(v) for k, v in status.get_payload()[1].items()}
    assert per_rcpt["Final-Recipient"] == "rfc822;nobody@b.test" and per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"].startswith("5.1.") and per_rcpt["Diagnostic-Code"].startswith("smtp; 550")
    assert b"Subject: over the wire" in raw
    assert inbox(pair.b, "bob@b.test") == []


def test_forward_of_a_forged_local_from_is_not_signed(pair: Pair) -> None:
    """An outsider sends `From: CEO <ceo@a.test>` to a.test's MX, to an alias that forwards to b.test: a.test
    relays it but must not DKIM-sign it with d=a.test (that would make the forgery pass DMARC)."""
    pair.a.run(pair.a.store.add_alias("fwd@a.test", ["bob@b.test"]))
    forged = MESSAGE.replace(b"From: Alice <alice@a.test>", b"From: CEO <ceo@a.test>")
    with smtplib.SMTP("127.0.0.1", pair.a.port("smtp"), timeout=30) as s:
        assert s.sendmail("ceo@a.test", ["fwd@a.test"], forged) == {}
    got = wait_for(lambda: inbox(pair.b, "bob@b.test"))
    assert got, "the forward did not arrive at b.test"
    [raw] = got
    assert raw.endswith(forged.split(b"\r\n\r\n", 1)[1])
    assert b"DKIM-Signature:" not in raw
    submit(pair.a, ["bob@b.test"], MESSAGE)  # alice's own From through submission is still signed
    got = wait_for(lambda: len(inbox(pair.b, "bob@b.test")) == 2 and inbox(pair.b, "bob@b.test"))
    assert got and sum(m.count(b"DKIM-Signature:") for m in got) == 2
