"""Postroom to Postroom: a.test publishes exactly the records `postroom dns` prints (MX, SPF, both DKIM keys,
DMARC), in a loopback DNS server; alice submits at a.test, a.test's queue delivers to b.test's MX, and b.test's
inbound checks must find what the records promise: SPF pass (RFC 7208 `mx` mechanism), both signatures (RSA and
Ed25519, RFC 8463) pass, DMARC pass, in the Authentication-Results field of the stored message."""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LISTENERS, ServerHandle
from dns_support import ZoneThread

from postroom import config as config_mod
from postroom.delivery.dkim import dns_records, generate_keys


def start(tmp: Path, name: str, extra: dict[str, Any]) -> ServerHandle:
    base: dict[str, Any] = {
        "server": {"data_dir": str(tmp / name), "shutdown_grace_seconds": 1.0, "hostname": f"mx.{name}"},
        "listeners": {n: "127.0.0.1:0" for n in LISTENERS},
        "auth": {"allow_plaintext": True},
        "delivery": {"poll_seconds": 3600, "retry_seconds": [3600]},
    }
    handle = ServerHandle(config_mod.load(None, config_mod.merge(base, extra)))
    try:
        handle.run(handle.postroom.start())
    except BaseException:
        handle.stop()
        raise
    return handle


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    zone = ZoneThread()
    dns = {"dns_servers": [f"127.0.0.1:{zone.dns.port}"]}
    b = start(tmp_path, "b.test", {"delivery": {**dns, "enabled": False},
                                   "inbound": {"dns_timeout_seconds": 2.0}})
    a = None
    try:
        zone.add("b.test", "MX", [10, "mx.b.test"])
        zone.add("mx.b.test", "A", "127.0.0.1")
        a = start(tmp_path, "a.test", {"delivery": {**dns, "mx_port": b.port("smtp")},
                                       "inbound": {"spf": False, "dkim": False, "dmarc": False, "arc": False}})
        a.add_user("alice@a.test")
        b.add_user("bob@b.test")
        keys = generate_keys()
        a.run(a.store.set_dkim("a.test", keys.rsa_selector, keys.rsa_pem, keys.ed25519_selector,
                               keys.ed25519_pem))
        domain = a.run(a.store.get_domain("a.test"))
        assert domain is not None
        for name, rtype, value in dns_records(domain, "mx.a.test"):
            if rtype == "MX":
                pref, host = value.split()
                zone.add(name, "MX", [int(pref), host.rstrip(".")])
            else:
                zone.add(name, rtype, [value[i:i + 255] for i in range(0, len(value), 255)])
        zone.add("mx.a.test", "A", "127.0.0.1")
        yield a, b
    finally:
        if a is not None:
            a.stop()
        b.stop()
        zone.close()


def test_postroom_signed_mail_passes_every_check_at_another_postroom(
        pair: tuple[ServerHandle, ServerHandle]) -> None:
    a, b = pair
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", a.port("submission"), timeout=30) as s:
        s.starttls(context=ctx)
        s.login("alice@a.test", "secret-password")
        s.sendmail("alice@a.test", ["bob@b.test"],
                   b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: checked\r\n\r\nHello Bob.\r\n")

    def inbox() -> list[bytes]:
        async def go() -> list[bytes]:
            user = await b.store.get_user("bob@b.test")
            assert user is not None
            box = await b.store.get_mailbox(user.id, "INBOX")
            assert box is not None
            return [await b.store.read_message(m.blob_id) for m in await b.store.list_messages(box.id)]

        return b.run(go())

    got = wait_for(inbox)
    assert got, "the message did not arrive at b.test"
    msg = email.message_from_bytes(got[0], policy=email.policy.compat32)
    [results] = [" ".join(v.split()) for v in msg.get_all("Authentication-Results") or []]
    assert results.startswith("mx.b.test;")
    assert "spf=pass" in results and "smtp.mailfrom=alice@a.test" in results
    assert results.count("dkim=pass") == 2 and "header.d=a.test" in results
    assert "dmarc=pass (p=none dis=none)" in results and "header.from=a.test" in results
