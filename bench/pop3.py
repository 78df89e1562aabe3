"""POP3 retrieve-all throughput: Postroom beside Dovecot's POP3 server on the same messages.

    .venv/bin/python bench/pop3.py [--count 5000] [--size 4096] [--rounds 3] [--window 50] [--dir PATH]
                                   [--postroom-only] [--profile DIR]

A maildrop of --count messages (sizes spread around --size) is put into a fresh Postroom data folder (through
the store, as delivery would) and into a temporary Maildir for a throwaway Dovecot (Debian's dovecot-pop3d:
`dovecot -F` with a generated config, a passwd-file user, plaintext logins, on a free high loopback port; it is
stopped by its PID). Postroom runs as its own process (`postroom serve`, only the pop3 listener), so client and
server do not share an interpreter.

One client for both servers: a raw socket that logs in with USER/PASS and sends RETR 1..N, either pipelined
(--window commands in flight, RFC 2449 PIPELINING, as fetchmail and most clients batch) or one at a time
(send, wait for the whole reply). Replies are framed by scanning for CRLF "." CRLF, at C speed, so the client is
not the bottleneck. Each server gets one untimed warm-up pass (Dovecot builds its index, both fill the page
cache), then --rounds timed passes; the best is reported. QUIT deletes nothing (no DELE), so every pass sees
the same maildrop.

The server's CPU (user + system of its whole process tree, bench/common.py `cpu_seconds`, from /proc) is taken
right after each timed login and right after the last reply of its retrieve-all, so the last column is the
server's CPU per message retrieved, login (Postroom's argon2id check) and QUIT left out; Dovecot's per-session
process is still alive then and counted. On a machine shared with other work it moves far less than the rates.
--postroom-only skips Dovecot (to alternate two Postroom checkouts); --profile DIR has py-spy record Postroom's
processes during each mode's timed rounds (raw folded stacks, DIR/postroom-pipelined.txt, postroom-one.txt).

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dovecot  # noqa: E402  (bench/dovecot.py: a private Dovecot)
from common import (  # noqa: E402  (bench/common.py)
    PrivatePostroom,
    cpu_seconds,
    progress,
    servers_stopped,
    stop_process,
)
from dovecot import PrivateDovecot  # noqa: E402

USER = "bench@example.org"
PASSWORD = "bench-password"


def make_messages(count: int, size: int) -> list[bytes]:
    rng = random.Random(1939)
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\r\n"
    out = []
    for i in range(count):
        target = max(400, int(rng.uniform(0.25, 1.75) * size))
        head = (f"From: Sender {i} <sender{i}@example.net>\r\nTo: {USER}\r\nSubject: bench message {i}\r\n"
                f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{i}@bench.example>\r\n\r\n").encode()
        body = (line * (target // len(line) + 1))[: target - len(head)]
        if i % 7 == 0:
            body = b".a line with a leading dot\r\n" + body  # some dot-stuffing work for both servers
        out.append(head + body.rstrip(b"\r\n") + b"\r\n")
    return out


# --- the client ------------------------------------------------------------------------------------------


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        assert self._line().startswith(b"+OK")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return line

    def cmd(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        line = self._line()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"{text.split()[0]}: {line!r}")
        return line

    def _multi(self) -> int:
        """Consume one +OK multi-line reply; return its size in bytes."""
        start = 0
        while True:
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                if not self.buf.startswith(b"+OK"):
                    raise RuntimeError(f"bad reply {bytes(self.buf[:80])!r}")
                n = i + 5
                del self.buf[:n]
                return n
            start = max(0, len(self.buf) - 4)
            self._fill()

    def login(self) -> int:
        self.cmd(f"USER {USER}")
        self.cmd(f"PASS {PASSWORD}")
        return int(self.cmd("STAT").split()[1])

    def retrieve_all(self, count: int, window: int, label: str) -> tuple[float, int]:
        got = 0
        sent = 0
        octets = 0
        started = time.perf_counter()
        shown = started
        while got < count:
            while sent < count and sent - got < window:
                sent_to = min(count, got + window)
                self.sock.sendall(b"".join(b"RETR %d\r\n" % n for n in range(sent + 1, sent_to + 1)))
                sent = sent_to
            octets += self._multi()
            got += 1
            now = time.perf_counter()
            if now - shown > 0.5 or got == count:
                shown = now
                progress(f"\r  {label:<34} {got:>6}/{count}  {got / (now - started):8.0f} msg/s", end="")
        progress("")
        return time.perf_counter() - started, octets

    def quit(self) -> None:
        self.cmd("QUIT")
        self.sock.close()


def measure(port: int, pid: int, count: int, window: int, rounds: int, label: str,
            profile: Path | None = None) -> tuple[float, int, float]:
    """(best seconds, octets, the server's CPU seconds per message retrieved) over `rounds` retrieve-alls;
    the CPU is counted from after each login to the last reply (module doc). `profile`: py-spy's raw stacks of
    the server's processes during the timed rounds go to that file."""
    c = Client(port)
    assert c.login() == count
    c.retrieve_all(count, 50, f"{label} (warm-up)")
    c.quit()
    best = (float("inf"), 0)
    spy = None
    if profile is not None:
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid), "-f", "raw",
                                "-r", "200", "--nonblocking", "--subprocesses", "-o", str(profile)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
    cpu = 0.0
    try:
        for r in range(rounds):
            c = Client(port)
            c.login()
            cpu0 = cpu_seconds(pid)
            secs, octets = c.retrieve_all(count, window, f"{label} round {r + 1}/{rounds}")
            cpu += cpu_seconds(pid) - cpu0
            c.quit()
            best = min(best, (secs, octets))
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                stop_process(spy)
    return best[0], best[1], cpu / rounds / count


# --- the servers -----------------------------------------------------------------------------------------


def start_postroom(work: Path, messages: list[bytes]) -> tuple[PrivatePostroom, int]:
    server = PrivatePostroom(work / "postroom", "pop3", "[auth]\nallow_plaintext = true\n")
    # With metadata, as delivery stores every message: without it the server's background index build
    # (indexing.py) would compute it during the timed rounds, which is an upgrade's cost, not POP3's.
    server.create(user=USER, password=PASSWORD, messages=messages, with_meta=True)
    return server, server.start(greeting=b"+OK", timeout=30)


def start_dovecot(work: Path, messages: list[bytes]) -> tuple[PrivateDovecot, int]:
    server = PrivateDovecot(work / "dovecot", ["pop3"], USER, f"{{PLAIN}}{PASSWORD}")
    server.fill(messages)
    server.start()
    return server, server.ports["pop3"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--size", type=int, default=4096, help="average message size in bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=50, help="RETR commands in flight when pipelining")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--postroom-only", action="store_true", help="no Dovecot (e.g. to compare two checkouts)")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy raw stacks of Postroom per mode into DIR")
    args = ap.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="pop3-bench-", dir=args.dir))
    messages = make_messages(args.count, args.size)
    total_mib = sum(map(len, messages)) / (1 << 20)
    progress(f"pop3 bench: {args.count} messages, {total_mib:.1f} MiB, in {work}")
    results: dict[tuple[str, str], tuple[float, int, float]] = {}
    servers = [("Postroom", start_postroom)]
    if not args.postroom_only:
        servers.append((f"Dovecot {dovecot.version()}", start_dovecot))
    with servers_stopped(work) as started:
        for name, start in servers:
            server, port = start(work, messages)
            started.append(server)
            for mode, window in (("pipelined", args.window), ("one at a time", 1)):
                profile = None
                if args.profile and name == "Postroom":
                    profile = args.profile / f"postroom-{mode.split()[0]}.txt"
                results[(name, mode)] = measure(port, server.pid, args.count, window, args.rounds,
                                                f"{name}, {mode}", profile)
            server.stop()

    names = [name for name, _ in servers]
    print(f"\nPOP3 retrieve-all: {args.count} messages ({total_mib:.1f} MiB), best of {args.rounds}, "
          f"pipelining window {args.window}")
    print("| mode | server | seconds | msgs/s | MB/s | Postroom / Dovecot | server CPU us per message |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for mode in ("pipelined", "one at a time"):
        base = results[(names[-1], mode)][0]
        for name in names:
            secs, octets, cpu = results[(name, mode)]
            ratio = f"{base / secs:.2f}x" if name == names[0] and len(names) > 1 else ""
            print(f"| {mode} | {name} | {secs:.3f} | {args.count / secs:,.0f} | {octets / secs / 1e6:.1f} | {ratio} "
                  f"| {cpu * 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
