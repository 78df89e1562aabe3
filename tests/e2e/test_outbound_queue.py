"""The queue scheduler and SMTP client against scripted SMTP peers on loopback ports, with an injected clock.

Each test builds a store, a Scheduler over it (static routes to the peers, or the tests' DNS server), and calls
`run_once()`: dispatch what is due at the fake clock's time and wait for it. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import logging
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from outbound_support import DnsServer, FakeClock, SmtpPeer

from postroom import config as config_mod
from postroom.delivery.client import Hop, SmtpClient, Transaction, UnsafeContent
from postroom.delivery.dkim import generate_keys
from postroom.delivery.mx import DnsResolver, RouteFinder, StaticResolver
from postroom.delivery.queue import Scheduler
from postroom.mime.lineends import stray
from postroom.net.tls import ensure_certificate, server_context
from postroom.smtp.syntax import dot_stuff
from postroom.store.api import QueueRecipient, RcptState, Store
from postroom.store.sqlite import SQLiteStore

MSG = (b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: hi\r\nMessage-ID: <m1@a.test>\r\n\r\n"
       b"Hello.\r\n.leading dot\r\n")


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = FakeClock()
        self.store: Store = self.open_store()
        self.dsns: list[tuple[str, bytes]] = []
        self.peers: list[SmtpPeer] = []

    def open_store(self) -> Store:
        return SQLiteStore(self.tmp / "q.db", self.tmp / "blobs", clock=self.clock)  # one clock for both

    async def peer(self, **kw: Any) -> SmtpPeer:
        p = SmtpPeer(**kw)
        await p.start()
        self.peers.append(p)
        return p

    async def bounce(self, address: str, raw: bytes) -> None:
        self.dsns.append((address, raw))

    def scheduler(self, routes: dict[str, str] | None = None, resolver: Any = None, node: str = "",
                  lease_seconds: float = 300.0, **delivery: Any) -> Scheduler:
        cfg = config_mod.load(None, {"server": {"hostname": "mx.a.test", "data_dir": str(self.tmp)},
                                     "delivery": {"routes": routes or {}, **delivery},
                                     "queue": {"lease_seconds": lease_seconds}})
        return Scheduler(self.store, cfg, bounce=self.bounce, clock=self.clock,
                         resolver=resolver or StaticResolver(), shuffle=lambda hosts: None, node=node)

    async def enqueue(self, *rcpts: str | QueueRecipient, raw: bytes = MSG, mail_from: str = "alice@a.test",
                      **kw: Any) -> int:
        rs = [r if isinstance(r, QueueRecipient) else QueueRecipient(r) for r in rcpts]
        with_time = [dataclasses.replace(r, next_try=self.clock.now) for r in rs]
        entry = await self.store.enqueue(raw, mail_from, with_time, **kw)
        return entry.id

    def dsn(self, i: int = 0) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.dsns[i][1], policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


async def harness(tmp_path: Path) -> Harness:
    hs = Harness(tmp_path)
    await hs.store.open()
    return hs


async def finish(hs: Harness) -> None:
    for p in hs.peers:
        await p.close()
    await hs.store.close()


def recipient_fields(msg: email.message.EmailMessage) -> list[dict[str, str]]:
    status = msg.get_payload()[1]  # type: ignore[index]
    return [{k: str(v) for k, v in block.items()} for block in status.get_payload()[1:]]


# ---------------------------------------------------------------------------------------------------------------

async def test_delivers_all_recipients_in_one_pipelined_transaction(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer()
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        raw8 = MSG.replace(b"Hello.", "Grüße.".encode())
        qid = await hs.enqueue("bob@b.test", "carol@b.test", raw=raw8)
        assert await s.run_once() == 2
        [seen] = peer.delivered
        assert seen.mail_from == "alice@a.test" and seen.rcpts == ["bob@b.test", "carol@b.test"]
        assert f"SIZE={len(raw8)}" in seen.mail_params and "BODY=8BITMIME" in seen.mail_params
        assert "SMTPUTF8" not in seen.mail_params
        assert seen.data == raw8  # byte-exact, dot-stuffing undone by the peer
        assert await hs.store.queue_get(qid) is None and hs.dsns == []
        assert await s.run_once() == 0
    finally:
        await finish(hs)


async def test_451_then_success_delivers_once(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        replies = ["451 4.3.0 try later", "250 2.0.0 ok"]
        peer = await hs.peer(data_reply=lambda data: replies.pop(0))
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, retry_seconds=[300, 600])
        qid = await hs.enqueue("bob@b.test")
        await s.run_once()
        entry = await hs.store.queue_get(qid)
        assert entry is not None
        [r] = entry.recipients
        assert (r.state, r.attempts, r.next_try) == (RcptState.DEFERRED, 1, hs.clock.now + 300)
        assert r.last_error == "451 4.3.0 try later"
        hs.clock.advance(299)
        assert await s.run_once() == 0  # not due yet
        hs.clock.advance(1)
        assert await s.run_once() == 1
        assert len(peer.delivered) == 1 and await hs.store.queue_get(qid) is None
        assert hs.dsns == []
    finally:
        await finish(hs)


async def test_550_bounces_that_recipient_only_with_a_correct_dsn(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(rcpt_reply=lambda a: "550 5.1.1 no such user" if a.startswith("nobody") else "250 ok")
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        qid = await hs.enqueue(QueueRecipient("nobody@b.test", orcpt="rfc822;Nobody@b.test"), "bob@b.test",
                               envid="E1", ret="HDRS")
        await s.run_once()
        assert peer.delivered[0].rcpts == ["bob@b.test"]
        assert await hs.store.queue_get(qid) is None
        [(to, _)] = hs.dsns
        assert to == "alice@a.test"
        msg = hs.dsn()
        assert msg["Subject"] == "Undelivered Mail Returned to Sender" and msg["To"] == "alice@a.test"
        assert recipient_fields(msg) == [{
            "Original-Recipient": "rfc822;Nobody@b.test", "Final-Recipient": "rfc822;nobody@b.test",
            "Action": "failed", "Status": "5.1.1", "Remote-MTA": "dns; [127.0.0.1]",
            "Diagnostic-Code": "smtp; 550 5.1.1 no such user", "Last-Attempt-Date": recipient_fields(msg)[0][
                "Last-Attempt-Date"]}]
        assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"  # type: ignore[index]
        assert "Original-Envelope-Id: E1" in msg.get_payload()[1].as_string()  # type: ignore[index]
    finally:
        await finish(hs)


async def test_dsn_names_the_mx_by_its_dns_name_and_dates_carry_the_offset(tmp_path: Path,
                                                                              india_time: None) -> None:
    """RFC 3464 §2.3.5: Remote-MTA is "dns; <the MX's name>" when the name is known (here from DNS), not its
    address; §2.2.5/§2.3.7 dates are RFC 5322 date-times with the real zone offset (§3.3: -0000 = unknown)."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(rcpt_reply=lambda a: "550 5.1.1 no such user")
        resolver = StaticResolver({"b.test": [(10, "mx.b.test")]}, {"mx.b.test": ["127.0.0.1"]})
        s = hs.scheduler(resolver=resolver, mx_port=peer.port)
        await hs.enqueue("nobody@b.test")
        await s.run_once()
        msg = hs.dsn()
        [fields] = recipient_fields(msg)
        assert fields["Remote-MTA"] == "dns; mx.b.test"
        assert fields["Last-Attempt-Date"].endswith(" +0530")
        per_message = msg.get_payload()[1].get_payload()[0]  # type: ignore[index]
        assert str(per_message["Arrival-Date"]).endswith(" +0530") and msg["Date"].endswith(" +0530")
        # a host configured by address has no name to give: an address literal (RFC 5321 §4.1.3), not "dns; 1.2.3.4"
        hs.dsns.clear()
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        await hs.enqueue("nobody@b.test")
        await s.run_once()
        assert recipient_fields(hs.dsn())[0]["Remote-MTA"] == "dns; [127.0.0.1]"
    finally:
        await finish(hs)


async def test_unreachable_retried_on_schedule_delay_notice_then_bounce_at_expiry(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        dead = await hs.peer()
        port = dead.port
        await dead.close()  # nothing listens there now: connection refused
        s = hs.scheduler({"b.test": f"127.0.0.1:{port}"}, retry_seconds=[300, 900, 3600],
                         delay_notice_seconds=4 * 3600, max_lifetime_seconds=86400)
        qid = await hs.enqueue("bob@b.test")
        start = hs.clock.now
        tries: list[float] = []
        while await hs.store.queue_get(qid) is not None:
            assert await s.run_once() == 1
            tries.append(hs.clock.now - start)
            entry = await hs.store.queue_get(qid)
            if entry is None:
                break
            hs.clock.now = entry.recipients[0].next_try
        waits = [b - a for a, b in zip(tries, tries[1:])]
        assert waits[:3] == [300, 900, 3600] and set(waits[2:]) == {3600}  # the last interval repeats
        assert tries[-1] >= 86400 and tries[-2] < 86400
        kinds = [hs.dsn(i)["Subject"] for i in range(len(hs.dsns))]
        assert kinds == ["Delayed Mail (still being retried)", "Undelivered Mail Returned to Sender"]
        delayed = recipient_fields(hs.dsn(0))[0]
        assert delayed["Action"] == "delayed" and delayed["Status"] == "4.4.1"
        assert "Will-Retry-Until" in delayed
        failed = recipient_fields(hs.dsn(1))[0]
        assert failed["Action"] == "failed" and failed["Status"] == "4.4.7"
        # no MTA answered: no SMTP Diagnostic-Code, no Remote-MTA (dsn.py invariant 4); the text part explains
        assert "Diagnostic-Code" not in failed and "Remote-MTA" not in failed
        assert "no host of b.test took the connection" in human_text(hs.dsn(1))
    finally:
        await finish(hs)


def human_text(msg: email.message.EmailMessage) -> str:
    return str(msg.get_payload()[0].get_content())  # type: ignore[index]


async def test_connection_refused_report_has_no_smtp_diagnostic_and_no_remote_mta(tmp_path: Path) -> None:
    """RFC 3464 §2.3.6: the "smtp" diagnostic-type carries an SMTP reply, and a refused connection got none;
    §2.3.5: Remote-MTA is the MTA that reported the status, and none did. Both fields are left out (they are
    optional); Status 4.4.1 (RFC 3463: no answer from host) and the text part say what happened."""
    hs = await harness(tmp_path)
    try:
        dead = await hs.peer()
        port = dead.port
        await dead.close()  # connection refused
        s = hs.scheduler({"down.test": f"127.0.0.1:{port}"}, delay_notice_seconds=60, retry_seconds=[60])
        await hs.enqueue("bob@down.test")
        await s.run_once()  # first attempt: deferred, no notice yet
        hs.clock.advance(60)
        await s.run_once()  # second attempt, past delay_notice_seconds: the delay notice
        [(to, raw)] = hs.dsns
        assert to == "alice@a.test"
        [fields] = recipient_fields(hs.dsn())
        assert fields["Action"] == "delayed" and fields["Status"] == "4.4.1"
        assert "Diagnostic-Code" not in fields and "Remote-MTA" not in fields
        assert b"smtp;" not in raw and b"Remote-MTA" not in raw
        text = human_text(hs.dsn())
        assert "<bob@down.test>: no host of down.test took the connection:" in text
    finally:
        await finish(hs)


async def test_greeting_refusal_is_the_remote_mtas_smtp_reply(tmp_path: Path) -> None:
    """A host that answers with a refusal did report a status: its reply is the Diagnostic-Code (smtp) and it is
    the Remote-MTA (RFC 3464 §2.3.5, §2.3.6)."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(greeting="421 4.3.2 peer.test busy")
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, max_lifetime_seconds=1)
        await hs.enqueue("bob@b.test")
        hs.clock.advance(1)  # past the lifetime at the first attempt: bounced at once
        await s.run_once()
        [fields] = recipient_fields(hs.dsn())
        assert fields["Action"] == "failed" and fields["Status"] == "4.4.7"
        assert fields["Remote-MTA"] == "dns; [127.0.0.1]"
        assert fields["Diagnostic-Code"] == "smtp; 421 4.3.2 peer.test busy"
        assert "gave up after 1 attempts" in human_text(hs.dsn())
    finally:
        await finish(hs)


async def test_refusal_before_the_transaction_is_ours_not_the_remotes(tmp_path: Path) -> None:
    """A message over the SIZE the server declared is refused by us before MAIL FROM (RFC 1870 §6.2): the
    remote sent no reply about it, so no smtp Diagnostic-Code and no Remote-MTA (RFC 3464 §2.3.5, §2.3.6)."""
    hs = await harness(tmp_path)
    try:
        small = await hs.peer(extensions=["SIZE 100"])
        s = hs.scheduler({"b.test": f"127.0.0.1:{small.port}"})
        await hs.enqueue("bob@b.test", raw=MSG + b"x" * 200)
        await s.run_once()
        [fields] = recipient_fields(hs.dsn())
        assert fields["Status"] == "5.3.4" and "Diagnostic-Code" not in fields and "Remote-MTA" not in fields
        assert "accepts at most 100" in human_text(hs.dsn())
    finally:
        await finish(hs)


async def test_static_route_to_a_name_in_dns_names_it_as_remote_mta(tmp_path: Path) -> None:
    """A static route to a host name resolved by the tests' DNS server: Remote-MTA is that name (RFC 3464
    §2.3.5, "dns" MTA-name type), the Diagnostic-Code the reply it sent."""
    hs = await harness(tmp_path)
    dns_server = DnsServer()
    await dns_server.start()
    try:
        peer = await hs.peer(rcpt_reply=lambda a: "550 5.1.1 no such user")
        dns_server.a["relay.b.test"] = ["127.0.0.1"]
        s = hs.scheduler({"b.test": f"relay.b.test:{peer.port}"},
                         resolver=DnsResolver((f"127.0.0.1:{dns_server.port}",), lifetime=5))
        await hs.enqueue("nobody@b.test")
        await s.run_once()
        [fields] = recipient_fields(hs.dsn())
        assert fields["Remote-MTA"] == "dns; relay.b.test"
        assert fields["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
        assert ("relay.b.test", "A") in dns_server.queries
    finally:
        dns_server.close()
        await finish(hs)


async def test_static_route_to_a_name_only_in_etc_hosts(tmp_path: Path) -> None:
    """`"named.test" = "localhost:PORT"`: DNS (the tests' server) does not know localhost; the system resolver
    (/etc/hosts) does, as with Postfix's smtp_host_lookup = dns, native. The mail is delivered."""
    hs = await harness(tmp_path)
    dns_server = DnsServer()
    await dns_server.start()
    try:
        peer = await hs.peer()
        s = hs.scheduler({"named.test": f"localhost:{peer.port}"},
                         resolver=DnsResolver((f"127.0.0.1:{dns_server.port}",), lifetime=5))
        qid = await hs.enqueue("bob@named.test")
        await s.run_once()
        assert [seen.rcpts for seen in peer.delivered] == [["bob@named.test"]]
        assert await hs.store.queue_get(qid) is None and hs.dsns == []
        assert ("localhost", "A") in dns_server.queries  # DNS was asked first
    finally:
        dns_server.close()
        await finish(hs)


async def test_null_mx_bounces_at_once_and_nxdomain_too(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        resolver = StaticResolver({"nomail.test": [(0, ".")]}, nxdomain={"gone.test"})
        s = hs.scheduler(resolver=resolver)
        await hs.enqueue("x@nomail.test", "y@gone.test")
        await s.run_once()
        assert await hs.store.queue_length() == 0
        statuses = sorted(f["Status"] for i in range(len(hs.dsns)) for f in recipient_fields(hs.dsn(i)))
        assert statuses == ["5.1.10", "5.1.2"]
    finally:
        await finish(hs)


async def test_smtputf8_8bitmime_and_size_refusals(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        plain = await hs.peer(extensions=["SIZE 100"])
        s = hs.scheduler({"b.test": f"127.0.0.1:{plain.port}"})
        await hs.enqueue("zoë@b.test", raw=b"Subject: x\r\n\r\nx\r\n")  # needs SMTPUTF8
        await hs.enqueue("bob@b.test", raw="Subject: x\r\n\r\nGrüße\r\n".encode())  # needs 8BITMIME
        await hs.enqueue("bob@b.test", raw=MSG + b"x" * 200)  # over SIZE 100
        await s.run_once()
        assert plain.delivered == [] and await hs.store.queue_length() == 0
        # (the SMTPUTF8 one is message/global-delivery-status, which `email` does not split into blocks)
        statuses = sorted(re.search(rb"(?m)^Status: (\S+)", raw)[1] for _, raw in hs.dsns)  # type: ignore[index]
        assert statuses == [b"5.3.4", b"5.6.3", b"5.6.7"]
    finally:
        await finish(hs)


async def test_smtputf8_offered_is_used(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer()
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        await hs.enqueue("zoë@b.test", raw="Subject: olá\r\n\r\nx\r\n".encode())
        await s.run_once()
        [seen] = peer.delivered
        assert seen.rcpts == ["zoë@b.test"] and "SMTPUTF8" in seen.mail_params
    finally:
        await finish(hs)


async def test_connection_reuse_and_concurrency_limits(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer()
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, concurrency_per_domain=1)
        for i in range(5):
            await hs.enqueue(f"u{i}@b.test")
        await s.run_once()
        assert len(peer.delivered) == 5 and peer.connections == 1

        slow = await hs.peer(data_delay=0.05)
        routes = {f"d{i}.test": f"127.0.0.1:{slow.port}" for i in range(4)}
        s = hs.scheduler(routes, concurrency=3, concurrency_per_domain=2)
        for i in range(4):
            for j in range(4):
                await hs.enqueue(f"u{j}@d{i}.test")
        await s.run_once()
        assert len(slow.delivered) == 16
        assert 1 < slow.max_active <= 3  # never more than `concurrency` connections at once
    finally:
        await finish(hs)


async def test_the_next_message_goes_out_while_the_last_result_is_written(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """queue.py invariant 7: a connection sends its next message while the store commits the last one's result,
    and has at most one result unwritten: message k+2 waits for result k."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer()
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, concurrency_per_domain=1)
        ids = [await hs.enqueue(f"u{i}@b.test") for i in range(4)]
        real = hs.store.queue_update
        at_write: list[int] = []  # messages the peer had when each result write began
        written: list[int] = []

        async def held(queue_id: int, recipients: Any, holder: str = "") -> None:
            at_write.append(len(peer.delivered))
            if len(at_write) == 1:  # hold the first result until the second message is at the peer
                async def second() -> None:
                    while len(peer.delivered) < 2:
                        await asyncio.sleep(0.005)
                await asyncio.wait_for(second(), 10.0)  # a guard against hanging: before the change it expires
                at_write.append(len(peer.delivered))  # and the third has not gone out: result 1 is unwritten
            await real(queue_id, recipients, holder=holder)
            written.append(queue_id)

        monkeypatch.setattr(hs.store, "queue_update", held)
        await s.run_once()
        assert written == ids  # results in the order the messages went out
        assert len(peer.delivered) == 4 and peer.connections == 1
        assert at_write[1] == 2
        del at_write[1]
        assert all(n <= k + 2 for k, n in enumerate(at_write))  # never two results behind
        assert [await hs.store.queue_get(i) for i in ids] == [None] * 4
    finally:
        await finish(hs)


async def test_the_next_envelope_goes_out_with_the_last_message(tmp_path: Path) -> None:
    """RFC 2920 §3.1: "the actual transfer of message content is explicitly allowed to be the first 'command' in
    a group": the next transaction's MAIL, RCPT and DATA ride in the write of a message and its ".", with or
    without the message being accepted; a server without PIPELINING gets one command at a time."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(data_reply=lambda data: "554 5.7.1 no" if b"refuse me" in data else "250 2.0.0 ok",
                             rcpt_reply=lambda a: "550 5.1.1 unknown" if a.startswith("nobody") else "250 2.1.5 OK")
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, concurrency_per_domain=1)
        await hs.enqueue("u0@b.test")
        await hs.enqueue("u1@b.test", raw=MSG + b"refuse me\r\n")  # 554 to its "."
        await hs.enqueue("nobody@b.test")  # refused at RCPT: the DATA of the group is answered 554, no data
        await hs.enqueue("u3@b.test", "nobody2@b.test")
        await hs.enqueue("u4@b.test")
        assert await s.run_once() == 6
        assert [d.rcpts for d in peer.delivered] == [["u0@b.test"], ["u3@b.test"], ["u4@b.test"]]
        assert peer.connections == 1
        # with u0's "." went u1's envelope, with u1's (refused) "." nobody's, with u3's u4's; nobody's transaction
        # sent no data, so u3's envelope started a group of its own (after RSET, RFC 5321 §4.1.1.5)
        assert peer.grouped == 3
        assert sorted(a for a, _ in hs.dsns) == ["alice@a.test"] * 3  # u1, nobody, nobody2 bounced
        assert await hs.store.queue_length() == 0

        plain = await hs.peer(extensions=[])
        s = hs.scheduler({"c.test": f"127.0.0.1:{plain.port}"}, concurrency_per_domain=1)
        for i in range(3):
            await hs.enqueue(f"u{i}@c.test")
        assert await s.run_once() == 3
        assert len(plain.delivered) == 3 and plain.connections == 1 and plain.grouped == 0
    finally:
        await finish(hs)


async def test_a_running_scheduler_keeps_a_connection_for_the_next_arrival(tmp_path: Path) -> None:
    """queue.py invariant 9 (Postfix's connection cache): a worker whose domain has nothing more waits a moment
    (`CONNECTION_LINGER`) with its connection open, so mail arriving just after goes over it; `run_once` does not
    wait, and stop closes the idle connection at once."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer()
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, poll_seconds=3600)
        s.start()

        async def delivered(n: int) -> None:
            while len(peer.delivered) < n:
                await asyncio.sleep(0.005)

        await hs.enqueue("u0@b.test")
        s.wake()
        await asyncio.wait_for(delivered(1), 10.0)  # a guard against hanging, not a timing assertion
        await hs.enqueue("u1@b.test")
        s.wake()
        await asyncio.wait_for(delivered(2), 10.0)
        assert peer.connections == 1 and peer.active == 1  # the second one went over the first's connection
        await s.stop()
        await asyncio.wait_for(_closed(peer), 10.0)
        assert await hs.store.queue_length() == 0
    finally:
        await finish(hs)


async def _closed(peer: SmtpPeer) -> None:
    while peer.active:
        await asyncio.sleep(0.005)


async def test_dsn_parameters_passed_on_or_relayed_dsn(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        dsn_peer = await hs.peer(extensions=["PIPELINING", "DSN", "8BITMIME"])
        plain_peer = await hs.peer(extensions=[])  # no ESMTP extensions at all: no pipelining either
        s = hs.scheduler({"b.test": f"127.0.0.1:{dsn_peer.port}", "c.test": f"127.0.0.1:{plain_peer.port}"})
        r = QueueRecipient("bob@b.test", orcpt="rfc822;bob@b.test", notify="SUCCESS,FAILURE")
        await hs.enqueue(r, dataclasses.replace(r, rcpt="carol@c.test", orcpt=""), envid="ENV1", ret="FULL")
        await s.run_once()
        [seen] = dsn_peer.delivered
        assert "RET=FULL" in seen.mail_params and "ENVID=ENV1" in seen.mail_params
        assert seen.rcpt_params == [["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@b.test"]]
        assert plain_peer.delivered[0].rcpt_params == [[]] and plain_peer.delivered[0].mail_params == []
        [_] = hs.dsns  # only carol's server could not report: we say "relayed"
        fields = recipient_fields(hs.dsn())
        assert [(f["Final-Recipient"], f["Action"]) for f in fields] == [("rfc822;carol@c.test", "relayed")]
        assert hs.dsn()["Subject"] == "Successful Mail Delivery Report"
    finally:
        await finish(hs)


async def test_no_dsn_to_the_null_sender(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(rcpt_reply=lambda a: "550 5.1.1 no")
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        await hs.enqueue("bob@b.test", mail_from="")
        await s.run_once()
        assert await hs.store.queue_length() == 0 and hs.dsns == []
    finally:
        await finish(hs)


async def test_starttls_and_dkim_signing(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        ensure_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "peer.test")
        peer = await hs.peer(tls=server_context(tmp_path / "cert.pem", tmp_path / "key.pem"))
        keys = generate_keys()
        await hs.store.add_domain("a.test")
        await hs.store.set_dkim("a.test", keys.rsa_selector, keys.rsa_pem, keys.ed25519_selector, keys.ed25519_pem)
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        await hs.enqueue("bob@b.test")
        await s.run_once()
        [seen] = peer.delivered
        assert seen.tls
        assert seen.data.count(b"DKIM-Signature:") == 2 and seen.data.endswith(MSG)
        assert b"d=a.test; s=" + keys.rsa_selector.encode() in seen.data
    finally:
        await finish(hs)


async def test_tls_handshake_failure_falls_back_to_plain_text(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(tls=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))  # no certificate: handshakes fail
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        await hs.enqueue("bob@b.test")
        await s.run_once()
        assert len(peer.delivered) == 1 and not peer.delivered[0].tls and peer.connections == 2
    finally:
        await finish(hs)


async def test_crash_during_delivery_loses_nothing(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(data_delay=3600)  # the "." is never answered: we crash while waiting
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        qid = await hs.enqueue("bob@b.test", "carol@b.test")
        s.start()
        s.wake()
        for _ in range(200):
            if peer.seen and peer.active:
                break
            await asyncio.sleep(0.01)
        await s.stop(grace=0)  # kill the scheduler mid-transaction, like a crash (state only in the store)
        await hs.store.close()
        hs.store = hs.open_store()
        await hs.store.open()
        entry = await hs.store.queue_get(qid)
        assert entry is not None and all(r.state is RcptState.QUEUED for r in entry.recipients)
        good = await hs.peer()
        s2 = hs.scheduler({"b.test": f"127.0.0.1:{good.port}"})
        assert await s2.run_once() == 2
        assert good.delivered[0].rcpts == ["bob@b.test", "carol@b.test"]
        assert await hs.store.queue_get(qid) is None
    finally:
        await finish(hs)


async def test_crash_between_remote_250_and_state_write_sends_again(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented at-least-once window: the remote said 250, the state write never happened."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer()
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, node="n1")
        qid = await hs.enqueue("bob@b.test")

        async def crash(*a: Any, **kw: Any) -> None:
            raise OSError("power failure")

        real = hs.store.queue_update
        monkeypatch.setattr(hs.store, "queue_update", crash)
        await s.run_once()
        monkeypatch.setattr(hs.store, "queue_update", real)
        # The crashed process still holds the lease: the same node, restarted, frees it at once.
        s2 = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, node="n1")
        assert await s2.free_own_leases() == 1
        await s2.run_once()
        assert len(peer.delivered) == 2 and await hs.store.queue_get(qid) is None
    finally:
        await finish(hs)


async def test_another_nodes_scheduler_takes_over_after_the_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A scheduler that died holding a lease (its result never written): another node's scheduler leaves the
    recipient alone until `queue.lease_seconds` have passed, then takes it over and says so in the log; the dead
    one's late result is refused by the store."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer()
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, node="n1")
        qid = await hs.enqueue("bob@b.test")
        late: list[Any] = []

        async def crash(*a: Any, **kw: Any) -> None:
            late.append((a, kw))
            raise OSError("power failure")

        real = hs.store.queue_update
        monkeypatch.setattr(hs.store, "queue_update", crash)
        assert await s.run_once() == 1
        monkeypatch.setattr(hs.store, "queue_update", real)
        other = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, node="n2")
        assert await other.free_own_leases() == 0  # n1's lease is not n2's to free
        assert await other.run_once() == 0 and len(peer.delivered) == 1  # still held by n1
        hs.clock.advance(s.lease_seconds - 1)
        assert await other.run_once() == 0
        hs.clock.advance(1)
        with caplog.at_level(logging.INFO, logger="postroom.queue"):
            assert await other.run_once() == 1
        assert len(peer.delivered) == 2 and await hs.store.queue_get(qid) is None
        assert f"queue lease taken over id={qid} rcpt=bob@b.test from={s.holder} holder={other.holder}" in caplog.text
        [(_, kw)] = late
        assert kw == {"holder": s.holder}  # the result was to be written as the holder
    finally:
        await finish(hs)


async def test_a_stalled_holders_late_result_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The scheduler's write comes after its lease ran out and another holder claimed the recipient: the store
    refuses it (LeaseLost), the scheduler logs it and records nothing; the new holder's claim stands."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer()
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        qid = await hs.enqueue("bob@b.test")
        real = hs.store.queue_update

        async def stalled(*a: Any, **kw: Any) -> None:
            hs.clock.advance(s.lease_seconds)  # the node stalled past its lease; another node claims meanwhile
            got = await hs.store.queue_claim(hs.clock(), "n2#1", 300.0)
            assert got.claimed == [(qid, "bob@b.test")] and got.taken_over == [(qid, "bob@b.test", s.holder)]
            await real(*a, **kw)

        monkeypatch.setattr(hs.store, "queue_update", stalled)
        with caplog.at_level(logging.INFO, logger="postroom.queue"):
            await s.run_once()
        assert len(peer.delivered) == 1
        assert f"queue result not recorded id={qid} rcpts=bob@b.test holder={s.holder}: lease lost" in caplog.text
        entry = await hs.store.queue_get(qid)
        assert entry is not None
        [r] = entry.recipients
        assert (r.state, r.attempts, r.lease_holder) == (RcptState.QUEUED, 0, "n2#1")
    finally:
        await finish(hs)


async def test_an_entry_deleted_while_it_is_sent_is_not_logged_as_deferred(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """`postroom queue delete` while the attempt runs: the peer's 451 would defer it, but the entry is gone, so the
    log says that no retry follows instead of "deferred" (which promises one)."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(data_reply=lambda data: "451 4.3.0 try later")
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, retry_seconds=[300])
        qid = await hs.enqueue("bob@b.test")
        real = hs.store.queue_update

        async def deleted_first(*a: Any, **kw: Any) -> None:
            await hs.store.queue_delete(qid)  # the admin's command, between the reply and the write
            await real(*a, **kw)

        monkeypatch.setattr(hs.store, "queue_update", deleted_first)
        with caplog.at_level(logging.INFO, logger="postroom.queue"):
            await s.run_once()
        assert f"queue entry gone id={qid}: removed while it was being sent, no retry" in caplog.text
        assert "queue deferred" not in caplog.text
        assert await hs.store.queue_get(qid) is None
    finally:
        await finish(hs)


async def test_mx_from_the_tests_dns_server_with_fallback_to_second_mx(tmp_path: Path) -> None:
    hs = await harness(tmp_path)
    dns_server = DnsServer()
    await dns_server.start()
    try:
        peer = await hs.peer()
        # mx_port is one port for every MX host, so the two MX hosts differ by address: 127.0.0.2 refuses
        dns_server.mx["b.test"] = [(10, "mx1.b.test"), (20, "mx2.b.test")]
        dns_server.a["mx1.b.test"] = ["127.0.0.2"]
        dns_server.a["mx2.b.test"] = ["127.0.0.1"]
        s = hs.scheduler(resolver=DnsResolver((f"127.0.0.1:{dns_server.port}",), lifetime=5),
                         mx_port=peer.port)
        await hs.enqueue("bob@b.test")
        await s.run_once()
        assert len(peer.delivered) == 1
        assert ("b.test", "MX") in dns_server.queries and ("mx1.b.test", "A") in dns_server.queries
    finally:
        dns_server.close()
        await finish(hs)


async def test_dns_resolver_answers(tmp_path: Path) -> None:
    dns_server = DnsServer()
    await dns_server.start()
    try:
        dns_server.mx["b.test"] = [(10, "mx.b.test")]
        dns_server.a["mx.b.test"] = ["192.0.2.1"]
        dns_server.aaaa["mx.b.test"] = ["2001:db8::1"]
        dns_server.mx["nomx.test"] = []
        dns_server.a["nomx.test"] = ["192.0.2.2"]
        dns_server.mx["null.test"] = [(0, ".")]
        r = DnsResolver((f"127.0.0.1:{dns_server.port}",), lifetime=5)
        assert await r.mx("b.test") == [(10, "mx.b.test")]
        assert await r.addresses("mx.b.test") == ["192.0.2.1", "2001:db8::1"]
        assert await r.mx("nomx.test") == []
        assert await r.mx("null.test") == [(0, ".")]
        cfg = config_mod.load(None).delivery
        route = await RouteFinder(cfg, r).route("nomx.test")
        assert route.via == "implicit-mx" and route.hops[0].address == "192.0.2.2"
        from postroom.delivery.mx import DnsNotFound
        with pytest.raises(DnsNotFound):
            await r.mx("unknown.test")
    finally:
        dns_server.close()


async def test_client_pieces(tmp_path: Path) -> None:
    assert dot_stuff(b".a\r\nb\r\n.c") == b"..a\r\nb\r\n..c\r\n.\r\n"
    peer = SmtpPeer(extensions=["PIPELINING"], rcpt_reply=lambda a: "550 5.1.1 no" if a == "x@b.test" else "250 ok",
                    data_reply=lambda d: "452 4.3.1 full")
    await peer.start()
    try:
        c = await SmtpClient.open(Hop("peer", "127.0.0.1", peer.port), "client.test", connect_timeout=5,
                                  command_timeout=5)
        res = await c.send(Transaction("a@a.test", ("x@b.test", "y@b.test"), b"Subject: x\r\n\r\nx\r\n"))
        assert (res.rcpt["x@b.test"].code, res.rcpt["x@b.test"].status) == (550, "5.1.1")
        assert (res.rcpt["y@b.test"].code, res.rcpt["y@b.test"].status) == (452, "4.3.1")
        res = await c.send(Transaction("a@a.test", ("x@b.test",), b"x\r\n"))  # all refused: no data sent
        assert res.rcpt["x@b.test"].code == 550
        await c.quit()
        assert c.closed
    finally:
        await peer.close()


async def test_stray_cr_never_leaves_client_refuses_and_queue_repairs_old_entries(tmp_path: Path) -> None:
    # issue 11 item 7, the last line of defence (client.py invariant 2): content with a bare CR is never sent.
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer()
        smuggling = MSG + b"hello\r.\r\nMAIL FROM:<admin@a.test>\r\n"
        client = await SmtpClient.open(Hop("127.0.0.1", "127.0.0.1", peer.port), "mx.a.test", connect_timeout=5,
                                       command_timeout=5)
        try:
            with pytest.raises(UnsafeContent):
                await client.send(Transaction("alice@a.test", ("bob@b.test",), smuggling))
            with pytest.raises(UnsafeContent):
                await client.send(Transaction("alice@a.test", ("bob@b.test",), MSG + b"\x00\r\n"))
        finally:
            await client.quit()
        assert peer.seen == []  # not even MAIL FROM went out
        # An entry queued before the router refused such content goes out repaired, signed as sent.
        await hs.enqueue("bob@b.test", raw=smuggling)
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        assert await s.run_once() == 1
        [seen] = peer.delivered
        assert stray(seen.data) is None and b"hello .\r\nMAIL FROM:<admin@a.test>\r\n" in seen.data
    finally:
        await finish(hs)


async def test_a_lease_lost_mid_attempt_stops_what_was_not_started(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Two jobs for one domain, one connection: while the first is in its transaction the scheduler's leases
    run out (the clock jumps) and another node claims both. The next renewal learns it: the second job is not
    started, and the first one's result, written late, is refused; the other node's claim stands for both."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(data_delay=0.5)
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, concurrency_per_domain=1)
        q1 = await hs.enqueue("bob@b.test")
        q2 = await hs.enqueue("carol@b.test")
        with caplog.at_level(logging.INFO, logger="postroom.queue"):
            run = asyncio.create_task(s.run_once())
            for _ in range(500):
                if peer.active and peer.seen:
                    break
                await asyncio.sleep(0.01)
            hs.clock.advance(s.lease_seconds)
            got = await hs.store.queue_claim(hs.clock(), "n2#1", 300.0)
            assert sorted(got.claimed) == [(q1, "bob@b.test"), (q2, "carol@b.test")]
            assert await s.renew() == 2
            assert await run == 2  # claimed two, attempted one
        assert [t.rcpts for t in peer.delivered] == [["bob@b.test"]]
        assert f"queue lease lost id={q2} rcpt=carol@b.test holder={s.holder}" in caplog.text
        assert f"queue not attempting id={q2} rcpt=carol@b.test: lease lost" in caplog.text
        assert f"queue result not recorded id={q1} rcpts=bob@b.test holder={s.holder}" in caplog.text
        for qid in (q1, q2):
            entry = await hs.store.queue_get(qid)
            assert entry is not None and entry.recipients[0].lease_holder == "n2#1"
            assert entry.recipients[0].attempts == 0
        assert await s.renew() == 0 and not s._in_flight  # nothing held any more
    finally:
        await finish(hs)


async def test_a_long_attempt_keeps_its_lease(tmp_path: Path) -> None:
    """Renewal: an attempt that outlasts the lease keeps the recipient; nobody else can claim it meanwhile."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(data_delay=0.5)
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"})
        qid = await hs.enqueue("bob@b.test")
        run = asyncio.create_task(s.run_once())
        for _ in range(500):
            if peer.active and peer.seen:
                break
            await asyncio.sleep(0.01)
        hs.clock.advance(s.lease_seconds - 1)
        assert await s.renew() == 0
        hs.clock.advance(2)  # past the first lease, within the renewed one
        assert (await hs.store.queue_claim(hs.clock(), "n2#1", 300.0)).claimed == []
        assert await run == 1
        assert len(peer.delivered) == 1 and await hs.store.queue_get(qid) is None
    finally:
        await finish(hs)


async def test_the_renewal_task_extends_the_leases_of_a_running_attempt(tmp_path: Path) -> None:
    """`start` runs the renewal task: every third of `queue.lease_seconds` it extends what the scheduler holds,
    so a claim by another node after the first lease's end finds nothing."""
    hs = await harness(tmp_path)
    try:
        peer = await hs.peer(data_delay=3600)  # the attempt outlasts every lease here
        s = hs.scheduler({"b.test": f"127.0.0.1:{peer.port}"}, lease_seconds=3)
        qid = await hs.enqueue("bob@b.test")
        first_end = hs.clock() + 3
        s.start()
        s.wake()
        for _ in range(500):
            if peer.active and peer.seen:
                break
            await asyncio.sleep(0.01)
        hs.clock.advance(2)

        async def lease_end() -> float:
            entry = await hs.store.queue_get(qid)
            assert entry is not None
            return entry.recipients[0].lease_until

        for _ in range(500):  # the task runs every second (lease / 3): wait for its renewal
            if await lease_end() > first_end:
                break
            await asyncio.sleep(0.01)
        assert await lease_end() == hs.clock() + 3
        hs.clock.advance(2)  # past the first lease's end
        assert (await hs.store.queue_claim(hs.clock(), "n2#1", 300.0)).claimed == []
        await s.stop(grace=0)
        entry = await hs.store.queue_get(qid)
        assert entry is not None and entry.recipients[0].lease_holder == ""  # released at stop
    finally:
        await finish(hs)
