"""Local parts keep their case on the way out (RFC 5321 §2.4), while local lookups stay case-insensitive.

RFC 5321 §2.4: "the local-part of a mailbox MUST BE treated as case sensitive" and "a host that expects to
receive mail ... MUST take care to preserve the case of mailbox local-parts"; only the receiving host may
decide that `Big.Member` and `big.member` are one mailbox. Postroom is that host for its own users (users,
alias sources and lists match whatever the case), and a relay for everybody else: what it sends to the next
hop, in RCPT TO and in a DSN's Final-Recipient, is the spelling it was given.

A real server (submission with smtplib) queues to a scripted SMTP peer on a loopback port (`delivery.routes`);
the peer records the RCPT TO paths as they arrived on the wire.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from outbound_support import SmtpPeer
from smtp_support import submission_login

from postroom.store.api import ListPolicy

PW = "correct horse battery"
MSG = b"From: alice@example.test\r\nTo: someone\r\nSubject: case\r\n\r\nHello.\r\n"


class PeerThread:
    """An `SmtpPeer` on an event loop of its own, so its port is known before the server's config is made."""

    def __init__(self, peer: SmtpPeer) -> None:
        self.peer = peer
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="smtp-peer", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(peer.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.peer.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    # REJECT@remote.test is refused for good, so its bounce (a DSN) comes back to the sender.
    p = PeerThread(SmtpPeer(rcpt_reply=lambda a: "550 5.1.1 no such user" if a == "REJECT@remote.test"
                            else "250 2.1.5 OK"))
    yield p.peer
    p.stop()


@pytest.fixture
def server_overrides(peer: SmtpPeer) -> dict[str, Any]:
    return {"delivery": {"enabled": True, "poll_seconds": 0.05, "retry_seconds": [3600],
                         "routes": {"remote.test": f"127.0.0.1:{peer.port}"}},
            "smtp": {"vrfy_expn": True}}


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("alice@example.test", PW)
    return server


def submission(srv: Any) -> smtplib.SMTP:
    return submission_login(srv, "alice@example.test", PW)


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def rcpts_seen(peer: SmtpPeer) -> list[str]:
    return [r for s in peer.delivered for r in s.rcpts]


def inbox(srv: Any, address: str) -> list[bytes]:
    async def go() -> list[bytes]:
        user = await srv.store.get_user(address)
        box = await srv.store.get_mailbox(user.id, "INBOX")
        return [await srv.store.read_message(m.blob_id) for m in await srv.store.list_messages(box.id)]

    return list(srv.run(go()))


def test_submitted_recipients_reach_the_next_hop_as_written_and_the_dsn_names_them(srv: Any,
                                                                                   peer: SmtpPeer) -> None:
    with submission(srv) as c:
        refused = c.sendmail("alice@example.test",
                             ["MixedCase@Remote.TEST", '"Quoted Name"@remote.test', "REJECT@remote.test"], MSG)
        assert refused == {}
    # RFC 5321 §2.4: the local part as given; the domain is case-insensitive (it arrives lower-cased).
    assert sorted(wait_for(lambda: rcpts_seen(peer))) == ['"Quoted Name"@remote.test', "MixedCase@remote.test"]
    [dsn] = wait_for(lambda: inbox(srv, "alice@example.test"))
    msg = email.message_from_bytes(dsn, policy=email.policy.default)
    status = msg.get_payload()[1].get_payload()[1]  # type: ignore[union-attr,index]
    # RFC 3464 §2.3.2: Final-Recipient is the address the reporting MTA tried, as it tried it.
    assert str(status["Final-Recipient"]) == "rfc822;REJECT@remote.test"


def test_alias_targets_and_list_members_keep_their_case_lookups_do_not(srv: Any, peer: SmtpPeer) -> None:
    async def setup() -> None:
        await srv.store.add_alias("fwd2@example.test", ["Ext.User@remote.test"])
        await srv.store.create_list("team@example.test", "alice@example.test", ListPolicy.OPEN)
        await srv.store.add_list_member("team@example.test", "Big.Member@remote.test")

    srv.run(setup())
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("outside.test")
        # Local names match whatever their case: the alias source, the list, the user.
        assert c.sendmail("someone@outside.test", ["FWD2@Example.Test", "Team@EXAMPLE.test", "ALICE@example.TEST"],
                          MSG) == {}
    assert sorted(wait_for(lambda: len(rcpts_seen(peer)) >= 2 and rcpts_seen(peer))) == [
        "Big.Member@remote.test", "Ext.User@remote.test"]
    assert len(inbox(srv, "alice@example.test")) == 1
    with submission(srv) as c:
        assert c.docmd("EXPN", "team@example.test") == (250, b"2.1.5 <Big.Member@remote.test>")
