"""Periodic jobs that run once per cluster: a named lease in the store says which node runs each (issue 16 item 3).

Theory of operation
-------------------
Several `postroom serve` nodes may share one PostgreSQL store (docs/SCALING.md), and each node's worker 0 starts
the same background tasks. Some must not run on two nodes at once, or run twice as often for nothing:

| job (name)          | module                       | twice at once would                                        |
|---------------------|------------------------------|------------------------------------------------------------|
| `dmarc-reports`     | inbound/dmarc_reports.py     | send a domain two reports of one day (guarded by the store |
|                     |                              | too: `claim_dmarc_results`)                                |
| `rspamd-learn`      | inbound/learn.py             | teach rspamd one verdict twice (guarded by the store too:  |
|                     |                              | `claim_training_signals`)                                  |
| `expunged-retention`| store/retention.py           | harmless: the same idempotent DELETE, its cost twice       |
| `index-backlog`     | indexing.py (app.py)         | harmless: each step skips what the other indexed, but both |
|                     |                              | nodes would read and index the same bodies                 |

What stays per node by design, each checked: the outbound queue's scheduler (every node delivers; each recipient
is claimed with its own lease, delivery/queue.py), ACME (one node only, by configuration: docs/SCALING.md), the
move of held-post files of an older version into the store (that node's own `data_dir/held/`). Not periodic
tasks but clean-ups inside other writes, harmless on every node: expired web sessions are deleted at each
sign-in (web/sessions.py), old `changes` rows by every process after its own `PRUNE_EVERY` changes
(store/postgresql/feed.py), old POP-before-SMTP logins at each login noted (`note_mailbox_login`): each is an
idempotent DELETE of rows past a time.

`ClusterJob` wraps one job's rounds: before a round it takes or renews the lease `Store.claim_job(name, holder,
seconds, now)`; a node that does not hold it skips the round; while a round runs (an index backlog may run for
hours) a task renews the lease every third of its length. The holder is the node id (`data_dir/node-id`), so a
node restarted on its data folder takes its lease back at once; a node that dies holds it until it runs out,
then whichever node comes first takes it over, with a log line. Calls to the store are spared: a holder renews
only once a third of the lease has passed, and a node that was refused asks again only after a third of the
lease, so a job polled every 2 s (the learner) costs a write every `seconds / 3`, not every poll.

The lease is what keeps two nodes from running a job at the same time in the ordinary case; it is not what
makes a report or a training signal go out once. A node cut off from the database, or one whose renewal was
late, may go on with a round while another took the lease: the rows a DMARC run or the learner sends are
claimed in the store in the transaction that reads them, so even two runs at once send each once.

Leases are timed on the nodes' clocks (as the queue's): keep them in step (NTP).

Invariants
1. A round runs only after this node's `claim_job` returned True within the last third of the lease.
2. A lease that a renewal during a round finds lost is logged as a warning (`job lease result=lost`); the round
   in flight finishes (the store claims keep its work single), and the next round asks again. A lease another
   node took between rounds is `result=elsewhere`.
3. `release()` gives the lease up at shutdown so another node takes over at once instead of at expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from postroom.net.listener import logfmt
from postroom.store.api import Store

log = logging.getLogger("postroom.jobs")

LEASE_SECONDS = 60.0
T = TypeVar("T")


class ClusterJob:
    """The lease on one named job (module doc). `holder`: this node's id; `seconds`: the lease's length;
    `clock`: seconds since the epoch."""

    def __init__(self, store: Store, name: str, holder: str, seconds: float = LEASE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.seconds = seconds
        self.clock = clock
        self.held = False
        self._asked = -float("inf")  # when the store last answered (held or not), on `clock`
        self._reported = ""  # the state last logged: "taken", "elsewhere", "lost" or "" (none yet)

    async def acquire(self, *, renewing: bool = False) -> bool:
        """Whether this node may run the job now: the lease taken or renewed in the store when a third of its
        length passed since the store last answered, else the last answer. `renewing`: asked while a round runs
        (a refusal then is a lease lost, logged as a warning). Store errors propagate."""
        now = self.clock()
        if now - self._asked < self.seconds / 3:
            return self.held
        self.held = await self.store.claim_job(self.name, self.holder, self.seconds, now)
        self._asked = now
        self._note(renewing)
        return self.held

    def _note(self, renewing: bool) -> None:
        """One log line per change of state: taken, held elsewhere, or lost while a round ran (invariant 2). A
        job whose rounds are further apart than its lease (hourly DMARC reports) may change holders between
        rounds: that is "elsewhere", not a loss."""
        if self.held:
            result = "taken"
        elif renewing:
            result = "lost"
        else:
            result = "elsewhere"
        if result == self._reported:
            return
        self._reported = result
        log.log(logging.WARNING if result == "lost" else logging.INFO, "%s",
                logfmt("job lease", [("result", result), ("job", self.name), ("holder", self.holder),
                                     ("seconds", f"{self.seconds:g}")]))

    async def run(self, round_: Callable[[], Awaitable[T]]) -> T | None:
        """Run one round if this node holds the lease (invariant 1), renewing it while the round runs; None
        without running when another node holds it."""
        if not await self.acquire():
            return None
        renew = asyncio.create_task(self._renew(), name=f"job-lease-{self.name}")
        try:
            return await round_()
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                self._asked = -float("inf")
                await self.acquire(renewing=True)
            except Exception:  # noqa: BLE001 - the store is down: the next round asks again (invariant 2)
                log.warning("job lease: renewing %s failed", self.name, exc_info=True)

    async def release(self) -> None:
        """Give the lease up if this node holds it (invariant 3); errors are logged, not raised (shutdown)."""
        if not self.held:
            return
        self.held, self._asked, self._reported = False, -float("inf"), ""
        try:
            await self.store.release_job(self.name, self.holder)
        except Exception:  # noqa: BLE001 - it runs out by itself
            log.warning("job lease: releasing %s failed; it runs out in %g s", self.name, self.seconds, exc_info=True)
