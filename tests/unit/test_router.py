"""The router against a real SQLite store: resolution order, loops, catch-all, lists, sender ownership, the door."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from postroom import config as config_mod
from postroom.delivery.router import (
    Envelope,
    ListAction,
    ListPost,
    LocalUser,
    Rcpt,
    Remote,
    RouteError,
    Router,
    received_count,
)
from postroom.store import open_store
from postroom.store.api import ListPolicy, Store


def run(tmp_path: Path, body: Callable[[Store, Router], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        data = tmp_path / "data"
        store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
        await store.open()
        try:
            await store.add_domain("example.org")
            await store.add_domain("other.org")
            for u in ("alice@example.org", "bob@example.org"):
                await store.add_user(u, "x")  # the router never checks passwords
            cfg = config_mod.load(None, {"server": {"data_dir": str(data)}, "smtp": {"max_received": 3}})
            return await body(store, Router(store, cfg))
        finally:
            await store.close()

    return asyncio.run(go())


def test_resolution_order_detail_alias_catchall(tmp_path: Path) -> None:
    async def body(store: Store, r: Router) -> None:
        alice = await store.get_user("alice@example.org")
        bob = await store.get_user("bob@example.org")
        assert alice is not None and bob is not None
        assert await r.resolve("Alice@Example.ORG") == [LocalUser(alice.id, "alice@example.org")]
        assert await r.resolve("alice+tag+more@example.org") == [LocalUser(alice.id, "alice@example.org")]
        assert await r.resolve("nobody@example.org") == []
        assert await r.resolve("x@far.test") == [Remote("x@far.test")]
        # an alias overrides the user, and an alias back to the user keeps its local copy
        await store.add_alias("alice@example.org", ["alice@example.org", "alice@far.test"])
        assert await r.resolve("alice@example.org") == [LocalUser(alice.id, "alice@example.org"),
                                                        Remote("alice@far.test")]
        # loops end
        await store.add_alias("a@example.org", ["b@example.org"])
        await store.add_alias("b@example.org", ["a@example.org", "bob@example.org"])
        assert await r.resolve("a@example.org") == [LocalUser(bob.id, "bob@example.org")]
        # catch-all only where nothing else matches
        await store.add_alias("@other.org", ["bob@example.org"])
        assert await r.resolve("anything@other.org") == [LocalUser(bob.id, "bob@example.org")]
        assert await r.resolve("nobody@example.org") == []

    run(tmp_path, body)


def test_lists_bounce_address_and_actions(tmp_path: Path) -> None:
    async def body(store: Store, r: Router) -> None:
        alice = await store.get_user("alice@example.org")
        assert alice is not None
        ml = await store.create_list("team@example.org", "alice@example.org", ListPolicy.MEMBERS)
        [post] = await r.resolve("team@example.org")
        assert isinstance(post, ListPost) and post.ml.address == ml.address
        assert await r.resolve("team-bounces@example.org") == [LocalUser(alice.id, "alice@example.org")]
        [act] = await r.resolve("team+approve-" + "0" * 32 + "@example.org")
        assert isinstance(act, ListAction) and act.action == "approve"
        with pytest.raises(RouteError) as info:
            await r.check_recipient("team@example.org", "stranger@far.test", False)
        assert (info.value.code, info.value.esc) == (550, "5.7.1")
        with pytest.raises(RouteError):
            await r.check_recipient("team+approve-" + "0" * 32 + "@example.org", "alice@example.org", False)
        with pytest.raises(RouteError):
            await r.check_recipient("team@example.org", "", False)

    run(tmp_path, body)


def test_check_recipient_relay_and_unknown(tmp_path: Path) -> None:
    async def body(store: Store, r: Router) -> None:
        for addr, may_relay, expected in [("x@far.test", False, (550, "5.7.1")),
                                          ("nobody@example.org", True, (550, "5.1.1")),
                                          ("x@[127.0.0.1]", False, (550, "5.7.1"))]:
            with pytest.raises(RouteError) as info:
                await r.check_recipient(addr, "s@far.test", may_relay)
            assert (info.value.code, info.value.esc) == expected
        assert await r.check_recipient("x@far.test", "s@far.test", True) == [Remote("x@far.test")]

    run(tmp_path, body)


def test_sender_allowed(tmp_path: Path) -> None:
    async def body(store: Store, r: Router) -> None:
        await store.add_alias("sales@example.org", ["alice@example.org"])
        await store.add_alias("@other.org", ["alice@example.org"])
        for sender, ok in [("alice@example.org", True), ("ALICE+x@example.org", True), ("sales@example.org", True),
                           ("sales+q@example.org", True), ("whoever@other.org", True), ("bob@example.org", False),
                           ("", False), ("alice@far.test", False)]:
            assert await r.sender_allowed("alice@example.org", sender) is ok, sender

    run(tmp_path, body)


def test_accept_loop_and_relay_at_the_door(tmp_path: Path) -> None:
    async def body(store: Store, r: Router) -> None:
        hops = b"Received: a\r\nreceived:b\r\nRECEIVED : c\r\nReceived: d\r\n"
        with pytest.raises(RouteError) as info:
            await r.accept(Envelope("s@far.test", (Rcpt("alice@example.org"),), hops + b"\r\nbody\r\n"))
        assert (info.value.code, info.value.esc) == (554, "5.4.6")
        with pytest.raises(RouteError):
            await r.accept(Envelope("s@far.test", (Rcpt("x@far.test"),), b"Subject: x\r\n\r\nbody\r\n"))
        done = await r.accept(Envelope("s@far.test", (Rcpt("alice@example.org"), Rcpt("x@far.test", notify="NEVER")),
                                       b"Subject: x\r\n\r\nbody\r\n", may_relay=True))
        assert (done.local, done.queued, len(done.queue_ids)) == (1, 1, 1)
        [entry] = await store.queue_list()
        assert entry.recipients[0].notify == "NEVER"

    run(tmp_path, body)


def test_received_count_only_in_header() -> None:
    assert received_count(b"Received: a\r\n\tfolded\r\nSubject: x\r\n\r\nReceived: in body\r\n") == 1
    assert received_count(b"X-Received: a\r\n\r\n") == 0


@pytest.mark.parametrize("raw", [
    b"Subject: x\r\n\r\nhi\r\n\x00.\r\n",  # issue 11 item 7: NUL, as an inbound message carried it
    b"Subject: x\r\n\r\nhello\r.\r\nMAIL FROM:<evil@x.test>\r\n",  # bare CR: smuggling downstream
])
def test_accept_refuses_stray_cr_lf_nul_at_the_door(tmp_path: Path, raw: bytes) -> None:
    async def body(store: Store, r: Router) -> None:
        for rcpt in ("alice@example.org", "someone@far.test"):
            with pytest.raises(RouteError) as info:
                await r.accept(Envelope("x@far.test", (Rcpt(rcpt),), raw, may_relay=True))
            assert (info.value.code, info.value.esc) == (550, "5.6.0")  # RFC 5322 §2.3, RFC 5321 §2.3.8
        assert await store.queue_list() == []
        alice = await store.get_user("alice@example.org")
        assert alice is not None
        box = await store.get_mailbox(alice.id, "INBOX")
        assert box is not None and await store.list_messages(box.id) == []

    run(tmp_path, body)
