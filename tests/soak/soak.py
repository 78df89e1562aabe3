"""`./run soak`: well-behaved clients beside hostile ones against a real `postroom serve`, with a verdict.

Usage: ./run soak [--minutes 10] [--baseline-minutes 2] [--well 50] [--hostile 50] [--keep DIR]

Theory of operation
-------------------
One `postroom serve` process (every listener on a free loopback port, its own data folder, plaintext logins
allowed on loopback, `limits.message_size` 8 MiB so that "twice SIZE" stays quick on loopback) is started and
filled through the store with users. Two phases follow, against the same server:

1. baseline: the well-behaved clients alone, for `--baseline-minutes`;
2. mixed: the same well-behaved clients beside `--hostile` hostile ones, for `--minutes`.

Well-behaved clients speak SMTP (MX delivery to `SINKS` local users, 5 KB messages with unique
Message-IDs), IMAP (SELECT, FETCH, SEARCH, STORE, NOOP on a long-lived session) and POP3 (STAT, LIST, RETR,
NOOP; each its own maildrop). IMAP and POP3 users start with `READER_MESSAGES` messages and SMTP delivers
elsewhere, so their work is the same in both phases. Every command is timed from the last byte sent to the
whole reply read. Logins are timed apart: they cost an argon2 check by design, and a login storm may queue them.

Hostile clients loop over the inputs of the hostile-input issue and a mutation fuzzer (tests/fuzz): quadratic
HTML, a 650-key SEARCH over large messages, DATA at twice SIZE, FETCH of one item 500 times, 8-bit header
parameters, 8-bit mailbox names, a byte a second, wrong-password storms against the well-behaved users' names,
bare CR and NUL in DATA, overlong lines, and mutated protocol sessions sent raw to each port.

The verdict (exit status 1 if any check fails):
* every well-behaved command answered as expected (errors listed by kind);
* p99 command latency of the well-behaved clients in the mixed phase within 2x of the baseline's (per protocol);
* peak RSS summed over the server and all its descendant processes under 300 MB;
* every message acknowledged with 250 (well-behaved or hostile) is stored exactly once (read back over IMAP by
  Message-ID after the run).

Everything runs on 127.0.0.1 on high ports; the server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests" / "fuzz")]

from common import free_port, stop_process, wait_port  # noqa: E402  (bench/common.py)
from fuzz_targets import SEEDS, mutate  # noqa: E402

from postroom.auth.passwords import make_credentials  # noqa: E402
from postroom.mime.meta import compute_meta  # noqa: E402
from postroom.store import open_store  # noqa: E402
from postroom.store.api import AppendRequest  # noqa: E402

DOMAIN = "soak.test"
PASSWORD = "soak-password-1"
HOSTILE_USER = f"target@{DOMAIN}"
READER_MESSAGES = 200  # in each IMAP and POP3 user's INBOX, fixed for the run
SINKS = 10  # users the well-behaved SMTP clients deliver to (nobody reads them during the run)
MESSAGE_SIZE = 8 * 1024 * 1024
LISTENERS = ("smtp", "imap", "pop3", "http")
RSS_GOAL = 300 * 1024 * 1024
LATENCY_RATIO_GOAL = 2.0
REPLY_TIMEOUT = 120.0  # a well-behaved command not answered in this long is an error, not a latency


# ---------------------------------------------------------------------------------------------------------
# The server


class SoakServer:
    """`postroom serve` in its own process with its own data folder; stopped by PID."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.ports = {name: free_port() for name in LISTENERS}
        self.proc: subprocess.Popen[bytes] | None = None

    def create(self, users: list[str], readers: list[str]) -> None:
        """The domain and `users`; each of `readers` gets `READER_MESSAGES` messages in INBOX (as delivery
        stores them), so IMAP and POP3 clients work on mailboxes that do not grow during the run."""
        self.data.mkdir(parents=True)

        async def fill() -> None:
            store = open_store(f"sqlite:///{self.data / 'postroom.db'}", self.data)
            await store.open()
            try:
                await store.add_domain(DOMAIN)
                h, scram = await asyncio.to_thread(make_credentials, PASSWORD)
                for user in users:
                    account = await store.add_user(user, h, scram)
                    if user in readers:
                        box = await store.get_mailbox(account.id, "INBOX")
                        assert box is not None
                        raws = [message(i, "filler@remote.test", user)[1] for i in range(READER_MESSAGES)]
                        await store.append_many(box.id, [AppendRequest(raw=r, meta=compute_meta(r).to_bytes())
                                                         for r in raws])
            finally:
                await store.close()

        asyncio.run(fill())

    def start(self) -> None:
        conf = self.base / "postroom.toml"
        listeners = "\n".join(f'{n} = "127.0.0.1:{p}"' for n, p in self.ports.items())
        off = "\n".join(f'{n} = ""' for n in ("submission", "submissions", "imaps", "pop3s", "https"))
        conf.write_text(
            f'[server]\nhostname = "mx.{DOMAIN}"\ndata_dir = "{self.data}"\nshutdown_grace_seconds = 5\n'
            f"[listeners]\n{listeners}\n{off}\n"
            "[auth]\nallow_plaintext = true\n"
            f"[limits]\nmessage_size = {MESSAGE_SIZE}\nliteral_size = {MESSAGE_SIZE}\n"
            "connections_per_ip = 100\nconnections_total = 2000\n"
            "[delivery]\nenabled = false\n[inbound]\nspf = false\ndkim = false\ndmarc = false\narc = false\n"
        )
        exe = Path(sys.executable).with_name("postroom")
        with open(self.base / "postroom.log", "ab") as log:
            self.proc = subprocess.Popen([str(exe), "--config", str(conf), "serve"], stdout=subprocess.DEVNULL,
                                         stderr=log)
        for name in ("smtp", "imap", "pop3"):
            wait_port(self.ports[name], self.proc, "postroom", None, 60)

    def rss(self) -> int:
        """Resident bytes of the server process and every descendant (a worker pool included)."""
        assert self.proc is not None
        children: dict[int, list[int]] = collections.defaultdict(list)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(entry))
        total, todo = 0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 60)
            self.proc = None


# ---------------------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    acked: list[tuple[str, str]] = field(default_factory=list)  # (recipient, Message-ID) answered 250
    hostile_runs: collections.Counter[str] = field(default_factory=collections.Counter)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class Conn:
    """A line-oriented client connection that times each exchange into `stats.latency[kind]`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: Stats, proto: str):
        self.r, self.w, self.stats, self.proto = reader, writer, stats, proto

    @classmethod
    async def open(cls, port: int, stats: Stats, proto: str) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=16 * 1024 * 1024)
        return cls(reader, writer, stats, proto)

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.r.readline(), REPLY_TIMEOUT)

    async def smtp_reply(self) -> bytes:
        while True:
            line = await self.line()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return line

    async def timed(self, data: bytes, read: object, kind: str) -> bytes:
        self.w.write(data)
        await self.w.drain()
        t = time.monotonic()
        got: bytes = await read()  # type: ignore[operator]
        self.stats.latency[kind].append(time.monotonic() - t)
        return got

    def close(self) -> None:
        self.w.close()


def message(i: int, sender: str, to: str, size: int = 5000) -> tuple[str, bytes]:
    mid = f"<soak.{i}.{random.getrandbits(48):x}@{DOMAIN}>"
    body = (b"Soak test line of text, nothing more to it.\r\n" * (size // 46 + 1))[:size]
    head = (f"From: {sender}\r\nTo: {to}\r\nSubject: soak {i}\r\nMessage-ID: {mid}\r\n"
            f"Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n\r\n").encode()
    return mid, head + body


# ---------------------------------------------------------------------------------------------------------
# Well-behaved clients


async def reconnecting(proto: str, port: int, stats: Stats, stop: asyncio.Event,
                       session: Callable[[Conn], Awaitable[None]]) -> None:
    """Run `session` on fresh connections until `stop`; a failure counts as an error (unless stopping), then
    the client waits half a second and connects again."""
    while not stop.is_set():
        try:
            c = await Conn.open(port, stats, proto)
            try:
                await session(c)
            finally:
                c.close()
        except (TimeoutError, OSError, ConnectionError) as exc:
            if not stop.is_set():
                stats.errors[f"{proto} {exc if str(exc) == 'login refused' else type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)


async def smtp_client(port: int, rcpts: list[str], stats: Stats, stop: asyncio.Event, n: int) -> None:
    counter = 0

    async def session(c: Conn) -> None:
        nonlocal counter
        await c.smtp_reply()
        await c.timed(b"EHLO client.soak\r\n", c.smtp_reply, "smtp")
        for _ in range(5):
            if stop.is_set():
                break
            counter += 1
            to = rcpts[(n + counter) % len(rcpts)]
            mid, raw = message(n * 1_000_000 + counter, "sender@remote.test", to)
            for cmd in (b"MAIL FROM:<sender@remote.test>\r\n", f"RCPT TO:<{to}>\r\n".encode(), b"DATA\r\n"):
                got = await c.timed(cmd, c.smtp_reply, "smtp")
                if not got.startswith((b"250", b"354")):
                    stats.errors[f"smtp {cmd.split()[0].decode()} {got[:40]!r}"] += 1
                    raise ConnectionError("refused")
            got = await c.timed(raw.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n", c.smtp_reply, "smtp")
            if got.startswith(b"250"):
                stats.acked.append((to, mid))
            else:
                stats.errors[f"smtp DATA {got[:40]!r}"] += 1
        c.w.write(b"QUIT\r\n")

    await reconnecting("smtp", port, stats, stop, session)


async def imap_client(port: int, user: str, stats: Stats, stop: asyncio.Event) -> None:
    tag = 0

    async def command(c: Conn, text: str, kind: str = "imap") -> int:
        """Send one command, read to its tagged reply; returns the last `* n EXISTS` seen (0 if none)."""
        nonlocal tag
        tag += 1
        t = f"w{tag}".encode()
        exists = 0

        async def read() -> bytes:
            nonlocal exists
            while True:
                line = await c.line()
                if not line:
                    raise ConnectionError("closed")
                if line.startswith(b"* ") and line.rstrip().endswith(b" EXISTS"):
                    exists = int(line.split()[1])
                if line.startswith(t + b" "):
                    return line

        got = await c.timed(t + b" " + text.encode() + b"\r\n", read, kind)
        if not got.startswith(t + b" OK"):
            stats.errors[f"imap {text.split()[0]} {got[len(t) + 1:60]!r}"] += 1
            if kind == "login":
                raise ConnectionError("login refused")
        return exists

    async def session(c: Conn) -> None:
        await c.line()
        await command(c, f'LOGIN "{user}" "{PASSWORD}"', "login")
        for i in range(200):
            if stop.is_set():
                break
            exists = await command(c, "SELECT INBOX")
            if exists:
                await command(c, f"FETCH {max(1, exists - 19)}:{exists} (FLAGS ENVELOPE RFC822.SIZE)")
                await command(c, f"STORE {exists} {'+' if i % 2 else '-'}FLAGS (\\Seen)")
            await command(c, "UID SEARCH UNSEEN")
            await command(c, "NOOP")
        await command(c, "LOGOUT")

    await reconnecting("imap", port, stats, stop, session)


async def pop3_client(port: int, user: str, stats: Stats, stop: asyncio.Event) -> None:
    async def command(c: Conn, text: str, multi: bool = False, kind: str = "pop3") -> bytes:
        async def read() -> bytes:
            first = await c.line()
            if first.startswith(b"+OK") and multi:
                while (await c.line()) not in (b".\r\n", b""):
                    pass
            return first

        got = await c.timed(text.encode() + b"\r\n", read, kind)
        if not got.startswith(b"+OK"):
            stats.errors[f"pop3 {text.split()[0]} {got[:60]!r}"] += 1
            if kind == "login":
                raise ConnectionError("login refused")
        return got

    async def session(c: Conn) -> None:
        await c.line()
        await command(c, f"USER {user}", kind="login")
        await command(c, f"PASS {PASSWORD}", kind="login")
        stat = await command(c, "STAT")
        count = int(stat.split()[1]) if stat.startswith(b"+OK") else 0
        for i in range(100):
            if stop.is_set():
                break
            await command(c, "LIST", multi=True)
            if count:
                await command(c, f"RETR {1 + i % count}", multi=True)
            await command(c, "NOOP")
        await command(c, "QUIT")

    await reconnecting("pop3", port, stats, stop, session)


# ---------------------------------------------------------------------------------------------------------
# Hostile clients: each kind is one short attack; the server may refuse it any way it likes, but must live.


async def _raw(port: int, data: bytes | list[bytes], read_for: float = 2.0, source: str = "127.0.0.1") -> bytes:
    """Send `data` (pieces written one after the other) from `source`, then read what comes for `read_for` s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    got = bytearray()
    try:
        for piece in data if isinstance(data, list) else [data]:
            writer.write(piece)
            await writer.drain()
        end = time.monotonic() + read_for
        while time.monotonic() < end and len(got) < 1_000_000:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), max(0.01, end - time.monotonic()))
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    return bytes(got)


def _smtp_session(body: bytes, to: str = HOSTILE_USER) -> bytes:
    return (b"EHLO evil.test\r\nMAIL FROM:<evil@evil.test>\r\n" + f"RCPT TO:<{to}>\r\n".encode() + b"DATA\r\n"
            + body + b"\r\n.\r\nQUIT\r\n")


class Hostile:
    """One attacker with an address of its own (127.1.0.1 and up: all of 127/8 is loopback on Linux), as on the
    Internet: per-address limits, throttling and locks then meet attackers, not the well-behaved clients."""

    def __init__(self, ports: dict[str, int], victims: list[str], stats: Stats, index: int) -> None:
        self.ports, self.victims, self.stats = ports, victims, stats
        self.source = f"127.1.{index // 250}.{index % 250 + 1}"
        self.rng = random.Random()

    async def _raw(self, port: int, data: bytes | list[bytes], read_for: float = 2.0) -> bytes:
        return await _raw(port, data, read_for, source=self.source)

    async def html_bomb(self) -> None:
        mid, _ = message(0, "evil@evil.test", HOSTILE_USER)
        body = f"Message-ID: {mid}\r\nContent-Type: text/html\r\n\r\n".encode() + b"<a " * 20000
        got = await self._raw(self.ports["smtp"], _smtp_session(body), read_for=60)
        if b"\r\n250 " in got.split(b"354", 1)[-1]:
            self.stats.acked.append((HOSTILE_USER, mid))

    async def bad_param(self) -> None:
        mid, _ = message(0, "evil@evil.test", HOSTILE_USER)
        body = (f"Message-ID: {mid}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                "--b\r\nContent-Type: application/pdf\r\n").encode() + \
            b"Content-Disposition: attachment; filename*=iso-8859-1''caf\xe9.pdf\r\n\r\nxx\r\n--b--"
        got = await self._raw(self.ports["smtp"], _smtp_session(body), read_for=30)
        if b"\r\n250 " in got.split(b"354", 1)[-1]:
            self.stats.acked.append((HOSTILE_USER, mid))

    async def oversize(self) -> None:
        head = b"EHLO evil.test\r\nMAIL FROM:<evil@evil.test>\r\n" + f"RCPT TO:<{HOSTILE_USER}>\r\n".encode()
        chunk = b"X" * 998 + b"\r\n"
        pieces = [head + b"DATA\r\n"] + [chunk * 1024] * (2 * MESSAGE_SIZE // (1000 * 1024)) + [b".\r\nQUIT\r\n"]
        await self._raw(self.ports["smtp"], pieces, read_for=30)

    async def bare_cr_nul(self) -> None:
        body = self.rng.choice([b"hello\r.\r\nMAIL FROM:<x@y>", b"a\r\n\x00.\r\nb", b"c\rd\ne"])
        await self._raw(self.ports["smtp"], _smtp_session(b"Subject: x\r\n\r\n" + body), read_for=5)

    async def long_line(self) -> None:
        port = self.ports[self.rng.choice(["smtp", "imap", "pop3"])]
        await self._raw(port, [b"A" * 65536] * 16 + [b"\r\n"], read_for=3)

    async def trickle(self) -> None:
        port = self.ports[self.rng.choice(["smtp", "imap", "pop3"])]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(self.source, 0))
        try:
            for b in b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP\r\n":
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(1)
                if writer.is_closing() or reader.at_eof():
                    break
        except OSError:
            pass
        finally:
            writer.close()

    async def wrong_passwords(self) -> None:
        victim = self.rng.choice(self.victims)
        proto = self.rng.choice(["imap", "pop3"])
        if proto == "imap":
            data = b"".join(f'x{i} LOGIN "{victim}" "wrong{i}"\r\n'.encode() for i in range(5)) + b"x LOGOUT\r\n"
        else:
            data = b"".join(f"USER {victim}\r\nPASS wrong{i}\r\n".encode() for i in range(5)) + b"QUIT\r\n"
        await self._raw(self.ports[proto], data, read_for=30)

    async def imap_attacks(self) -> None:
        kind = self.rng.randrange(3)
        login = f'h1 LOGIN "{HOSTILE_USER}" "{PASSWORD}"\r\nh2 SELECT INBOX\r\n'.encode()
        if kind == 0:
            keys = b" ".join([b"NOT TEXT zzqx%d" % i for i in range(650)])
            await self._raw(self.ports["imap"], [login, b"h3 SEARCH " + keys + b"\r\nh4 LOGOUT\r\n"], read_for=30)
        elif kind == 1:
            items = b" ".join([b"RFC822"] * 500)
            await self._raw(self.ports["imap"], [login, b"h3 FETCH 1 (" + items + b")\r\nh4 LOGOUT\r\n"], read_for=30)
        else:
            names = [b"\xff", b"a\xc3", b"&Jjo", b"&-\xfe"]
            cmds = b"".join(b"h%d %s \"%s\"\r\n" % (i, v, n) for i, (v, n) in enumerate(
                (v, n) for v in (b"CREATE", b"SELECT", b"STATUS", b"DELETE", b"SUBSCRIBE") for n in names))
            await self._raw(self.ports["imap"], [login, cmds + b"h9 LOGOUT\r\n"], read_for=10)

    async def fuzz(self) -> None:
        proto = self.rng.choice(["smtp", "imap", "pop3"])
        data = mutate(self.rng, self.rng.choice(SEEDS[proto]), SEEDS[proto])
        await self._raw(self.ports[proto], data, read_for=2)

    async def run(self, stop: asyncio.Event) -> None:
        attacks = [self.html_bomb, self.bad_param, self.oversize, self.bare_cr_nul, self.long_line, self.trickle,
                   self.wrong_passwords, self.imap_attacks, self.fuzz, self.fuzz, self.fuzz]
        while not stop.is_set():
            attack = self.rng.choice(attacks)
            self.stats.hostile_runs[attack.__name__] += 1
            try:
                await asyncio.wait_for(attack(), 180)
            except (TimeoutError, OSError, ConnectionError):
                pass  # refusing, resetting or ignoring an attacker is the server's right


# ---------------------------------------------------------------------------------------------------------
# The run


async def prepare_hostile_mailbox(port: int) -> None:
    """Twenty 260 KB messages in the hostile user's INBOX, for the SEARCH attack (delivered over SMTP)."""
    for i in range(20):
        _, raw = message(-i - 1, "filler@remote.test", HOSTILE_USER, size=260_000)
        got = await _raw(port, _smtp_session(raw), read_for=20)
        if b"250" not in got.split(b"354", 1)[-1]:
            raise RuntimeError(f"could not fill the hostile mailbox: {got[-200:]!r}")


async def phase(server: SoakServer, users: dict[str, list[str]], seconds: float, hostile: int,
                peak: list[int]) -> Stats:
    stats = Stats()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(smtp_client(server.ports["smtp"], users["rcpt"], stats, stop, n))
             for n in range(len(users["smtp"]))]
    tasks += [asyncio.create_task(imap_client(server.ports["imap"], u, stats, stop)) for u in users["imap"]]
    tasks += [asyncio.create_task(pop3_client(server.ports["pop3"], u, stats, stop)) for u in users["pop3"]]
    victims = users["imap"] + users["pop3"]
    tasks += [asyncio.create_task(Hostile(server.ports, victims, stats, i).run(stop)) for i in range(hostile)]
    start = time.monotonic()
    next_report = start + 30
    while time.monotonic() - start < seconds:
        await asyncio.sleep(0.5)
        peak[0] = max(peak[0], server.rss())
        if server.proc is not None and server.proc.poll() is not None:
            stats.errors["server exited"] += 1
            break
        if time.monotonic() >= next_report:
            next_report += 30
            done = sum(len(v) for k, v in stats.latency.items() if k != "login")
            print(f"  {time.monotonic() - start:5.0f} s: {done:,} commands, {len(stats.acked):,} messages, "
                  f"{sum(stats.errors.values())} errors, RSS {server.rss() / 2**20:.0f} MB", file=sys.stderr)
    stop.set()
    await asyncio.wait(tasks, timeout=200)
    for t in tasks:
        t.cancel()
    return stats


async def stored_once(port: int, acked: list[tuple[str, str]]) -> list[str]:
    """Problems with the acknowledged messages: each must be in its recipient's INBOX exactly once."""
    by_user: dict[str, list[str]] = collections.defaultdict(list)
    for user, mid in acked:
        by_user[user].append(mid)
    problems = []
    for user, mids in by_user.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=256 * 1024 * 1024)
        try:
            await reader.readline()
            writer.write(f'a LOGIN "{user}" "{PASSWORD}"\r\nb SELECT INBOX\r\n'
                         "c FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])\r\nd LOGOUT\r\n".encode())
            text = await asyncio.wait_for(reader.read(), 600)
        finally:
            writer.close()
        if b"\r\nc OK" not in text:
            problems.append(f"{user}: INBOX could not be read back: {text[-200:]!r}")
            continue
        seen = collections.Counter(m.lower() for m in re.findall(rb"<soak\.[^>]+>", text))
        for mid in mids:
            n = seen[mid.encode().lower()]
            if n != 1:
                problems.append(f"{user} {mid}: stored {n} times")
    return problems


def table(base: Stats, mixed: Stats) -> list[str]:
    rows = ["| protocol | baseline commands | baseline p50 / p99 ms | mixed commands | mixed p50 / p99 ms | "
            "p99 ratio |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for kind in ("smtp", "imap", "pop3", "login"):
        b, m = base.latency.get(kind, []), mixed.latency.get(kind, [])
        ratio = percentile(m, 0.99) / percentile(b, 0.99) if b and m else float("nan")
        rows.append(f"| {kind} | {len(b):,} | {percentile(b, .5) * 1e3:.1f} / {percentile(b, .99) * 1e3:.1f} | "
                    f"{len(m):,} | {percentile(m, .5) * 1e3:.1f} / {percentile(m, .99) * 1e3:.1f} | {ratio:.2f}x |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the mixed phase (default 10)")
    ap.add_argument("--baseline-minutes", type=float, default=2.0, help="length of the baseline (default 2)")
    ap.add_argument("--well", type=int, default=50, help="well-behaved clients (default 50: 20 SMTP, 20 IMAP, 10 "
                    "POP3 in that proportion)")
    ap.add_argument("--hostile", type=int, default=50, help="hostile clients in the mixed phase (default 50)")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (server log, data)")
    args = ap.parse_args(argv)

    n_smtp, n_imap = args.well * 2 // 5, args.well * 2 // 5
    n_pop3 = max(1, args.well - n_smtp - n_imap)
    users = {"imap": [f"imap{i}@{DOMAIN}" for i in range(n_imap)],
             "pop3": [f"pop{i}@{DOMAIN}" for i in range(n_pop3)],
             "smtp": [f"smtp{i}" for i in range(n_smtp)]}
    # SMTP delivers to users nobody reads during the run, so the mailboxes IMAP and POP3 work on stay the same
    # size in both phases: the comparison is then of the hostile clients' effect, not of mailbox growth.
    users["rcpt"] = [f"sink{i}@{DOMAIN}" for i in range(SINKS)]
    base = args.keep or Path(tempfile.mkdtemp(prefix="postroom-soak-"))
    server = SoakServer(base)
    try:
        print(f"soak: {args.well} well-behaved clients ({n_smtp} SMTP, {n_imap} IMAP, {n_pop3} POP3), "
              f"{args.hostile} hostile; baseline {args.baseline_minutes:g} min, mixed {args.minutes:g} min; "
              f"work in {base}", file=sys.stderr)
        server.create(users["rcpt"] + users["imap"] + users["pop3"] + [HOSTILE_USER], users["imap"] + users["pop3"])
        server.start()
        asyncio.run(prepare_hostile_mailbox(server.ports["smtp"]))
        peak_base, peak_mixed = [0], [0]
        print("baseline phase", file=sys.stderr)
        b = asyncio.run(phase(server, users, args.baseline_minutes * 60, 0, peak_base))
        print("mixed phase", file=sys.stderr)
        m = asyncio.run(phase(server, users, args.minutes * 60, args.hostile, peak_mixed))
        print("checking that every acknowledged message is stored once", file=sys.stderr)
        problems = asyncio.run(stored_once(server.ports["imap"], b.acked + m.acked))
    finally:
        server.stop()
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\nsoak run {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs\n")
    print("\n".join(table(b, m)))
    print(f"\nhostile attacks run: {', '.join(f'{k} {v}' for k, v in sorted(m.hostile_runs.items()))}")
    print(f"peak RSS of the server and its children: baseline {peak_base[0] / 2**20:.0f} MB, "
          f"mixed {peak_mixed[0] / 2**20:.0f} MB (goal under {RSS_GOAL / 2**20:.0f} MB)")
    print(f"messages acknowledged: {len(b.acked) + len(m.acked):,}; stored exactly once: "
          f"{len(b.acked) + len(m.acked) - len(problems):,}")
    failures = []
    for kind in ("smtp", "imap", "pop3"):
        pb, pm = percentile(b.latency.get(kind, []), .99), percentile(m.latency.get(kind, []), .99)
        if not (pm <= LATENCY_RATIO_GOAL * pb):
            failures.append(f"{kind} p99 {pm * 1e3:.1f} ms is over {LATENCY_RATIO_GOAL}x the baseline's "
                            f"{pb * 1e3:.1f} ms")
    if peak_mixed[0] >= RSS_GOAL:
        failures.append(f"peak RSS {peak_mixed[0] / 2**20:.0f} MB")
    for name, st in (("baseline", b), ("mixed", m)):
        for err, n in st.errors.most_common():
            failures.append(f"{name}: well-behaved error x{n}: {err}")
    failures += problems[:50]
    print("\nverdict: " + ("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
