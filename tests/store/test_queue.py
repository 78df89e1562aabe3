"""The outbound queue: enqueue, get, list, due order, updates, removal when final, length."""

from __future__ import annotations

import dataclasses

import pytest

from postroom.store.api import Invalid, NotFound, QueueRecipient, RcptState, Store

from .conftest import BODY_BACKENDS, inbox, msg, new_user, stored_bodies

pytestmark = BODY_BACKENDS

R = QueueRecipient


async def test_enqueue_and_get(store: Store) -> None:
    raw = msg(1).raw
    e = await store.enqueue(
        raw, "sender@example.org", [R("a@remote.example", orcpt="rfc822;a@remote.example", notify="SUCCESS,FAILURE"),
                                    R("B@Remote.example")], envid="ENV1", ret="hdrs"
    )
    assert e.id > 0 and e.size == len(raw) and e.mail_from == "sender@example.org"
    assert (e.envid, e.ret) == ("ENV1", "HDRS") and e.created > 0
    assert [r.rcpt for r in e.recipients] == ["a@remote.example", "B@Remote.example"]
    assert e.recipients[0].orcpt == "rfc822;a@remote.example" and e.recipients[0].notify == "SUCCESS,FAILURE"
    assert all(r.state is RcptState.QUEUED and r.attempts == 0 for r in e.recipients)
    assert await store.queue_get(e.id) == e
    assert await store.queue_get(10**9) is None
    assert await store.read_message(e.blob_id) == raw
    bounce = await store.enqueue(b"dsn", "", [R("x@remote.example")])
    assert bounce.mail_from == "" and bounce.ret == ""
    assert await store.queue_list() == [e, bounce]
    assert await store.queue_length() == 3


async def test_enqueue_errors(store: Store) -> None:
    with pytest.raises(Invalid):
        await store.enqueue(b"x", "a@b.example", [])
    with pytest.raises(Invalid):
        await store.enqueue(b"x", "a@b.example", [R("c@d.example"), R("c@d.example")])
    with pytest.raises(Invalid):
        await store.enqueue(b"x", "a@b.example", [R("")])
    with pytest.raises(Invalid):
        await store.enqueue(b"x", "a@b.example", [R("c@d.example")], ret="SOME")
    assert await store.queue_list() == []


async def test_queue_due_order_and_limit(store: Store) -> None:
    e1 = await store.enqueue(b"1", "s@example.org", [R("a@x.example", next_try=100.0)])
    e2 = await store.enqueue(b"2", "s@example.org", [R("b@x.example", next_try=50.0), R("c@x.example", next_try=500)])
    e3 = await store.enqueue(b"3", "s@example.org", [R("d@x.example", next_try=10.0)])
    e4 = await store.enqueue(b"4", "s@example.org", [R("e@x.example", state=RcptState.DELIVERED)])
    assert [e.id for e in await store.queue_due(5.0)] == []
    assert [e.id for e in await store.queue_due(60.0)] == [e2.id, e3.id]  # oldest first
    assert [e.id for e in await store.queue_due(1000.0)] == [e1.id, e2.id, e3.id]
    assert [e.id for e in await store.queue_due(1000.0, limit=2)] == [e1.id, e2.id]
    due = await store.queue_due(60.0)
    assert [r.rcpt for r in due[0].recipients] == ["b@x.example", "c@x.example"]  # all recipients, in order
    assert e4.id not in [e.id for e in await store.queue_due(10**12)]


async def test_queue_update_and_removal(store: Store) -> None:
    raw = msg(5).raw
    e = await store.enqueue(raw, "s@example.org", [R("a@x.example"), R("b@x.example")])
    a, b = e.recipients
    await store.queue_update(e.id, [dataclasses.replace(a, state=RcptState.DELIVERED, attempts=1)])
    await store.queue_update(
        e.id, [dataclasses.replace(b, state=RcptState.DEFERRED, attempts=1, next_try=300.0, last_error="451 later",
                                   delay_notified=True)]
    )
    got = await store.queue_get(e.id)
    assert got is not None
    assert got.recipients[0].state is RcptState.DELIVERED and not got.recipients[0].delay_notified
    rb = got.recipients[1]
    assert (rb.state, rb.attempts, rb.next_try, rb.last_error) == (RcptState.DEFERRED, 1, 300.0, "451 later")
    assert rb.delay_notified
    assert await store.queue_length() == 1
    assert [x.id for x in await store.queue_due(299.0)] == []
    assert [x.id for x in await store.queue_due(300.0)] == [e.id]
    with pytest.raises(Invalid):
        await store.queue_update(e.id, [R("nobody@x.example", state=RcptState.BOUNCED)])
    await store.queue_update(e.id, [dataclasses.replace(rb, state=RcptState.BOUNCED, last_error="550 no")])
    assert await store.queue_get(e.id) is None  # all final: removed
    assert await store.queue_length() == 0
    with pytest.raises(NotFound):
        await store.read_message(e.blob_id)
    assert stored_bodies(store) in ([], None)
    with pytest.raises(NotFound):
        await store.queue_update(e.id, [rb])


async def test_queue_delete_keeps_shared_body(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    raw = msg(9).raw
    await store.append(box.id, msg(9))
    e = await store.enqueue(raw, "s@example.org", [R("a@x.example")])
    await store.queue_delete(e.id)
    assert await store.queue_get(e.id) is None
    assert await store.read_message(e.blob_id) == raw  # the mailbox copy still holds the body
    with pytest.raises(NotFound):
        await store.queue_delete(e.id)
