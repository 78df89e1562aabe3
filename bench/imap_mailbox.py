"""Whole-mailbox IMAP commands on a large mailbox: Postroom beside Dovecot, one session, one command at a time.

    .venv/bin/python bench/imap_mailbox.py [--count 20000] [--runs 3] [--dir PATH] [--only NAME,...]

A mailbox of --count messages is built the same way for both servers (bench/imap.py explains how each server
is started and filled): conversations of one to eight messages with Message-ID, In-Reply-To and References
(a few without Date, a few with a duplicate Message-ID, "Re:" / "Fwd:" / "[list]" subject prefixes, some RFC
2047 subjects), plain and multipart bodies of about 6 KiB, a rare word ("zanzibar") in the body of 1 % of
the messages, 50 subject topics (2 % each) and 97 senders.

For each command the table gives the median of --runs timed runs after one untimed warm-up run (Dovecot builds
or updates its index then; both fill the page cache), on each server, and the ratio Postroom / Dovecot (under
1.0x: Postroom is faster). A command a server refuses is shown as "refused" with its answer in the log.
The last rows are each server's memory (all its processes): the peak of the PSS and of the RSS sums while the
commands ran, the same sums just before them (the three sessions logged in, one with the mailbox selected:
a LOGIN's argon2id hash, 64 MiB for a moment, is not the commands'), and the growth (peak - idle); below the
table, the process that grew most.

The commands are those of issue 17's large-mailbox rows and issue 14's goals:

    FETCH 1:* (FLAGS), UID SEARCH UNSEEN, SEARCH SUBJECT topicN, SEARCH FROM "Sender N",
    FETCH 1:* (UID ENVELOPE BODYSTRUCTURE), SEARCH TEXT zanzibar, SEARCH BODY zanzibar,
    UID SORT (DATE), UID SORT (SUBJECT), UID SORT (FROM), UID THREAD REFERENCES,
    QRESYNC resync: SELECT with (QRESYNC (uidvalidity modseq)) after another session changed flags of 1 % of
    the messages and expunged 0.1 % (the changes are made again, untimed, before each timed run).

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dovecot  # bench/dovecot.py
from common import memory_of, process_tree, progress, servers_stopped  # bench/common.py
from imap import PASSWORD, USER, Client, start_dovecot, start_postroom, with_body  # bench/imap.py

RARE = "zanzibar"
LINE = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\r\n"


def make_messages(count: int) -> list[bytes]:
    """`count` messages in conversations (module doc). Deterministic: the same list for both servers."""
    rng = random.Random(5256)
    out: list[bytes] = []
    thread_refs: list[str] = []
    thread_subject = ""
    left_in_thread = 0
    for i in range(count):
        if left_in_thread == 0:
            left_in_thread = rng.randint(1, 8)
            thread_refs = []
            topic = i % 50
            if i % 40 == 3:
                thread_subject = f"=?utf-8?q?caf=C3=A9_topic{topic}?= number {i}"
            else:
                thread_subject = f"bench message {i} topic{topic}"
        left_in_thread -= 1
        msgid = f"<{i}@bench.example>" if i % 500 != 250 else "<duplicate@bench.example>"
        subject = thread_subject if not thread_refs else rng.choice(["Re: ", "RE: ", "Fwd: ", "[list] Re: "]) + \
            thread_subject
        day = 1 + (i * 7919) % 28
        hour = (i * 31) % 24
        date = f"Date: {['Mon', 'Tue', 'Wed', 'Thu'][i % 4]}, {day} Jan 2024 {hour:02d}:{i % 60:02d}:00 +0100\r\n"
        if i % 300 == 17:
            date = ""  # no Date: SORT DATE falls back to the internal date (RFC 5256 §2.2)
        refs = ""
        if thread_refs:
            refs = f"In-Reply-To: {thread_refs[-1]}\r\nReferences: {' '.join(thread_refs[-10:])}\r\n"
        thread_refs.append(msgid)
        head = (f"From: Sender {i % 97} <sender{i % 97}@example.net>\r\nTo: {USER}\r\n"
                f"Subject: {subject}\r\n{date}Message-ID: {msgid}\r\n{refs}MIME-Version: 1.0\r\n").encode()
        target = max(600, int(rng.uniform(0.2, 1.8) * 6000))
        body = (LINE * (target // len(LINE) + 1))[:target].rstrip(b"\r\n") + b"\r\n"
        if i % 100 == 7:
            body = b"A line with the rare word " + RARE.encode() + b" in it.\r\n" + body
        out.append(with_body(head, body, attachment=i % 4 == 0))
    return out


class Refused(Exception):
    pass


class PeakMemory:
    """Samples the memory of a process tree every 100 ms in a thread (bench/common.py `memory_of`, from
    /proc/PID/smaps_rollup): `idle` is the tree's (RSS, PSS) in bytes when it starts (before the commands),
    `peak` the largest of each sum seen, and `grown` the process that grew most in PSS over its own first
    reading (its command line and the growth in bytes), so the table says which process holds the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.idle = self.peak = (0, 0)
        self.first: dict[int, int] = {}  # pid -> PSS at its first reading
        self.grown: tuple[str, int] = ("", 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        rss = pss = 0
        for p in process_tree(self.pid):
            r, s = memory_of(p)
            rss, pss = rss + r, pss + s
            base = self.first.setdefault(p, s)
            if s - base > self.grown[1]:
                try:
                    args = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace").split("\0")
                except OSError:
                    args = [str(p)]
                name = " ".join(Path(a).name if "/" in a else a for a in args if a)
                self.grown = (f"{name[:70]} (pid {p}{', the tree root' if p == self.pid else ''})", s - base)
        return rss, pss

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            rss, pss = self.sample()
            self.peak = (max(self.peak[0], rss), max(self.peak[1], pss))

    def start(self) -> None:
        """Take the idle reading and start sampling."""
        self.idle = self.peak = self.sample()
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()


async def command(c: Client, text: bytes) -> list[bytes]:
    try:
        return await c.cmd(text)
    except RuntimeError as e:
        raise Refused(str(e)) from None


def mailbox_state(lines: list[bytes]) -> tuple[int, int]:
    """(UIDVALIDITY, HIGHESTMODSEQ) from a SELECT's untagged responses."""
    text = b"".join(lines)
    v = re.search(rb"UIDVALIDITY (\d+)", text)
    m = re.search(rb"HIGHESTMODSEQ (\d+)", text)
    if not v or not m:
        raise Refused("no UIDVALIDITY / HIGHESTMODSEQ in SELECT")
    return int(v.group(1)), int(m.group(1))


async def run_all(port: int, count: int, runs: int, only: set[str], label: str,
                  mem: PeakMemory) -> dict[str, float | str]:
    """The timed commands; `mem` starts sampling once the three sessions are logged in and one has the mailbox
    selected, so a LOGIN's password hash (argon2id: 64 MiB for a moment) is not counted as the commands'."""
    c = await Client.connect(port)
    await c.cmd(f'LOGIN "{USER}" "{PASSWORD}"'.encode())
    other = await Client.connect(port)
    await other.cmd(f'LOGIN "{USER}" "{PASSWORD}"'.encode())
    await c.cmd(b"SELECT INBOX")
    await other.cmd(b"SELECT INBOX")
    q = await Client.connect(port)  # the resyncing client: QRESYNC enabled only here (it adds MODSEQ to FETCH)
    await q.cmd(f'LOGIN "{USER}" "{PASSWORD}"'.encode())
    rng = random.Random(7162)
    q_state = {"enabled": False}
    await asyncio.to_thread(mem.start)

    async def qresync_prepare() -> bytes:
        # q caches the mailbox state, `other` changes 1 % of the flags and expunges 0.1 %, q re-selects.
        if not q_state["enabled"]:
            await command(q, b"ENABLE QRESYNC")  # RFC 5161 §3.1: in the authenticated state only, so once
            q_state["enabled"] = True
        else:
            await q.cmd(b"UNSELECT")  # the last timed run left the mailbox selected
        state = mailbox_state(await command(q, b"SELECT INBOX"))
        await q.cmd(b"UNSELECT")
        exists = count  # sequence numbers, roughly: expunges shrink the mailbox a little each run
        picks = sorted(rng.sample(range(1, exists // 2), max(1, exists // 100)))
        await other.cmd(b"STORE " + ",".join(map(str, picks)).encode() + b" +FLAGS.SILENT (\\Flagged)")
        gone = picks[: max(1, exists // 1000)]
        await other.cmd(b"STORE " + ",".join(map(str, gone)).encode() + b" +FLAGS.SILENT (\\Deleted)")
        await other.cmd(b"EXPUNGE")
        return b"SELECT INBOX (QRESYNC (%d %d))" % state

    cases: list[tuple[str, Callable[[], Awaitable[bytes]] | bytes, Client]] = [
        ("FETCH 1:* (FLAGS)", b"FETCH 1:* (FLAGS)", c),
        ("UID SEARCH UNSEEN", b"UID SEARCH UNSEEN", c),
        ("SEARCH SUBJECT topic17", b"SEARCH SUBJECT topic17", c),
        ('SEARCH FROM "Sender 13"', b'SEARCH FROM "Sender 13"', c),
        ("FETCH 1:* (UID ENVELOPE BODYSTRUCTURE)", b"FETCH 1:* (UID ENVELOPE BODYSTRUCTURE)", c),
        (f"SEARCH TEXT {RARE}", f"SEARCH TEXT {RARE}".encode(), c),
        (f"SEARCH BODY {RARE}", f"SEARCH BODY {RARE}".encode(), c),
        ("UID SORT (DATE)", b"UID SORT (DATE) UTF-8 ALL", c),
        ("UID SORT (SUBJECT)", b"UID SORT (SUBJECT) UTF-8 ALL", c),
        ("UID SORT (FROM)", b"UID SORT (FROM) UTF-8 ALL", c),
        ("UID THREAD REFERENCES", b"UID THREAD REFERENCES UTF-8 ALL", c),
        ("QRESYNC resync, 1 % changed", qresync_prepare, q),
    ]
    out: dict[str, float | str] = {}
    for name, case, client in cases:
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        times: list[float] = []
        try:
            for r in range(runs + 1):
                text = await case() if callable(case) else case
                progress(f"\r  {label:<20} {name:<40} run {r}/{runs}", end="")
                t = time.perf_counter()
                await command(client, text)
                if r:
                    times.append(time.perf_counter() - t)
            out[name] = statistics.median(times)
        except Refused as e:
            progress(f"\n  {label}: {name} refused: {e}")
            out[name] = "refused"
            if client is c:
                await c.cmd(b"SELECT INBOX")
    progress("")
    for x in (c, other, q):
        x.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20000, help="messages in the mailbox (default 20000)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per command (the median is shown)")
    ap.add_argument("--only", default="", help="comma-separated parts of command names to run (default: all)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--postroom-only", action="store_true", help="skip Dovecot (its column shows -)")
    args = ap.parse_args()
    only = {o.strip() for o in args.only.split(",") if o.strip()}

    work = Path(tempfile.mkdtemp(prefix="imap-mailbox-bench-", dir=args.dir))
    messages = make_messages(args.count)
    total_mib = sum(map(len, messages)) / (1 << 20)
    progress(f"imap mailbox bench: {args.count} messages, {total_mib:.1f} MiB, in {work}")
    results: dict[str, tuple[dict[str, float | str], PeakMemory]] = {}
    servers = [("Postroom", start_postroom), (f"Dovecot {dovecot.version()}", start_dovecot)]
    with servers_stopped(work) as started:
        for name, start in servers[:1] if args.postroom_only else servers:
            server, port = start(work, messages, 0)
            started.append(server)
            mem = PeakMemory(server.pid)
            try:
                got = asyncio.run(run_all(port, args.count, args.runs, only, name, mem))
            finally:
                mem.stop()
            results[name] = (got, mem)
            server.stop()

    pr, dv = servers[0][0], servers[1][0]
    print(f"\nLarge mailbox: {args.count} messages ({total_mib:.1f} MiB), one session, median of {args.runs} runs, "
          "seconds")
    print(f"| command | {pr} | {dv} | ratio (Postroom / Dovecot) |")
    print("| --- | ---: | ---: | ---: |")

    def cell(v: float | str | None) -> str:
        return f"{v:.3f}" if isinstance(v, float) else (v or "-")

    none = PeakMemory(0)
    results.setdefault(dv, ({}, none))
    for name in results[pr][0]:
        a, b = results[pr][0].get(name), results[dv][0].get(name)
        ratio = f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) and b else "-"
        print(f"| {name} | {cell(a)} | {cell(b)} | {ratio} |")
    ma, mb = results[pr][1], results[dv][1]
    mib = 1 << 20
    for i, what in ((1, "PSS"), (0, "RSS")):
        a, b = ma.peak[i], mb.peak[i]
        print(f"| **peak {what} of the server** (all its processes) | {a / mib:,.0f} MiB | {b / mib:,.0f} MiB | "
              f"{a / b if b else 0:.2f}x |")
        a, b = ma.idle[i], mb.idle[i]
        print(f"| {what} before the commands (3 sessions logged in, idle) | {a / mib:,.0f} MiB | "
              f"{b / mib:,.0f} MiB | - |")
        a, b = ma.peak[i] - ma.idle[i], mb.peak[i] - mb.idle[i]
        print(f"| {what} growth while answering (peak - idle) | {a / mib:,.0f} MiB | {b / mib:,.0f} MiB | - |")
    print("\nMemory: sampled every 100 ms over each server's process tree (bench/common.py `memory_of`: PSS "
          "charges a page shared by n processes 1/n to each, so the PSS sum is what the tree holds; RSS counts it "
          "n times).")
    for name, (_, mem) in results.items():
        if mem is none:
            continue
        print(f"{name}: the process that grew most: `{mem.grown[0]}`, +{mem.grown[1] / mib:.0f} MiB PSS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
