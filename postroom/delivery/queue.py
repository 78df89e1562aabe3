"""The outbound queue scheduler: takes due recipients from the store's durable queue and delivers them by SMTP.

Theory of operation
-------------------
All state is in the store (`store.enqueue` by the router; one row per recipient with its state, attempts,
next try, last error, delay-notice mark and lease). The scheduler keeps only what is in flight, so a restart
loses nothing: whatever was not recorded as final is tried again.

    loop:  queue_claim(now, holder, lease) -> the recipients claimed, grouped per entry by destination domain
           (a Job)
           -> the domain's deque -> up to `concurrency_per_domain` workers for the domain, each holding one
           of `concurrency` connection slots in all
    worker: route the domain once (mx.py) -> connect (hops in order; STARTTLS when offered) -> for each job of
           the domain: read the body, DKIM-sign it, one transaction with every recipient of the job (PIPELINING)
           -> its result is written (`_settle`) in a task while the connection goes on with the next job (at
           most `messages_per_connection`), whose envelope went out with this job's message (invariant 8)
           -> QUIT when the deque is empty
    result, per recipient:  2xx delivered | 5xx bounced (failure DSN) | 4xx or no connection: deferred, next
           try after `retry_seconds[attempts-1]` (the last interval repeats); past `max_lifetime_seconds` it is
           bounced (4.4.7); past `delay_notice_seconds` one delay DSN is sent (when NOTIFY allows, by default).

Claims across processes and nodes (issue 16 item 3, issue 17 item 1). `delivery.workers` worker processes of a
`postroom serve` run this scheduler (invariant 10; worker 0 alone by default), and several nodes on one PostgreSQL
each run theirs; on SQLite there is one node (the data folder's lock keeps a second server off the file), but its
workers are several processes. With worker 0 alone a drain on two cores runs in one process (its event loop and its
store writer thread under one GIL); every worker delivering was measured against that on a loaded 2-vCPU VM
(bench/RESULTS.md): no faster drain, live relaying slower on average (within a wide spread), about 10 % more CPU per
message (more claim and result transactions, each a commit, taking turns with the ingest's for the one SQLite write
lock). A scheduler does not read the due list and decide alone: it claims due recipients in the store
(`queue_claim`: SQLite one write transaction, PostgreSQL `FOR UPDATE SKIP LOCKED` in the claiming UPDATE), each with
a lease of `queue.lease_seconds` under its holder id ("<node>#<pid>.<random>" in a one-process server,
"<node>/<worker slot>#<pid>.<random>" in a worker; the node id kept in `data_dir/node-id`). While an attempt runs,
or waits for a connection slot, a renewal task extends the leases every third of the lease. The result is written by
the holder (`queue_update(..., holder=)`), which releases the lease; if the lease was lost meanwhile (the node
stalled or lost the database for longer than the lease, and another node took the recipient over), the store refuses
the write (LeaseLost), nothing is recorded, the log says so, and the new holder's result is the one that stands. A
job whose lease is known to be lost (a renewal failed or did not find it) is not started. A node that dies keeps its
leases until they run out; then any node's claim takes them over and logs `queue lease taken over`. A node that
restarts frees its own earlier process's leases at once (`queue_free_leases(node)`: the data folder's lock says that
process is gone): a one-process server at its scheduler's start; with workers, the parent before the fork (what a
one-process run left) and each worker's scheduler at its start for its own slot ("<node>/<slot>": a slot has one
process at a time, so a worker restarted after a crash frees its predecessor's and never a sibling's). What a run
with more workers than this one left in the slots this one lacks runs out after the lease. A stopping scheduler
gives up the leases of what it did not finish.

A scheduler claims at most `CLAIM_PER_SLOT * delivery.concurrency` recipients ahead and claims again when
half of those are done, so a busy node leaves the rest for the others; new mail is claimed at once by the node
that queued it (the router's wake) and by the other nodes at their next poll (`delivery.poll_seconds`).

A recipient that asked for NOTIFY=SUCCESS gets a "relayed" DSN when the next server does not speak DSN; when it
does, NOTIFY/ORCPT/RET/ENVID are passed on and that server reports (RFC 3461 §5.2.2).

The at-least-once window. Between the remote server's `250` to "." and the commit of `queue_update` that
records it, a crash (or kill -9) leaves the recipient pending; after the restart it is sent again, so the remote
gets a duplicate. The window is one store write (a group commit: milliseconds); RFC 1047 describes it. A second
window is a lost lease: a node that stalls past `queue.lease_seconds` in the middle of a transaction, while
another node takes the recipient over and sends it again; the late result is refused, so the store holds one
result, but the remote may have the message twice (and a DSN made before the refused write may be sent twice).
Nothing is ever lost: a state is written only after what it records happened, and DSNs are made durable (handed
to the router, which delivers or queues them) before the recipient they report on is marked final. So a crash in
between can repeat a DSN but never lose one.

Invariants
1. The store is the only state: nothing in memory is needed to resume after a restart.
2. A recipient is in at most one transaction at a time: in one scheduler by `_in_flight`, across schedulers
   (processes, nodes) by the store's lease, which a scheduler holds from its claim until its result is written,
   renews while it works, and checks (in memory) before it starts a job; a result is written only by the
   recipient's current holder (the store checks it in the writing transaction).
3. A recipient is final (delivered/bounced) only after the remote's reply or a permanent routing answer, and
   after its DSN (if any) is durable.
4. At most `concurrency` connections in all and `concurrency_per_domain` to one domain are open at once.
5. Never a DSN to the null sender (dsn.py), and a DSN about a recipient is sent at most once per kind, except in
   the crash and lost-lease windows above.
6. A scheduler holds at most `CLAIM_PER_SLOT * concurrency` recipients; what it holds when it stops is released.
7. A connection has at most one result unwritten: job k's result is written while job k+1 is sent, and job k+2
   is not started before it is committed; results are written in the order the jobs were sent. So a
   connection costs one remote round trip or one group commit per message, whichever is longer, not their
   sum (the commit is an fsync), and the at-least-once window above holds at most two messages per connection.
8. A worker reads and signs job k+1 before it sends job k, and when the connection will take it (PIPELINING,
   `messages_per_connection`, the size and extension checks) its envelope goes out with job k's message
   (client.py). Its lease is checked again before its data is sent: a lease lost meanwhile closes the
   connection, which aborts that transaction (RFC 5321 §3.8), so nothing is delivered under a lost lease that
   was known to be lost before its data (invariant 2).
9. A running scheduler (`start`, not `run_once`) keeps a worker's connection open for up to `CONNECTION_LINGER`
   seconds after its domain's jobs run out, and the jobs claimed for that domain meanwhile go over it (Postfix's
   connection cache: a trickle of new mail does not pay a connection, greeting, EHLO and QUIT per message). It
   holds its slot meanwhile, but never while another worker waits for one: a worker that finds the slots taken
   ends every lingering wait, and `stop` too. After a reload (`reconfigure`) a worker finds the route again
   before its next message and leaves a connection made on the old one.
10. With several worker processes, each of the first `delivering_workers` runs a scheduler with its `share` of
   `delivery.concurrency` and `concurrency_per_domain` (split as evenly as whole numbers go, at least one of
   each), so invariant 4 holds per node with the configured numbers. The number is decided at start
   (`delivery.workers`: 1, worker 0 only, by default; 0 every worker; never more than a limit); a reload
   re-splits the new limits over it, and one that lowers a limit below it leaves each scheduler one (the node
   exceeds that limit by at most the number - 1 until a restart).
   Mail queued in a worker wakes that worker's scheduler (`Scheduler.wake`); the others see it at their next
   poll, and a worker without a scheduler wakes worker 0's over the wake pipe (workers.py). Invariants 2 and 6
   are per scheduler and hold across them through the store's leases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from postroom.config import Config
from postroom.delivery.client import (
    ConnectionLost,
    Refused,
    SmtpClient,
    TlsFailed,
    Transaction,
    opportunistic_tls_context,
)
from postroom.delivery.dkim import Signer
from postroom.delivery.dsn import RecipientReport, build_dsn, wanted
from postroom.delivery.mx import (
    DnsResolver,
    HostLookup,
    Resolver,
    Route,
    RouteFailure,
    RouteFinder,
    system_addresses,
)
from postroom.mime.lineends import normalise
from postroom.smtp.syntax import Reply
from postroom.store.api import LeaseLost, NotFound, QueueEntry, QueueRecipient, RcptState, Store

log = logging.getLogger("postroom.queue")

PENDING = (RcptState.QUEUED, RcptState.DEFERRED)
CLAIM_PER_SLOT = 4  # recipients claimed ahead per connection slot (invariant 6)
CONNECTION_LINGER = 2.0  # seconds an idle connection waits for its domain's next job (invariant 9; Postfix's
# smtp_connection_cache_time_limit is 2 s too)
BounceSink = Callable[[str, bytes], Awaitable[None]]
"""Delivers a DSN (bytes) from the null sender to one address (the original sender): durable on return."""


@dataclass(frozen=True)
class Outcome:
    """What one attempt decided for a recipient. `text` is the remote's SMTP reply when `remote` is set (it
    becomes the DSN's Diagnostic-Code and Remote-MTA), else our own explanation, which only the DSN's text part
    and `last_error` carry (dsn.py invariant 4: no fake SMTP diagnostic, no Remote-MTA where none answered)."""

    kind: str  # "ok" | "temp" | "perm"
    text: str  # the reply ("550 5.1.1 no such user") or our explanation; for last_error and the DSN
    status: str  # RFC 3463
    remote: str = ""  # host name of the MTA whose reply `text` is; "" when no MTA replied
    dsn_passed_on: bool = False  # the remote speaks DSN and got NOTIFY: it reports success itself


@dataclass
class Job:
    entry: QueueEntry
    domain: str
    rcpts: list[QueueRecipient]


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _outcome(reply: Reply, remote: str, dsn: bool) -> Outcome:
    if reply.code in (250, 251):
        return Outcome("ok", str(reply), reply.status, remote, dsn)
    return Outcome("perm" if reply.permanent else "temp", str(reply), reply.status, remote)


def needs_smtputf8(entry: QueueEntry, rcpts: Sequence[QueueRecipient], raw: bytes) -> bool:
    """RFC 6531 §3.2: non-ASCII envelope addresses or header fields (RFC 6532) need SMTPUTF8."""
    if not entry.mail_from.isascii() or not all(r.rcpt.isascii() for r in rcpts):
        return True
    end = raw.find(b"\r\n\r\n")
    return not (raw if end < 0 else raw[:end]).isascii()


class Scheduler:
    def __init__(
        self,
        store: Store,
        config: Config,
        *,
        bounce: BounceSink,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
        tls: ssl.SSLContext | None = None,
        signer: Signer | None = None,
        shuffle: Callable[[list[str]], None] = random.shuffle,
        hosts: HostLookup = system_addresses,
        node: str = "",
    ) -> None:
        """`node`: this node's id (`node_id(data_dir)`); when given, the leases of this node's earlier processes
        are freed at start. Without it (tests, one-off runs) a random one is made and nothing is freed."""
        self.store = store
        self._free_own = bool(node)
        self.node = node or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.holder = f"{self.node}#{os.getpid()}.{secrets.token_hex(3)}"  # this scheduler's lease holder id
        self._leases: dict[tuple[int, str], float] = {}  # what this scheduler holds -> lease end (its clock)
        self._more = False  # the last claim was full: claim again when half of it is done
        self.bounce = bounce
        self.clock = clock
        self._given = (resolver, tls, shuffle, hosts)  # what a test injected; kept by `reconfigure`
        self.config = config
        self.delivery = config.delivery
        self.routes = RouteFinder(config.delivery, resolver or DnsResolver(config.delivery.dns_servers), shuffle,
                                  hosts)
        self.tls = tls if tls is not None else (opportunistic_tls_context() if config.delivery.starttls else None)
        self.signer = signer if signer is not None else Signer(store, clock)
        self._slots = asyncio.Semaphore(config.delivery.concurrency)
        self._pending: dict[str, deque[Job]] = {}
        self._workers: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._arrived: dict[str, asyncio.Event] = {}  # domain -> set when its jobs come (lingering workers wait)
        self._lingering: dict[str, int] = {}  # domain -> workers waiting on that event with an open connection
        self._slot_wanted = 0  # workers waiting for a connection slot (none linger while one waits)
        self._in_flight: set[tuple[int, str]] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.stats = {"delivered": 0, "deferred": 0, "bounced": 0, "connections": 0}

    def reconfigure(self, config: Config) -> None:
        """Use `config` (a reload, `app.Postroom.reload`) from the next dispatch on: routes, smart host, DNS
        servers, STARTTLS, retry schedule, timeouts and concurrency. A transaction in progress finishes with
        the settings it started with; the slots it holds belong to the old `delivery.concurrency`, so for a
        moment there may be as many transactions as the old and new limits allow together."""
        resolver, tls, shuffle, hosts = self._given
        self.config = config
        self.delivery = config.delivery
        self.routes = RouteFinder(config.delivery, resolver or DnsResolver(config.delivery.dns_servers), shuffle,
                                  hosts)
        self.tls = tls if tls is not None else (opportunistic_tls_context() if config.delivery.starttls else None)
        self._slots = asyncio.Semaphore(config.delivery.concurrency)
        self.wake()

    # --- running ----------------------------------------------------------------------------------------------
    @property
    def lease_seconds(self) -> float:
        return self.config.queue.lease_seconds

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="postroom-queue")
            self._renew_task = asyncio.create_task(self._renew_loop(), name="postroom-queue-leases")

    def wake(self) -> None:
        """Look at the queue now (after an enqueue, `queue retry`), not at the next poll."""
        self._wake.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking work; let transactions in progress finish for `grace` seconds, then cut them (what was
        not recorded is tried again at the next start)."""
        self._stopping = True
        self._wake_lingering()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        for q in self._pending.values():
            q.clear()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._renew_task is not None:
            self._renew_task.cancel()
            await asyncio.gather(self._renew_task, return_exceptions=True)
            self._renew_task = None
        unfinished = list(self._in_flight)
        if unfinished:  # invariant 6: what was not attempted (or was cut) is free for the next claim at once
            try:
                await self.store.queue_renew(self.holder, unfinished, 0.0)
            except Exception as exc:  # they expire after lease_seconds instead
                log.warning("queue could not release %d lease(s) at stop: %s", len(unfinished), exc)
            self._in_flight.clear()
            self._leases.clear()

    async def _run(self) -> None:
        if self._free_own:
            try:
                await self.free_own_leases()
            except Exception:
                log.exception("queue could not free this node's earlier leases (they expire instead)")
        while not self._stopping:
            self._wake.clear()  # before the look: a wake during it means another look
            try:
                await self.dispatch()
            except Exception:  # a store hiccup must not end outbound delivery
                log.exception("queue dispatch failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.delivery.poll_seconds)
            except TimeoutError:
                pass

    async def free_own_leases(self) -> int:
        """Free the leases this node's earlier processes hold (they are gone: the data folder's lock says so;
        `start` does this when a node id was given). Returns how many were freed."""
        freed = await self.store.queue_free_leases(self.node)
        if freed:
            log.info("queue freed %d lease(s) of this node's earlier process node=%s", freed, self.node)
        return freed

    async def run_once(self) -> int:
        """Dispatch everything due now and wait until it is done (tests, `postroom queue flush` in-process).
        Returns the number of recipients tried."""
        total = 0
        while True:
            self._more = False
            total += await self.dispatch()
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            if not self._more:  # the last claim took all there was (invariant 6 caps one claim)
                return total

    def _claim_limit(self) -> int:
        return CLAIM_PER_SLOT * self.delivery.concurrency

    async def _renew_loop(self) -> None:
        """Every third of the lease, extend the leases of everything this scheduler holds (invariant 2)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except Exception:
                log.exception("queue lease renewal failed (retried in %.0f s)", self.lease_seconds / 3)

    async def renew(self) -> int:
        """Extend the leases of what this scheduler holds to now + lease_seconds; the ones the store says are
        no longer ours are marked lost (a job not started yet is then dropped). Returns how many were lost."""
        keys = list(self._in_flight)
        if not keys:
            return 0
        until = self.clock() + self.lease_seconds
        kept = await self.store.queue_renew(self.holder, keys, until)
        lost = 0
        for key in keys:
            if key not in self._in_flight:
                continue  # settled meanwhile
            if key in kept:
                self._leases[key] = until
            else:
                self._leases[key] = 0.0
                lost += 1
                log.warning("queue lease lost id=%s rcpt=%s holder=%s (expired and taken over, or removed)",
                            key[0], key[1], self.holder)
        return lost

    async def dispatch(self) -> int:
        now = self.clock()
        room = self._claim_limit() - len(self._in_flight)
        if room < self._claim_limit() // 2:  # invariant 6: claim again when half of the last claim is done
            return 0
        claim = await self.store.queue_claim(now, self.holder, self.lease_seconds, room)
        self._more = len(claim.claimed) >= room
        for queue_id, rcpt, previous in claim.taken_over:
            log.warning("queue lease taken over id=%s rcpt=%s from=%s holder=%s (its lease expired)", queue_id,
                        rcpt, previous, self.holder)
        mine = set(claim.claimed)
        until = now + self.lease_seconds
        for key in mine & self._in_flight:  # our own lease, run out and nobody took it: claimed back, renewed
            self._leases[key] = until
        count = 0
        for entry in claim.entries:
            by_domain: dict[str, list[QueueRecipient]] = {}
            for r in entry.recipients:
                key = (entry.id, r.rcpt)
                if key in mine and key not in self._in_flight:
                    self._leases[key] = until
                    by_domain.setdefault(_domain(r.rcpt), []).append(r)
            for domain, rcpts in by_domain.items():
                self._in_flight.update((entry.id, r.rcpt) for r in rcpts)  # invariant 2
                self._pending.setdefault(domain, deque()).append(Job(entry, domain, rcpts))
                if domain in self._arrived:
                    self._arrived[domain].set()  # invariant 9: workers keep connections open for it
                count += len(rcpts)
        for domain, jobs in self._pending.items():
            active = self._workers.get(domain, 0)
            idle = self._lingering.get(domain, 0)  # lingering workers take the first jobs (invariant 9)
            for _ in range(min(self.delivery.concurrency_per_domain - active, len(jobs) - idle)):  # invariant 4
                self._workers[domain] = self._workers.get(domain, 0) + 1
                task = asyncio.create_task(self._worker(domain), name=f"postroom-queue-{domain}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return count

    # --- a worker: one connection at a time to one domain -------------------------------------------------------
    async def _worker(self, domain: str) -> None:
        try:
            self._slot_wanted += 1
            if self._slots.locked():
                self._wake_lingering()  # invariant 9: an idle connection does not keep a slot from a waiting worker
            try:
                await self._slots.acquire()
            finally:
                self._slot_wanted -= 1
            try:
                await self._work(domain)
            finally:
                self._slots.release()
        finally:
            self._workers[domain] -= 1
            if not self._workers[domain]:
                del self._workers[domain]
                if not self._pending.get(domain):
                    self._pending.pop(domain, None)

    def _wake_lingering(self) -> None:
        for event in self._arrived.values():
            event.set()

    async def _linger(self, domain: str, client: SmtpClient | None) -> bool:
        """Invariant 9: wait up to CONNECTION_LINGER for more jobs of `domain`, keeping `client` open, when the
        scheduler runs (not `run_once`), no worker waits for a slot and the connection may take another message.
        True when there are jobs to do."""
        if (self._loop_task is None or self._stopping or self._slot_wanted or client is None or client.closed
                or client.opened is not None or client.transactions >= self.delivery.messages_per_connection):
            return False
        event = self._arrived.get(domain)
        if event is None or event.is_set():  # the last one woke its waiters: a new one for the next arrival
            event = self._arrived[domain] = asyncio.Event()
        self._lingering[domain] = self._lingering.get(domain, 0) + 1
        try:
            await asyncio.wait_for(event.wait(), CONNECTION_LINGER)
        except TimeoutError:
            pass
        finally:
            self._lingering[domain] -= 1
            if not self._lingering[domain]:
                del self._lingering[domain]
                if self._arrived.get(domain) is event:
                    del self._arrived[domain]
        return bool(self._pending.get(domain)) and not self._stopping

    async def _work(self, domain: str) -> None:
        jobs = self._pending.get(domain)
        route: Route | None = None
        finder: RouteFinder | None = None  # what `route` was found with: `self.routes` until a reload replaces it
        client: SmtpClient | None = None
        writing: asyncio.Task[None] | None = None  # the last job's result, being written (invariant 7)
        following: tuple[Job, bytes] | None = None  # the next job, read and signed, to pipeline (invariant 8)
        try:
            while jobs or following or await self._linger(domain, client):
                if jobs is None:  # emptied and dropped while this worker lingered: it came again
                    jobs = self._pending.get(domain)
                    continue
                if finder is not self.routes and following is None:
                    # A reload since this connection was routed (`reconfigure`): the next message takes the new
                    # route, so a kept connection (invariant 9) does not carry it to the old destination.
                    route = None
                    if client is not None and client.opened is None:
                        await client.quit()
                        client = None
                if following is not None:
                    (ahead, raw), following = following, None
                    held = self._still_held(ahead)  # invariant 2, again: its lease may be lost since
                    if held is not ahead and client is not None and client.opened is not None:
                        client.close()  # its envelope went out: only closing aborts it (RFC 5321 §3.8)
                    if held is None:
                        continue
                    job = held
                else:
                    assert jobs is not None
                    loaded = await self._next(jobs)
                    if loaded is None:
                        continue
                    job, raw = loaded
                if jobs:
                    following = await self._next(jobs)
                try:
                    if route is None:
                        finder = self.routes
                        route = await finder.route(domain)
                    outcomes, client = await self._deliver(job, raw, route, client, following)
                except (RouteFailure, _Unreachable) as exc:
                    if isinstance(exc, RouteFailure):
                        # The same answer holds for every job of this domain now waiting: settle them all.
                        outcome = Outcome("perm" if exc.permanent else "temp", str(exc), exc.status)
                    else:  # with the refusing host's reply as the diagnostic, else our explanation (dsn.py inv. 4)
                        outcome = Outcome("temp", exc.reply, exc.status, exc.remote) if exc.reply else \
                            Outcome("temp", exc.text, exc.status)
                    # a dead destination: the jobs behind this one would fail alike
                    batch = [job, *([following[0]] if following else []), *(jobs or ())]
                    following = None
                    if jobs:
                        jobs.clear()
                    await self._settle_all(batch, outcome, writing)
                    return
                if writing is not None:
                    await writing  # invariant 7: at most one result per connection unwritten
                writing = asyncio.create_task(self._settle(job, outcomes), name=f"postroom-queue-settle-{domain}")
        finally:
            try:
                if writing is not None:
                    await writing
            finally:  # also when cut short (stop) while that result was written
                if following is not None and jobs is not None:  # it waits with the rest of the domain's jobs
                    jobs.appendleft(following[0])
                if client is not None:
                    await client.quit()

    async def _next(self, jobs: deque[Job]) -> tuple[Job, bytes] | None:
        """The next job of `jobs` this scheduler still holds, with its message read and signed; None when there
        is none (a job whose entry was deleted meanwhile is let go here)."""
        while jobs:
            job = self._still_held(jobs.popleft())
            if job is None:
                continue
            try:
                raw = await self.store.read_message(job.entry.blob_id)
            except NotFound:
                await self._settle(job, {})  # deleted meanwhile (`postroom queue delete`)
                continue
            # Nothing with a stray CR, LF or NUL passes the router's door; an entry queued by an older version
            # might carry one: repair it before signing, so the signature covers what is sent (client.py refuses
            # it).
            entry = job.entry
            return job, await self.signer.sign(normalise(raw), entry.mail_from, entry.from_checked)  # dkim.py inv. 3
        return None

    async def _settle_all(self, batch: list[Job], outcome: Outcome, writing: asyncio.Task[None] | None) -> None:
        """Record one `outcome` for every recipient of `batch` (a route or connection failure), after the result
        still being written; the writes go together, so the store's group commit takes them in one batch."""
        if writing is not None:
            await writing
        await asyncio.gather(*(self._settle(j, {r.rcpt: outcome for r in j.rcpts}) for j in batch))

    def _still_held(self, job: Job) -> Job | None:
        """`job` with only the recipients whose lease this scheduler still holds (invariant 2); None if none.
        The others are let go: another holder has them (or will, when their lease has run out)."""
        now = self.clock()
        held = [r for r in job.rcpts if self._leases.get((job.entry.id, r.rcpt), 0.0) > now]
        if len(held) == len(job.rcpts):
            return job
        for r in job.rcpts:
            if r not in held:
                log.warning("queue not attempting id=%s rcpt=%s: lease lost holder=%s", job.entry.id, r.rcpt,
                            self.holder)
                self._in_flight.discard((job.entry.id, r.rcpt))
                self._leases.pop((job.entry.id, r.rcpt), None)
        return Job(job.entry, job.domain, held) if held else None

    async def _connect(self, route: Route) -> SmtpClient:
        errors: list[str] = []
        last_reply: Reply | None = None
        replied = ""  # the host whose reply is the last error, if the last error was a reply
        d = self.delivery
        auth = (d.smarthost_user, d.smarthost_password) if d.smarthost_user else None
        for hop in route.hops:
            tls = self.tls
            for _ in range(2):
                try:
                    client = await SmtpClient.open(
                        hop, self.config.server.hostname, connect_timeout=d.connect_timeout_seconds,
                        command_timeout=d.command_timeout_seconds, tls=tls,
                        auth=auth if hop.smarthost else None)
                    self.stats["connections"] += 1
                    return client
                except TlsFailed as exc:
                    # RFC 7435 opportunistic: a failed handshake falls back to plain text, as Postfix does.
                    log.info("queue tls failed, retrying without host=%s error=%s", hop.host, exc)
                    errors.append(str(exc))
                    tls = None
                    continue
                except ConnectionLost as exc:
                    errors.append(str(exc))
                    last_reply, replied = None, ""
                except Refused as exc:
                    errors.append(f"{hop.host}[{hop.address}] {exc}")
                    last_reply, replied = exc.reply, hop.host
                break
        # RFC 5321 §5.1: every host was tried. Only a permanent greeting/AUTH refusal by the last host... is
        # still treated as temporary: another host may be fixed before expiry.
        status = last_reply.status if last_reply is not None and not last_reply.permanent else "4.4.1"
        text = f"no host of {route.domain} took the connection: " + "; ".join(errors[-3:])
        # RFC 3464 §2.3.5, §2.3.6: a refusal the last host sent is its SMTP reply; a connection nobody took has
        # no reply and no remote MTA (dsn.py invariant 4).
        raise _Unreachable(text, status if status.startswith("4") else "4.4.1", replied,
                           str(last_reply) if last_reply is not None and replied else "")

    async def _deliver(self, job: Job, raw: bytes, route: Route, client: SmtpClient | None,
                       following: tuple[Job, bytes] | None = None) -> tuple[dict[str, Outcome], SmtpClient | None]:
        """One attempt of `job` (its message `raw`, read and signed) on `client` (or a new connection), with
        `following`'s envelope pipelined behind its message when the connection takes another (invariant 8)."""
        limit = self.delivery.messages_per_connection
        for attempt in range(2):
            opened = client.opened if client is not None and not client.closed else None
            if client is not None and opened is None and (client.closed or client.transactions >= limit):
                await client.quit()
                client = None
            reused = client is not None
            if client is None:
                client = await self._connect(route)
            dsn = client.supports("DSN")
            if opened is not None and opened.data is raw:
                tx = opened  # its envelope went out with the last message (client.py invariant 4)
            else:
                checked = self._check(job, raw, client)
                if checked is not None:
                    return checked, client
                tx = self._transaction(job, raw, client, dsn)
            then = None
            after = client.transactions + (0 if tx is opened else 1)  # transactions on it once `tx` is sent
            if following is not None and after < limit and self._check(following[0], following[1], client) is None:
                then = self._transaction(following[0], following[1], client, dsn)
            try:
                result = await client.send(tx, then)
            except ConnectionLost as exc:
                if reused and attempt == 0:
                    client = None  # the server closed a reused connection: once more on a new one
                    continue
                out = Outcome("temp", f"{client.hop.host}: {exc}", "4.4.2")  # no reply (dsn.py invariant 4)
                return {r.rcpt: out for r in job.rcpts}, None
            host = client.hop.host
            return {r.rcpt: _outcome(result.rcpt[r.rcpt], host, dsn and bool(r.notify)) for r in job.rcpts}, client
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, job: Job, raw: bytes, client: SmtpClient) -> dict[str, Outcome] | None:
        """What must fail before the transaction starts: size, 8BITMIME, SMTPUTF8. These are our decisions from
        the EHLO answer, not a reply to this message: no Remote-MTA or SMTP diagnostic (dsn.py invariant 4)."""
        host = client.hop.host
        limit = client.size_limit
        if limit and len(raw) > limit:
            # RFC 1870 §6.2: larger than the fixed maximum the server declared: a permanent failure.
            out = Outcome("perm", f"message is {len(raw)} bytes; {host} accepts at most {limit}", "5.3.4")
            return {r.rcpt: out for r in job.rcpts}
        if needs_smtputf8(job.entry, job.rcpts, raw) and not client.supports("SMTPUTF8"):
            # RFC 6531 §3.2: the message needs SMTPUTF8 and the server does not offer it: non-delivery.
            out = Outcome("perm", f"{host} does not support SMTPUTF8, which this message needs", "5.6.7")
            return {r.rcpt: out for r in job.rcpts}
        if not raw.isascii() and not client.supports("8BITMIME"):
            # RFC 6152 §3: 8-bit data to a server without 8BITMIME is returned (Postroom does not re-encode:
            # that would break DKIM signatures and the "raw bytes are sacred" rule).
            out = Outcome("perm", f"{host} does not support 8BITMIME, which this message needs", "5.6.3")
            return {r.rcpt: out for r in job.rcpts}
        return None

    def _transaction(self, job: Job, raw: bytes, client: SmtpClient, dsn: bool) -> Transaction:
        entry = job.entry
        params: list[str] = []
        if client.supports("SIZE"):
            params.append(f"SIZE={len(raw)}")  # RFC 1870 §6
        if not raw.isascii() and client.supports("8BITMIME"):
            params.append("BODY=8BITMIME")  # RFC 6152 §2
        if needs_smtputf8(entry, job.rcpts, raw):
            params.append("SMTPUTF8")  # RFC 6531 §3.4
        rcpt_params: list[tuple[str, ...]] = []
        if dsn:  # RFC 3461 §5.2: pass the DSN parameters on to a server that supports them
            if entry.ret:
                params.append(f"RET={entry.ret}")
            if entry.envid:
                params.append(f"ENVID={entry.envid}")
            for r in job.rcpts:
                p = []
                if r.notify:
                    p.append(f"NOTIFY={r.notify}")
                if r.orcpt:
                    p.append(f"ORCPT={r.orcpt}")
                rcpt_params.append(tuple(p))
        return Transaction(entry.mail_from, tuple(r.rcpt for r in job.rcpts), raw, tuple(params),
                           tuple(rcpt_params))

    # --- results ------------------------------------------------------------------------------------------------
    def retry_delay(self, attempts: int) -> float:
        schedule = self.delivery.retry_seconds
        return schedule[min(max(attempts, 1), len(schedule)) - 1]

    async def _settle(self, job: Job, outcomes: dict[str, Outcome]) -> None:
        """Record the outcome of each recipient of `job`, DSNs first (invariant 3)."""
        entry = job.entry
        try:
            if not outcomes:
                return
            now = self.clock()
            d = self.delivery
            updates: list[QueueRecipient] = []
            reports: list[RecipientReport] = []
            deferred: list[tuple[str, int, str]] = []  # (rcpt, attempts, reply): logged once recorded
            for r in job.rcpts:
                o = outcomes[r.rcpt]
                attempts = r.attempts + 1

                def report(action: str, status: str, explanation: str = "", until: float | None = None,
                           r: QueueRecipient = r, o: Outcome = o) -> None:
                    """A DSN line for `r`, when its sender would get one (RFC 3461 §4.1; `_report` sends)."""
                    if entry.mail_from and wanted(r.notify, action):  # dsn.py invariant 4: the text is an SMTP
                        reports.append(RecipientReport(  # diagnostic only if a remote MTA replied it
                            r.rcpt, action, status, orcpt=r.orcpt, notify=r.notify,
                            diagnostic=o.text if o.remote else "", remote_mta=o.remote,
                            explanation=explanation or ("" if o.remote else o.text), last_attempt=now,
                            will_retry_until=until))

                if o.kind == "ok":
                    updates.append(dataclasses.replace(r, state=RcptState.DELIVERED, attempts=attempts,
                                                       last_error=""))
                    self.stats["delivered"] += 1
                    if not o.dsn_passed_on:
                        report("relayed", "2.0.0")
                    log.info("queue delivered id=%s rcpt=%s remote=%s reply=%r", entry.id, r.rcpt, o.remote,
                             o.text[:200])
                elif o.kind == "perm" or now - entry.created >= d.max_lifetime_seconds:
                    status = o.status if o.kind == "perm" else "4.4.7"  # RFC 3463: delivery time expired
                    text = o.text if o.kind == "perm" else f"{o.text} (gave up after {attempts} attempts)"
                    updates.append(dataclasses.replace(r, state=RcptState.BOUNCED, attempts=attempts,
                                                       last_error=text[:1000]))
                    self.stats["bounced"] += 1
                    report("failed", status, text)
                    log.info("queue bounced id=%s rcpt=%s reply=%r", entry.id, r.rcpt, text[:200])
                else:
                    notify_delay = (d.delay_notice_seconds > 0 and not r.delay_notified
                                    and now - entry.created >= d.delay_notice_seconds)
                    updates.append(dataclasses.replace(
                        r, state=RcptState.DEFERRED, attempts=attempts, next_try=now + self.retry_delay(attempts),
                        last_error=o.text[:1000], delay_notified=r.delay_notified or notify_delay))
                    self.stats["deferred"] += 1
                    if notify_delay:
                        report("delayed", o.status, until=entry.created + d.max_lifetime_seconds)
                    deferred.append((r.rcpt, attempts, o.text[:200]))
            await self._report(entry, reports)
            try:
                await self.store.queue_update(entry.id, updates, holder=self.holder)  # releases the leases
            except NotFound:  # deleted by an admin meanwhile: nothing will be retried, so say that, not "deferred"
                log.info("queue entry gone id=%s: removed while it was being sent, no retry", entry.id)
                return
            except LeaseLost as lost:  # invariant 2: another holder took these over; its result stands
                log.warning("queue result not recorded id=%s rcpts=%s holder=%s: lease lost to another holder",
                            entry.id, ",".join(lost.rcpts), self.holder)
            else:
                for rcpt, attempts, text in deferred:  # said once the retry is recorded
                    log.info("queue deferred id=%s rcpt=%s attempts=%d reply=%r", entry.id, rcpt, attempts, text)
        except Exception:
            log.exception("queue could not record results id=%s", entry.id)  # retried at the next due time
        finally:
            for r in job.rcpts:
                self._in_flight.discard((entry.id, r.rcpt))
                self._leases.pop((entry.id, r.rcpt), None)
            if self._more and len(self._in_flight) <= self._claim_limit() // 2:
                self.wake()  # invariant 6: room for the next claim

    async def _report(self, entry: QueueEntry, reports: list[RecipientReport]) -> None:
        if not reports or not entry.mail_from:
            return
        # One DSN per kind: a failure report, a delay notice and a success report are different messages.
        for kinds in (("failed",), ("delayed",), ("delivered", "relayed", "expanded")):
            chosen = [r for r in reports if r.action in kinds and wanted(r.notify, r.action)]
            if not chosen:
                continue
            original = await self.store.read_message(entry.blob_id)
            dsn = build_dsn(reporting_mta=self.config.server.hostname, mail_from=entry.mail_from,
                            envid=entry.envid, ret=entry.ret, arrival=entry.created, reports=chosen,
                            original=original, now=self.clock)
            if dsn is not None:
                await self.bounce(entry.mail_from, dsn)  # durable before the state is (invariant 3)


class _Unreachable(Exception):
    """No hop of a route took the connection. `remote` and `reply`: the last hop's refusal (greeting, EHLO,
    AUTH), when the last error was one; "" when it was a connection that failed or was lost."""

    def __init__(self, text: str, status: str, remote: str, reply: str) -> None:
        super().__init__(text)
        self.text = text
        self.status = status
        self.remote = remote
        self.reply = reply


def delivering_workers(config: Config, count: int) -> int:
    """How many of a server's `count` worker processes run a scheduler (issue 17 item 1, invariant 10):
    `delivery.workers` of them (0: every worker), and no more than `delivery.concurrency` or
    `concurrency_per_domain`, since each scheduler needs at least one connection of each. Decided at start; a
    reload keeps the number (`share`)."""
    d = config.delivery
    wanted = count if d.workers == 0 else min(d.workers, count)
    return max(1, min(wanted, d.concurrency, d.concurrency_per_domain))


def share(config: Config, slot: int, schedulers: int) -> Config:
    """`config` with the delivery limits of the scheduler in worker `slot` of `schedulers` (invariant 10):
    `delivery.concurrency` and `concurrency_per_domain` split as evenly as whole numbers go (the lower slots
    take the remainder), so the schedulers of one node together open at most the configured numbers. A reload
    that lowers a limit below `schedulers` leaves each at least 1 (the node may exceed it by `schedulers` - 1
    until a restart). ValueError for a slot outside 0..schedulers-1."""
    if not 0 <= slot < schedulers:
        raise ValueError(f"worker slot {slot} runs no scheduler of {schedulers}")
    if schedulers == 1:
        return config
    d = config.delivery

    def part(total: int) -> int:
        return max(1, total // schedulers + (1 if slot < total % schedulers else 0))

    return dataclasses.replace(config, delivery=dataclasses.replace(
        d, concurrency=part(d.concurrency), concurrency_per_domain=part(d.concurrency_per_domain)))


def node_id(data_dir: Path) -> str:
    """This node's id for queue leases: `data_dir/node-id`, made once ("<host name>-<8 hex digits>"). Each node
    has its own data folder, whose lock keeps a second server off it, so the id names one running server at a
    time. OSError when the folder cannot be written."""
    path = data_dir / "node-id"
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found and "#" not in found and found.isprintable():
        return found
    made = f"{socket.gethostname() or 'node'}-{secrets.token_hex(4)}".replace("#", "-")
    tmp = path.with_name(f".node-id.{os.getpid()}")
    tmp.write_text(made + "\n")
    os.replace(tmp, path)
    return made


def router_bounce(router: object) -> BounceSink:
    """A BounceSink over the router (delivery/router.py): the DSN enters like any message from the null sender,
    so it lands in a local sender's INBOX (through aliases) or is queued for a remote one."""
    from postroom.delivery.router import Envelope, Rcpt, Router

    assert isinstance(router, Router)

    async def sink(address: str, raw: bytes) -> None:
        accepted = await router.accept(Envelope("", (Rcpt(address),), raw, may_relay=True, from_checked=True))
        if not (accepted.local or accepted.queued):
            log.warning("queue dsn to %s had nowhere to go (no such local address)", address)

    return sink
