"""jobs.ClusterJob on a real SQLite store, with a clock the test moves: one of two nodes runs a job's rounds, the
store is asked at most once per third of the lease, a dead holder is taken over at expiry, a release hands over
at once, and a round longer than the lease keeps it by renewing (jobs.py invariants 1-3)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from postroom.jobs import ClusterJob
from postroom.store import open_store
from postroom.store.api import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """The store, with its `claim_job` calls counted (every other method is the store's)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.claims = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def claim_job(self, name: str, holder: str, seconds: float, now: float) -> bool:
        self.claims += 1
        return await self.store.claim_job(name, holder, seconds, now)


def run(tmp_path: Path, body: object) -> None:
    async def main() -> None:
        store = open_store(f"sqlite:///{tmp_path / 'postroom.db'}", tmp_path)
        await store.open()
        try:
            await body(store)  # type: ignore[operator]
        finally:
            await store.close()

    asyncio.run(main())


def test_one_node_runs_the_rounds_and_the_other_takes_over_at_expiry(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.jobs")

    async def body(store: Store) -> None:
        clock = Clock()
        counted = CountingStore(store)
        a = ClusterJob(counted, "dmarc-reports", "node-a", 60.0, clock)  # type: ignore[arg-type]
        b = ClusterJob(counted, "dmarc-reports", "node-b", 60.0, clock)  # type: ignore[arg-type]
        ran: list[str] = []

        async def round_(name: str) -> str:
            ran.append(name)
            return name

        assert await a.run(lambda: round_("a")) == "a"
        assert await b.run(lambda: round_("b")) is None  # held by a: b's round does not run
        assert counted.claims == 2
        clock.now += 19.0  # less than a third of the lease: neither asks the store again
        assert await a.run(lambda: round_("a")) == "a" and await b.run(lambda: round_("b")) is None
        assert counted.claims == 2
        clock.now += 2.0  # past a third: a renews (until 1081), b asks and is refused
        assert await a.run(lambda: round_("a")) == "a" and await b.run(lambda: round_("b")) is None
        assert counted.claims == 4
        # a dies (no more renewals): b takes over once the lease ran out, and a, back, is refused.
        clock.now = 1081.0
        assert await b.run(lambda: round_("b")) == "b"
        a._asked = -float("inf")  # (a's own rate limit aside: it asks now)
        assert await a.run(lambda: round_("a")) is None
        assert ran == ["a", "a", "a", "b"]
        # b shuts down: it releases, and a takes over at once rather than at expiry.
        await b.release()
        a._asked = -float("inf")
        assert await a.run(lambda: round_("a")) == "a"

    run(tmp_path, body)
    lines = [r.getMessage() for r in caplog.records if r.name == "postroom.jobs"]
    assert lines == ["job lease result=taken job=dmarc-reports holder=node-a seconds=60",
                     "job lease result=elsewhere job=dmarc-reports holder=node-b seconds=60",
                     "job lease result=taken job=dmarc-reports holder=node-b seconds=60",
                     "job lease result=elsewhere job=dmarc-reports holder=node-a seconds=60",
                     "job lease result=taken job=dmarc-reports holder=node-a seconds=60"]


def test_a_round_longer_than_the_lease_keeps_it_by_renewing(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        clock = Clock()
        a = ClusterJob(store, "index-backlog", "node-a", 0.3, clock)
        b = ClusterJob(store, "index-backlog", "node-b", 0.3, clock)
        renewed = asyncio.Event()

        async def long_round() -> int:
            for _ in range(15):  # the clock passes five leases while the round runs
                clock.now += 0.1
                await asyncio.sleep(0.1)  # a renewal every 0.1 s of the loop's time (a third of the lease)
            renewed.set()
            b._asked = -float("inf")
            return await b.run(lambda: asyncio.sleep(0, 1)) or 0  # b, meanwhile: still refused

        assert await a.run(long_round) == 0
        assert renewed.is_set()

    run(tmp_path, body)


def test_a_lease_lost_during_a_round_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.jobs")

    async def body(store: Store) -> str | None:
        clock = Clock()
        a = ClusterJob(store, "rspamd-learn", "node-a", 0.3, clock)

        async def round_() -> str:
            # Another node whose clock is far ahead sees a's lease run out and takes it.
            assert await store.claim_job("rspamd-learn", "node-b", 0.3, clock.now + 10.0)
            for _ in range(100):  # a's renewal comes within a third of the lease (0.1 s); bounded, not timed
                await asyncio.sleep(0.05)
                if not a.held:
                    return "lost"
            return "kept"

        return await a.run(round_)

    results: list[str | None] = []

    async def record(store: Store) -> None:
        results.append(await body(store))

    run(tmp_path, record)
    assert results == ["lost"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "postroom.jobs" and r.levelno == logging.WARNING]
    assert warnings == ["job lease result=lost job=rspamd-learn holder=node-a seconds=0.3"]
