"""Two `postroom serve` nodes on one PostgreSQL share the outbound queue (issue 16 item 3): queued remote mail is
delivered exactly once by the two together (counted at the receiving SMTP server by Message-ID), and when one node
is killed with SIGKILL while it holds leases (its deliveries stalled by the receiver), the survivor takes them
over once `queue.lease_seconds` have passed and delivers them, once.

The nodes are real server processes (tests/e2e/test_serve_postgresql.start_on), each with its own data folder, on
a real PostgreSQL (tests/pgcluster.py); the receiving server is the scripted SMTP peer of outbound_support.py on
a loopback port, run in a thread of this process, to which each node's `[delivery.routes]` sends the domains."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from outbound_support import SmtpPeer

from postroom.store.api import QueueRecipient
from postroom.store.postgresql import PostgreSQLStore
from tests.e2e.test_serve_postgresql import start_on

T = TypeVar("T")
DOMAINS = [f"d{i}.remote.test" for i in range(8)]
MESSAGES = int(os.environ.get("POSTROOM_NODE_QUEUE_MESSAGES", "1000"))  # issue 16's figure (~15 s here)
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>\r$", re.M | re.I)


class Sink:
    """An SmtpPeer on its own event loop thread: the remote MTA both nodes deliver to."""

    def __init__(self, data_delay: float = 0.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.peer = SmtpPeer(data_delay=data_delay)
        self.call(self.peer.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def message_ids(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for seen in list(self.peer.delivered):
            m = MESSAGE_ID.search(seen.data)
            found[m.group(1).decode() if m else "?"] += len(seen.rcpts)
        return found

    def close(self) -> None:
        """Stop listening, end the sessions still open (those sleeping in `data_delay`), stop the loop."""

        async def shut() -> None:
            server = self.peer._server
            if server is not None:
                server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self.call(shut())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Node:
    """A `postroom serve` process whose stderr (its log) is read by a thread, so the pipe never fills."""

    def __init__(self, folder: Path, url: str, extra: str) -> None:
        folder.mkdir()
        self.folder = folder
        self.proc, self.ports = start_on(folder, url, extra)
        self.log: list[str] = []
        assert self.proc.stderr is not None
        self.reader = threading.Thread(target=lambda: self.log.extend(iter(self.proc.stderr.readline, "")),
                                       daemon=True)
        self.reader.start()

    @property
    def node_id(self) -> str:
        return (self.folder / "data" / "node-id").read_text().strip()

    def text(self) -> str:
        return "".join(self.log)

    def children(self) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL to the node's processes, by PID: the parent, then its workers (which the kernel kills anyway
        when the parent dies, workers.py)."""
        workers = self.children()
        self.proc.send_signal(signal.SIGKILL)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        self.reader.join(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.reader.join(10)


def config(routes: dict[str, int], lease_seconds: float) -> str:
    lines = ["[delivery]", "starttls = false", "[delivery.routes]"]
    lines += [f'"{domain}" = "127.0.0.1:{port}"' for domain, port in routes.items()]
    lines += ["[queue]", f"lease_seconds = {lease_seconds}"]
    return "\n".join(lines) + "\n"


def run(url: str, data: Path, work: Callable[[PostgreSQLStore], Coroutine[Any, Any, T]]) -> T:
    """`work(store)` on a store of this test process over the nodes' database."""

    async def go() -> T:
        store = PostgreSQLStore(url, data / "blobs")
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def enqueue(url: str, data: Path, ids: list[str]) -> None:
    """Queue one message per id for a remote recipient (spread over DOMAINS), as the router does, 20 at a time."""

    async def work(store: PostgreSQLStore) -> None:
        async def one(n: int, mid: str) -> None:
            raw = (f"From: sender@localhost\r\nTo: user{n}@{DOMAINS[n % len(DOMAINS)]}\r\nSubject: {n}\r\n"
                   f"Message-ID: <{mid}>\r\n\r\nbody {n}\r\n").encode()
            await store.enqueue(raw, "sender@localhost", [QueueRecipient(f"user{n}@{DOMAINS[n % len(DOMAINS)]}")])

        for start in range(0, len(ids), 20):
            await asyncio.gather(*(one(n, ids[n]) for n in range(start, min(start + 20, len(ids)))))

    run(url, data, work)


def wait_for(what: Callable[[], bool], seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {why}")
        time.sleep(0.1)


@pytest.mark.timeout(240)
def test_two_nodes_deliver_the_queue_exactly_once(tmp_path: Path, pg_cluster: Any) -> None:
    url = pg_cluster.create_database()
    sink = Sink()
    nodes: list[Node] = []
    try:
        extra = config({d: sink.peer.port for d in DOMAINS}, 300)
        nodes.append(Node(tmp_path / "a", url, extra))
        nodes.append(Node(tmp_path / "b", url, extra))
        ids = [f"n{i}.{time.time_ns()}@localhost" for i in range(MESSAGES)]
        enqueue(url, tmp_path, ids)  # both nodes see it at their next look at the queue

        def queue_left() -> int:
            return run(url, tmp_path, lambda s: s.queue_length())

        wait_for(lambda: queue_left() == 0, 180, f"{MESSAGES} messages delivered")
        for node in nodes:
            node.stop()  # nothing in flight any more: whatever the sink has now is all there will be
        got = sink.message_ids()
        assert sorted(got) == sorted(ids) and set(got.values()) == {1}, \
            f"missing or twice: {[(m, c) for m, c in got.items() if c != 1][:5]}, {len(got)} of {len(ids)}"
        counts = [len(re.findall(r"queue delivered id=", node.text())) for node in nodes]
        print(f"deliveries per node: {counts}")
        assert sum(counts) == MESSAGES and all(counts), counts  # each delivered some, together all, none twice
    finally:
        for node in nodes:
            node.stop()
        sink.close()


@pytest.mark.timeout(240)
def node_of(holder: str) -> str:
    """The node id in a lease holder id: "<node>#<pid>.<random>", or "<node>/<worker slot>#<pid>.<random>" for a
    worker's scheduler (delivery/queue.py invariant 10)."""
    return holder.partition("#")[0].rpartition("/")[0] or holder.partition("#")[0]


def test_the_survivor_takes_over_a_killed_nodes_leases(tmp_path: Path, pg_cluster: Any) -> None:
    url = pg_cluster.create_database()
    stalled, fine = Sink(data_delay=120), Sink()  # node A's deliveries hang before the reply to "."
    nodes: list[Node] = []
    try:
        lease = 4
        a = Node(tmp_path / "a", url, config({d: stalled.peer.port for d in DOMAINS}, lease))
        nodes.append(a)
        ids = [f"k{i}.{time.time_ns()}@localhost" for i in range(12)]
        enqueue(url, tmp_path, ids)

        def holders() -> set[str]:
            async def work(s: PostgreSQLStore) -> set[str]:
                return {r.lease_holder for e in await s.queue_list() for r in e.recipients}
            return run(url, tmp_path, work)

        # A claims all of it (one claim takes up to 200) and its deliveries hang at the stalled peer.
        wait_for(lambda: len(holders()) == 1 and "" not in holders() and stalled.peer.active > 0, 60,
                 "node A holding every recipient, its deliveries stalled")
        [holder] = holders()
        assert node_of(holder) == a.node_id
        b = Node(tmp_path / "b", url, config({d: fine.peer.port for d in DOMAINS}, lease))  # the survivor
        nodes.append(b)
        time.sleep(lease * 1.5)  # past A's first leases: A renews them (every lease/3), so B, polling, takes none
        assert holders() == {holder} and not fine.peer.delivered
        a.kill()
        wait_for(lambda: not run(url, tmp_path, lambda s: s.queue_list()), 60 + lease,
                 "the survivor to deliver the dead node's mail")
        b.stop()
        assert not stalled.peer.delivered  # A never got its replies
        got = fine.message_ids()
        assert sorted(got) == sorted(ids) and set(got.values()) == {1}, got
        taken = re.findall(r"queue lease taken over id=\d+ rcpt=\S+ from=(\S+) holder=(\S+)", b.text())
        assert len(taken) == len(ids) and {t[0] for t in taken} == {holder}
        assert all(node_of(t[1]) == b.node_id for t in taken)
    finally:
        for node in nodes:
            node.stop()
        stalled.close()
        fine.close()
