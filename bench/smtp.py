"""SMTP messages/s accepted and durable: Postroom beside aiosmtpd (fsync per message) and Postfix (Maildir).

    .venv/bin/python bench/smtp.py [--count N] [--size BYTES] [--sessions 1,10,50] [--dir PATH] [--no-postfix]
                                   [--checks] [--one-worker]

Each server listens on 127.0.0.1 on a free high port; each is driven with N messages of about --size bytes
(default 10,000 x 4 KB) from 1, 10 and 50 parallel sessions that reuse their connection:

- Postroom: `postroom serve` as a subprocess on a fresh data directory; every `250` means the message is
  committed (group commit) in the recipient's INBOX.
- aiosmtpd (pip package `aiosmtpd`): a handler that writes each message to a Maildir-style file, fsyncs it and
  its directory, then answers 250: the naive per-message-fsync reference.
- Postfix (Debian package `postfix`), if installed and run as root: a private instance (bench/postfix.py: own
  main.cf/master.cf, queue, data directory and log file, `postfix -c DIR start`, stopped by its master's PID)
  on a high port, delivering to a Maildir through the `virtual` agent, which fsyncs each file; its `250`
  means the message is fsync'd in Postfix's queue. The clock stops when every message is in the Maildir's
  new/. Postfix's defaults apply except `smtpd_client_connection_count_limit = 0` and
  `default_process_limit = 200`, so that 50 sessions from 127.0.0.1 are all served at once.

--checks adds "Postroom+checks": the same server with every inbound check on (issue 12): SPF of the MAIL
FROM and HELO, DKIM (the bench messages are unsigned: the header is scanned, no key fetched), DMARC, the DNS
blocklist lookup and forward-confirmed reverse DNS of the client (loopback is made not exempt; greeting delay
and rate limits off), all through the server's one cached resolver against a DNS server of the bench's own on
loopback (tests/e2e/dns_support.py) serving the records; and the built-in spam score (`[inbound.score]`, with a
score blocklist zone as well). rspamd is not in it (a separate daemon). In both Postroom modes every delivery
reads the recipient's sender allow/block rules. The table then has a "checks / off" column: the goal is at
least 0.8x.

The driver is Postfix's `smtp-source` when installed (`-d -s SESSIONS -m COUNT -l SIZE`), else a built-in
asyncio client doing the same (one message per MAIL/RCPT/DATA exchange, connections reused).

Under the table, the CPU seconds (user + system, bench/common.py `cpu_seconds`) each Postroom run and each
Postfix run used, per message: Postroom's process tree (workers, metadata workers), Postfix's master and every
daemon it started. CPU per message hardly moves with other load; messages/s also says how much of the
machine's cores each server keeps busy.

The default is the issue's 10,000 messages: the whole bench (3 servers x 3 session counts, a fresh server
each time) took about 4-5 minutes on a busy 2-CPU VM; --count 1000 gives a quick look.

Work happens under --dir (default bench/results/, on the repository's disk: a tmpfs would make fsync free).
Every process started here is stopped by its PID, also on Ctrl-C or an error. Progress goes to stderr, the
table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import postfix  # noqa: E402  (bench/postfix.py: a private Postfix instance)
from common import (  # noqa: E402  (bench/common.py)
    PrivatePostroom,
    cpu_seconds,
    free_port,
    progress,
    stop_process,
    wait_port,
)
from dns_support import ZoneThread  # noqa: E402  (tests/e2e/dns_support.py: the tests' loopback DNS server)

USER = "sink@example.org"


def message(size: int, n: int) -> bytes:
    head = f"From: bench@remote.test\r\nTo: {USER}\r\nSubject: bench {n}\r\n\r\n".encode()
    line = b"x" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


# ---------------------------------------------------------------------------------------------------------
# Drivers


def drive_smtp_source(port: int, count: int, sessions: int, size: int) -> float:
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    start = time.monotonic()
    subprocess.run([exe, "-d", "-s", str(sessions), "-m", str(count), "-l", str(size), "-f", "bench@remote.test",
                    "-t", USER, f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


async def _session(port: int, todo: list[int], size: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("server closed")
            if line[3:4] != b"-":
                if line[:1] not in (b"2", b"3"):
                    raise RuntimeError(line.decode(errors="replace"))
                return line

    await reply()
    writer.write(b"EHLO bench.test\r\n")
    await reply()
    while todo:
        n = todo.pop()
        body = message(size, n)
        writer.write(f"MAIL FROM:<bench@remote.test>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode())
        await reply()
        await reply()
        await reply()
        writer.write(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        await reply()
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


def drive_builtin(port: int, count: int, sessions: int, size: int) -> float:
    todo = list(range(count))

    async def go() -> None:
        await asyncio.gather(*(_session(port, todo, size) for _ in range(sessions)))

    start = time.monotonic()
    asyncio.run(go())
    return time.monotonic() - start


# ---------------------------------------------------------------------------------------------------------
# Servers


class Postroom:
    name = "Postroom"
    workers: int | None = None  # server.workers: the default (one per CPU), or POSTROOM_WORKERS

    def __init__(self, work: Path) -> None:
        # The inbound checks (SPF/DKIM/DMARC) would ask the system's DNS: off, as in the runs before they existed.
        self.server = PrivatePostroom(work / "postroom", "smtp", "[limits]\nconnections_per_ip = 200\n"
                                      "[inbound]\nspf = false\ndkim = false\ndmarc = false\narc = false\n",
                                      log_level="warning", workers=self.workers)

    def start(self) -> int:
        self.server.create(user=USER, password="bench-password")
        return self.server.start()

    def wait_delivered(self, count: int) -> None:
        pass  # a 250 from Postroom already means delivered and durable

    def cpu(self) -> float:
        """CPU seconds the server (and its metadata workers) used so far."""
        return cpu_seconds(self.server.pid)

    def stop(self) -> None:
        self.server.stop(60)


class PostroomOne(Postroom):
    """Postroom as one process (`server.workers = 1`), beside the default of one worker per CPU (--one-worker)."""

    name = "Postroom 1 worker"
    workers = 1


class PostroomChecks(Postroom):
    """Postroom with every inbound check on, its DNS a loopback server of the bench's own (module doc)."""

    name = "Postroom+checks"

    def __init__(self, work: Path) -> None:
        self.zone = ZoneThread()
        z = self.zone
        z.add("remote.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")  # the MAIL FROM domain (smtp-source's too)
        z.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=none")
        z.add("1.0.0.127.in-addr.arpa", "PTR", "client.remote.test")
        z.add("client.remote.test", "A", "127.0.0.1")
        z.add("client.remote.test", "TXT", "v=spf1 a -all")
        self.server = PrivatePostroom(
            work / "postroom", "smtp",
            "[limits]\nconnections_per_ip = 200\n"
            f'[delivery]\nenabled = false\ndns_servers = ["127.0.0.1:{z.dns.port}"]\n'
            "[smtp]\nscreen_exempt = []\ngreet_delay_seconds = 0\nclient_connection_rate = 0\n"
            'client_message_rate = 0\ndnsbl_zones = ["bl.bench.test"]\nreverse_dns = true\n'
            "[inbound]\nspf = true\ndkim = true\ndmarc = true\n"
            '[inbound.score]\nenabled = true\ndnsbl_zones = ["score.bench.test"]\n', log_level="warning")

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            asked = self.zone.dns.queries
            names = ", ".join(sorted({f"{n} {t}" for n, t in asked}))
            progress(f"  DNS queries the server made: {len(asked)} ({names})")
            self.zone.close()


class Aiosmtpd:
    name = "aiosmtpd+fsync"

    def __init__(self, work: Path) -> None:
        self.work = work

    def start(self) -> int:
        self.maildir = self.work / "aiosmtpd" / "new"
        shutil.rmtree(self.maildir.parent, ignore_errors=True)
        self.maildir.mkdir(parents=True)
        port = free_port()
        code = f"""
import asyncio, os, itertools
from aiosmtpd.controller import Controller
d = {str(self.maildir)!r}
ids = itertools.count()
class H:
    async def handle_DATA(self, server, session, envelope):
        def write():
            p = os.path.join(d, f"{{os.getpid()}}.{{next(ids)}}")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, envelope.original_content); os.fsync(fd); os.close(fd)
            dfd = os.open(d, os.O_RDONLY); os.fsync(dfd); os.close(dfd)
        await asyncio.get_running_loop().run_in_executor(None, write)
        return "250 OK"
c = Controller(H(), hostname="127.0.0.1", port={port}, data_size_limit=0)
c.start()
import signal, threading
threading.Event().wait()
"""
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, self.proc, "aiosmtpd")
        except BaseException:
            self.stop()
            raise
        return port

    def wait_delivered(self, count: int) -> None:
        pass

    def stop(self) -> None:
        stop_process(self.proc, 30)


class Postfix:
    name = "Postfix"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.instance: postfix.PrivatePostfix | None = None

    @staticmethod
    def available() -> bool:
        return postfix.available()

    def start(self) -> int:
        base = self.work / "postfix"
        port = free_port()
        uid, gid = postfix.postfix_ids()
        mail = base / "mail"
        self.maildir = mail / "sink" / "new"
        self.instance = postfix.PrivatePostfix(base, port, {
            "virtual_mailbox_domains": USER.split("@")[1],
            "virtual_mailbox_base": str(mail),
            "virtual_mailbox_maps": f"inline:{{{USER}=sink/}}",
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
            "smtpd_client_connection_count_limit": "0",  # 50 sessions from one IP: no anvil limit
            "default_process_limit": "200",
        })
        try:
            self.instance.start()
            postfix.make_maildir(mail / "sink")
            wait_port(port)
        except BaseException:
            self.stop()
            raise
        return port

    def cpu(self) -> float:
        """CPU seconds of the private instance: its master and every daemon it started (smtpd, cleanup, qmgr,
        trivial-rewrite, virtual), live or reaped by the master."""
        assert self.instance is not None and self.instance.master_pid is not None
        return cpu_seconds(self.instance.master_pid)

    def wait_delivered(self, count: int) -> None:
        deadline = time.monotonic() + 600
        shown = 0.0
        while time.monotonic() < deadline:
            done = sum(1 for _ in os.scandir(self.maildir))
            if done >= count:
                if shown:
                    progress("\r" + " " * 40 + "\r", end="")
                return
            if time.monotonic() - shown > 1:
                shown = time.monotonic()
                progress(f"\r  in the Maildir: {done}/{count}", end="")
            time.sleep(0.02)
        raise RuntimeError(f"Postfix did not deliver every message in 10 minutes {self.instance.log_tail()}")

    def stop(self) -> None:
        if self.instance is not None:
            self.instance.stop()


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--sessions", default="1,10,50")
    ap.add_argument("--dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--checks", action="store_true", help="add Postroom with every inbound check on")
    ap.add_argument("--one-worker", action="store_true",
                    help="add Postroom as one process (server.workers = 1) beside the default (one per CPU)")
    args = ap.parse_args()
    sessions = [int(s) for s in args.sessions.split(",")]
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smtp-bench-", dir=args.dir))
    work.chmod(0o755)  # Postfix's virtual agent (user postfix) writes its Maildir under it
    use_source = shutil.which("smtp-source", path="/usr/sbin:/usr/bin") is not None
    drive = drive_smtp_source if use_source else drive_builtin
    servers: list[type] = [Postroom, PostroomChecks] if args.checks else [Postroom]
    if args.one_worker:
        servers.insert(1, PostroomOne)
    try:
        import aiosmtpd  # noqa: F401
        servers.append(Aiosmtpd)
    except ImportError:
        progress("aiosmtpd not installed (pip install aiosmtpd): its column is skipped")
    if not args.no_postfix and Postfix.available():
        servers.append(Postfix)
    elif not args.no_postfix:
        progress("Postfix not available (apt-get install postfix, run as root): its column is skipped")
    results: dict[tuple[str, int], float] = {}
    postroom_cpu: dict[tuple[str, int], float] = {}  # (server name, sessions) -> CPU seconds of that run
    try:
        for cls in servers:
            for n in sessions:
                server = cls(work)
                try:
                    port = server.start()
                except (subprocess.CalledProcessError, RuntimeError) as exc:
                    progress(f"{server.name} did not start ({exc}); its column is skipped")
                    break
                try:
                    progress(f"{server.name}: {args.count} messages, {n} sessions, driver "
                        f"{'smtp-source' if use_source else 'built-in'} ...")
                    start = time.monotonic()
                    measured = isinstance(server, (Postroom, Postfix))  # Postroom, +checks, 1 worker: each its own
                    cpu0 = server.cpu() if measured else 0.0
                    drive(port, args.count, n, args.size)
                    server.wait_delivered(args.count)
                    elapsed = time.monotonic() - start
                    if measured:
                        postroom_cpu[(server.name, n)] = server.cpu() - cpu0
                finally:
                    server.stop()
                results[(server.name, n)] = args.count / elapsed
                progress(f"  {args.count / elapsed:,.0f} msg/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = [cls.name for cls in servers if all((cls.name, n) in results for n in sessions)]
    print(f"\nSMTP: {args.count} messages of ~{args.size} bytes, messages/s accepted and durable "
          f"(driver: {'smtp-source' if use_source else 'built-in asyncio client'})\n")
    others = [n for n in names[1:] if n != PostroomChecks.name]
    checks = PostroomChecks.name in names
    columns = ["sessions", *names, *(f"Postroom / {n}" for n in others)] + (["checks / off"] if checks else [])
    header = "| " + " | ".join(columns) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for n in sessions:
        row = [f"{results[(name, n)]:,.0f}" for name in names]
        ratios = [f"{results[('Postroom', n)] / results[(name, n)]:.2f}x" for name in others]
        if checks:
            ratios.append(f"{results[(PostroomChecks.name, n)] / results[('Postroom', n)]:.2f}x")
        print(f"| {n} | " + " | ".join(row + ratios) + " |")
    for name in names:
        if any((name, n) in postroom_cpu for n in sessions):
            print(f"\n{name}'s server CPU seconds (user + system, its workers or daemons included) per run: "
                  + ", ".join(f"{n} sessions {postroom_cpu[(name, n)]:.1f} s ("
                              f"{postroom_cpu[(name, n)] / args.count * 1000:.2f} ms/message)"
                              for n in sessions if (name, n) in postroom_cpu))
    if checks:  # CPU per message is steadier than throughput on a loaded machine
        print("CPU seconds checks / off: " + ", ".join(
            f"{n} sessions {postroom_cpu[(PostroomChecks.name, n)] / postroom_cpu[(Postroom.name, n)]:.2f}x"
            for n in sessions if (PostroomChecks.name, n) in postroom_cpu and postroom_cpu[(Postroom.name, n)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
