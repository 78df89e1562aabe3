"""Queue claims and leases (issue 16 item 3), on every engine: a claim is exclusive, a lease expires and is taken
over (and said so), a holder whose lease was taken over cannot write its result, renewals and releases, and two
Store objects claiming at once get disjoint sets."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from postroom.store.api import Invalid, LeaseLost, NotFound, QueueEntry, QueueRecipient, RcptState, Store

from .conftest import BODY_BACKENDS

pytestmark = BODY_BACKENDS

R = QueueRecipient


def held(entries: list[QueueEntry], holder: str) -> set[tuple[int, str]]:
    return {(e.id, r.rcpt) for e in entries for r in e.recipients if r.lease_holder == holder}


async def test_claim_takes_due_recipients_once(store: Store) -> None:
    e1 = await store.enqueue(b"1", "s@example.org", [R("a@x.example"), R("b@y.example", next_try=500.0)])
    e2 = await store.enqueue(b"2", "s@example.org", [R("c@x.example", next_try=50.0)])
    await store.enqueue(b"3", "s@example.org", [R("d@x.example", state=RcptState.DELIVERED), R("e@x.example",
                                                                                                 next_try=900.0)])
    got = await store.queue_claim(100.0, "n1#1", 30.0)
    assert [e.id for e in got.entries] == [e1.id, e2.id] and got.taken_over == []  # oldest first, only due
    assert got.claimed == [(e1.id, "a@x.example"), (e2.id, "c@x.example")]
    assert held(got.entries, "n1#1") == {(e1.id, "a@x.example"), (e2.id, "c@x.example")}
    first = got.entries[0]
    assert [r.rcpt for r in first.recipients] == ["a@x.example", "b@y.example"]  # all recipients, in order
    a, b = first.recipients
    assert (a.lease_holder, a.lease_until) == ("n1#1", 130.0) and (b.lease_holder, b.lease_until) == ("", 0.0)
    # Held: nobody else gets them while the lease runs, the claimer itself neither.
    assert (await store.queue_claim(100.0, "n2#1", 30.0)).entries == []
    assert (await store.queue_claim(129.0, "n1#1", 30.0)).entries == []
    # The lease shows in every read of the entry.
    again = await store.queue_get(e1.id)
    assert again is not None and again.recipients[0].lease_holder == "n1#1"
    assert again.recipients[0].lease_until == 130.0
    # The next recipient to come due goes to whoever claims next.
    later = await store.queue_claim(600.0, "n2#1", 30.0)
    assert held(later.entries, "n2#1") == {(e1.id, "b@y.example"), (e1.id, "a@x.example"), (e2.id, "c@x.example")}
    assert sorted(later.taken_over) == [(e1.id, "a@x.example", "n1#1"), (e2.id, "c@x.example", "n1#1")]


async def test_claim_limit_counts_recipients(store: Store) -> None:
    e1 = await store.enqueue(b"1", "s@example.org", [R("a@x.example"), R("b@x.example"), R("c@x.example")])
    e2 = await store.enqueue(b"2", "s@example.org", [R("d@x.example")])
    got = await store.queue_claim(10.0, "n1#1", 60.0, limit=2)
    assert held(got.entries, "n1#1") == {(e1.id, "a@x.example"), (e1.id, "b@x.example")}
    got = await store.queue_claim(10.0, "n2#1", 60.0, limit=2)
    assert got.claimed == [(e1.id, "c@x.example"), (e2.id, "d@x.example")]
    assert (await store.queue_claim(10.0, "n3#1", 60.0, limit=0)).entries == []


async def test_stale_holder_cannot_overwrite_the_new_holders_result(store: Store) -> None:
    e = await store.enqueue(b"1", "s@example.org", [R("a@x.example"), R("b@x.example")])
    await store.queue_claim(100.0, "n1#1", 10.0)
    taken = await store.queue_claim(110.0, "n2#1", 10.0)  # n1's lease ended at 110: expired, taken over
    assert sorted(taken.taken_over) == [(e.id, "a@x.example", "n1#1"), (e.id, "b@x.example", "n1#1")]
    a, b = taken.entries[0].recipients
    # n2 records a deferral for a; n1, back from its stall, tries to write "delivered" for both: refused whole.
    await store.queue_update(e.id, [dataclasses.replace(a, state=RcptState.DEFERRED, attempts=1, next_try=900.0,
                                                        last_error="451 later")], holder="n2#1")
    with pytest.raises(LeaseLost) as lost:
        await store.queue_update(e.id, [dataclasses.replace(r, state=RcptState.DELIVERED, attempts=1)
                                        for r in (a, b)], holder="n1#1")
    assert lost.value.queue_id == e.id and set(lost.value.rcpts) == {"a@x.example", "b@x.example"}
    now = await store.queue_get(e.id)
    assert now is not None
    ra, rb = now.recipients
    assert (ra.state, ra.last_error, ra.lease_holder, ra.lease_until) == (RcptState.DEFERRED, "451 later", "", 0.0)
    assert (rb.state, rb.lease_holder) == (RcptState.QUEUED, "n2#1")  # untouched by the refused write
    # The holder's own result releases and, all final, removes the entry.
    await store.queue_update(e.id, [dataclasses.replace(rb, state=RcptState.DELIVERED, attempts=1)], holder="n2#1")
    with pytest.raises(LeaseLost):  # a is free now: nobody holds it, so n2 cannot write it either
        await store.queue_update(e.id, [dataclasses.replace(ra, state=RcptState.DELIVERED)], holder="n2#1")
    await store.queue_update(e.id, [dataclasses.replace(ra, state=RcptState.BOUNCED)])  # an administrator may
    assert await store.queue_get(e.id) is None
    with pytest.raises(NotFound):
        await store.queue_update(e.id, [ra], holder="n2#1")


async def test_holder_write_of_unknown_recipient_is_invalid(store: Store) -> None:
    e = await store.enqueue(b"1", "s@example.org", [R("a@x.example")])
    await store.queue_claim(100.0, "n1#1", 10.0)
    with pytest.raises(Invalid):
        await store.queue_update(e.id, [R("nobody@x.example", state=RcptState.BOUNCED)], holder="n1#1")
    with pytest.raises(Invalid):
        await store.queue_claim(100.0, "", 10.0)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(Invalid):
            await store.queue_claim(100.0, "n1#1", bad)


async def test_admin_update_keeps_the_lease(store: Store) -> None:
    e = await store.enqueue(b"1", "s@example.org", [R("a@x.example", next_try=50.0)])
    got = await store.queue_claim(100.0, "n1#1", 10.0)
    a = got.entries[0].recipients[0]
    await store.queue_update(e.id, [dataclasses.replace(a, next_try=0.0)])  # `postroom queue retry`
    now = await store.queue_get(e.id)
    assert now is not None and now.recipients[0].next_try == 0.0 and now.recipients[0].lease_holder == "n1#1"
    assert (await store.queue_claim(105.0, "n2#1", 10.0)).entries == []  # still held


async def test_renew_and_release(store: Store) -> None:
    e = await store.enqueue(b"1", "s@example.org", [R("a@x.example"), R("b@x.example")])
    await store.queue_claim(100.0, "n1#1", 10.0)
    keys = [(e.id, "a@x.example"), (e.id, "b@x.example")]
    assert await store.queue_renew("n1#1", keys, 140.0) == set(keys)
    assert (await store.queue_claim(120.0, "n2#1", 10.0)).entries == []  # renewed past 110
    assert await store.queue_renew("n2#1", keys, 500.0) == set()  # not the holder: nothing changes
    assert await store.queue_renew("n1#1", [(e.id, "a@x.example"), (10**9, "x@x.example")], 0.0) == \
        {(e.id, "a@x.example")}  # released
    got = await store.queue_claim(120.0, "n2#1", 10.0)
    assert held(got.entries, "n2#1") == {(e.id, "a@x.example")} and got.taken_over == []  # a release, no takeover
    # After expiry and a takeover, the old holder's renewal says it lost the lease.
    await store.queue_claim(140.0, "n3#1", 10.0)
    assert await store.queue_renew("n1#1", keys, 200.0) == set()
    assert await store.queue_renew("n1#1", [], 200.0) == set()


async def test_free_leases_of_a_node(store: Store) -> None:
    e1 = await store.enqueue(b"1", "s@example.org", [R("a@x.example")])
    e2 = await store.enqueue(b"2", "s@example.org", [R("b@x.example")])
    e3 = await store.enqueue(b"3", "s@example.org", [R("c@x.example")])
    await store.queue_claim(100.0, "n1#7", 60.0, limit=1)
    await store.queue_claim(100.0, "n10#7", 60.0, limit=1)
    await store.queue_claim(100.0, "n2#7", 60.0, limit=1)
    assert await store.queue_free_leases("n1") == 1  # not n10's, not n2's
    got = await store.queue_claim(101.0, "n1#8", 60.0)
    assert held(got.entries, "n1#8") == {(e1.id, "a@x.example")}
    assert {(e.id, r.lease_holder) for e in await store.queue_list() for r in e.recipients} == \
        {(e1.id, "n1#8"), (e2.id, "n10#7"), (e3.id, "n2#7")}
    with pytest.raises(Invalid):
        await store.queue_free_leases("")


async def test_concurrent_claimers_get_disjoint_sets(store: Store, store_factory: Callable[[], Store]) -> None:
    """Two Store objects (two connection pools; on SQLite two writer threads on one file) claim at once, a few
    recipients at a time: every recipient is claimed exactly once."""
    expected: set[tuple[int, str]] = set()
    for i in range(40):
        e = await store.enqueue(f"m{i}".encode(), "s@example.org", [R(f"r{i}a@x.example"), R(f"r{i}b@y.example")])
        expected |= {(e.id, f"r{i}a@x.example"), (e.id, f"r{i}b@y.example")}
    other = store_factory()
    await other.open()
    try:
        async def claimer(s: Store, holder: str) -> list[tuple[int, str]]:
            mine: list[tuple[int, str]] = []
            while True:
                got = await s.queue_claim(100.0, holder, 60.0, limit=3)
                if not got.entries:
                    return mine
                mine += got.claimed
                assert held(got.entries, holder) >= set(got.claimed)
                await asyncio.sleep(0)

        results = await asyncio.gather(*(claimer(s, f"n{i}#1") for i, s in enumerate([store, other, store, other])))
    finally:
        await other.close()
    claimed = [k for r in results for k in r]
    assert len(claimed) == len(set(claimed)) and set(claimed) == expected


async def test_holder_result_in_one_write(store: Store) -> None:
    """A holder's result naming every recipient: when none is left pending the entry and its body go in that
    write (api `queue_update`: an entry whose recipients are all final is removed); when one is left pending every
    named state is written and the leases released; a write naming one recipient the holder lost writes nothing,
    not even the ones it holds."""
    gone = await store.enqueue(b"gone body", "s@example.org", [R("a@x.example"), R("b@x.example")])
    kept = await store.enqueue(b"kept body", "s@example.org", [R("c@x.example"), R("d@x.example"),
                                                               R("e@x.example")])
    got = await store.queue_claim(100.0, "n1#1", 30.0)
    by_id = {e.id: e for e in got.entries}
    a, b = by_id[gone.id].recipients
    await store.queue_update(gone.id, [dataclasses.replace(a, state=RcptState.DELIVERED, attempts=1),
                                       dataclasses.replace(b, state=RcptState.BOUNCED, attempts=1,
                                                           last_error="550 5.1.1 no")], holder="n1#1")
    assert await store.queue_get(gone.id) is None
    with pytest.raises(NotFound):
        await store.read_message(gone.blob_id)
    c, d, e = by_id[kept.id].recipients
    await store.queue_renew("n1#1", [(kept.id, "e@x.example")], 0.0)  # e let go: n1 no longer holds it
    with pytest.raises(LeaseLost) as lost:
        await store.queue_update(kept.id, [dataclasses.replace(c, state=RcptState.DELIVERED, attempts=1),
                                           dataclasses.replace(e, state=RcptState.DELIVERED, attempts=1)],
                                 holder="n1#1")
    assert lost.value.rcpts == ("e@x.example",)
    now = await store.queue_get(kept.id)
    assert now is not None and [r.state for r in now.recipients] == [RcptState.QUEUED] * 3  # nothing written
    await store.queue_update(kept.id, [dataclasses.replace(c, state=RcptState.DELIVERED, attempts=1),
                                       dataclasses.replace(d, state=RcptState.DEFERRED, attempts=1, next_try=400.0,
                                                           last_error="451 4.3.0 later")], holder="n1#1")
    now = await store.queue_get(kept.id)
    assert now is not None
    rc, rd, re_ = now.recipients
    assert (rc.state, rc.attempts, rc.lease_holder) == (RcptState.DELIVERED, 1, "")
    assert (rd.state, rd.next_try, rd.last_error, rd.lease_holder) == (RcptState.DEFERRED, 400.0, "451 4.3.0 later",
                                                                       "")
    assert (re_.state, re_.lease_holder) == (RcptState.QUEUED, "")
    assert await store.read_message(kept.blob_id) == b"kept body"
