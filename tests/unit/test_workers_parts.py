"""workers.py's parts that need no running server: socket groups, worker counts, ACME challenge files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from postroom.workers import ChallengeFiles, bind_per_worker, worker_count


def test_worker_count_zero_is_one_per_usable_cpu() -> None:
    assert worker_count(0) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3


def test_each_slot_gets_its_own_socket_on_one_port() -> None:
    slots = bind_per_worker({"imap": ("127.0.0.1", 0), "smtp": ("127.0.0.1", 0)}, 3)
    try:
        assert len(slots) == 3
        for name in ("imap", "smtp"):
            ports = {slot[name][0].getsockname()[1] for slot in slots}
            assert len(ports) == 1  # port 0: every slot joined the port the first one got
            assert len({slot[name][0].fileno() for slot in slots}) == 3  # three sockets, not one shared
        assert slots[0]["imap"][0].getsockname() != slots[0]["smtp"][0].getsockname()
        for slot in slots:  # they accept once listening, each its share
            slot["imap"][0].listen(8)
        client = socket.create_connection(slots[0]["imap"][0].getsockname(), timeout=5)
        client.close()
    finally:
        for sock in (s for slot in slots for socks in slot.values() for s in socks):
            sock.close()


def test_a_port_in_use_is_refused_not_joined() -> None:
    """Another program listening there (even one using SO_REUSEPORT itself) makes the bind fail, naming the
    listener, as in one process; the workers never share a port with a stranger."""
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    port = other.getsockname()[1]
    try:
        with pytest.raises(OSError, match=rf"listener smtp: cannot listen on 127.0.0.1:{port}"):
            bind_per_worker({"smtp": ("127.0.0.1", port)}, 2)
    finally:
        other.close()


def test_challenge_files_are_a_mapping_every_process_reads(tmp_path: Path) -> None:
    files = ChallengeFiles(tmp_path / "challenges")
    assert files.get("tok_en-1") is None and len(files) == 0
    files["tok_en-1"] = "tok_en-1.thumbprint"
    assert ChallengeFiles(tmp_path / "challenges")["tok_en-1"] == "tok_en-1.thumbprint"  # another reader
    assert list(files) == ["tok_en-1"]
    assert files.pop("tok_en-1") == "tok_en-1.thumbprint" and files.get("tok_en-1") is None
    assert files.get("../../etc/passwd") is None  # RFC 8555 §8.3: a token is base64url; nothing else is looked up
    with pytest.raises(KeyError):
        files["a/b"] = "x"


CRASHER = """
import logging, os, sys
from pathlib import Path
from postroom.workers import Supervisor, bind_per_worker
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
def main(worker):
    import signal, time
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # taken by sigwait below: a clean exit 0
    worker.ready()
    if worker.slot == 1:
        time.sleep(0.5)
        os._exit(3)  # slot 1 dies young, every time: a crash loop
    signal.sigwait([signal.SIGTERM])
    return 0
sup = Supervisor(2, bind_per_worker({"smtp": ("127.0.0.1", 0)}, 2), Path(sys.argv[1]), main, 1.0)
sup.prepare()
print("started" if sup.start() else "failed", flush=True)
sup.run()
print("stopped", flush=True)
"""


def test_a_crash_loop_backs_off_and_sigterm_ends_every_worker(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        time.sleep(5.5)  # slot 1 dies at 0.5 s, is restarted at 1.5 s, dies, restarted at 4.0 s, dies at 4.5 s
        kids = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == "stopped\n" and proc.returncode == 0
    waits = [float(w) for w in re.findall(r"worker exited slot=1 .* restart_in=([\d.]+)s", err)]
    assert waits[:3] == [1.0, 2.0, 4.0], err  # doubling (workers.py: BACKOFF_FIRST, then x2 per young death)
    assert "slot=0" not in "".join(line for line in err.splitlines() if "worker exited" in line)
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists()
