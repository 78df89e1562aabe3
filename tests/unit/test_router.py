"""The router against a real SQLite store: resolution order, loops, catch-all, lists, sender ownership, the door."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from postroom import config as config_mod
from postroom.delivery import srs
from postroom.delivery.lists import action_address
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


def test_may_send_as(tmp_path: Path) -> None:
    async def body(store: Store, r: Router) -> None:
        await store.add_alias("sales@example.org", ["alice@example.org"])
        await store.add_alias("team@example.org", ["sales@example.org", "bob@example.org"])  # alias of an alias
        await store.add_alias("desk@example.org", ["alice+desk@example.org"])
        await store.add_alias("@other.org", ["alice@example.org"])
        await store.add_alias("@example.org", ["alice@example.org"])
        await store.create_list("news@example.org", "alice@example.org", ListPolicy.OPEN)
        await store.create_list("talk@example.org", "bob@example.org", ListPolicy.OPEN)
        for sender, ok in [("alice@example.org", True), ("ALICE+x@example.org", True), ("sales@example.org", True),
                           ("sales+q@example.org", True), ("team@example.org", True), ("desk@example.org", True),
                           ("news@example.org", True),  # a list alice owns
                           ("talk@example.org", False),  # a list bob owns
                           # a catch-all delivers these to alice, but they are not hers to send as
                           ("whoever@other.org", False), ("whoever@example.org", False), ("@example.org", False),
                           ("bob@example.org", False), ("", False), ("alice@far.test", False), ("x y@z", False)]:
            assert await r.may_send_as("alice@example.org", sender) is ok, sender

    run(tmp_path, body)


def test_header_senders(tmp_path: Path) -> None:
    async def body(store: Store, r: Router) -> None:
        await store.add_alias("sales@example.org", ["alice@example.org"])

        async def check(head: bytes) -> tuple[int, str] | None:
            try:
                await r.check_header_senders("alice@example.org", head + b"\r\nbody\r\n")
            except RouteError as exc:
                return exc.code, exc.esc
            return None

        for ok in (b"From: Alice <alice@example.org>\r\n", b"From: alice+x@EXAMPLE.org (me)\r\n",
                   b"From: alice@example.org,\r\n sales@example.org\r\nSender: alice@example.org\r\n",
                   b"From: team: alice@example.org, sales@example.org;\r\n", b"Subject: no From at all\r\n"):
            assert await check(ok) is None, ok
        for bad in (b"From: Bob <bob@example.org>\r\n",  # the forgery of issue 11 item 6
                    b"From: alice@example.org, bob@example.org\r\nSender: alice@example.org\r\n",
                    b"From: alice@example.org\r\nSender: bob@example.org\r\n",
                    b"From: alice@example.org\r\nFrom: bob@example.org\r\n",
                    b"From: \"bob\"@example.org\r\n", b"From: undisclosed:;\r\n", b"From: bob\r\n",
                    b"FROM :\r\n\tBob <bob@example.org>\r\n",
                    b"From: " + b", ".join(b"alice+%d@example.org" % i for i in range(101)) + b"\r\n"):
            assert await check(bad) == (553, "5.7.1"), bad
        # a user whose local part must be quoted (RFC 5321 §4.1.2) may put it in From, quoted or escaped
        await store.add_user('"john doe"@example.org', "x")
        for own in (b'From: "John Doe" <"john doe"@example.org>\r\n', b'From: "john\\ doe"@example.org\r\n'):
            await r.check_header_senders('"john doe"@example.org', own + b"\r\nbody\r\n")

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


# RFC 5321 §4.1.2: Local-part = Dot-string / Quoted-string. Every form a client can send resolves to a definite
# answer (destinations or none), never an exception.
QUOTED_FORMS = ['"john doe"@example.org', '"a\\ b"@example.org', '"a b"@example.org', '"x+y z"@example.org',
                '"a@b"@example.org', '"bad@example.org', '"a"b@example.org', 'a b@example.org', '"\\"q\\""@example.org',
                '"john doe"+x@example.org', '"unterminated+approve-' + "0" * 32 + '@example.org']


def test_quoted_local_parts_resolve_to_a_definite_answer(tmp_path: Path) -> None:
    async def body(store: Store, r: Router) -> None:
        alice = await store.get_user("alice@example.org")
        assert alice is not None
        for form in QUOTED_FORMS:
            assert await r.resolve(form) == [], form
            with pytest.raises(RouteError) as exc:
                await r.check_recipient(form, "bob@far.test", False)
            assert (exc.value.code, exc.value.esc) == (550, "5.1.1"), form
            assert await r.may_send_as("alice@example.org", form) is False
        # "alice" and alice are the same mailbox (§4.1.2: a quoted form that need not be quoted)
        assert await r.resolve('"alice"@example.org') == [LocalUser(alice.id, "alice@example.org")]
        assert await r.may_send_as("alice@example.org", '"alice"@example.org')
        # a quoted name can be a user, an alias source and target, a list, and its quoted-pairs are one name
        john = await store.add_user('"John Doe"@example.org', "x")
        assert john.address == '"john doe"@example.org'
        assert await r.resolve('"john\\ doe"@Example.org') == [LocalUser(john.id, john.address)]
        await store.add_alias('"sales team"@example.org', ['"john doe"@example.org', '"ext user"@far.test'])
        assert set(await r.resolve('"sales team"@example.org')) == {LocalUser(john.id, john.address),
                                                                      Remote('"ext user"@far.test')}
        assert await r.may_send_as('"john doe"@example.org', '"sales team"@example.org')
        ml = await store.create_list('"the list"@example.org', "alice@example.org", ListPolicy.OPEN)
        assert ml.bounce_address == '"the list-bounces"@example.org'  # the suffix inside the quotes
        [post] = await r.resolve('"the list"@example.org')
        assert isinstance(post, ListPost)
        assert await r.resolve(ml.bounce_address) == [LocalUser(alice.id, "alice@example.org")]
        approve = action_address(ml, "approve", "0" * 32)
        assert approve == '"the list+approve-' + "0" * 32 + '"@example.org'
        [act] = await r.resolve(approve)
        assert isinstance(act, ListAction) and act.ml.address == ml.address
        await store.add_alias("@other.org", ['"john doe"@example.org'])
        assert await r.resolve('"any one"@other.org') == [LocalUser(john.id, john.address)]

    run(tmp_path, body)


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


def test_explain_is_the_resolution_delivery_uses(tmp_path: Path) -> None:
    # `postroom domain list|show` print `explain`; here it is checked against what `accept` really delivers.
    async def body(store: Store, r: Router) -> None:
        alice = await store.get_user("alice@example.org")
        bob = await store.get_user("bob@example.org")
        assert alice is not None and bob is not None
        await store.add_alias("alice@example.org", ["bob@example.org"])  # alice's own mail goes to bob
        route = await r.explain("PostMaster@Example.org")
        assert (route.rule, route.destinations) == ("first user", (LocalUser(alice.id, "alice@example.org"),))
        assert (await r.explain("alice@example.org")).rule == "alias"
        assert (await r.explain("ALICE+x@example.org")).destinations == (LocalUser(bob.id, "bob@example.org"),)
        assert (await r.explain("Far.Away@Elsewhere.test")) == \
            type(route)("Far.Away@elsewhere.test", "remote", (Remote("Far.Away@elsewhere.test"),))
        assert (await r.explain("nobody@example.org")).destinations == ()
        got = await r.accept(Envelope("x@far.test", (Rcpt("postmaster@example.org"),), b"Subject: x\r\n\r\nhi\r\n"))
        assert got.local == 1
        box = await store.get_mailbox(alice.id, "INBOX")
        assert box is not None and len(await store.list_messages(box.id)) == 1  # alice's INBOX, as shown

    run(tmp_path, body)


def _status_blocks(raw: bytes) -> tuple[dict[str, str], list[dict[str, str]]]:
    import email
    import email.policy
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    status = msg.get_payload()[1]  # type: ignore[index]
    blocks = [{k: str(v) for k, v in b.items()} for b in status.get_payload()]
    return blocks[0], blocks[1:]


def test_success_dsn_for_local_delivery_aliases_lists_and_forwards(tmp_path: Path) -> None:
    """RFC 3461 §6.2.7 and RFC 3464 §2.3.3 (router invariant 11): NOTIFY=SUCCESS for a recipient delivered here
    brings one "delivered" report to the envelope sender, queued (a remote sender) with ORCPT and ENVID; an
    alias of several recipients is "expanded" and its remote targets lose SUCCESS; a list is "delivered" (the
    exploder is its final delivery); a forward carries the parameters on and gets no report here."""
    msg = b"From: s@far.test\r\nTo: alice@example.org\r\nSubject: dsn\r\n\r\nbody\r\n"

    async def body(store: Store, r: Router) -> None:
        await store.add_alias("both@example.org", ["bob@example.org", "carol@far.test"])
        await store.add_alias("fwd@example.org", ["dave@far.test"])
        await store.create_list("team@example.org", "alice@example.org", ListPolicy.OPEN)
        env = Envelope("s@far.test", (Rcpt("Alice+x@example.org", "rfc822;Alice+2Bx@example.org", "SUCCESS"),
                                      Rcpt("both@example.org", "", "SUCCESS,FAILURE"),
                                      Rcpt("team@example.org", "", "SUCCESS"),
                                      Rcpt("fwd@example.org", "rfc822;fwd@example.org", "SUCCESS"),
                                      Rcpt("bob@example.org", "", "FAILURE")),  # no success asked
                       msg, envid="E+2B1", ret="FULL")
        await r.accept(env)
        entries = await store.queue_list()
        reports = [e for e in entries if e.mail_from == ""]
        [report] = reports
        assert [q.rcpt for q in report.recipients] == ["s@far.test"]
        raw = await store.read_message(report.blob_id)
        per_message, blocks = _status_blocks(raw)
        assert per_message["Original-Envelope-Id"] == "E+1"
        assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks] == [
            ("rfc822;Alice+x@example.org", "delivered", "2.0.0"),  # as the sender gave it (RFC 5321 §2.4)
            ("rfc822;both@example.org", "expanded", "2.0.0"),
            ("rfc822;team@example.org", "delivered", "2.0.0")]
        assert blocks[0]["Original-Recipient"] == "rfc822;Alice+x@example.org"
        assert all("Remote-MTA" not in b and "Diagnostic-Code" not in b for b in blocks)  # no MTA replied
        assert b"Subject: Successful Mail Delivery Report" in raw and b"\r\nAuto-Submitted: auto-replied" in raw
        assert b"Content-Type: text/rfc822-headers" in raw and b"\r\n\r\nbody\r\n" not in raw  # RFC 3461 §4.3
        # what goes on: the forward keeps its parameters, the expanded alias's remote target loses SUCCESS; both
        # leave with the SRS form of the sender in the forwarding domain (router invariant 12)
        [onward] = [e for e in entries if e.mail_from.startswith("SRS0=")]
        assert onward.mail_from.endswith("@example.org")
        assert srs.reverse(onward.mail_from.rpartition("@")[0], await r.secret()) == "s@far.test"
        assert {q.rcpt: (q.notify, q.orcpt) for q in onward.recipients} == {
            "carol@far.test": ("FAILURE", ""), "dave@far.test": ("SUCCESS", "rfc822;fwd@example.org")}
        # the list's copies go out from its bounce address, without the sender's DSN parameters
        assert all(q.notify == "" for e in entries if e.mail_from.startswith("team") for q in e.recipients)

    run(tmp_path, body)


def test_success_dsn_to_a_local_sender_and_never_to_the_null_sender(tmp_path: Path) -> None:
    msg = b"From: bob@example.org\r\nSubject: dsn\r\n\r\nbody\r\n"

    async def body(store: Store, r: Router) -> None:
        await r.accept(Envelope("", (Rcpt("alice@example.org", "", "SUCCESS"),), msg))  # RFC 5321 §4.5.5
        assert await store.queue_list() == []
        await r.accept(Envelope("bob@example.org", (Rcpt("alice@example.org", "", "SUCCESS"),), msg))
        bob = await store.get_user("bob@example.org")
        assert bob is not None
        box = await store.get_mailbox(bob.id, "INBOX")
        assert box is not None
        [m] = await store.list_messages(box.id)
        raw = await store.read_message(m.blob_id)
        assert raw.startswith(b"Return-Path: <>\r\n")  # from the null sender: no report about the report
        _, [block] = _status_blocks(raw)
        assert (block["Final-Recipient"], block["Action"]) == ("rfc822;alice@example.org", "delivered")

    run(tmp_path, body)


TRACE = b"Received: from a by b; Tue, 1 Dec 2026 12:00:00 +0000\r\n"
MESSAGE = b"From: s@far.test\r\nSubject: two pieces\r\n\r\nbody\r\n"


def test_a_message_in_two_pieces_is_stored_as_the_joined_bytes(tmp_path: Path) -> None:
    """Router invariant 17 (issue 17 item 5): `Envelope.body` after the trace fields in `raw`. A local copy is
    Return-Path + raw + body byte for byte; a queued copy and a success report (the paths that take the bytes
    whole) hold the same message; the loop count reads both pieces' header fields."""
    async def body(store: Store, r: Router) -> None:
        alice = await store.get_user("alice@example.org")
        assert alice is not None
        env = Envelope("s@far.test", (Rcpt("alice@example.org"),), TRACE, body=MESSAGE)
        assert env.head() == TRACE + MESSAGE[:MESSAGE.index(b"\r\n\r\n") + 4]  # the header, up to its end
        assert env.whole().raw == TRACE + MESSAGE and env.whole().body == b""
        assert (await r.accept(env)).local == 1
        box = await store.get_mailbox(alice.id, "INBOX")
        assert box is not None
        [info] = await store.list_messages(box.id)
        assert await store.read_message(info.blob_id) == b"Return-Path: <s@far.test>\r\n" + TRACE + MESSAGE
        # local and remote: the queue gets the whole message, the local copy the same bytes
        done = await r.accept(Envelope("s@far.test", (Rcpt("bob@example.org"), Rcpt("x@far.test")), TRACE,
                                       body=MESSAGE, may_relay=True))
        assert (done.local, done.queued) == (1, 1)
        [entry] = await store.queue_list()
        assert await store.read_message(entry.blob_id) == TRACE + MESSAGE
        # max_received is 3 (run()): two in the trace piece and two in the body's header make four
        with pytest.raises(RouteError) as info_loop:
            await r.accept(Envelope("s@far.test", (Rcpt("alice@example.org"),), TRACE * 2,
                                    body=TRACE * 2 + MESSAGE))
        assert (info_loop.value.code, info_loop.value.esc) == (554, "5.4.6")

    run(tmp_path, body)


@pytest.mark.parametrize(("raw", "rest", "fault"), [
    (b"X-A: 1\r", b"\nSubject: x\r\n\r\nhi\r\n", None),  # a CRLF split between the pieces is one line end
    (b"X-A: 1\r\n", b"Subject: x\r\n\r\nhi\rthere\r\n", "bare CR"),
    (b"X-A: 1\r", b"Subject: x\r\n\r\nhi\r\n", "bare CR"),  # a CR ending the first piece, no LF after it
    (b"X-A: 1\r\n", b"Subject: x\r\n\r\nhi\r\n\x00", "NUL"),
])
def test_stray_content_in_either_piece_is_refused_at_the_door(tmp_path: Path, raw: bytes, rest: bytes,
                                                              fault: str | None) -> None:
    async def body(store: Store, r: Router) -> None:
        env = Envelope("x@far.test", (Rcpt("alice@example.org"),), raw, body=rest)
        if fault is None:
            assert (await r.accept(env)).local == 1
            return
        with pytest.raises(RouteError) as info:
            await r.accept(env)
        assert (info.value.code, info.value.esc) == (550, "5.6.0")

    run(tmp_path, body)


def test_a_domain_is_asked_once_per_turn_and_a_change_is_seen_by_the_next_turn(tmp_path: Path) -> None:
    """Router invariant 18: within one turn of the loop the answer for a domain is the one the turn first read
    (as the SQLite engine's quick reads share one snapshot per turn); a domain added by another connection (the
    CLI) or removed through the store is seen from the next turn on, so by the next command."""
    async def body(store: Store, r: Router) -> None:
        assert not await r.is_local_domain("late.test")  # the turn's first answer
        conn = sqlite3.connect(tmp_path / "data" / "postroom.db", isolation_level=None)
        try:
            conn.execute("INSERT INTO domains(name, created) VALUES (?, ?)", ("late.test", time.time()))
        finally:
            conn.close()
        assert not await r.is_local_domain("late.test")  # the same turn: the same answer
        with pytest.raises(RouteError) as refused:
            await r.check_recipient("someone@late.test", "bob@far.test", False)
        assert refused.value.code == 550 and refused.value.esc == "5.7.1"  # relaying denied: not ours yet
        await asyncio.sleep(0)  # the next turn
        assert await r.is_local_domain("late.test")
        await store.add_user("carol@late.test", "x")
        assert await r.resolve("carol@late.test") != []
        await store.remove_user("carol@late.test")
        await store.remove_domain("late.test")  # a write: its result arrives in a later turn
        assert not await r.is_local_domain("late.test")

    run(tmp_path, body)


def count_calls(store: Store, method: str) -> list[Any]:
    """The first arguments `store.method` is called with from now on, in order: the method is wrapped in place."""
    asked: list[Any] = []
    real = getattr(store, method)

    async def counting(arg: Any, *rest: Any, **named: Any) -> Any:
        asked.append(arg)
        return await real(arg, *rest, **named)

    setattr(store, method, counting)
    return asked

def test_an_address_is_resolved_once_per_turn_and_a_change_is_seen_by_the_next_turn(tmp_path: Path) -> None:
    """Router invariant 18 for resolution: the RCPTs and messages of one turn of the loop share one resolution
    of an address (one read of its aliases and user, as one SQLite snapshot would answer them all); an alias
    added by another connection (the CLI) is followed from the next turn on."""
    async def body(store: Store, r: Router) -> None:
        alice = await store.get_user("alice@example.org")
        assert alice is not None
        asked = count_calls(store, "list_aliases")
        await asyncio.sleep(0)  # a turn of its own
        mine = LocalUser(alice.id, "alice@example.org")
        for _ in range(3):  # three sessions' RCPTs in one turn
            assert await r.check_recipient("alice@example.org", "x@far.test", False) == [mine]
        accepted = await r.accept(Envelope("x@far.test", (Rcpt("Alice@example.org"),), b"Subject: a\r\n\r\nhi\r\n"))
        assert accepted.local == 1  # a message, in a later turn (its write awaited the commit)
        assert asked.count("alice@example.org") <= 2  # the RCPTs' turn once, the message's turn at most once
        await asyncio.sleep(0)
        asked.clear()
        for _ in range(3):
            assert await r.resolve("alice@example.org") == [mine]
        assert asked.count("alice@example.org") == 1  # once for the three
        conn = sqlite3.connect(tmp_path / "data" / "postroom.db", isolation_level=None)
        try:
            conn.execute("INSERT INTO aliases(source, target, domain_id) SELECT ?, ?, id FROM domains WHERE name = ?",
                         ("alice@example.org", "x@far.test", "example.org"))
        finally:
            conn.close()
        assert await r.resolve("alice@example.org") == [mine]  # the same turn: the same answer
        await asyncio.sleep(0)  # the next turn
        assert await r.resolve("alice@example.org") == [Remote("x@far.test")]

    run(tmp_path, body)


def test_one_domain_lookup_per_rcpt_and_per_message(tmp_path: Path) -> None:
    """A RCPT and a message to a local user ask the store once for the recipient's domain, and never for the
    sender's (needed only for a forward's SRS sender, invariant 12)."""
    async def body(store: Store, r: Router) -> None:
        asked = count_calls(store, "get_domain")
        await asyncio.sleep(0)
        await r.check_recipient("Alice@Example.ORG", "bob@far.test", False)
        assert asked == ["example.org"]
        await asyncio.sleep(0)
        asked.clear()
        accepted = await r.accept(Envelope("bob@far.test", (Rcpt("alice@example.org"),),
                                           b"From: bob@far.test\r\nSubject: hi\r\n\r\nhello\r\n"))
        assert accepted.local == 1
        assert asked == ["example.org"]

    run(tmp_path, body)


def test_one_read_of_a_recipient_per_rcpt_and_per_message_and_a_change_is_seen_next_turn(tmp_path: Path) -> None:
    """Router invariant 19: the RCPT's quota check and block rule share one `recipient_facts` read, and a
    message's quota check, Junk decision, INBOX and auto-reply settings another (no separate quota, rule, mailbox
    or settings reads); a rule or a limit set by another connection (the CLI) counts from the next turn on."""
    async def body(store: Store, r: Router) -> None:
        alice = await store.get_user("alice@example.org")
        assert alice is not None
        facts = count_calls(store, "recipient_facts")
        singles = [count_calls(store, m) for m in ("get_quota", "sender_rules", "get_mailbox", "get_user_settings")]
        await asyncio.sleep(0)
        dests = await r.check_recipient("alice@example.org", "spam@bad.example", False)
        assert await r.blocked_at_rcpt(dests, "spam@bad.example") is None
        assert facts == [alice.id]
        await asyncio.sleep(0)
        facts.clear()
        accepted = await r.accept(Envelope("spam@bad.example", (Rcpt("alice@example.org"),),
                                           b"From: spam@bad.example\r\nSubject: hi\r\n\r\nhello\r\n"))
        assert accepted.local == 1
        assert facts == [alice.id]
        assert singles == [[], [], [], []]
        box = await store.get_mailbox(alice.id, "INBOX")
        assert box is not None and len(await store.list_messages(box.id)) == 1  # the INBOX the read found
        conn = sqlite3.connect(tmp_path / "data" / "postroom.db", isolation_level=None)
        try:
            conn.execute("INSERT INTO sender_rules(user_id, kind, pattern, created) VALUES (?, 'block', ?, 0)",
                         (alice.id, "@bad.example"))
            conn.execute("UPDATE users SET quota_messages = 1 WHERE id = ?", (alice.id,))  # alice holds one
        finally:
            conn.close()
        await asyncio.sleep(0)
        with pytest.raises(RouteError) as err:
            await r.check_recipient("alice@example.org", "spam@bad.example", False)
        assert (err.value.code, err.value.esc) == (452, "4.2.2")  # RFC 3463 X.2.2: mailbox full
        conn = sqlite3.connect(tmp_path / "data" / "postroom.db", isolation_level=None)
        try:
            conn.execute("UPDATE users SET quota_messages = 0 WHERE id = ?", (alice.id,))
        finally:
            conn.close()
        await asyncio.sleep(0)
        dests = await r.check_recipient("alice@example.org", "spam@bad.example", False)
        rule = await r.blocked_at_rcpt(dests, "spam@bad.example")
        assert rule is not None and rule.pattern == "@bad.example"

    run(tmp_path, body)


def test_domain_answers_left_by_a_stopped_loop_are_not_used_by_the_next(tmp_path: Path) -> None:
    """One router used by two event loops in turn (as the CLI and tests do): the first stops in the turn of a
    lookup, before the callback that forgets its answers runs; the next loop asks the store again."""
    data = tmp_path / "data"
    store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
    cfg = config_mod.load(None, {"server": {"data_dir": str(data)}})
    router = Router(store, cfg)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(store.open())
        seen: list[bool] = []

        async def look_then_stop() -> None:
            seen.append(await router.is_local_domain("late.test"))
            loop.stop()  # the loop ends with this turn: the answers' end-of-turn callback never runs

        task = loop.create_task(look_then_stop())
        loop.run_forever()
        assert task.done() and seen == [False]
        conn = sqlite3.connect(data / "postroom.db", isolation_level=None)
        try:
            conn.execute("INSERT INTO domains(name, created) VALUES (?, ?)", ("late.test", time.time()))
        finally:
            conn.close()
        other = asyncio.new_event_loop()
        try:
            assert other.run_until_complete(router.is_local_domain("late.test"))
        finally:
            other.close()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
