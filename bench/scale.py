"""Scale-out figures (issue 16): SQLite vs PostgreSQL, and one node vs two nodes on one PostgreSQL.

    .venv/bin/python bench/scale.py [--count 4000] [--size 5120] [--sessions 20]
                                    [--imap-count 2000] [--clients 10] [--imap-sessions 10]
                                    [--workers 1] [--only smtp|imap] [--dir PATH]

Three set-ups are run one after the other, each on a fresh store, for each of two loads:

    SQLite, 1 node          `postroom serve` on data_dir/postroom.db
    PostgreSQL, 1 node      `postroom serve` with `store.url` a fresh database of a throwaway PostgreSQL
    PostgreSQL, 2 nodes     two `postroom serve`, each its own data_dir and port, the same database

The PostgreSQL is Debian's `postgresql` run the way the tests run it (tests/pgcluster.py: initdb into a
temporary folder, a free loopback port, fsync on, stopped by its PID at the end).

The loads are those of the other benches, reused from them:

- SMTP durable ingest (bench/smtp.py): --count messages of --size bytes from --sessions parallel sessions
  (Postfix's smtp-source when installed, else bench/smtp.py's asyncio client); every `250` means the message is
  committed in the recipient's INBOX, and the INBOX is counted at the end. There is one recipient (as in
  bench/smtp.py): the worst case for PostgreSQL, whose appends to one mailbox take its row lock in turn
  (store/postgresql/messages.py invariant 9). With two nodes the sessions and the
  messages are split in half, one smtp-source per node, both at once: what a TCP load balancer or DNS round
  robin does.
- The IMAP stress mix of bench/imap.py (LOGIN, SELECT, FETCH of the header list, 10 message reads, 2 searches,
  2 STOREs, APPEND, IDLE, LOGOUT per session) on a mailbox of --imap-count messages: --clients clients each
  running --imap-sessions sessions; with two nodes half the clients go to each node. Commands/s is every
  command answered over the longer of the two nodes' timed spans.

Each node runs `server.workers = --workers` processes (default 1, so that on a 2-core machine "2 nodes" is two
server processes where "1 node" is one, as two machines each running one would be). For each run the table gives
the wall time and the CPU seconds (user + system, from /proc) used over the run by each node (its worker
processes included), by the PostgreSQL server (the postmaster and every backend, checkpointer and WAL writer
under it, the exited ones included) and by the load generator (this process and the smtp-source processes),
and their sum over the CPU time the machine had (wall x cores), beside the share of the machine's CPU time that
every process used (other work on the machine included, from /proc/stat): near 100% means the run was bound by
the machine's CPU, and the shares say whose; well below, the run waited (on locks, on fsync), not on CPU. For
PostgreSQL also the WAL written per message or command (its replication and disk write traffic) and the size
of the database at the end.

Work happens under --dir (default bench/results/, the repository's disk: a tmpfs would make fsync free). Every
process started here is stopped by its PID, also on Ctrl-C, SIGTERM or an error. Progress goes to stderr, the tables to
stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import imap  # noqa: E402  (bench/imap.py: the IMAP mix)
import smtp  # noqa: E402  (bench/smtp.py: the SMTP drivers and Postroom's bench settings)
from common import PrivatePostroom, Server, cpu_seconds, progress, servers_stopped  # noqa: E402  (bench/common.py)

from postroom.store import open_store  # noqa: E402
from tests import pgcluster  # noqa: E402  (the tests' throwaway PostgreSQL)

SETUPS = (("SQLite", 1), ("PostgreSQL", 1), ("PostgreSQL", 2))


@dataclass
class Run:
    """One load on one set-up: its rate and where the CPU went."""

    label: str
    rate: float = 0.0  # messages/s or commands/s
    units: int = 0  # messages or commands handled over the CPU accounting window (IMAP: warm-ups included)
    wall: float = 0.0  # seconds
    nodes: list[float] = field(default_factory=list)  # CPU seconds of each node (its workers included)
    postgres: float = 0.0  # CPU seconds of the PostgreSQL server, every backend included
    client: float = 0.0  # CPU seconds of the load generator
    wal: int = 0  # bytes of WAL PostgreSQL wrote over the run (the whole server's)
    db_size: int = 0  # bytes of the database at the end (PostgreSQL)
    machine: float = 0.0  # share of the machine's CPU time used by every process on it (other helpers' too)
    note: str = ""


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat (idle and iowait are not busy)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def client_cpu() -> float:
    """CPU seconds of this process and its reaped children (the smtp-source processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Bench:
    def __init__(self, work: Path, cluster: pgcluster.Cluster, workers: int) -> None:
        self.work = work
        self.cluster = cluster
        self.workers = workers

    def nodes(self, engine: str, count: int, listener: str, settings: str, messages: list[bytes],
              user: str, password: str, started: list[Server]) -> list[PrivatePostroom]:
        """Fresh store, `count` nodes on it started (appended to `started`), the first holding the filled store."""
        url = self.cluster.create_database() if engine == "PostgreSQL" else None
        nodes = [PrivatePostroom(self.work / f"node{i}", listener, settings, log_level="warning",
                                 workers=self.workers, store_url=url) for i in range(count)]
        nodes[0].create(user=user, password=password, messages=messages, with_meta=True)
        for node in nodes[1:]:
            node.join()
        for node in nodes:
            started.append(node)
            node.start(greeting=b"* OK" if listener == "imap" else None, timeout=60)
        return nodes

    def measure(self, label: str, nodes: list[PrivatePostroom], drive: Callable[[], tuple[float, int]]) -> Run:
        """Run `drive` (returns the rate and the units handled) and account the CPU of every process over it."""
        assert self.cluster.process is not None
        pg_pid = self.cluster.process.pid
        n0 = [cpu_seconds(n.pid) for n in nodes]
        p0, c0, m0 = cpu_seconds(pg_pid), client_cpu(), machine_ticks()
        t0 = time.monotonic()
        rate, units = drive()
        run = Run(label, rate=rate, units=units, wall=time.monotonic() - t0)
        time.sleep(0.3)  # exited backends are reaped: their CPU moves to the postmaster's children
        run.nodes = [cpu_seconds(n.pid) - c for n, c in zip(nodes, n0, strict=True)]
        run.postgres = cpu_seconds(pg_pid) - p0
        run.client = client_cpu() - c0
        m1 = machine_ticks()
        run.machine = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
        progress(f"  {label}: {rate:,.0f}/s, node CPU {' + '.join(f'{c:.1f}' for c in run.nodes)} s, "
                 f"postgres {run.postgres:.1f} s, load generator {run.client:.1f} s, wall {run.wall:.1f} s")
        return run

    def smtp(self, engine: str, count: int, args: argparse.Namespace) -> Run:
        label = f"SMTP ingest, {engine}, {count} node{'s' * (count > 1)}"
        settings = smtp.Postroom(self.work).server.settings  # bench/smtp.py's configuration of Postroom
        use_source = shutil.which("smtp-source", path="/usr/sbin:/usr/bin") is not None
        drive_one = smtp.drive_smtp_source if use_source else smtp.drive_builtin
        with servers_stopped(self.work) as started:
            progress(f"{label}: {args.count} x {args.size} bytes, {args.sessions} sessions")
            nodes = self.nodes(engine, count, "smtp", settings, [], smtp.USER, "bench-password", started)
            split = [(args.count * (i + 1) // count - args.count * i // count,
                      args.sessions * (i + 1) // count - args.sessions * i // count) for i in range(count)]
            errors: list[BaseException] = []

            def one(node: PrivatePostroom, messages: int, sessions: int) -> None:
                try:
                    drive_one(node.port, messages, sessions, args.size)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    errors.append(exc)

            def drive() -> tuple[float, int]:
                threads = [threading.Thread(target=one, args=(node, m, s)) for node, (m, s) in zip(nodes, split,
                                                                                                    strict=True)]
                t0 = time.monotonic()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if errors:
                    raise errors[0]
                return args.count / (time.monotonic() - t0), args.count

            url = nodes[0].store_url
            wal0 = asyncio.run(wal_and_size(url))[0] if url else 0
            run = self.measure(label, nodes, drive)
            if url:
                wal1, run.db_size = asyncio.run(wal_and_size(url))
                run.wal = wal1 - wal0
            stored = asyncio.run(inbox_count(nodes[0], smtp.USER))
            run.note = f"{stored} stored"
            if stored != args.count:
                raise RuntimeError(f"{label}: {stored} messages in the INBOX, {args.count} accepted")
        return run

    def imap(self, engine: str, count: int, args: argparse.Namespace, messages: list[bytes]) -> Run:
        label = f"IMAP mix, {engine}, {count} node{'s' * (count > 1)}"
        with servers_stopped(self.work) as started:
            progress(f"{label}: {len(messages)} messages, {args.clients} clients x {args.imap_sessions} sessions")
            nodes = self.nodes(engine, count, "imap", imap.postroom_settings(0), messages, imap.USER,
                               imap.PASSWORD, started)
            clients = [args.clients * (i + 1) // count - args.clients * i // count for i in range(count)]

            def drive() -> tuple[float, int]:
                async def both() -> list[tuple[float, dict[str, list[float]]]]:
                    return await asyncio.gather(*(
                        imap.load(node.port, len(messages), c, args.imap_sessions, f"node {i}")
                        for i, (node, c) in enumerate(zip(nodes, clients, strict=True))))

                results = asyncio.run(both())
                commands = sum(len(v) for _, lat in results for v in lat.values())
                # imap.load's untimed warm-up: 4 sessions per node, inside the CPU accounting window
                warm = 4 * count * commands // (args.clients * args.imap_sessions)
                return commands / max(secs for secs, _ in results), commands + warm

            url = nodes[0].store_url
            wal0 = asyncio.run(wal_and_size(url))[0] if url else 0
            run = self.measure(label, nodes, drive)
            if url:
                wal1, run.db_size = asyncio.run(wal_and_size(url))
                run.wal = wal1 - wal0
            return run


async def wal_and_size(url: str) -> tuple[int, int]:
    """(bytes of WAL written since the server's start, so far; bytes of the database at `url`)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,"
                                  " pg_database_size(current_database())")
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


async def inbox_count(node: PrivatePostroom, user: str) -> int:
    """Messages in `user`'s INBOX, read through the store `node` serves."""
    store = open_store(node.store_url or f"sqlite:///{node.data / 'postroom.db'}", node.data)
    await store.open()
    try:
        account = await store.get_user(user)
        assert account is not None
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        return (await store.mailbox_status(inbox.id)).messages
    finally:
        await store.close()


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(title: str, unit: str, runs: list[Run], cores: int) -> None:
    sq, pg1, pg2 = runs
    print(f"\n{title}\n")
    print(f"| {unit} | SQLite, 1 node | PostgreSQL, 1 node | PostgreSQL, 2 nodes | PostgreSQL / SQLite "
          "| 2 nodes / 1 node |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| rate | {sq.rate:,.0f} | {pg1.rate:,.0f} | {pg2.rate:,.0f} | {ratio(pg1.rate, sq.rate)} "
          f"| {ratio(pg2.rate, pg1.rate)} |")
    print("\n| run | wall s | node CPU s | PostgreSQL CPU s | load generator CPU s | these / wall x cores "
          "| machine busy | node CPU ms per unit | PostgreSQL CPU ms per unit | WAL KiB per unit "
          "| database MiB at the end |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        total = sum(r.nodes) + r.postgres + r.client
        units = r.units
        print(f"| {r.label}{f' ({r.note})' if r.note else ''} | {r.wall:.1f} "
              f"| {' + '.join(f'{c:.1f}' for c in r.nodes)} | {r.postgres:.1f} | {r.client:.1f} "
              f"| {total / (r.wall * cores) * 100:.0f}% | {r.machine * 100:.0f}% | {sum(r.nodes) / units * 1000:.2f} "
              f"| {r.postgres / units * 1000:.2f} | {r.wal / units / 1024:.1f} | {r.db_size / (1 << 20):.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=4000, help="SMTP: messages (default 4000)")
    ap.add_argument("--size", type=int, default=5120, help="SMTP: bytes per message (default 5120)")
    ap.add_argument("--sessions", type=int, default=20, help="SMTP: parallel sessions (default 20)")
    ap.add_argument("--imap-count", type=int, default=2000, help="IMAP: messages in the mailbox (default 2000)")
    ap.add_argument("--clients", type=int, default=10, help="IMAP: concurrent clients (default 10)")
    ap.add_argument("--imap-sessions", type=int, default=10, help="IMAP: sessions per client (default 10)")
    ap.add_argument("--workers", type=int, default=1, help="server.workers of each node (default 1)")
    ap.add_argument("--only", choices=("smtp", "imap"), help="run one of the two loads")
    ap.add_argument("--dir", default=str(ROOT / "bench" / "results"), help="work folder (default bench/results/)")
    args = ap.parse_args()
    # SIGTERM ends the run as Ctrl-C does: through the `finally` blocks that stop every process by its PID
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    why = pgcluster.available()
    if why:
        progress(f"bench/scale.py needs PostgreSQL: {why}")
        return 2
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="scale-bench-", dir=args.dir))
    cores = len(os.sched_getaffinity(0))
    cluster = pgcluster.Cluster()
    smtp_runs: list[Run] = []
    imap_runs: list[Run] = []
    try:
        cluster.start()
        progress(f"PostgreSQL on 127.0.0.1:{cluster.port} (PID {cluster.process.pid if cluster.process else '?'}),"
                 f" {cores} cores, {args.workers} worker process(es) per node")
        bench = Bench(root / "work", cluster, args.workers)
        if args.only in (None, "smtp"):
            smtp_runs = [bench.smtp(engine, n, args) for engine, n in SETUPS]
        if args.only in (None, "imap"):
            messages = imap.make_messages(args.imap_count)
            imap_runs = [bench.imap(engine, n, args, messages) for engine, n in SETUPS]
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{cores} cores; each node {args.workers} worker process(es); PostgreSQL {cluster_version()} "
          "(fsync on, shared_buffers 32MB) on the same machine")
    if smtp_runs:
        driver = "smtp-source" if shutil.which("smtp-source", path="/usr/sbin:/usr/bin") else "built-in client"
        report(f"SMTP durable ingest: {args.count} x {args.size} bytes, {args.sessions} sessions ({driver}), "
               "messages/s accepted and stored", "messages/s", smtp_runs, cores)
    if imap_runs:
        report(f"IMAP stress mix (bench/imap.py): {args.imap_count} messages, {args.clients} clients x "
               f"{args.imap_sessions} sessions, commands/s", "commands/s", imap_runs, cores)
    return 0


def cluster_version() -> str:
    bindir = pgcluster.server_bin()
    return bindir.parent.name if bindir is not None else "?"


if __name__ == "__main__":
    raise SystemExit(main())
