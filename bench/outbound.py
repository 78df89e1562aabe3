"""Outbound delivery messages/s: Postroom's queue beside Postfix, both relaying to Postfix's smtp-sink.

    .venv/bin/python bench/outbound.py [--count N] [--size BYTES] [--inject-sessions N] [--modes live,drain]
                                       [--dir PATH] [--no-postfix] [--profile DIR]

N messages (default 10,000) of about --size bytes (default 4 KB), one recipient each, spread evenly over the 10
destination domains d0.test .. d9.test, all routed to one `smtp-sink` (Debian package postfix) on a free
127.0.0.1 port that throws the mail away and counts it (`smtp-sink -c`: a counter line per "." received, read
here from its stdout). A message is done when the sink has its ".".

- Postroom: `postroom serve` on a fresh data directory, the MX listener relaying for loopback clients
  (`[smtp] relay_networks = ["127.0.0.1/32"]`), `[delivery.routes]` "dN.test" = "127.0.0.1:SINK" for the 10
  domains, `poll_seconds = 0.05`, and otherwise the defaults: at most 50 connections in all and 5 per domain
  (so 50 here), up to 100 messages per connection. The sender is not a local domain, so nothing is DKIM-signed.
- Postfix: a private instance (bench/postfix.py) relaying for 127.0.0.0/8 with
  `transport_maps = inline:{dN.test=smtp:[127.0.0.1]:SINK, ...}`. Postfix schedules by next hop, and the 10
  domains share one ([127.0.0.1]:SINK), so its per-destination cap is the only one that applies; it is set to
  50 (`smtp_destination_concurrency_limit`) to match Postroom's cap. Everything else is Postfix's default
  (including its slow start from 5 connections and connection caching when a destination has a backlog).

Both are loaded the same way: 10 `smtp-source` processes at once, one per domain, --inject-sessions connections
each (default 2), into the server's SMTP listener. Two measurements (--modes):

- live: from the first injection to the last message at the sink, delivery running all along (what a relay
  does under a burst; the injection itself is in the time).
- drain: the queue is loaded with delivery held, then released; from the release to the last message at the
  sink. Postroom holds with `[delivery] enabled = false`, is stopped, and released by starting `postroom serve`
  again with delivery on (its start-up is in the time). Postfix holds with `defer_transports = smtp`, and is
  released by clearing it, `postfix reload` and `postqueue -f` (all in the time).

The table gives each server's CPU per message besides the rates: user + system seconds of its whole process tree
(bench/common.py `cpu_seconds`; Postfix: the master and every daemon it started) over the measured span,
divided by the messages; for Postroom's drain, all CPU of the process started for it (start-up included), and
below the table the same from the first message at the sink on, over the rest (without the start-up). On a
machine shared with other work that figure moves much less than the rates. Postroom starts as installed, with
its bytecode cached: when PYTHONDONTWRITEBYTECODE is set (a development shell), it is unset for the servers and
the cache goes under the work folder (PYTHONPYCACHEPREFIX), so the drain's second start reads what the first
compiled; --cold-start keeps the variable, and every start compiles the source again. --profile DIR has py-spy record
Postroom's processes during each measured span (raw folded stacks, DIR/postroom-live.txt, postroom-drain.txt).

Work happens under --dir (default bench/results/, on the repository's disk). Every process started here (the
sink, postroom, smtp-source, the Postfix master) is stopped by its PID, also on Ctrl-C. Progress goes to
stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import postfix  # noqa: E402  (bench/postfix.py: a private Postfix instance)
from common import PrivatePostroom, cpu_seconds, free_port, progress, stop_process, wait_port  # noqa: E402

DOMAINS = [f"d{i}.test" for i in range(10)]
SENDER = "bench@remote.test"
SMTP_SOURCE = shutil.which("smtp-source", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-sink"
POSTCONF = shutil.which("postconf", path="/usr/sbin:/usr/bin") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue", path="/usr/sbin:/usr/bin") or "/usr/sbin/postqueue"
WAIT_LIMIT = 900.0  # seconds for one run's messages to reach the sink
PROFILE: Path | None = None  # --profile DIR: py-spy's raw stacks of Postroom per mode


# ---------------------------------------------------------------------------------------------------------
# The sink and the injector


class Sink:
    """`smtp-sink -c` on a free port; a thread reads its counter line ("... mesg=N\\r") from stdout."""

    def __init__(self) -> None:
        self.port = free_port()
        self.count = 0
        self.changed = threading.Condition()
        args = [SMTP_SINK, "-c", "-4"] + (["-u", "nobody"] if os.geteuid() == 0 else [])
        self.proc = subprocess.Popen(args + [f"127.0.0.1:{self.port}", "1024"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            wait_port(self.port, self.proc, "smtp-sink")
        except BaseException:
            self.stop()
            raise
        # wait_port's probe connection counts as a session, not as a message: mesg stays 0

    def _read(self) -> None:
        buf = b""
        assert self.proc.stdout is not None
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for line in reversed(lines):
                m = re.search(rb"mesg=(\d+)", line)
                if m:
                    with self.changed:
                        self.count = int(m.group(1))
                        self.changed.notify_all()
                    break

    def wait_for(self, count: int, label: str) -> float:
        """Block until the sink has `count` messages; returns the monotonic time it got there."""
        deadline = time.monotonic() + WAIT_LIMIT
        started = shown = time.monotonic()
        with self.changed:
            while self.count < count:
                now = time.monotonic()
                if now > deadline:
                    raise RuntimeError(f"{label}: only {self.count}/{count} messages at the sink after "
                                       f"{WAIT_LIMIT:.0f} s")
                if self.proc.poll() is not None:
                    raise RuntimeError("smtp-sink exited")
                if now - shown >= 0.5:
                    shown = now
                    progress(f"\r  {label}: {self.count}/{count} at the sink, "
                             f"{self.count / max(now - started, 1e-9):,.0f} msg/s   ", end="")
                self.changed.wait(0.1)
            done = time.monotonic()
        progress("\r" + " " * 72 + "\r", end="")
        return done

    def stop(self) -> None:
        stop_process(self.proc)


def inject(port: int, count: int, sessions: int, size: int) -> float:
    """10 smtp-source processes at once, one per domain; returns the seconds until all have finished."""
    procs: list[subprocess.Popen] = []
    start = time.monotonic()
    try:
        for i, domain in enumerate(DOMAINS):
            n = count // len(DOMAINS) + (1 if i < count % len(DOMAINS) else 0)
            if n:
                procs.append(subprocess.Popen(
                    [SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(n), "-l", str(size), "-f", SENDER,
                     "-t", f"bench@{domain}", f"127.0.0.1:{port}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"smtp-source failed (exit {p.returncode}): {err.decode(errors='replace')}")
    finally:
        for p in procs:
            stop_process(p, 5)
    return time.monotonic() - start


# ---------------------------------------------------------------------------------------------------------
# The two relays


class Postroom:
    name = "Postroom"

    def __init__(self, work: Path, sink_port: int) -> None:
        self.sink_port = sink_port
        self.server = PrivatePostroom(work / "postroom", "smtp", log_level="warning")
        self.port = self.server.port
        self.spy: subprocess.Popen[bytes] | None = None
        self.delivering: float | None = None  # drain: CPU seconds per message from the first at the sink on

    def setup(self) -> None:
        self.server.create()  # a local domain (example.org), so the server has something of its own

    def settings(self, delivery: bool) -> str:
        routes = "\n".join(f'"{d}" = "127.0.0.1:{self.sink_port}"' for d in DOMAINS)
        return (f'[limits]\nconnections_per_ip = 500\n'
                f'[smtp]\nrelay_networks = ["127.0.0.1/32"]\n'
                f'[delivery]\nenabled = {"true" if delivery else "false"}\npoll_seconds = 0.05\n'
                f'[delivery.routes]\n{routes}\n')

    def serve(self, delivery: bool, wait: bool = True) -> None:
        self.server.start(self.settings(delivery), wait=wait)

    def stop(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            try:
                self.spy.wait(60)
            except subprocess.TimeoutExpired:
                stop_process(self.spy)
            self.spy = None
        self.server.stop(60)

    def profile(self, mode: str) -> None:
        """With --profile DIR: py-spy records the server's process tree (raw folded stacks, 200 Hz, every
        worker) into DIR/postroom-MODE.txt until `stop`."""
        if PROFILE is None:
            return
        self.spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                                     str(self.server.pid), "-f", "raw", "-r", "200", "--nonblocking",
                                     "--subprocesses", "-o", str(PROFILE / f"postroom-{mode}.txt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run_live(self, sink: Sink, count: int, sessions: int, size: int) -> tuple[float, float, float]:
        self.setup()
        self.serve(delivery=True)
        self.profile("live")
        cpu0, t0 = cpu_seconds(self.server.pid), time.monotonic()
        injected = inject(self.port, count, sessions, size)
        progress(f"  injected in {injected:.1f} s")
        done = sink.wait_for(count, "Postroom live")
        return done - t0, injected, cpu_seconds(self.server.pid) - cpu0

    def run_drain(self, sink: Sink, count: int, sessions: int, size: int) -> tuple[float, float, float]:
        self.setup()
        self.serve(delivery=False)
        injected = inject(self.port, count, sessions, size)
        progress(f"  injected in {injected:.1f} s (delivery held); restarting with delivery on")
        self.stop()
        if sink.count:
            raise RuntimeError(f"{sink.count} messages reached the sink while delivery was held")
        t0 = time.monotonic()
        self.serve(delivery=True, wait=False)  # its start-up is in the time
        self.profile("drain")
        sink.wait_for(1, "Postroom drain")
        first, cpu_first = sink.count, cpu_seconds(self.server.pid)
        done = sink.wait_for(count, "Postroom drain")
        cpu = cpu_seconds(self.server.pid)  # a new process: all of its CPU is the drain's
        self.delivering = (cpu - cpu_first) / max(1, count - first)  # without the start-up
        return done - t0, injected, cpu


class Postfix:
    name = "Postfix"

    def __init__(self, work: Path, sink_port: int) -> None:
        self.work, self.sink_port = work / "postfix", sink_port
        self.instance: postfix.PrivatePostfix | None = None

    def start(self, hold: bool) -> int:
        port = free_port()
        transports = ", ".join(f"{d}=smtp:[127.0.0.1]:{self.sink_port}" for d in DOMAINS)
        main = {
            "relay_domains": "",
            "transport_maps": f"inline:{{{transports}}}",
            "smtp_destination_concurrency_limit": "50",  # = Postroom's delivery.concurrency (one next hop here)
            "smtpd_client_connection_count_limit": "0",
            "default_process_limit": "200",
            "smtp_tls_security_level": "none",
        }
        if hold:
            main["defer_transports"] = "smtp"
        self.instance = postfix.PrivatePostfix(self.work, port, main)
        self.instance.start()
        wait_port(port)
        return port

    def stop(self) -> None:
        if self.instance is not None:
            self.instance.stop()
            self.instance = None

    def run_live(self, sink: Sink, count: int, sessions: int, size: int) -> tuple[float, float, float]:
        port = self.start(hold=False)
        assert self.instance is not None and self.instance.master_pid is not None
        master = self.instance.master_pid
        cpu0, t0 = cpu_seconds(master), time.monotonic()
        injected = inject(port, count, sessions, size)
        progress(f"  injected in {injected:.1f} s")
        done = sink.wait_for(count, "Postfix live")
        return done - t0, injected, cpu_seconds(master) - cpu0

    def run_drain(self, sink: Sink, count: int, sessions: int, size: int) -> tuple[float, float, float]:
        port = self.start(hold=True)
        inst = self.instance
        assert inst is not None
        injected = inject(port, count, sessions, size)
        progress(f"  injected in {injected:.1f} s (delivery held); waiting for the queue manager to defer them all")
        deadline = time.monotonic() + WAIT_LIMIT
        while sum(len(f) for _, _, f in os.walk(inst.queue / "deferred")) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix did not defer every message {inst.log_tail()}")
            time.sleep(0.1)
        if sink.count:
            raise RuntimeError(f"{sink.count} messages reached the sink while delivery was held")
        env = dict(os.environ, MAIL_CONFIG=str(inst.conf))
        assert inst.master_pid is not None
        cpu0, t0 = cpu_seconds(inst.master_pid), time.monotonic()
        subprocess.run([POSTCONF, "-c", str(inst.conf), "-e", "defer_transports ="], env=env, check=True)
        subprocess.run([postfix.POSTFIX, "-c", str(inst.conf), "reload"], env=env, check=True, capture_output=True)
        subprocess.run([POSTQUEUE, "-c", str(inst.conf), "-f"], env=env, check=True, capture_output=True)
        done = sink.wait_for(count, "Postfix drain")
        return done - t0, injected, cpu_seconds(inst.master_pid) - cpu0


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000, help="messages per run (default 10,000)")
    ap.add_argument("--size", type=int, default=4096, help="bytes per message (default 4096)")
    ap.add_argument("--inject-sessions", type=int, default=2, help="smtp-source connections per domain (2)")
    ap.add_argument("--modes", default="live,drain", help="live, drain or both (default)")
    ap.add_argument("--dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--profile", metavar="DIR", help="py-spy raw stacks of Postroom's processes, per mode, into DIR")
    ap.add_argument("--cold-start", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE if set: Postroom compiles its source at every start")
    args = ap.parse_args()
    if args.profile:
        global PROFILE
        PROFILE = Path(args.profile).resolve()
        PROFILE.mkdir(parents=True, exist_ok=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"live", "drain"}:
        ap.error("--modes: live and/or drain")
    for exe in (SMTP_SOURCE, SMTP_SINK):
        if not os.path.exists(exe):
            progress(f"{exe} not found: apt-get install postfix")
            return 1
    relays: list[type] = [Postroom]
    if not args.no_postfix and postfix.available():
        relays.append(Postfix)
    elif not args.no_postfix:
        progress("Postfix not available (apt-get install postfix, run as root): its column is skipped")
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="outbound-bench-", dir=args.dir))
    work.chmod(0o755)
    if not args.cold_start and os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        # Started as installed: with bytecode (pip and packages compile it). Under PYTHONDONTWRITEBYTECODE every
        # start compiled Postroom's ~190 modules again, about a second of CPU in the drain's measured start.
        # The cache goes under the work folder, so no checkout gets __pycache__ folders.
        os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        progress(f"PYTHONDONTWRITEBYTECODE unset for the servers (bytecode cached under {work}/pycache; "
                 f"--cold-start keeps it)")
    progress(f"outbound benchmark: {args.count} messages of ~{args.size} B to {len(DOMAINS)} domains, "
             f"{len(DOMAINS)} x {args.inject_sessions} injecting sessions, under {work}")
    results: dict[tuple[str, str], tuple[float, float, float]] = {}  # msg/s, injection msg/s, CPU ms/msg
    delivering: dict[str, float] = {}  # relay -> drain CPU ms/msg from its first message at the sink on
    try:
        for cls in relays:
            for mode in modes:
                sink = Sink()
                relay = cls(work, sink.port)
                try:
                    progress(f"{cls.name}, {mode}: sink on port {sink.port} ...")
                    run = relay.run_live if mode == "live" else relay.run_drain
                    elapsed, injected, cpu = run(sink, args.count, args.inject_sessions, args.size)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    progress(f"{cls.name}, {mode} failed: {exc}")
                    continue
                finally:
                    relay.stop()
                    sink.stop()
                results[(cls.name, mode)] = (args.count / elapsed, args.count / injected, cpu * 1000 / args.count)
                progress(f"  {args.count / elapsed:,.0f} msg/s ({elapsed:.1f} s), {cpu * 1000 / args.count:.2f} ms "
                         f"CPU per message")
                if getattr(relay, "delivering", None) is not None:
                    delivering[cls.name] = relay.delivering * 1000
                    progress(f"  {delivering[cls.name]:.2f} ms CPU per message after the first at the sink")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    names = [cls.name for cls in relays]
    what = {"live": "live: first injection -> last at sink",
            "drain": "drain: release of a loaded queue -> last at sink"}
    print(f"\nOutbound: {args.count} messages of ~{args.size} bytes over {len(DOMAINS)} domains (static routes) "
          f"to smtp-sink, messages/s\n")
    header = ("| measure | " + " | ".join(names + [f"Postroom / {n}" for n in names[1:]])
              + " | injection msg/s (" + ", ".join(names) + ") | server CPU ms per message ("
              + ", ".join(names) + ") |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for mode in modes:
        rate = [f"{results[(n, mode)][0]:,.0f}" if (n, mode) in results else "failed" for n in names]
        ratios = [f"{results[('Postroom', mode)][0] / results[(n, mode)][0]:.2f}x"
                  if ("Postroom", mode) in results and (n, mode) in results else "-" for n in names[1:]]
        inj = ", ".join(f"{results[(n, mode)][1]:,.0f}" if (n, mode) in results else "-" for n in names)
        cpu = ", ".join(f"{results[(n, mode)][2]:.2f}" if (n, mode) in results else "-" for n in names)
        print(f"| {what[mode]} | " + " | ".join(rate + ratios) + f" | {inj} | {cpu} |")
    if delivering:
        print("\ndrain, server CPU ms per message from the first message at the sink on (without start-up): "
              + ", ".join(f"{n} {v:.2f}" for n, v in delivering.items()))
    return 0 if len(results) == len(relays) * len(modes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
