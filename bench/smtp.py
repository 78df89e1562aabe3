"""SMTP messages/s accepted and durable: Postroom beside aiosmtpd (fsync per message) and Postfix (Maildir).

    .venv/bin/python bench/smtp.py [--count N] [--size BYTES] [--sessions 1,10,50] [--dir PATH] [--no-postfix]

Each server listens on 127.0.0.1 on a free high port; each is driven with N messages of about --size bytes
(default 10,000 x 4 KB) from 1, 10 and 50 parallel sessions that reuse their connection:

- Postroom: `postroom serve` as a subprocess on a fresh data directory; every `250` means the message is
  committed (group commit) in the recipient's INBOX.
- aiosmtpd (pip package `aiosmtpd`): a handler that writes each message to a Maildir-style file, fsyncs it and
  its directory, then answers 250: the naive per-message-fsync reference.
- Postfix (Debian package `postfix`), if installed and run as root: a private instance (own config and queue
  directories, `postfix -c DIR start`) on a high port, delivering to a Maildir through the local `virtual`
  agent; its `250` means the message is fsync'd in Postfix's queue. Counted until every message is in the
  Maildir.

The driver is Postfix's `smtp-source` when installed (`-d -s SESSIONS -m COUNT -l SIZE`), else a built-in
asyncio client doing the same (one message per MAIL/RCPT/DATA exchange, connections reused).

Work happens under --dir (default bench/results/, on the repository's disk: a tmpfs would make fsync free).
Every process started here is stopped by its PID. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from postroom.auth.passwords import make_credentials  # noqa: E402
from postroom.store import open_store  # noqa: E402

USER = "sink@example.org"


def say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


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

    def __init__(self, work: Path) -> None:
        self.work = work

    def start(self) -> int:
        data = self.work / "postroom"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)

        async def setup() -> None:
            store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
            await store.open()
            await store.add_domain("example.org")
            h, scram = make_credentials("bench-password")
            await store.add_user(USER, h, scram)
            await store.close()

        asyncio.run(setup())
        port = free_port()
        conf = self.work / "postroom.toml"
        off = "\n".join(f'{n} = ""' for n in ("submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http"))
        conf.write_text(f'[server]\ndata_dir = "{data}"\n[listeners]\nsmtp = "127.0.0.1:{port}"\n{off}\n'
                        f'[limits]\nconnections_per_ip = 200\n')
        exe = Path(sys.executable).with_name("postroom")
        self.proc = subprocess.Popen([str(exe), "--config", str(conf), "serve", "--log-level", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return port

    def wait_delivered(self, count: int) -> None:
        pass  # a 250 from Postroom already means delivered and durable

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


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
        wait_port(port)
        return port

    def wait_delivered(self, count: int) -> None:
        pass

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


class Postfix:
    name = "Postfix"

    def __init__(self, work: Path) -> None:
        self.work = work

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and shutil.which("postfix", path="/usr/sbin:/usr/bin") is not None

    def start(self) -> int:
        base = self.work / "postfix"
        shutil.rmtree(base, ignore_errors=True)
        conf, queue, self.maildir = base / "etc", base / "spool", base / "mail" / "sink" / "new"
        conf.mkdir(parents=True)
        queue.mkdir(parents=True)
        (base / "mail").mkdir(parents=True)
        shutil.copy("/etc/postfix/master.cf", conf / "master.cf")
        port = free_port()
        # Only the smtpd line on our port; the rest of master.cf as shipped.
        master = (conf / "master.cf").read_text()
        master = re.sub(r"^smtp\s+inet.*$", f"127.0.0.1:{port} inet n - n - - smtpd", master, flags=re.M)
        (conf / "master.cf").write_text(master)
        uid = int(subprocess.check_output(["id", "-u", "postfix"]).strip())
        gid = int(subprocess.check_output(["id", "-g", "postfix"]).strip())
        subprocess.run(["chown", "-R", "postfix:postfix", str(base / "mail")], check=True)
        main = {
            "compatibility_level": "3.6", "queue_directory": str(queue), "data_directory": str(base / "data"),
            "myhostname": "bench.localdomain", "mydestination": "", "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4", "mynetworks": "127.0.0.0/8", "virtual_mailbox_domains": "example.org",
            "virtual_mailbox_base": str(base / "mail"), "virtual_mailbox_maps": f"inline:{{{USER}=sink/}}",
            "virtual_uid_maps": f"static:{uid}", "virtual_gid_maps": f"static:{gid}",
            "smtpd_client_connection_count_limit": "0",
            "default_process_limit": "200", "smtpd_recipient_restrictions": "permit_mynetworks,reject",
            "alias_maps": "", "alias_database": "",
        }
        (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        subprocess.run(["postfix", "-c", str(conf), "set-permissions"], check=False, capture_output=True)
        subprocess.run(["postfix", "-c", str(conf), "start"], check=True, capture_output=True)
        self.conf = conf
        wait_port(port)
        return port

    def wait_delivered(self, count: int) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.maildir.is_dir() and sum(1 for _ in os.scandir(self.maildir)) >= count:
                return
            time.sleep(0.05)
        raise RuntimeError("Postfix did not deliver every message in 10 minutes")

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], check=False, capture_output=True)


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--sessions", default="1,10,50")
    ap.add_argument("--dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-postfix", action="store_true")
    args = ap.parse_args()
    sessions = [int(s) for s in args.sessions.split(",")]
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smtp-bench-", dir=args.dir))
    use_source = shutil.which("smtp-source", path="/usr/sbin:/usr/bin") is not None
    drive = drive_smtp_source if use_source else drive_builtin
    servers: list[type] = [Postroom]
    try:
        import aiosmtpd  # noqa: F401
        servers.append(Aiosmtpd)
    except ImportError:
        say("aiosmtpd not installed (pip install aiosmtpd): its column is skipped")
    if not args.no_postfix and Postfix.available():
        servers.append(Postfix)
    elif not args.no_postfix:
        say("Postfix not available (apt-get install postfix, run as root): its column is skipped")
    results: dict[tuple[str, int], float] = {}
    try:
        for cls in servers:
            for n in sessions:
                server = cls(work)
                try:
                    port = server.start()
                except (subprocess.CalledProcessError, RuntimeError) as exc:
                    say(f"{server.name} did not start ({exc}); its column is skipped")
                    break
                try:
                    say(f"{server.name}: {args.count} messages, {n} sessions, driver "
                        f"{'smtp-source' if use_source else 'built-in'} ...")
                    start = time.monotonic()
                    drive(port, args.count, n, args.size)
                    server.wait_delivered(args.count)
                    elapsed = time.monotonic() - start
                finally:
                    server.stop()
                results[(server.name, n)] = args.count / elapsed
                say(f"  {args.count / elapsed:,.0f} msg/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = [cls.name for cls in servers if all((cls.name, n) in results for n in sessions)]
    print(f"\nSMTP: {args.count} messages of ~{args.size} bytes, messages/s accepted and durable "
          f"(driver: {'smtp-source' if use_source else 'built-in asyncio client'})\n")
    header = "| sessions | " + " | ".join(names) + " | " + " | ".join(f"Postroom / {n}" for n in names[1:]) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for n in sessions:
        row = [f"{results[(name, n)]:,.0f}" for name in names]
        ratios = [f"{results[('Postroom', n)] / results[(name, n)]:.2f}x" for name in names[1:]]
        print(f"| {n} | " + " | ".join(row + ratios) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
