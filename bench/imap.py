"""IMAP load: Postroom beside Dovecot on the same mailbox, with a realistic command mix and 1,000 idle sessions.

    .venv/bin/python bench/imap.py [--count 2000] [--clients 20] [--sessions 5] [--idle 1000] [--dir PATH]
    .venv/bin/python bench/imap.py --idle-only [--idle 1000] [--one-worker]
    .venv/bin/python bench/imap.py --churn [--count 2000] [--clients 10] [--sessions 20]
    .venv/bin/python bench/imap.py --steady [--count 2000] [--clients 10] [--seconds 20 | --rounds N] [--one-worker]
                                   [--per-command N] [--profile DIR]

A mailbox of --count messages (plain and multipart, sizes spread around 6 KiB) is put into a fresh Postroom
data folder (through the store, with its metadata computed as delivery does) and into a Maildir for a
throwaway Dovecot (Debian's dovecot-imapd: `dovecot -F` with a generated config, a passwd-file user holding
the same argon2id hash as Postroom's, plaintext logins, on a free high loopback port; stopped by its PID).
Postroom runs as its own process (`postroom serve`, only the imap listener), so client and server do not
share an interpreter.

The load generator is one asyncio client of our own. --clients concurrent clients each run --sessions
sessions of the mix a mail client does when it opens a mailbox and works in it:

    LOGIN, SELECT INBOX, FETCH 1:* (FLAGS UID ENVELOPE BODYSTRUCTURE) (the header list),
    10 x FETCH n BODY.PEEK[] (reading messages), UID SEARCH SUBJECT / UNSEEN (2 searches),
    STORE +FLAGS (\\Seen) / -FLAGS, APPEND to Drafts, IDLE then DONE, LOGOUT

Each command's latency is recorded by kind; the table gives operations per second over the whole run and the
50th/95th/99th latency percentiles, per server, and the ratio. Then --idle sessions are opened on each server
(LOGIN, SELECT, IDLE), first in plaintext (`imap`), then, once those are closed, over implicit TLS (`imaps`, RFC
8314 §3.3; both servers serve one generated EC P-256 certificate, the client negotiates what it would by
default: TLS 1.3), and the server's memory (all its processes: Dovecot runs one `imap` process per session, and
per TLS session also an `imap-login` process holding the TLS) is compared before and after: bytes per idle
session, as PSS (the proportional set size of /proc/PID/smaps_rollup: a page shared by n processes counts 1/n in
each, so the tree's sum is what it really holds; bench/common.py `memory_tree`) and as RSS (which counts a page
shared by forked processes once per process), and the PSS the second half of the sessions added, per session:
the first figure moves by a few KiB a session between runs (what the workers' heaps gave back when the sessions
before closed lands on the first new ones), the second much less (`idle_memory`). The stderr says how many
processes the tree had before and after. Python's own bytes per session, exactly: bench/imap_idle_alloc.py.
--idle-only skips the timed mix (the warm-up sessions still run).

Each server gets four untimed warm-up sessions first, at once (Dovecot builds its index, both fill the page
cache, every Postroom worker process warms its caches).
Progress goes to stderr, the table to stdout.

--churn measures login churn instead: phones that poll. Each session is a new connection doing

    LOGIN, SELECT INBOX, FETCH of the last 10 messages' (UID FLAGS), LOGOUT

so every fourth command is a LOGIN with the same argon2id hash on both servers (64 MiB, t=3, p=4). Four servers
run one after the other on the same mailbox: Postroom with its auth cache off (`auth.cache_ttl = 0`, every
LOGIN runs argon2) and on (the default, 300 s), Dovecot without an auth cache (its default) and with one
(`auth_cache_size = 10M`, `auth_cache_ttl = 300s`). The table gives commands/s and LOGIN latency per server,
and the ratios within the run.

--steady measures steady sessions (issue 17's "IMAP steady sessions" row): --clients clients each connect and
LOGIN once, run one untimed round, then loop rounds of the stress mix with no logouts, for --seconds (or exactly
--rounds rounds each):

    LIST "" *, STATUS of Drafts, Sent and Trash (MESSAGES UIDNEXT UNSEEN), SELECT INBOX,
    FETCH of a random range of 20 (UID FLAGS), FETCH n BODY.PEEK[HEADER], 2 x FETCH n BODY.PEEK[],
    STORE n +FLAGS (\\Flagged) / -FLAGS, APPEND INBOX (\\Deleted) a small message, EXPUNGE, SELECT Drafts

so INBOX keeps its size (each round's APPEND is a \\Deleted message the next EXPUNGE, this client's or
another's, removes; message numbers 1..--count stay the original messages), and every session sees the others'
arrivals and expunges. The table gives commands/s and the server's CPU time per command (user + system of all
its processes, bench/common.py `cpu_seconds`, measured over the timed loop while every session is open, so
Dovecot's per-session processes count), per server and as ratios to Dovecot: Postroom with its default worker
processes (one per CPU) and, with --one-worker, as one process. With --profile DIR, py-spy (in the venv) records
each Postroom run's server process tree during the timed loop into DIR/<run>.txt (raw, flame graph input).
With --per-command N, each server then also answers every command kind of the mix N times in a row from one
client, and the table gives its CPU per command by kind: the figure that moves least with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import resource
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dovecot  # bench/dovecot.py: a private Dovecot
from common import (  # bench/common.py
    PrivatePostroom,
    Server,
    cpu_seconds,
    memory_tree,
    process_tree,
    progress,
    servers_stopped,
)
from dovecot import PrivateDovecot

from postroom.auth.passwords import hash_password
from postroom.net.tls import generate_pair

USER = "bench@example.org"
PASSWORD = "bench-password"
OPS = ("LOGIN", "SELECT", "FETCH headers", "FETCH body", "SEARCH", "STORE", "APPEND", "IDLE", "LOGOUT")


def with_body(head: bytes, body: bytes, attachment: bool) -> bytes:
    """A message of the header fields `head` and the text `body`: text/plain, or with `attachment` a
    multipart/mixed of the text and a small base64 attachment."""
    if not attachment:
        return head + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
    att = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\n" * 20
    return (head + b'Content-Type: multipart/mixed; boundary="bb"\r\n\r\n--bb\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body +
            b"\r\n--bb\r\nContent-Type: application/octet-stream; name=a.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + att + b"--bb--\r\n")


def make_messages(count: int) -> list[bytes]:
    rng = random.Random(3501)
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\r\n"
    out = []
    for i in range(count):
        target = max(600, int(rng.uniform(0.2, 1.8) * 6000))
        head = (f"From: Sender {i % 97} <sender{i % 97}@example.net>\r\nTo: {USER}\r\n"
                f"Subject: bench message {i} topic{i % 50}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                f"Message-ID: <{i}@bench.example>\r\nMIME-Version: 1.0\r\n").encode()
        body = (line * (target // len(line) + 1))[:target].rstrip(b"\r\n") + b"\r\n"  # no bare CR at the end
        out.append(with_body(head, body, attachment=i % 4 == 0))
    return out


def rss_tree(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (from /proc; RSS: see `memory_tree` for PSS)."""
    return memory_tree(pid)[0]


# --- the client ------------------------------------------------------------------------------------------


class Client:
    """A minimal IMAP client: one command at a time, literals read by their announced size. Responses are cut
    out of one buffer filled by large reads (`_buffered`, `_response`), not read a line at a time: a readline
    per line costs ~1.5 us of the client's CPU, so the 20,000 lines of a whole-mailbox FETCH took ~30 ms to
    read whatever the server's speed, and that measured this client instead of the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer
        self.n = 0
        self.buf = bytearray()  # received, not yet taken: responses start at self.pos
        self.pos = 0

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None = None) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22, ssl=tls)
        c = cls(r, w)
        greeting = await r.readline()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting {greeting!r}")
        return c

    def _compact(self) -> None:
        """Drop what was taken (a bytearray drops its head in place)."""
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0

    async def _fill(self) -> None:
        data = await self.r.read(1 << 20)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += data

    async def _response(self) -> bytes:
        """One response: a line, and the literals it announces (`{n}` or `{n+}` before its CRLF) with the rest
        of the line after each."""
        self._compact()
        scan = 0
        while True:
            i = self.buf.find(b"\r\n", scan)
            if i < 0:
                scan = max(0, len(self.buf) - 1)
                await self._fill()
                continue
            if i and self.buf[i - 1] == 0x7D:  # "}": a literal of n octets follows the CRLF
                j = self.buf.rfind(b"{", 0, i)
                end = i + 2 + int(self.buf[j + 1:i - 1].rstrip(b"+"))
                while len(self.buf) < end:
                    await self._fill()
                scan = end
                continue
            self.pos = i + 2
            return bytes(self.buf[:self.pos])

    async def cmd(self, text: bytes, literal: bytes | None = None) -> list[bytes]:
        self.n += 1
        tag = b"b%d" % self.n
        if literal is not None:  # LITERAL+ on both servers
            self.w.write(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")
        else:
            self.w.write(tag + b" " + text + b"\r\n")
        out: list[bytes] = []
        prefix = tag + b" "
        while True:
            bulk = self._buffered()
            if bulk and not bulk.startswith(prefix) and b"\r\n" + prefix not in bulk:
                out.extend(bulk.splitlines(keepends=True))  # (the common case: its completion is not in it)
                continue
            lines = bulk.splitlines(keepends=True) if bulk else [await self._response()]
            for k, line in enumerate(lines):
                if line.startswith(prefix):
                    self.pos -= sum(map(len, lines[k + 1:]))  # (none, unless the server spoke after it)
                    if not line.startswith(tag + b" OK"):
                        raise RuntimeError(f"{text[:40]!r}: {line!r}")
                    return out
                out.append(line)

    def _buffered(self) -> bytes:
        """Every complete response buffered, in one piece, when none of them announces a literal (lines cut
        by `splitlines`, in C); else b"" (then `_response` takes one, literals and all). Only CRLF ends a line
        outside a literal (RFC 9051 §2.2), so `splitlines` cuts where `_response` would."""
        self._compact()
        end = self.buf.rfind(b"\r\n") + 2
        if end < 2 or self.buf.find(b"}\r\n", 0, end) >= 0:
            return b""
        self.pos = end
        return bytes(self.buf[:end])

    async def idle_start(self) -> bytes:
        self.n += 1
        tag = b"b%d" % self.n
        self.w.write(tag + b" IDLE\r\n")
        while not (await self._response()).startswith(b"+"):
            pass
        return tag

    async def idle_done(self, tag: bytes) -> None:
        self.w.write(b"DONE\r\n")
        while not (await self._response()).startswith(tag + b" "):
            pass

    def close(self) -> None:
        self.w.close()


async def one_session(port: int, count: int, rng: random.Random, lat: dict[str, list[float]]) -> None:
    def timed(op: str, t0: float) -> None:
        lat[op].append(time.perf_counter() - t0)

    t = time.perf_counter()
    c = await Client.connect(port)
    await c.cmd(f'LOGIN "{USER}" "{PASSWORD}"'.encode())
    timed("LOGIN", t)
    t = time.perf_counter()
    await c.cmd(b"SELECT INBOX")
    timed("SELECT", t)
    t = time.perf_counter()
    await c.cmd(b"FETCH 1:* (FLAGS UID ENVELOPE BODYSTRUCTURE)")
    timed("FETCH headers", t)
    for _ in range(10):
        t = time.perf_counter()
        await c.cmd(b"FETCH %d BODY.PEEK[]" % rng.randint(1, count))
        timed("FETCH body", t)
    t = time.perf_counter()
    await c.cmd(b'UID SEARCH SUBJECT "topic%d"' % rng.randint(0, 49))
    timed("SEARCH", t)
    t = time.perf_counter()
    await c.cmd(b"UID SEARCH UNSEEN")
    timed("SEARCH", t)
    n = rng.randint(1, count)
    t = time.perf_counter()
    await c.cmd(b"STORE %d +FLAGS (\\Seen)" % n)
    timed("STORE", t)
    t = time.perf_counter()
    await c.cmd(b"STORE %d -FLAGS (\\Seen)" % n)
    timed("STORE", t)
    t = time.perf_counter()
    await c.cmd(b"APPEND Drafts (\\Draft)", b"From: " + USER.encode() + b"\r\nSubject: draft\r\n\r\nhello\r\n")
    timed("APPEND", t)
    t = time.perf_counter()
    tag = await c.idle_start()
    await c.idle_done(tag)
    timed("IDLE", t)
    t = time.perf_counter()
    try:
        await c.cmd(b"LOGOUT")
    except EOFError:
        pass
    timed("LOGOUT", t)
    c.close()


CHURN_OPS = ("LOGIN", "SELECT", "FETCH flags", "LOGOUT")


async def churn_session(port: int, count: int, rng: random.Random, lat: dict[str, list[float]]) -> None:
    """One poll of a phone: connect and LOGIN, SELECT, the last 10 messages' flags, LOGOUT."""
    t = time.perf_counter()
    c = await Client.connect(port)
    await c.cmd(f'LOGIN "{USER}" "{PASSWORD}"'.encode())
    lat["LOGIN"].append(time.perf_counter() - t)
    t = time.perf_counter()
    await c.cmd(b"SELECT INBOX")
    lat["SELECT"].append(time.perf_counter() - t)
    t = time.perf_counter()
    await c.cmd(b"FETCH %d:* (UID FLAGS)" % max(1, count - 9))
    lat["FETCH flags"].append(time.perf_counter() - t)
    t = time.perf_counter()
    try:
        await c.cmd(b"LOGOUT")
    except EOFError:
        pass
    lat["LOGOUT"].append(time.perf_counter() - t)
    c.close()


async def load(port: int, count: int, clients: int, sessions: int, label: str,
               session: Callable[..., Awaitable[None]] = one_session,
               ops: tuple[str, ...] = OPS) -> tuple[float, dict[str, list[float]]]:
    lat: dict[str, list[float]] = {op: [] for op in ops}
    # Warm-up, untimed: four sessions at once, so that every worker process of Postroom (connections are
    # spread by the kernel) and Dovecot's index start warm.
    await asyncio.gather(*(session(port, count, random.Random(i), {op: [] for op in ops}) for i in range(4)))
    done = 0
    total = clients * sessions

    async def worker(w: int) -> None:
        nonlocal done
        rng = random.Random(w)
        for _ in range(sessions):
            await session(port, count, rng, lat)
            done += 1
            progress(f"\r  {label:<28} sessions {done:>5}/{total}", end="")

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    progress("")
    return time.perf_counter() - started, lat


async def idle_memory(port: int, pid: int, sessions: int, label: str,
                      tls: ssl.SSLContext | None = None, at_once: int = 50) -> tuple[int, int, int, int]:
    """Open `sessions` sessions (LOGIN, SELECT INBOX, IDLE; over TLS with `tls`) on the server `pid` listening
    on `port`, and return what they added to its process tree's RSS and PSS, in bytes per session, and the
    tree's PSS before them, and the PSS the second half of them added per session: (RSS per session, PSS per
    session, PSS before, PSS per session of the second half). The last is the steadier figure: what the
    workers' heaps gave back after the sessions of the step before (and now take again), and pages the parent
    shared that turn private once, both land on the first sessions (the first figure moves by a few KiB a
    session between runs). The sessions are closed before returning. `at_once`: sessions being opened at a
    time (each LOGIN is an argon2id hash)."""
    await asyncio.sleep(1)  # the sessions of the step before have ended
    rss0, pss0 = memory_tree(pid)
    procs0 = len(process_tree(pid))
    conns: list[Client] = []  # to close, whatever happens
    opened: list[Client] = []  # in IDLE
    sem = asyncio.Semaphore(at_once)

    async def open_one() -> None:
        async with sem:
            c = await Client.connect(port, tls)
            conns.append(c)
            await c.cmd(f'LOGIN "{USER}" "{PASSWORD}"'.encode())
            await c.cmd(b"SELECT INBOX")
            await c.idle_start()
            opened.append(c)
            if len(opened) % 100 == 0:
                progress(f"\r  {label:<28} idle sessions {len(opened):>5}/{sessions}", end="")

    half = sessions // 2
    try:
        await asyncio.gather(*(open_one() for _ in range(half)))
        await asyncio.sleep(2)
        pss_half = memory_tree(pid)[1]
        await asyncio.gather(*(open_one() for _ in range(sessions - half)))
        progress("")
        await asyncio.sleep(2)
        rss1, pss1 = memory_tree(pid)
        # A process started in between (a metadata worker) is charged to the sessions: say so beside the table.
        progress(f"  {label}: server tree {procs0} -> {len(process_tree(pid))} processes, "
                 f"PSS {pss0 / 2**20:.1f} -> {pss1 / 2**20:.1f} MiB")
    finally:
        for c in conns:
            c.close()
    n = max(1, sessions)
    return (rss1 - rss0) // n, (pss1 - pss0) // n, pss0, (pss1 - pss_half) // max(1, sessions - half)


def client_tls() -> ssl.SSLContext:
    """The bench client's TLS: the servers' certificate is self-signed, so it is not checked."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_certificate(work: Path) -> tuple[Path, Path]:
    """One self-signed pair (postroom.net.tls.generate_pair: EC P-256) in work/tls, for both servers."""
    cert_pem, key_pem = generate_pair("localhost")
    folder = work / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return cert, key


# --- the servers -----------------------------------------------------------------------------------------


def postroom_settings(idle: int, auth: str = "") -> str:
    """The bench's Postroom configuration (PrivatePostroom `settings`): plaintext LOGIN, no lockout of the
    bench's many logins, room for `idle` more connections; `auth` is more of the [auth] table."""
    return (f"[auth]\nallow_plaintext = true\nmax_failures_per_ip = 100000\n{auth}"
            f"[limits]\nconnections_per_ip = {idle + 500}\nconnections_total = {idle + 500}\n")


def fresh_start(work: Path, start: Callable[[], tuple[Server, int]], started: list[Server]) -> tuple[Server, int]:
    """Start one server of a run on a fresh data folder (the last server's removed), recorded in `started` so
    `servers_stopped` stops it by PID."""
    for sub in ("postroom", "dovecot"):
        shutil.rmtree(work / sub, ignore_errors=True)
    server, port = start()
    started.append(server)
    return server, port


def start_postroom(work: Path, messages: list[bytes], idle: int, auth: str = "",
                   workers: int | None = None, tls: tuple[Path, Path] | None = None) -> tuple[PrivatePostroom, int]:
    """Postroom holding `messages` (the `imap` listener; with `tls`, the certificate and key files, `imaps`
    too: `server.ports["imaps"]`). Returns the server and its imap port."""
    settings = postroom_settings(idle, auth)
    if tls is not None:
        settings += f'[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n'
    server = PrivatePostroom(work / "postroom", "imap", settings, workers=workers, more=("imaps",) if tls else ())
    server.create(user=USER, password=PASSWORD, messages=messages, with_meta=True)
    return server, server.start(greeting=b"* OK", timeout=30)


def start_dovecot(work: Path, messages: list[bytes], idle: int, extra: str = "",
                  tls: tuple[Path, Path] | None = None) -> tuple[PrivateDovecot, int]:
    """Dovecot holding `messages` (imap; with `tls` imaps too: `server.tls_ports["imap"]`). Returns it and its
    imap port. Room for `idle` sessions over TLS: each is two processes (imap-login holding the TLS, and imap)."""
    # The same argon2id hash Postroom keeps, so a LOGIN costs both servers the same work.
    server = PrivateDovecot(work / "dovecot", ["imap"], USER, f"{{ARGON2ID}}{hash_password(PASSWORD)}",
                            folders=("Drafts", "Sent", "Trash"), limit=2 * idle + 500, extra=extra, tls=tls)
    server.fill(messages)
    server.start()
    return server, server.ports["imap"]


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="messages in the mailbox")
    ap.add_argument("--clients", type=int, default=None,
                    help="concurrent clients (default 20; --steady: 10)")
    ap.add_argument("--sessions", type=int, default=5, help="sessions per client")
    ap.add_argument("--idle", type=int, default=1000, help="idle sessions for the memory measurement")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--churn", action="store_true", help="login churn: short polling sessions (see above)")
    ap.add_argument("--one-worker", action="store_true",
                    help="also run Postroom as one process (server.workers = 1) beside the default (one per CPU)")
    ap.add_argument("--idle-only", action="store_true", help="only the idle sessions' memory (no timed mix)")
    ap.add_argument("--postroom-only", action="store_true",
                    help="with --idle-only: Postroom alone (a before/after pair; Dovecot once in another run)")
    ap.add_argument("--dovecot-only", action="store_true", help="with --idle-only: Dovecot alone")
    ap.add_argument("--at-once", type=int, default=50,
                    help="idle sessions opened at a time (Dovecot's one auth process may drop logins queued "
                         "behind a burst of argon2 hashes on a loaded machine: fewer then)")
    ap.add_argument("--steady", action="store_true",
                    help="steady sessions: log in once, loop the stress mix, no logouts (see above)")
    ap.add_argument("--seconds", type=float, default=20.0, help="--steady: length of the timed loop")
    ap.add_argument("--rounds", type=int, default=None,
                    help="--steady: rounds of the mix per client instead of --seconds")
    ap.add_argument("--per-command", type=int, default=0, metavar="N",
                    help="--steady: then each command of the mix N times from one client: server CPU per kind")
    ap.add_argument("--profile", type=Path, default=None,
                    help="--steady: py-spy each Postroom run into this folder (raw format)")
    args = ap.parse_args()
    if args.clients is None:
        args.clients = 10 if args.steady else 20
    if args.churn:
        return churn_main(args)
    if args.steady:
        return steady_main(args)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.idle + 1000))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the servers inherit it

    work = Path(tempfile.mkdtemp(prefix="imap-bench-", dir=args.dir))
    messages = make_messages(args.count)
    total_mib = sum(map(len, messages)) / (1 << 20)
    progress(f"imap bench: {args.count} messages, {total_mib:.1f} MiB, in {work}")
    results: dict[str, tuple[float, dict[str, list[float]]]] = {}
    idle: dict[str, dict[str, tuple[int, int, int, int]]] = {}  # server -> "plaintext"/"TLS" -> idle_memory()
    cpu: dict[str, float] = {}
    tls = make_certificate(work)
    servers: list[tuple[str, Callable[[], tuple[Server, int]]]] = [
        ("Postroom", lambda: start_postroom(work, messages, args.idle, tls=tls)),
        (f"Dovecot {dovecot.version()}", lambda: start_dovecot(work, messages, args.idle, tls=tls))]
    if args.one_worker:
        servers.append(("Postroom 1 worker", lambda: start_postroom(work, messages, args.idle, workers=1, tls=tls)))
    if args.postroom_only:
        args.idle_only = True
        del servers[1]
    if args.dovecot_only:
        args.idle_only = True
        del servers[0]
    with servers_stopped(work) as started:
        for name, start in servers:
            server, port = fresh_start(work, start, started)
            cpu0 = cpu_seconds(server.pid)
            secs, lat = asyncio.run(load(port, args.count, args.clients, 0 if args.idle_only else args.sessions,
                                         name))
            time.sleep(0.5)  # Dovecot's per-session processes are reaped (their CPU time moves to the master)
            cpu[name] = cpu_seconds(server.pid) - cpu0
            results[name] = (secs, lat)
            if args.idle:
                tls_port = server.ports["imaps"] if isinstance(server, PrivatePostroom) else \
                    server.tls_ports["imap"]  # type: ignore[attr-defined]
                idle[name] = {}
                for kind, p, ctx in (("plaintext", port, None), ("implicit TLS", tls_port, client_tls())):
                    try:
                        idle[name][kind] = asyncio.run(idle_memory(p, server.pid, args.idle, f"{name} {kind}", ctx,
                                                                   args.at_once))
                    except (OSError, EOFError, RuntimeError) as exc:  # the table says so; the other rows stand
                        progress(f"\n  {name} {kind}: failed: {type(exc).__name__}: {exc}")
            server.stop()

    names = [name for name, _ in servers]
    pr, dv = names[0], names[-1]
    if not args.idle_only:
        print_mix(args, total_mib, results, cpu, names)
    if args.idle:
        print(f"\nMemory per idle IMAP session ({args.idle} open at once, each after LOGIN, SELECT INBOX, IDLE), "
              "KiB: what they added to the server's process tree")
        ratio = len(names) > 1  # not with --postroom-only
        print(f"| | {' | '.join(names)} |" + (" Dovecot / Postroom |" if ratio else ""))
        print("|---|" + "---:|" * (len(names) + ratio))
        def cell(n: str, kind: str, i: int, unit: int = 1024) -> str:
            got = idle.get(n, {}).get(kind)
            return f"{got[i] / unit:,.1f}" if got else "failed"

        for kind in ("plaintext", "implicit TLS"):
            for i, what in ((1, "**PSS"), (0, "**RSS"), (3, f"PSS of the second {args.idle - args.idle // 2}")):
                cells = " | ".join(cell(n, kind, i) for n in names)
                a, b = (idle.get(n, {}).get(kind, (0, 0, 0, 0))[i] for n in (pr, dv))
                last = f" {b / a if a > 0 else 0:.1f}x |" if ratio else ""
                bold = "**" if what.startswith("**") else ""
                print(f"| {what} per idle session, {kind}{bold} | {cells} |{last}")
        cells = " | ".join(cell(n, "plaintext", 2, 1 << 20) for n in names)
        print(f"| PSS of the server, no session open (MiB) | {cells} |" + (" |" if ratio else ""))
    return 0


def print_mix(args: argparse.Namespace, total_mib: float, results: dict[str, tuple[float, dict[str, list[float]]]],
              cpu: dict[str, float], names: list[str]) -> None:
    """The timed mix's table (module doc)."""
    pr, dv = names[0], names[1]
    print(f"\nIMAP mix: {args.count} messages ({total_mib:.1f} MiB), {args.clients} clients x {args.sessions} "
          f"sessions; latencies in ms (p50 / p95 / p99)")
    print(f"| operation | {pr} | {dv} | p50 ratio (Dovecot / Postroom) |")
    print("| --- | ---: | ---: | ---: |")
    for op in OPS:
        a, b = results[pr][1][op], results[dv][1][op]
        fa = " / ".join(f"{pct(a, p) * 1000:.1f}" for p in (50, 95, 99))
        fb = " / ".join(f"{pct(b, p) * 1000:.1f}" for p in (50, 95, 99))
        ratio = pct(b, 50) / pct(a, 50) if pct(a, 50) else 0.0
        print(f"| {op} | {fa} | {fb} | {ratio:.2f}x |")
    ops_a = sum(len(v) for v in results[pr][1].values()) / results[pr][0]
    ops_b = sum(len(v) for v in results[dv][1].values()) / results[dv][0]
    print(f"| **operations/s** | {ops_a:,.0f} | {ops_b:,.0f} | {ops_a / ops_b:.2f}x (Postroom / Dovecot) |")
    print(f"| **server CPU s** (all processes) | {cpu[pr]:.1f} | {cpu[dv]:.1f} | {cpu[pr] / cpu[dv]:.2f}x |")
    if args.one_worker:
        one = names[2]
        ops_one = sum(len(v) for v in results[one][1].values()) / results[one][0]
        print(f"| **operations/s, {one}** | {ops_one:,.0f} | | {ops_one / ops_b:.2f}x (/ Dovecot); "
              f"Postroom / {one}: {ops_a / ops_one:.2f}x |")
        n_a = sum(len(v) for v in results[pr][1].values())
        n_one = sum(len(v) for v in results[one][1].values())
        print(f"| **server CPU ms per operation** | {cpu[pr] / n_a * 1000:.2f} ({pr}) | "
              f"{cpu[dv] / sum(len(v) for v in results[dv][1].values()) * 1000:.2f} | "
              f"{cpu[one] / n_one * 1000:.2f} ({one}) |")


def churn_main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="imap-churn-", dir=args.dir))
    messages = make_messages(args.count)
    progress(f"imap login churn: {args.count} messages, {args.clients} clients x {args.sessions} sessions, in {work}")
    dv_cache = "auth_cache_size = 10M\nauth_cache_ttl = 300s\n"
    runs: list[tuple[str, Callable[[], tuple[Server, int]]]] = [
        ("Postroom, cache off", lambda: start_postroom(work, messages, 0, "cache_ttl = 0\n")),
        ("Postroom, cache on", lambda: start_postroom(work, messages, 0, "cache_ttl = 300\n")),
        (f"Dovecot {dovecot.version()}", lambda: start_dovecot(work, messages, 0)),
        ("Dovecot, auth_cache", lambda: start_dovecot(work, messages, 0, dv_cache)),
    ]
    rates: dict[str, float] = {}
    logins: dict[str, list[float]] = {}
    with servers_stopped(work) as started:
        for name, start in runs:
            server, port = fresh_start(work, start, started)
            secs, lat = asyncio.run(load(port, args.count, args.clients, args.sessions, name, churn_session,
                                         CHURN_OPS))
            rates[name] = sum(len(v) for v in lat.values()) / secs
            logins[name] = lat["LOGIN"]
            server.stop()
    names = [name for name, _ in runs]
    print(f"\nIMAP login churn: {args.clients} clients x {args.sessions} sessions of LOGIN, SELECT, FETCH (UID FLAGS)"
          f" of 10, LOGOUT; {args.count} messages; the same argon2id hash everywhere")
    print("| server | commands/s | LOGIN p50 / p95 ms | / Postroom cache off | / Dovecot | / Dovecot auth_cache |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        lp = " / ".join(f"{pct(logins[name], p) * 1000:.1f}" for p in (50, 95))
        r = rates[name]
        print(f"| {name} | {r:,.0f} | {lp} | {r / rates[names[0]]:.2f}x | {r / rates[names[2]]:.2f}x | "
              f"{r / rates[names[3]]:.2f}x |")
    return 0


# --- steady sessions (--steady) ----------------------------------------------------------------------------

STEADY_OPS = ("LIST", "STATUS", "SELECT", "FETCH flags", "FETCH header", "FETCH body", "STORE", "APPEND",
              "EXPUNGE")
STEADY_APPEND = (b"From: " + USER.encode() + b"\r\nTo: " + USER.encode() + b"\r\nSubject: steady\r\n"
                 b"Message-ID: <steady@bench.example>\r\n\r\n" + b"a steady-state message line\r\n" * 20)


async def steady_round(c: Client, count: int, rng: random.Random, lat: dict[str, list[float]] | None) -> int:
    """One round of the steady mix (module doc) on a logged-in client; returns the commands it sent.
    `lat`: per-kind latencies in seconds are appended there (None: untimed)."""
    sent = 0

    async def timed(op: str, text: bytes, literal: bytes | None = None) -> None:
        nonlocal sent
        t = time.perf_counter()
        await c.cmd(text, literal)
        sent += 1
        if lat is not None:
            lat[op].append(time.perf_counter() - t)

    await timed("LIST", b'LIST "" "*"')
    for box in (b"Drafts", b"Sent", b"Trash"):
        await timed("STATUS", b"STATUS " + box + b" (MESSAGES UIDNEXT UNSEEN)")
    await timed("SELECT", b"SELECT INBOX")
    lo = rng.randint(1, max(1, count - 19))
    await timed("FETCH flags", b"FETCH %d:%d (UID FLAGS)" % (lo, min(count, lo + 19)))
    await timed("FETCH header", b"FETCH %d BODY.PEEK[HEADER]" % rng.randint(1, count))
    for _ in range(2):
        await timed("FETCH body", b"FETCH %d BODY.PEEK[]" % rng.randint(1, count))
    n = rng.randint(1, count)
    await timed("STORE", b"STORE %d +FLAGS (\\Flagged)" % n)
    await timed("STORE", b"STORE %d -FLAGS (\\Flagged)" % n)
    await timed("APPEND", b"APPEND INBOX (\\Deleted)", STEADY_APPEND)
    await timed("EXPUNGE", b"EXPUNGE")
    await timed("SELECT", b"SELECT Drafts")
    return sent


async def steady_load(port: int, pid: int, count: int, clients: int, seconds: float, rounds: int | None,
                      label: str, profile: Path | None = None
                      ) -> tuple[float, int, float, dict[str, list[float]]]:
    """--clients sessions logged in once, one untimed round each, then the timed loop (module doc). Returns
    (wall seconds, commands, server CPU seconds, latencies by kind) of the timed loop."""
    conns = []
    for _ in range(clients):
        c = await Client.connect(port)
        await c.cmd(f'LOGIN "{USER}" "{PASSWORD}"'.encode())
        conns.append(c)
    await asyncio.gather(*(steady_round(c, count, random.Random(1000 + i), None) for i, c in enumerate(conns)))
    lat: dict[str, list[float]] = {op: [] for op in STEADY_OPS}
    done = 0
    spy = None
    if profile is not None:
        spy_exe = Path(sys.executable).with_name("py-spy")
        out = profile / (re.sub(r"\W+", "-", label).strip("-").lower() + ".txt")
        spy = await asyncio.create_subprocess_exec(
            str(spy_exe), "record", "-p", str(pid), "-f", "raw", "-r", "200", "--nonblocking", "--subprocesses",
            "-o", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(1.0)  # py-spy attaches
    cpu0 = cpu_seconds(pid)
    started = time.perf_counter()
    stop_at = started + seconds

    async def worker(i: int, c: Client) -> None:
        nonlocal done
        rng = random.Random(i)
        r = 0
        while (r < rounds) if rounds is not None else (time.perf_counter() < stop_at):
            before = done
            done += await steady_round(c, count, rng, lat)
            r += 1
            if done // 1000 != before // 1000:
                progress(f"\r  {label:<28} commands {done:>7}", end="")

    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    secs = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu0  # every session still open: Dovecot's imap processes are counted live
    progress("")
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        await spy.wait()
    for c in conns:
        c.close()
    return secs, done, cpu, lat


async def per_command(port: int, pid: int, count: int, repeat: int) -> dict[str, float]:
    """--per-command: one logged-in client sends each command of the steady mix `repeat` times in a row (after
    20 untimed); the server's CPU seconds per command, by kind (APPEND and its EXPUNGE as one pair)."""
    c = await Client.connect(port)
    await c.cmd(f'LOGIN "{USER}" "{PASSWORD}"'.encode())
    await c.cmd(b"SELECT INBOX")
    rng = random.Random(7)

    async def append_expunge() -> None:
        await c.cmd(b"APPEND INBOX (\\Deleted)", STEADY_APPEND)
        await c.cmd(b"EXPUNGE")

    def fetch_range() -> Awaitable[list[bytes]]:
        lo = rng.randint(1, max(1, count - 19))
        return c.cmd(b"FETCH %d:%d (UID FLAGS)" % (lo, min(count, lo + 19)))

    kinds: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ('LIST "" *', lambda: c.cmd(b'LIST "" "*"')),
        ("STATUS Drafts", lambda: c.cmd(b"STATUS Drafts (MESSAGES UIDNEXT UNSEEN)")),
        ("SELECT INBOX", lambda: c.cmd(b"SELECT INBOX")),
        ("FETCH 20 (UID FLAGS)", fetch_range),
        ("FETCH n BODY.PEEK[HEADER]", lambda: c.cmd(b"FETCH %d BODY.PEEK[HEADER]" % rng.randint(1, count))),
        ("FETCH n BODY.PEEK[]", lambda: c.cmd(b"FETCH %d BODY.PEEK[]" % rng.randint(1, count))),
        ("STORE n +FLAGS", lambda: c.cmd(b"STORE %d +FLAGS (\\Flagged)" % rng.randint(1, count))),
        ("APPEND + EXPUNGE", append_expunge),
        ("SELECT Drafts", lambda: c.cmd(b"SELECT Drafts")),
    ]
    out: dict[str, float] = {}
    for name, send in kinds:
        for _ in range(20):
            await send()
        cpu0 = cpu_seconds(pid)
        for _ in range(repeat):
            await send()
        out[name] = (cpu_seconds(pid) - cpu0) / repeat
        if name == "SELECT Drafts":
            await c.cmd(b"SELECT INBOX")
    c.close()
    return out


def steady_main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="imap-steady-", dir=args.dir))
    messages = make_messages(args.count)
    span = f"{args.rounds} rounds each" if args.rounds is not None else f"{args.seconds:g} s"
    progress(f"imap steady sessions: {args.count} messages, {args.clients} clients, {span}, in {work}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, Callable[[], tuple[Server, int]]]] = [
        ("Postroom", lambda: start_postroom(work, messages, 0))]
    if args.one_worker:
        runs.append(("Postroom 1 worker", lambda: start_postroom(work, messages, 0, workers=1)))
    runs.append((f"Dovecot {dovecot.version()}", lambda: start_dovecot(work, messages, 0)))
    res: dict[str, tuple[float, int, float, dict[str, list[float]]]] = {}
    each: dict[str, dict[str, float]] = {}
    with servers_stopped(work) as started:
        for name, start in runs:
            server, port = fresh_start(work, start, started)
            prof = args.profile if args.profile is not None and name.startswith("Postroom") else None
            res[name] = asyncio.run(steady_load(port, server.pid, args.count, args.clients, args.seconds,
                                                args.rounds, name, prof))
            if args.per_command:
                time.sleep(0.5)  # Dovecot's closed sessions are reaped
                each[name] = asyncio.run(per_command(port, server.pid, args.count, args.per_command))
            server.stop()
    names = [name for name, _ in runs]
    dv = names[-1]
    rate = {n: res[n][1] / res[n][0] for n in names}
    cpu_ms = {n: res[n][2] / max(1, res[n][1]) * 1000 for n in names}
    print(f"\nIMAP steady sessions: {args.clients} clients logged in once, {span} of LIST, 3 STATUS, 2 SELECT, "
          f"FETCH (range FLAGS, HEADER, 2 bodies), 2 STORE, APPEND, EXPUNGE; {args.count} messages")
    print("| server | commands | commands/s | / Dovecot | server CPU ms per command | CPU / Dovecot |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        print(f"| {n} | {res[n][1]:,} | {rate[n]:,.0f} | {rate[n] / rate[dv]:.2f}x | {cpu_ms[n]:.3f} | "
              f"{cpu_ms[n] / cpu_ms[dv]:.2f}x |")
    print("\nlatency p50 / p95 ms by command")
    print("| command | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for op in STEADY_OPS:
        cells = [" / ".join(f"{pct(res[n][3][op], p) * 1000:.2f}" for p in (50, 95)) for n in names]
        print(f"| {op} | " + " | ".join(cells) + " |")
    if args.per_command:
        print(f"\nserver CPU ms per command, one client, each command {args.per_command} times in a row")
        print("| command | " + " | ".join(names) + " | Postroom / Dovecot |")
        print("| --- |" + " ---: |" * (len(names) + 1))
        for kind in each[dv]:
            cells = [f"{each[n][kind] * 1000:.3f}" for n in names]
            ratio = each[names[0]][kind] / each[dv][kind] if each[dv][kind] else 0.0
            print(f"| {kind} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
