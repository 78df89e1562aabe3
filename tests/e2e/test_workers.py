"""Issue 17 item 1, end to end: `postroom serve --workers 2`, a parent and two worker processes on one store.

A real server process tree per test (random loopback ports). Which worker serves a connection is read from
the kernel, not from the protocol: the server side of a TCP connection is the socket in /proc/net/tcp whose
remote port is the client's, and the worker is the process holding that socket's inode among its descriptors.
Tests that need two workers connect until a session lands on the other one.

What must be one across workers is checked as the issue lists it: every SMTP message stored once; an IDLE in
one worker woken by a delivery through the other (issue 16's change feed, within FEED_WAIT); the POP3 maildrop
lock (RFC 1939 §8: the second session gets `-ERR [IN-USE]`, RFC 2449 §8.1.1); login failures (a pair locked by
failures counted in both workers refuses the right password in either); the per-IP connection limit; SIGHUP
reaching every worker; SIGTERM leaving no process; kill -9 of a worker: restarted, and every message answered
250 (RFC 5321 §4.2.5: the server has taken responsibility) present exactly once.
"""

from __future__ import annotations

import email
import imaplib
import os
import poplib
import re
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from outbound_support import SmtpPeer
from test_address_case import PeerThread

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ADDR = "ann@example.org"
PW = "ann-secret"
FEED_WAIT = 1.0  # issue 16: IDLE hears of another process's delivery within 1 s


def postroom(conf: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "postroom", "--config", str(conf), *args], check=True,
                   capture_output=True, env=ENV, timeout=120)


class Served:
    """`postroom serve --workers N` as a process tree, its ports from the banner, its log in a file."""

    def __init__(self, tmp_path: Path, extra: str = "", workers: int = 2) -> None:
        self.conf = tmp_path / "postroom.toml"
        self.data = tmp_path / "data"
        self.write_conf(extra)
        postroom(self.conf, "domain", "add", "example.org")
        postroom(self.conf, "user", "add", ADDR, "--password", PW)
        self.log = tmp_path / "serve.log"
        self._err = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "postroom", "--config", str(self.conf), "serve",
                                      "--workers", str(workers)], stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, env=ENV)
        assert self.proc.stdout is not None
        text = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "Stop with" not in text:
            line = self.proc.stdout.readline()
            if not line:
                break
            text += line
        assert "Stop with" in text, (text, self.log.read_text())
        assert f"; {workers} worker processes)" in text
        self.ports = {n: int(p) for n, p in re.findall(r"^\s+(\w+)\s+127\.0\.0\.1:(\d+)", text, re.M)}

    def write_conf(self, extra: str = "") -> None:
        self.conf.write_text(
            f'[server]\ndata_dir = "{self.data}"\nshutdown_grace_seconds = 2\n'
            '[listeners]\nsmtp = "127.0.0.1:0"\nsubmission = "127.0.0.1:0"\nsubmissions = ""\n'
            'imap = "127.0.0.1:0"\nimaps = ""\npop3 = "127.0.0.1:0"\npop3s = ""\nhttp = "127.0.0.1:0"\nhttps = ""\n'
            + ("" if "[delivery]" in extra else '[delivery]\nenabled = false\n')
            + '[inbound]\nspf = false\ndkim = false\ndmarc = false\n'
            '[auth]\nallow_plaintext = true\n' + extra)  # `extra` may go on with [auth] keys

    def workers(self) -> list[int]:
        """The PIDs of the parent's children now (the workers)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return sorted(int(p) for p in path.read_text().split())

    def worker_of(self, sock: socket.socket, listener: str) -> int:
        """The worker PID holding the server side of the client socket `sock` (module doc)."""
        return self.holder_of(self.ports[listener], sock.getsockname()[1])

    def holder_of(self, server_port: int, client_port: int) -> int:
        """The worker PID holding the TCP socket whose local port is `server_port` and remote `client_port`
        (the server side of an inbound connection; with the ports swapped, the client side of an outbound one)."""
        inode = ""
        for _ in range(100):  # the worker has accepted (the client read a greeting): the entry is there
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
                if local == server_port and remote == client_port:
                    inode = fields[9]
            if inode:
                break
            time.sleep(0.01)
        for pid in self.workers():
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    try:
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                            return pid
                    except FileNotFoundError:
                        continue
            except FileNotFoundError:
                continue
        raise AssertionError(f"no worker holds the connection from port {client_port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


@pytest.fixture
def conf_extra() -> str:
    """More configuration for the test's server (tests parametrize it)."""
    return ""


@pytest.fixture
def served(tmp_path: Path, conf_extra: str) -> Iterator[Served]:
    server = Served(tmp_path, conf_extra)
    try:
        yield server
    finally:
        pids = server.workers() if server.proc.poll() is None else []
        server.stop()
        for pid in pids:  # nothing left behind, whatever the test did
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


def smtp_on(served: Served, other_than: int | None = None) -> tuple[smtplib.SMTP, int]:
    """An SMTP connection (and its worker's PID), on a worker other than `other_than` if given."""
    for _ in range(200):
        client = smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=30)
        pid = served.worker_of(client.sock, "smtp")
        if other_than is None or pid != other_than:
            return client, pid
        client.quit()
    raise AssertionError("every SMTP connection landed on one worker")


def message(i: int) -> bytes:
    return (f"From: bob@example.net\r\nTo: {ADDR}\r\nSubject: number {i}\r\nMessage-ID: <m{i}@example.net>\r\n"
            f"\r\nbody {i}\r\n").encode()


def stored_subjects(served: Served) -> list[str]:
    imap = imaplib.IMAP4("127.0.0.1", served.ports["imap"], timeout=30)
    imap.login(ADDR, PW)
    imap.select("INBOX", readonly=True)
    _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    imap.logout()
    return [email.message_from_bytes(item[1])["Subject"] for item in data if isinstance(item, tuple)]


def test_many_smtp_sessions_on_both_workers_store_every_message_once(served: Served) -> None:
    pids: set[int] = set()
    lock = threading.Lock()

    def send(first: int) -> None:
        for i in range(first, first + 10):
            client = smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=60)
            with lock:
                pids.add(served.worker_of(client.sock, "smtp"))
            client.sendmail("bob@example.net", [ADDR], message(i))
            client.quit()

    threads = [threading.Thread(target=send, args=(n * 10,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pids == set(served.workers())  # both workers took sessions
    assert sorted(stored_subjects(served)) == sorted(f"number {i}" for i in range(60))
    # /metrics sums the workers: 60 SMTP sessions in all (metrics.py, multiprocess mode)
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{served.ports['http']}/metrics", timeout=30).read().decode()
    assert 'postroom_sessions_total{protocol="smtp"} 60.0' in text
    assert "postroom_messages_accepted_total 60.0" in text


def test_idle_in_one_worker_wakes_on_delivery_through_the_other(served: Served) -> None:
    sock = socket.create_connection(("127.0.0.1", served.ports["imap"]), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"* OK")
    idle_pid = served.worker_of(sock, "imap")
    sock.sendall(f'a LOGIN "{ADDR}" "{PW}"\r\nb SELECT INBOX\r\n'.encode())
    while not f.readline().startswith(b"b OK"):
        pass
    sock.sendall(b"c IDLE\r\n")
    assert f.readline().startswith(b"+ ")
    client, smtp_pid = smtp_on(served, other_than=idle_pid)
    client.sendmail("bob@example.net", [ADDR], message(1))  # 250: committed by the other worker
    sock.settimeout(FEED_WAIT)
    assert f.readline() == b"* 1 EXISTS\r\n"
    assert smtp_pid != idle_pid
    client.quit()
    sock.close()


def test_pop3_maildrop_lock_spans_workers(served: Served) -> None:
    first = poplib.POP3("127.0.0.1", served.ports["pop3"], timeout=30)
    first_pid = served.worker_of(first.sock, "pop3")
    first.user(ADDR)
    first.pass_(PW)
    for _ in range(200):
        second = poplib.POP3("127.0.0.1", served.ports["pop3"], timeout=30)
        if served.worker_of(second.sock, "pop3") != first_pid:
            break
        second.quit()
    else:
        raise AssertionError("every POP3 connection landed on one worker")
    second.user(ADDR)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PW)
    first.quit()  # the lock goes with the session: the other worker grants it now
    second = poplib.POP3("127.0.0.1", served.ports["pop3"], timeout=30)
    second.user(ADDR)
    assert second.pass_(PW).startswith(b"+OK")
    second.quit()


@pytest.mark.parametrize("conf_extra", ["max_failures_per_user = 4\nmax_failures_per_ip = 1000\n"
                                        "lockout_seconds = 600\n"])
def test_login_failures_count_across_workers(served: Served) -> None:
    """Two failures in each worker lock the pair (4 in all); a worker that counted only its own two would
    let the right password in."""
    conns: dict[int, list[imaplib.IMAP4]] = {}
    for _ in range(200):
        imap = imaplib.IMAP4("127.0.0.1", served.ports["imap"], timeout=30)
        conns.setdefault(served.worker_of(imap.sock, "imap"), []).append(imap)
        if len(conns) == 2 and all(len(v) >= 3 for v in conns.values()):
            break
    assert len(conns) == 2, "every IMAP connection landed on one worker"
    for imaps in conns.values():
        for imap in imaps[:2]:
            with pytest.raises(imaplib.IMAP4.error):
                imap.login(ADDR, "wrong")
    for imaps in conns.values():  # locked in both workers: the right password is refused too
        with pytest.raises(imaplib.IMAP4.error):
            imaps[2].login(ADDR, PW)
    assert "login result=locked" in served.log.read_text()


@pytest.mark.parametrize("conf_extra", ["[limits]\nconnections_per_ip = 3\n"])
def test_per_ip_connection_limit_counts_every_worker(served: Served) -> None:
    held = [socket.create_connection(("127.0.0.1", served.ports["imap"]), timeout=10) for _ in range(3)]
    for sock in held:
        assert sock.makefile("rb").readline().startswith(b"* OK")
    assert len({served.worker_of(s, "imap") for s in held}) >= 1
    for _ in range(6):  # whichever worker takes it, the fourth connection is over the server's limit
        extra = socket.create_connection(("127.0.0.1", served.ports["imap"]), timeout=10)
        assert extra.makefile("rb").readline().startswith(b"* BYE")
        extra.close()
    held.pop().close()
    time.sleep(0.3)  # the worker sees the close and counts it down
    extra = socket.create_connection(("127.0.0.1", served.ports["imap"]), timeout=10)
    assert extra.makefile("rb").readline().startswith(b"* OK")
    for sock in [*held, extra]:
        sock.close()


def test_sighup_reaches_every_worker(served: Served) -> None:
    served.write_conf("[limits]\nmessage_size = 123456\n")
    os.kill(served.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while served.log.read_text().count("reload result=applied") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    seen: set[int] = set()
    for _ in range(200):  # a new session in each worker advertises the new size (RFC 1870)
        client = smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=30)
        seen.add(served.worker_of(client.sock, "smtp"))
        client.ehlo()
        assert client.esmtp_features["size"] == "123456"
        client.quit()
        if seen == set(served.workers()):
            break
    assert seen == set(served.workers())


def test_sigterm_stops_every_process(served: Served) -> None:
    workers = served.workers()
    assert len(workers) == 2
    served.proc.terminate()
    assert served.proc.wait(60) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived its parent"
    assert not (served.data / "postroom.pid").read_text().strip()  # the lock released, no PID left


def test_kill9_of_a_worker_restarts_it_and_loses_no_acknowledged_message(served: Served) -> None:
    acknowledged: list[int] = []
    stop = threading.Event()

    def send(i: int) -> None:
        while not stop.is_set():
            i += 1
            try:
                client = smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=30)
                client.sendmail("bob@example.net", [ADDR], message(i))
                acknowledged.append(i)  # 250 to DATA: the server took responsibility
                client.quit()
            except (smtplib.SMTPException, OSError):
                continue  # the worker died under this session: not acknowledged, may be absent

    threads = [threading.Thread(target=send, args=(n * 100_000,)) for n in range(2)]
    for t in threads:
        t.start()
    while len(acknowledged) < 10:
        time.sleep(0.05)
    victim = served.workers()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (victim in served.workers() or len(served.workers()) < 2):
        time.sleep(0.1)
    replaced = served.workers()
    assert victim not in replaced and len(replaced) == 2
    count = len(acknowledged)
    while len(acknowledged) < count + 10:  # the new worker serves too
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    subjects = stored_subjects(served)
    for i in acknowledged:
        assert subjects.count(f"number {i}") == 1, i
    assert "worker exited slot=" in served.log.read_text() and f"pid={victim} status=killed by SIGKILL" in \
        served.log.read_text()


@pytest.mark.parametrize("conf_extra", ["[smtp]\nscreen_exempt = []\ngreet_delay_seconds = 0\n"
                                        "client_connection_rate = 4\n"])
def test_smtp_door_rate_counts_every_worker(served: Served) -> None:
    """smtp.client_connection_rate is the server's: 4 connections a minute from 127.0.0.1 whichever worker
    takes them, then `421 4.7.0` (smtp/door.py); workers counting alone would admit up to 8."""
    pids = []
    for _ in range(4):
        client = smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=30)
        pids.append(served.worker_of(client.sock, "smtp"))
        client.quit()
    refused = 0
    for _ in range(4):
        try:
            smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=30).quit()
        except smtplib.SMTPConnectError as exc:
            assert exc.smtp_code == 421
            refused += 1
    assert refused == 4, pids


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    p = PeerThread(SmtpPeer())
    yield p.peer
    p.stop()


def served_with_queue(tmp_path: Path, peer: SmtpPeer, delivery: str = "") -> Iterator[Served]:
    """A two-worker server delivering "remote.test" to `peer`, with `delivery` added to its [delivery] table. An
    hourly poll: mail leaves within a test only because queueing it wakes a scheduler."""
    server = Served(tmp_path, f'[delivery]\nenabled = true\npoll_seconds = 3600\nretry_seconds = [3600]\n{delivery}'
                              f'[delivery.routes]\n"remote.test" = "127.0.0.1:{peer.port}"\n')
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def queued_by_worker0(tmp_path: Path, peer: SmtpPeer) -> Iterator[Served]:
    yield from served_with_queue(tmp_path, peer)  # the default: worker 0's scheduler alone


def test_queue_runs_once_and_is_woken_from_either_worker(queued_by_worker0: Served, peer: SmtpPeer) -> None:
    """By default (`delivery.workers = 1`) the scheduler runs in worker 0 only (workers.py invariant 2): mail
    submitted through worker 0, then through the other worker (which wakes worker 0 over the wake pipe: the poll
    is hourly), leaves at once and reaches the next hop exactly once."""
    served = queued_by_worker0
    slot0 = int(re.search(r"worker started slot=0 pid=(\d+)", served.log.read_text()).group(1))  # type: ignore
    sent = 0
    for in_slot0 in (True, False):
        done = 0
        for _ in range(200):
            client = smtplib.SMTP("127.0.0.1", served.ports["submission"], timeout=30)
            if (served.worker_of(client.sock, "submission") == slot0) == in_slot0:
                client.login(ADDR, PW)
                client.sendmail(ADDR, ["far@remote.test"],
                                message(1000 + sent).replace(b"bob@example.net", ADDR.encode(), 1))
                sent += 1
                done += 1
            client.quit()
            if done == 3:
                break
        assert done == 3
        deadline = time.monotonic() + 20
        while len(peer.delivered) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(peer.delivered) == sent, (in_slot0, len(peer.delivered))
    time.sleep(1.0)  # a second scheduler would deliver again in this time
    subjects = sorted(email.message_from_bytes(seen.data)["Subject"] for seen in peer.delivered)
    assert subjects == sorted(f"number {1000 + i}" for i in range(6))


@pytest.fixture
def queued(tmp_path: Path, peer: SmtpPeer) -> Iterator[Served]:
    yield from served_with_queue(tmp_path, peer, "workers = 0\n")  # a scheduler in every worker


def test_queue_runs_in_each_worker_and_delivers_once(queued: Served, peer: SmtpPeer) -> None:
    """With `delivery.workers = 0` every worker runs a scheduler (delivery/queue.py invariant 10): mail submitted
    through worker 0, then through the other worker, leaves at once (the poll is hourly: queueing it wakes the
    scheduler of the worker that queued it), over a connection of that same worker, and reaches the next hop
    exactly once (the other scheduler's claims never take a recipient a lease holds)."""
    served = queued
    slot0 = int(re.search(r"worker started slot=0 pid=(\d+)", served.log.read_text()).group(1))  # type: ignore
    peer.data_delay = 1.0  # holds each transaction open, so the delivering process can be read from the kernel
    sent = 0
    for in_slot0 in (True, False):
        done = 0
        submitted_in = 0
        for _ in range(200):
            client = smtplib.SMTP("127.0.0.1", served.ports["submission"], timeout=30)
            pid = served.worker_of(client.sock, "submission")
            if (pid == slot0) == in_slot0:
                client.login(ADDR, PW)
                client.sendmail(ADDR, ["far@remote.test"],
                                message(1000 + sent).replace(b"bob@example.net", ADDR.encode(), 1))
                sent += 1
                done += 1
                submitted_in = pid
            client.quit()
            if done == 3:
                break
        assert done == 3
        deadline = time.monotonic() + 20
        while len(peer.seen) < sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(peer.seen) >= sent, (in_slot0, len(peer.seen))
        # The last message's transaction waits for the peer's reply to "." (data_delay): its connection is open.
        assert served.holder_of(peer.seen[-1].client_port, peer.port) == submitted_in, in_slot0
        deadline = time.monotonic() + 20
        while len(peer.delivered) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(peer.delivered) == sent, (in_slot0, len(peer.delivered))
    time.sleep(1.0)  # a second attempt by the other scheduler would arrive in this time
    subjects = sorted(email.message_from_bytes(seen.data)["Subject"] for seen in peer.delivered)
    assert subjects == sorted(f"number {1000 + i}" for i in range(6))


def test_a_restarted_worker_frees_its_predecessors_leases_and_no_siblings(tmp_path: Path) -> None:
    """delivery/queue.py invariant 10 and the module doc's lease freeing: each worker's scheduler holds leases
    as "<node>/<slot>#<pid>.<random>"; a worker killed with SIGKILL while it holds one (its delivery stuck
    waiting for a greeting that never comes) is restarted in its slot, and the new process frees and claims that
    lease again at once, not after `queue.lease_seconds` (an hour here); the other worker's lease is kept. The
    poll is hourly too: each scheduler claims only when its own worker queues mail, and at its start."""
    hole = socket.socket()  # takes connections (the kernel completes them) and never says a word
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    served = Served(tmp_path, f"[delivery]\nenabled = true\npoll_seconds = 3600\nworkers = 0\n"
                              f"[queue]\nlease_seconds = 3600\n"
                              f'[delivery.routes]\n"remote.test" = "127.0.0.1:{hole.getsockname()[1]}"\n')
    db = sqlite3.connect(f"file:{served.data / 'postroom.db'}?mode=ro", uri=True)

    def holders() -> dict[str, str]:
        return dict(db.execute("SELECT rcpt, lease_holder FROM queue_rcpt").fetchall())

    try:
        slot_of = {int(pid): int(slot) for slot, pid in
                   re.findall(r"worker started slot=(\d+) pid=(\d+)", served.log.read_text())}
        submitted: dict[int, str] = {}  # worker pid -> the recipient of the message it queued (and claimed)
        for _ in range(200):
            client = smtplib.SMTP("127.0.0.1", served.ports["submission"], timeout=30)
            pid = served.worker_of(client.sock, "submission")
            if pid not in submitted:
                rcpt = f"far{len(submitted)}@remote.test"
                client.login(ADDR, PW)
                client.sendmail(ADDR, [rcpt], message(len(submitted)).replace(b"bob@example.net", ADDR.encode(), 1))
                submitted[pid] = rcpt
            client.quit()
            if len(submitted) == 2:
                break
        assert len(submitted) == 2
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(holders().get(r) for r in submitted.values()):
            time.sleep(0.05)
        before = holders()
        node = (served.data / "node-id").read_text().strip()
        for pid, rcpt in submitted.items():  # each claimed by the scheduler of the worker that queued it
            assert before[rcpt].startswith(f"{node}/{slot_of[pid]}#{pid}."), before
        victim = min(submitted)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = holders()
            if now[submitted[victim]] not in ("", before[submitted[victim]]):
                break
            time.sleep(0.1)
        after = holders()
        replacement = [p for p in served.workers() if p not in submitted]
        assert len(replacement) == 1, (served.workers(), submitted)
        assert after[submitted[victim]].startswith(f"{node}/{slot_of[victim]}#{replacement[0]}."), after
        survivor = max(submitted)
        assert after[submitted[survivor]] == before[submitted[survivor]]  # the sibling's lease untouched
        assert f"queue freed 1 lease(s) of this node's earlier process node={node}/{slot_of[victim]}" in \
            served.log.read_text()
    finally:
        db.close()
        served.stop()
        hole.close()


def test_recent_is_claimed_once_across_workers(served: Served) -> None:
    """RFC 3501 §2.3.2: \\Recent is set for one session only; two sessions selecting the mailbox at once in
    two workers see the new message as recent in one of them, not both (the claim is one store transaction)."""
    client = smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=30)
    client.sendmail("bob@example.net", [ADDR], message(7))
    client.quit()
    sessions: dict[int, socket.socket] = {}
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", served.ports["imap"]), timeout=10)
        sock.recv(4096)  # the greeting: accepted
        pid = served.worker_of(sock, "imap")
        if pid in sessions:
            sock.close()
        else:
            sessions[pid] = sock
        if len(sessions) == 2:
            break
    assert len(sessions) == 2, "every IMAP connection landed on one worker"
    files = {pid: sock.makefile("rb") for pid, sock in sessions.items()}
    for sock in sessions.values():
        sock.sendall(f'a LOGIN "{ADDR}" "{PW}"\r\n'.encode())
    for f in files.values():
        while not f.readline().startswith(b"a OK"):
            pass
    for sock in sessions.values():  # both at once
        sock.sendall(b"b SELECT INBOX\r\n")
    recent = []
    for f in files.values():
        while not (line := f.readline()).startswith(b"b OK"):
            if line.endswith(b" RECENT\r\n"):
                recent.append(int(line.split()[1]))
    assert sorted(recent) == [0, 1]
    for sock in sessions.values():
        sock.close()


def test_admin_changes_in_the_cli_are_seen_at_once_by_rcpt_in_both_workers(served: Served) -> None:
    """An alias added, a user removed, a domain removed with `postroom` commands while the server runs: the next
    RCPT on an open session of either worker answers by the change (sqlite/engine.py invariant 8: the reads of
    a command see every commit made before its bytes arrived; no cache lets a deleted user receive mail)."""
    first, pid = smtp_on(served)
    second, _ = smtp_on(served, other_than=pid)
    sessions = (first, second)
    try:
        postroom(served.conf, "domain", "add", "gone.example")
        postroom(served.conf, "user", "add", "bob@example.org", "--password", "bob-secret-1")
        for s in sessions:
            s.ehlo("client.example.net")
            assert s.mail("someone@example.net")[0] == 250
            assert s.rcpt("team@example.org")[0] == 550  # RFC 5321 §3.3: no such mailbox (yet)
            assert s.rcpt("bob@example.org")[0] == 250
            assert s.rcpt("postmaster@gone.example")[0] == 250  # a local domain's postmaster (§4.5.1)
        postroom(served.conf, "alias", "add", "team@example.org", ADDR)
        postroom(served.conf, "user", "remove", "bob@example.org", "--yes")
        postroom(served.conf, "domain", "remove", "gone.example", "--yes")
        for s in sessions:
            assert s.rcpt("team@example.org")[0] == 250
            assert s.rcpt("bob@example.org")[0] == 550
            code, text = s.rcpt("postmaster@gone.example")
            assert code == 550 and b"5.7.1" in text  # not ours any more: relaying denied
    finally:
        for s in sessions:
            s.quit()
