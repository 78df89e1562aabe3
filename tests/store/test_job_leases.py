"""Once-per-cluster work on both engines (api invariants 14, 15, 17): the job lease (`claim_job`), the claim of
due training signals, and the claim of DMARC results, each raced by two store objects on one database (two
nodes on PostgreSQL, two processes' stores on SQLite): only one wins, and a lease or claim that runs out hands
over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from postroom.store.api import DmarcEvaluation, Store

from .conftest import new_user


async def test_one_holder_at_a_time_and_expiry_hands_over(store: Store, store_factory: Callable[[], Store]) -> None:
    other = store_factory()  # a second node (PostgreSQL) or process (SQLite) on the same store
    await other.open()
    try:
        first, second = await asyncio.gather(store.claim_job("dmarc-reports", "node-a", 60.0, 1000.0),
                                             other.claim_job("dmarc-reports", "node-b", 60.0, 1000.0))
        assert sorted([first, second]) == [False, True]  # a race for a free lease: exactly one gets it
        winner, holder = (store, "node-a") if first else (other, "node-b")
        loser_store, loser = (other, "node-b") if first else (store, "node-a")
        assert not await loser_store.claim_job("dmarc-reports", loser, 60.0, 1059.0)  # not run out yet
        assert await winner.claim_job("dmarc-reports", holder, 60.0, 1030.0)  # the holder renews: until 1090
        assert not await loser_store.claim_job("dmarc-reports", loser, 60.0, 1089.0)
        assert await loser_store.claim_job("rspamd-learn", loser, 60.0, 1089.0)  # another job's lease is apart
        # The holder dies (no renewal): at its expiry the other takes over, and the old holder is refused.
        assert await loser_store.claim_job("dmarc-reports", loser, 60.0, 1090.0)
        assert not await winner.claim_job("dmarc-reports", holder, 60.0, 1100.0)
    finally:
        await other.close()


async def test_release_frees_the_lease_for_its_holder_only(store: Store, store_factory: Callable[[], Store]) -> None:
    other = store_factory()
    await other.open()
    try:
        assert await store.claim_job("retention", "node-a", 3600.0, 10.0)
        await other.release_job("retention", "node-b")  # not its lease: nothing happens
        assert not await other.claim_job("retention", "node-b", 3600.0, 20.0)
        await store.release_job("retention", "node-a")
        assert await other.claim_job("retention", "node-b", 3600.0, 20.0)  # at once, not at expiry
        await store.release_job("retention", "node-a")  # no longer its lease
        assert not await store.claim_job("retention", "node-a", 3600.0, 30.0)
    finally:
        await other.close()


async def test_due_training_signals_are_claimed_by_one_sender(store: Store,
                                                              store_factory: Callable[[], Store]) -> None:
    alice = await new_user(store)
    assert await store.add_training_signals(alice.id, "spam", ["b1", "b2", "b3"], 100.0) == 3
    other = store_factory()
    await other.open()
    try:
        a, b = await asyncio.gather(store.claim_training_signals(200.0, 2, 60.0),
                                    other.claim_training_signals(200.0, 2, 60.0))
        ids = [s.blob_id for s in a + b]
        assert sorted(ids) == ["b1", "b2", "b3"]  # every due signal to exactly one sender
        assert await store.claim_training_signals(259.0, 10, 60.0) == []  # claimed until 260
        assert await store.due_training_signals(259.0) == []
        sent = (a + b)[0]
        await other.finish_training_signal(sent.id)  # the first sender's result: sent
        # The other two's sender died: they come due again when the claim runs out, attempts unchanged.
        again = await other.claim_training_signals(260.0, 10, 60.0)
        assert sorted(s.blob_id for s in again) == sorted(i for i in ids if i != sent.blob_id)
        assert [s.attempts for s in again] == [0, 0]
    finally:
        await other.close()


def _evaluation(at: float, domain: str, ip: str) -> DmarcEvaluation:
    return DmarcEvaluation(at, domain, '{"p": "none", "rua": ["mailto:r@' + domain + '"]}', ip, domain, domain,
                           "none", True, False, '{"dkim": [], "spf": ["", "mfrom", "none"]}')


async def test_dmarc_results_are_claimed_by_one_report_run(store: Store, store_factory: Callable[[], Store]) -> None:
    for i in range(6):
        await store.add_dmarc_result(_evaluation(100.0 + i, "a.example" if i % 2 else "b.example", "192.0.2.1"))
    await store.add_dmarc_result(_evaluation(900.0, "a.example", "192.0.2.9"))  # today's: not reported yet
    other = store_factory()
    await other.open()
    try:
        one, two = await asyncio.gather(store.claim_dmarc_results(500.0, "run-1", 1800.0, 600.0),
                                        other.claim_dmarc_results(500.0, "run-2", 1800.0, 600.0))
        assert sorted(sum(r.count for r in x) for x in (one, two)) == [0, 6]  # one run holds all six
        taken, claim = (one, "run-1") if one else (two, "run-2")
        assert sorted((r.policy_domain, r.count) for r in taken) == [("a.example", 3), ("b.example", 3)]
        assert await store.claim_dmarc_results(500.0, "run-3", 1800.0, 700.0) == []  # held until 2400
        assert await other.release_dmarc_results(claim, "b.example") is None  # b's report could not be queued
        assert await other.delete_dmarc_results(claim, "a.example") == 3  # a's was
        assert await store.delete_dmarc_results("run-3", "b.example") == 0  # not its rows
        [b] = await store.claim_dmarc_results(500.0, "run-4", 1800.0, 800.0)
        assert (b.policy_domain, b.count, b.at) == ("b.example", 3, 104.0)
        # run-4 dies: when its claim runs out, the next run takes the rows again, and the dead run deletes nothing.
        assert await other.claim_dmarc_results(500.0, "run-5", 1800.0, 2599.0) == []
        [b] = await other.claim_dmarc_results(500.0, "run-5", 1800.0, 2600.0)
        assert (b.policy_domain, b.count) == ("b.example", 3)
        assert await store.delete_dmarc_results("run-4", "b.example") == 0
        assert await other.delete_dmarc_results("run-5", "b.example") == 3
        rows, _ = await store.dmarc_aggregate(1e12)
        assert [(r.policy_domain, r.source_ip, r.count) for r in rows] == [("a.example", "192.0.2.9", 1)]
    finally:
        await other.close()


async def test_a_verdict_changed_while_its_signal_is_sent_is_kept(store: Store) -> None:
    """The user moves a message back out of Junk while the "spam" signal is being sent: finishing the old signal
    (by the sender that claimed it) must not delete the new "ham" one (schema invariant 26: the newer verdict
    replaces the pending row, which keeps its id)."""
    alice = await new_user(store)
    await store.add_training_signals(alice.id, "spam", ["b1"], 100.0)
    [old] = await store.claim_training_signals(200.0, 10, 60.0)
    await store.add_training_signals(alice.id, "ham", ["b1"], 210.0)  # replaced, due at once
    await store.finish_training_signal(old.id, created=old.created)  # the old verdict was sent
    await store.finish_training_signal(old.id, retry_at=900.0, created=old.created)  # nor counted as its failure
    [new] = await store.due_training_signals(210.0)
    assert (new.kind, new.blob_id, new.created, new.attempts) == ("ham", "b1", 210.0, 0)
    await store.finish_training_signal(new.id, created=new.created)
    assert await store.due_training_signals(1e12) == []
