"""The parked full-text index (store/sqlite/engine.py invariant 10, fts.py `park_new`/`index_parked`) met as a
user of a real server meets it: a burst of SMTP deliveries from 50 parallel sessions to `postroom serve`, IMAP
SEARCH at once (bodies may still be parked) and after the backlog drained, expunge / COPY / MOVE while bodies
are parked, kill -9 while parked and restart; one and two worker processes; the fallback of a batch whose index
rows fail (engine.py invariant 9), which leaves its bodies in the backlog alike. SEARCH must give the same,
RFC 9051 §6.4.4 answer at every moment (a case-insensitive substring of the body / text / header field), and
the store must keep schema invariant 12 (a referenced body in exactly one of `fts_docs` and `fts_backlog`),
fts.py invariant 2 (no document for a body that is gone) and invariant 4 (one scan form per document)."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from serve_support import start_serve

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout's code
ADDR = "ann@example.org"
PW = "ann-secret"
SESSIONS = 50
PER_SESSION = 6


def _postroom(conf: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "postroom", "--config", str(conf), *args], check=True,
                   capture_output=True, env=ENV, timeout=120)


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    conf = tmp_path / "postroom.toml"
    conf.write_text(
        f'[server]\ndata_dir = "{data}"\nshutdown_grace_seconds = 2\n'
        '[listeners]\nsmtp = "127.0.0.1:0"\nsubmission = ""\nsubmissions = ""\n'
        'imap = "127.0.0.1:0"\nimaps = ""\npop3 = ""\npop3s = ""\nhttp = ""\nhttps = ""\n'
        '[limits]\nconnections_per_ip = 200\n'
        '[delivery]\nenabled = false\n'
        '[inbound]\nspf = false\ndkim = false\ndmarc = false\narc = false\n'
        '[auth]\nallow_plaintext = true\n')
    _postroom(conf, "domain", "add", "example.org")
    _postroom(conf, "user", "add", ADDR, "--password", PW)
    return conf, data


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """kill -9 of the server and its worker processes (by PID)."""
    try:
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    except FileNotFoundError:
        children = []
    for pid in [proc.pid, *children]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)


def _message(session: int, n: int) -> bytes:
    """Every body holds "marmalade"; one in three "Pelican"; each its own "zebra<s>x<n>q"."""
    words = ["marmalade", f"zebra{session}x{n}q"] + (["Pelican"] if (session + n) % 3 == 0 else [])
    return (f"From: s{session}@remote.test\r\nTo: {ADDR}\r\nSubject: burst {session}-{n} end\r\n"
            f"Message-ID: <b{session}-{n}@remote.test>\r\n\r\n" + " ".join(words) + "\r\n"
            + "filler line\r\n" * 20).encode()


def _burst(port: int, round_: int = 0) -> list[tuple[int, int]]:
    """SESSIONS parallel SMTP sessions, PER_SESSION messages each; the (session, n) acknowledged."""
    acked: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    go = threading.Barrier(SESSIONS)

    def sender(s: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
                go.wait(30)
                for n in range(PER_SESSION):
                    sid = round_ * 1000 + s
                    if c.sendmail(f"s{sid}@remote.test", [ADDR], _message(sid, n)) == {}:
                        acked.append((sid, n))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(s,)) for s in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    return acked


def _db(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data / 'postroom.db'}?mode=ro", uri=True, timeout=30)


def _count(data: Path, sql: str) -> int:
    with _db(data) as conn:
        return int(conn.execute(sql).fetchone()[0])


def _wait_backlog_empty(data: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _count(data, "SELECT count(*) FROM fts_backlog") == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"backlog still {_count(data, 'SELECT count(*) FROM fts_backlog')} after {seconds} s")


def _check_store(data: Path) -> None:
    """Schema invariant 12, fts.py invariants 2 and 4, on the store as it is."""
    with _db(data) as conn:
        q = conn.execute
        neither = q("SELECT count(DISTINCT m.blob_id) FROM messages m WHERE m.blob_id NOT IN"
                    " (SELECT blob_id FROM fts_docs) AND m.blob_id NOT IN (SELECT blob_id FROM fts_backlog)").fetchone()
        both = q("SELECT count(*) FROM fts_docs d JOIN fts_backlog b ON b.blob_id = d.blob_id").fetchone()
        gone_docs = q("SELECT count(*) FROM fts_docs d WHERE d.blob_id NOT IN (SELECT id FROM blobs)").fetchone()
        gone_backlog = q("SELECT count(*) FROM fts_backlog b WHERE b.blob_id NOT IN (SELECT id FROM blobs)").fetchone()
        scan = q("SELECT (SELECT count(*) FROM fts_scan), (SELECT count(*) FROM fts_docs),"
                 " (SELECT count(*) FROM fts_scan WHERE docid NOT IN (SELECT docid FROM fts_docs))").fetchone()
        body_rows = {r[0] for r in q("SELECT rowid FROM fts_body")}
        docids = {r[0] for r in q("SELECT docid FROM fts_docs")}
    assert neither[0] == 0, f"{neither[0]} referenced bodies neither indexed nor in the backlog"
    assert both[0] == 0, f"{both[0]} bodies both indexed and in the backlog"
    assert gone_docs[0] == 0, f"{gone_docs[0]} documents of bodies that are gone"
    assert gone_backlog[0] == 0, f"{gone_backlog[0]} backlog rows of bodies that are gone"
    assert scan[0] == scan[1] and scan[2] == 0, f"scan forms {scan[0]} for {scan[1]} documents ({scan[2]} orphans)"
    assert body_rows == docids, f"fts_body rows {len(body_rows)} vs documents {len(docids)}"


class Mailbox:
    """An IMAP session on one mailbox: UID -> subject, and UID SEARCH."""

    def __init__(self, port: int, name: str = "INBOX") -> None:
        self.c = imaplib.IMAP4("127.0.0.1", port, timeout=60)
        self.c.login(ADDR, PW)
        typ, _ = self.c.select(name)
        assert typ == "OK"

    def subjects(self) -> dict[int, str]:
        typ, data = self.c.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        out = {}
        for item in data:
            if isinstance(item, tuple):
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))  # type: ignore[union-attr]
                out[uid] = re.search(rb"burst (\d+-\d+)", item[1]).group(1).decode()  # type: ignore[union-attr]
        return out

    def search(self, *criteria: str) -> set[int]:
        typ, data = self.c.uid("SEARCH", *criteria)
        assert typ == "OK", data
        return {int(x) for x in data[0].split()}

    def esearch_count(self, *criteria: str) -> int:
        typ, data = self.c.uid("SEARCH", "RETURN", "(COUNT)", *criteria)
        assert typ == "OK", data
        _, data = self.c.response("ESEARCH")  # imaplib files the ESEARCH response (RFC 4731 §3) by its name
        m = re.search(rb"COUNT (\d+)", data[-1] or b"")
        assert m is not None, data
        return int(m.group(1))

    def close(self) -> None:
        try:
            self.c.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def _expected(subjects: dict[int, str]) -> dict[str, set[int]]:
    """What RFC 9051 §6.4.4 SEARCH answers, derived from what was sent (`_message`)."""
    pel = {u for u, k in subjects.items() if sum(int(x) for x in k.split("-")) % 3 == 0}
    return {"all": set(subjects), "pelican": pel, "no-pelican": set(subjects) - pel,
            "s7": {u for u, k in subjects.items() if k.startswith("7-")},
            "z": {u for u, k in subjects.items() if k == "12-3"}}


def _searches(box: Mailbox) -> dict[str, set[int]]:
    return {"all": box.search("BODY", "marmalade"), "pelican": box.search("TEXT", "pelican"),
            "no-pelican": box.search("NOT", "BODY", "PELICAN", "BODY", "marmal"),
            "s7": box.search("FROM", "s7@remote"), "z": box.search("BODY", "zebra12x3q")}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout(600)
def test_search_is_exact_through_a_burst_and_its_parked_index(tmp_path: Path, workers: int) -> None:
    conf, data = _setup(tmp_path)
    log = tmp_path / "serve.log"
    proc, ports = start_serve(conf, 90, workers, log=log)
    try:
        acked = _burst(ports["smtp"])
        assert len(acked) == SESSIONS * PER_SESSION
        parked_now = _count(data, "SELECT count(*) FROM fts_backlog")
        print(f"backlog right after the burst: {parked_now}")
        box = Mailbox(ports["imap"])
        subjects = box.subjects()
        assert sorted(subjects.values()) == sorted(f"{s}-{n}" for s, n in acked)
        want = _expected(subjects)
        assert _searches(box) == want, f"at once ({parked_now} bodies in the backlog)"
        assert box.esearch_count("TEXT", "pelican") == len(want["pelican"])
        # While (some) bodies may still be parked: expunge, COPY and MOVE some of them.
        assert box.c.create("Kept")[0] == "OK"
        assert box.c.create("Shifted")[0] == "OK"
        pel = sorted(want["pelican"])
        gone, copied, moved = pel[0:10], pel[10:20], pel[20:30]
        assert box.c.uid("COPY", ",".join(map(str, copied)), "Kept")[0] == "OK"
        assert box.c.uid("MOVE", ",".join(map(str, moved)), "Shifted")[0] == "OK"
        assert box.c.uid("STORE", ",".join(map(str, gone)), "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
        assert box.c.expunge()[0] == "OK"
        left = {u: k for u, k in subjects.items() if u not in gone and u not in moved}
        want = _expected(left)
        assert _searches(box) == want, "after expunge / MOVE"
        archive = Mailbox(ports["imap"], "Kept")
        moved_box = Mailbox(ports["imap"], "Shifted")
        assert archive.search("TEXT", "pelican") == set(archive.subjects()) and len(archive.subjects()) == 10
        assert moved_box.search("BODY", "PELICAN") == set(moved_box.subjects()) and len(moved_box.subjects()) == 10
        _wait_backlog_empty(data)
        assert _searches(box) == want, "after the backlog drained"
        assert archive.search("TEXT", "pelican") == set(archive.subjects())
        assert moved_box.search("BODY", "PELICAN") == set(moved_box.subjects())
        _check_store(data)
        for b in (box, archive, moved_box):
            b.close()
    finally:
        _stop(proc)
    _check_store(data)
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


@pytest.mark.timeout(600)
def test_parked_bodies_survive_kill_9_and_are_indexed_after_restart(tmp_path: Path) -> None:
    conf, data = _setup(tmp_path)
    log = tmp_path / "serve.log"
    parked = 0
    acked: list[tuple[int, int]] = []
    for round_ in range(3):  # until a kill -9 met parked bodies
        proc, ports = start_serve(conf, 90, 1, log=log)
        try:
            acked += _burst(ports["smtp"], round_)
            parked = _count(data, "SELECT count(*) FROM fts_backlog")
        finally:
            _kill_tree(proc)
        if parked:
            break
    _check_store(data)  # as the kill left it
    proc, ports = start_serve(conf, 90, 1, log=log)
    try:
        _wait_backlog_empty(data)  # the serve-time build (indexing.py)
        box = Mailbox(ports["imap"])
        subjects = box.subjects()
        assert sorted(subjects.values()) == sorted(f"{s}-{n}" for s, n in acked)
        want = _expected(subjects)
        assert _searches(box) == want
        box.close()
        _check_store(data)
    finally:
        _stop(proc)
    assert parked, "no kill met parked bodies (the burst never parked)"


@pytest.mark.timeout(300)
def test_the_same_body_appended_in_parallel_is_indexed_or_in_the_backlog_never_both(tmp_path: Path) -> None:
    """40 IMAP sessions APPEND at once, half of them the very same message (one content-addressed body,
    stored new by one job and again by later jobs of the same batch); right after, while parked bodies wait,
    schema invariant 12 holds, and SEARCH finds every copy before and after the backlog drained. A run of
    this first showed `park_new` backlogging a body a later job had indexed (timing decides whether a run
    meets it; tests/store/test_search_index.py reproduces it every time)."""
    conf, data = _setup(tmp_path)
    proc, ports = start_serve(conf, 90, 1, log=tmp_path / "serve.log")
    try:
        same = b"From: a@b.test\r\nSubject: same body\r\n\r\nidentical ostrich text\r\n"
        go = threading.Barrier(40)
        errors: list[BaseException] = []

        def append(i: int) -> None:
            try:
                c = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=60)
                c.login(ADDR, PW)
                go.wait(30)
                for k in range(5):
                    msg = same if (i + k) % 2 == 0 else (f"From: a@b.test\r\nSubject: other {i}-{k}\r\n\r\n"
                                                        f"unique kiwi {i}x{k}\r\n").encode()
                    assert c.append("INBOX", "", imaplib.Time2Internaldate(time.time()), msg)[0] == "OK"
                c.logout()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=append, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        _check_store(data)
        box = Mailbox(ports["imap"])
        assert len(box.search("BODY", "OSTRICH")) == 100 and len(box.search("TEXT", "kiwi")) == 100
        _wait_backlog_empty(data)
        _check_store(data)
        assert len(box.search("BODY", "OSTRICH")) == 100 and len(box.search("TEXT", "kiwi")) == 100
        box.close()
    finally:
        _stop(proc)


@pytest.mark.timeout(300)
def test_messages_whose_index_rows_fail_are_stored_searched_exactly_and_indexed_once_it_works(
        tmp_path: Path) -> None:
    """store/sqlite/engine.py invariant 9, fts.py invariant 1, as a client meets them: while the store refuses
    index rows (a trigger on `fts_docs`, added to the live store from outside), every SMTP delivery and IMAP
    APPEND is still acknowledged, also an APPEND of the very bytes of a message stored just before (its body
    stored again while in the backlog: `acquire_blob`), and SEARCH answers exactly from the backlog
    (RFC 9051 §6.4.4); schema invariant 12 holds. Once the index works again, the server indexes those bodies
    without a restart (engine invariant 10) and SEARCH gives the same answers."""
    conf, data = _setup(tmp_path)
    proc, ports = start_serve(conf, 90, 1, log=tmp_path / "serve.log")
    try:
        with sqlite3.connect(data / "postroom.db", timeout=30) as conn:
            conn.execute("CREATE TRIGGER e2e_no_index BEFORE INSERT ON fts_docs"
                         " BEGIN SELECT RAISE(ABORT, 'index rows refused'); END")
        same = b"From: a@b.test\r\nSubject: same body\r\n\r\nidentical ostrich text\r\n"
        c = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=60)
        c.login(ADDR, PW)
        when = imaplib.Time2Internaldate(time.time())
        for msg in (same, b"From: a@b.test\r\nSubject: other\r\n\r\nlonely kiwi text\r\n", same):
            assert c.append("INBOX", "", when, msg)[0] == "OK"
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=60) as smtp:
            for n in range(3):
                assert smtp.sendmail(f"s{n}@remote.test", [ADDR], _message(n, 0)) == {}
        _check_store(data)
        assert _count(data, "SELECT count(*) FROM fts_docs") == 0
        box = Mailbox(ports["imap"])
        expected = {"ostrich": {1, 3}, "kiwi": {2}, "marmalade": {4, 5, 6}, "pelican": {4}}
        searches = {"ostrich": ("BODY", "OSTRICH"), "kiwi": ("TEXT", "kiwi"), "marmalade": ("BODY", "marmalade"),
                    "pelican": ("TEXT", "pelican")}
        assert {k: box.search(*v) for k, v in searches.items()} == expected
        with sqlite3.connect(data / "postroom.db", timeout=30) as conn:
            conn.execute("DROP TRIGGER e2e_no_index")
        assert c.append("INBOX", "", when, same)[0] == "OK"  # stored again: indexed now
        c.logout()
        _wait_backlog_empty(data)
        _check_store(data)
        assert _count(data, "SELECT count(*) FROM fts_docs") == 5
        expected["ostrich"].add(7)
        assert box.c.noop()[0] == "OK"  # the session learns of UID 7 (its EXISTS), then searches it too
        assert {k: box.search(*v) for k, v in searches.items()} == expected
        box.close()
    finally:
        _stop(proc)


@pytest.mark.timeout(600)
def test_postroom_index_beside_two_parking_workers_then_kill_9(tmp_path: Path) -> None:
    """Two worker processes park bodies in a burst; `postroom index` (the CLI, a third writer of the store) runs
    while they are parked; then the whole tree is killed with SIGKILL while a second burst's bodies may be
    parked, and restarted: every acknowledged message is there once, SEARCH answers as RFC 9051 §6.4.4 says, and
    the index holds each body exactly once (schema invariant 12, fts.py invariants 2 and 4)."""
    conf, data = _setup(tmp_path)
    log = tmp_path / "serve.log"
    proc, ports = start_serve(conf, 90, 2, log=log)
    try:
        acked = _burst(ports["smtp"], 0)
        _postroom(conf, "index")
        _check_store(data)
        acked += _burst(ports["smtp"], 1)
    finally:
        _kill_tree(proc)
    _check_store(data)
    proc, ports = start_serve(conf, 90, 2, log=log)
    try:
        _wait_backlog_empty(data)
        box = Mailbox(ports["imap"])
        subjects = box.subjects()
        assert sorted(subjects.values()) == sorted(f"{s}-{n}" for s, n in acked)
        assert _searches(box) == _expected(subjects)
        box.close()
        _check_store(data)
    finally:
        _stop(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def _worker_pid(log: Path, slot: int, after: int = 0) -> int:
    """The PID of the newest worker started in `slot` (workers.py logs "worker started slot=N pid=P"), other than
    `after`; waits for it up to 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [int(p) for p in re.findall(rf"worker started slot={slot} pid=(\d+)", log.read_text())]
        if pids and pids[-1] != after:
            return pids[-1]
        time.sleep(0.1)
    raise AssertionError(f"no worker in slot {slot}:\n{log.read_text()[-4000:]}")


@pytest.mark.timeout(600)
def test_bodies_parked_by_a_worker_killed_with_sigkill_are_indexed_without_a_restart_of_the_server(
        tmp_path: Path) -> None:
    """workers.py: a worker that dies is started again in its slot; the server goes on. Bodies the dead worker
    had parked (engine.py invariant 10: recorded in `fts_backlog`, kept in that worker's memory only) must not
    stay in the backlog until the whole server is restarted: once traffic stops the backlog drains (SEARCH
    stays exact meanwhile, at ~0.17 ms per backlog body per SEARCH BODY). Worker 1 is killed, not worker 0:
    worker 0's start works off the whole backlog (indexing.py), so its death would hide the loss."""
    conf, data = _setup(tmp_path)
    log = tmp_path / "serve.log"
    proc, ports = start_serve(conf, 90, 2, log=log)
    try:
        acked: list[tuple[int, int]] = []
        at_kill = 0
        victim = 0
        for round_ in range(3):  # three kills: each may meet bodies worker 1 parked
            victim = _worker_pid(log, 1, victim)
            acked += _burst(ports["smtp"], round_)
            at_kill = max(at_kill, _count(data, "SELECT count(*) FROM fts_backlog"))
            os.kill(victim, signal.SIGKILL)
        print(f"largest backlog when worker 1 was killed: {at_kill}")
        _worker_pid(log, 1, victim)  # its replacement
        box = Mailbox(ports["imap"])
        subjects = box.subjects()
        assert sorted(subjects.values()) == sorted(f"{s}-{n}" for s, n in acked)
        assert _searches(box) == _expected(subjects)  # exact whatever is parked
        _wait_backlog_empty(data)
        assert _searches(box) == _expected(subjects)
        box.close()
        _check_store(data)
    finally:
        _stop(proc)
    assert at_kill, "no kill met bodies in the backlog (the bursts never parked)"
