"""DNS blocklists and forward-confirmed reverse DNS of MX clients end to end (smtp/dnsbl.py, issue 12 item 7):
smtplib connects from different loopback addresses (127.0.0.1-3) to the MX listener of a server whose DNS is a
loopback server serving a blocklist zone and PTR/A records (`delivery.dns_servers`).

Expected values: RFC 5782 §2.1 (the query name is the reversed octets under the zone; an A record in
127.0.0.0/8 lists the client), Postfix's reject_rbl_client reply ("554 5.7.1 Service unavailable; Client host
[ip] blocked using zone"), RFC 5321 §4.4 (TCP-info "name [address]" in the Received field). A blocklist that
times out, or answers with a Spamhaus error code (127.255.255.0/24), lists nobody.
"""

from __future__ import annotations

import logging
import smtplib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dns_support import ZoneThread


@pytest.fixture
def zone() -> Iterator[ZoneThread]:
    z = ZoneThread()
    z.add("2.0.0.127.bl.test", "A", "127.0.0.2")  # 127.0.0.2 is listed
    z.add("3.0.0.127.bl.test", "A", "127.255.255.254")  # a Spamhaus error code: not a listing
    z.dns.zone["2.0.0.127.slow.test"] = ["TIMEOUT"]
    z.dns.zone["3.0.0.127.slow.test"] = ["TIMEOUT"]
    z.add("1.0.0.127.in-addr.arpa", "PTR", "client.example")
    z.add("client.example", "A", "127.0.0.1")  # forward-confirmed
    z.add("3.0.0.127.in-addr.arpa", "PTR", "liar.example")
    z.add("liar.example", "A", "192.0.2.9")  # the name does not point back: "unknown"
    z.dns.zone["4.0.0.127.in-addr.arpa"] = ["TIMEOUT"]  # the reverse lookup fails for now
    yield z
    z.close()


@pytest.fixture
def screen_exempt() -> list[str]:
    return []


@pytest.fixture
def inbound() -> dict[str, Any]:
    return {}


@pytest.fixture
def server_overrides(zone: ZoneThread, screen_exempt: list[str], inbound: dict[str, Any]) -> dict[str, Any]:
    return {"smtp": {"screen_exempt": screen_exempt, "greet_delay_seconds": 0, "reverse_dns": True,
                     "dnsbl_zones": ["slow.test", "bl.test"], "dnsbl_timeout_seconds": 0.5},
            "delivery": {"dns_servers": [f"127.0.0.1:{zone.dns.port}"]}, "inbound": inbound}


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("bob@b.test")
    return server


def send(server: Any, source: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), local_hostname="helo.example", timeout=20,
                      source_address=(source, 0)) as c:
        c.sendmail("alice@a.example", ["bob@b.test"], b"Subject: hi\r\n\r\nHello.\r\n")


def inbox(server: Any) -> list[bytes]:
    async def go() -> list[bytes]:
        user = await server.store.get_user("bob@b.test")
        box = await server.store.get_mailbox(user.id, "INBOX")
        return [await server.store.read_message(m.blob_id) for m in await server.store.list_messages(box.id)]

    return list(server.run(go()))


def session_line(caplog: pytest.LogCaptureFixture, peer: str) -> str:
    """The session log line of the MX session from `peer` (written when the server has closed it)."""
    for _ in range(200):
        for r in caplog.records:
            text = r.getMessage()
            if r.name == "postroom.net.session" and f"peer={peer}:" in text and "listener=smtp" in text:
                return text
        time.sleep(0.05)
    raise AssertionError(f"no session line for {peer}")


def test_listed_client_refused_at_rcpt(srv: Any, zone: ZoneThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send(srv, "127.0.0.2")
    code, text = info.value.recipients["bob@b.test"]
    assert (code, text) == (554, b"5.7.1 Service unavailable; Client host [127.0.0.2] blocked using bl.test")
    assert inbox(srv) == []
    [line] = [r.getMessage() for r in caplog.records if "reason=dnsbl" in r.getMessage()]
    assert "ip=127.0.0.2" in line and "what=rcpt" in line and "zone=bl.test" in line and "answer=127.0.0.2" in line
    assert "sender=alice@a.example" in line and "recipient=bob@b.test" in line
    assert ("2.0.0.127.bl.test", "A") in zone.dns.queries  # RFC 5782 §2.1: the reversed octets


def test_unlisted_timed_out_and_error_code_clients_pass(srv: Any, zone: ZoneThread,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom")
    send(srv, "127.0.0.1")  # NXDOMAIN in bl.test and in slow.test
    send(srv, "127.0.0.3")  # slow.test times out, bl.test answers 127.255.255.254
    assert len(inbox(srv)) == 2
    assert not [r for r in caplog.records if "reason=dnsbl" in r.getMessage()]


def test_forward_confirmed_reverse_dns_in_received_and_log(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom")
    send(srv, "127.0.0.1")
    send(srv, "127.0.0.3")
    received = {line for m in inbox(srv) for line in m.split(b"\r\n") if line.startswith(b"Received:")}
    assert received == {b"Received: from helo.example (client.example [127.0.0.1])",
                        b"Received: from helo.example ([127.0.0.3])"}  # liar.example does not point back
    assert " rdns=client.example" in session_line(caplog, "127.0.0.1")
    assert " rdns=unknown" in session_line(caplog, "127.0.0.3")


@pytest.mark.parametrize("inbound", [{"spf": True, "dkim": True, "dmarc": True, "dns_timeout_seconds": 0.5}])
def test_iprev_in_authentication_results(srv: Any) -> None:
    """RFC 8601 §3 / §2.7.3: iprev=pass with the confirmed name in a comment, fail when the name does not point
    back, temperror when the reverse lookup fails for now; policy.iprev is the client's address."""
    for source in ("127.0.0.1", "127.0.0.3", "127.0.0.4"):
        send(srv, source)
    iprev = {" ".join(line.split()) for m in inbox(srv) for line in m.decode().split(";") if "iprev=" in line}
    assert iprev == {"iprev=pass policy.iprev=127.0.0.1 (client.example)", "iprev=fail policy.iprev=127.0.0.3",
                     "iprev=temperror policy.iprev=127.0.0.4"}


@pytest.mark.parametrize("screen_exempt", [["127.0.0.0/8"]])
def test_exempt_clients_are_not_looked_up(srv: Any, zone: ZoneThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom")
    send(srv, "127.0.0.2")  # listed, but exempt: delivered, and nothing asked
    assert len(inbox(srv)) == 1
    assert zone.dns.queries == []
    assert "rdns=" not in session_line(caplog, "127.0.0.2")
