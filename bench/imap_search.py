"""SEARCH on a large mailbox: Postroom (with its full-text index) beside Dovecot (no FTS plugin, as Debian ships it).

    .venv/bin/python bench/imap_search.py [--count 20000] [--runs 5] [--dir PATH]

A mailbox of --count messages of about 20 KiB of text each (English words drawn with their frequencies in Python's
documentation, so the text is varied like real mail; a quarter multipart with a base64 attachment) is put into a
fresh Postroom data folder through the store (metadata and index computed as delivery does) and into a Maildir for a
throwaway Dovecot (bench/dovecot.py). A rare term is put into about 1 % of the messages (at random places in the
body), another into exactly 200 messages whatever the count (how the cost grows with the mailbox alone, the
answer staying the same), a common word is in most of them, and a two-character CJK word in about 5 %.

Each server gets one session: LOGIN, SELECT INBOX, one untimed run of every search (Dovecot builds its
index, both fill the page cache), then --runs timed runs of each:

    UID SEARCH TEXT <rare>, UID SEARCH BODY <rare>, UID SEARCH BODY <in 200>, UID SEARCH SUBJECT <rare word>,
    UID SEARCH TEXT <common>  (the index cannot narrow much: close to the full scan),
    UID SEARCH BODY <2 CJK characters>  (too short for trigrams: the full scan)

The table gives the median time per search on each server and the ratio, then the size of Postroom's index
(FTS5 tables and their document map) and of the scan forms (`fts_scan`, the case-folded search text the exact
check reads), from SQLite's dbstat, against the size of the bodies. Both servers' answers
must agree (the counts are printed). The Postroom server runs the code of the checkout this script is in
(PYTHONPATH), so a second checkout gives the "before" numbers.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydoc_data.topics import topics

import dovecot  # bench/dovecot.py: a private Dovecot
from common import PrivatePostroom, cpu_seconds, progress, servers_stopped  # bench/common.py
from dovecot import PrivateDovecot

USER = "bench@example.org"
PASSWORD = "bench-password"
RARE = "quokkafest"
RARE_SUBJECT = "zanzibarly"
COMMON = "the"
CJK = "会议"
FIXED = "wombatgala"  # in exactly FIXED_COUNT messages whatever --count: the cost of a search whose answer stays
FIXED_COUNT = 200  # the same size while the mailbox grows


def make_messages(count: int, size: int = 20_000) -> list[bytes]:
    rng = random.Random(5032)
    every = max(1, count // FIXED_COUNT)  # FIXED goes into one message of each `every`
    # English words with their frequencies in a real text (Python's own documentation, shipped with it): the
    # index's size depends on how varied the text is, and random letters would overstate it.
    vocab = re.findall(r"[A-Za-z]+(?:'[a-z]+)?[,.;:]?", " ".join(topics.values()))
    out = []
    for i in range(count):
        words = [rng.choice(vocab) for _ in range(size // 6)]
        if rng.random() < 0.01:
            words[rng.randrange(len(words))] = RARE
        if rng.random() < 0.05:
            words[rng.randrange(len(words))] = CJK
        if i % every == 11 % every and i // every < FIXED_COUNT:
            words[7] = FIXED  # no random draw: the rest of the mail is the same as without it
        lines = [" ".join(words[k:k + 12]) for k in range(0, len(words), 12)]
        subject = f"report {i} " + (RARE_SUBJECT if i % 100 == 7 else rng.choice(vocab))
        head = (f"From: Sender {i % 97} <sender{i % 97}@example.net>\r\nTo: {USER}\r\nSubject: {subject}\r\n"
                f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{i}@bench.example>\r\nMIME-Version: 1.0\r\n")
        body = "\r\n".join(lines).encode() + b"\r\n"
        if i % 4 == 0:
            att = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\n" * 40
            out.append(head.encode() + b'Content-Type: multipart/mixed; boundary="bb"\r\n\r\n--bb\r\n'
                       b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body +
                       b"--bb\r\nContent-Type: application/octet-stream; name=a.bin\r\n"
                       b"Content-Transfer-Encoding: base64\r\n\r\n" + att + b"--bb--\r\n")
        else:
            out.append(head.encode() + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body)
    return out


class Client:
    """A blocking IMAP client just big enough for LOGIN, SELECT and SEARCH with UTF-8 literals."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self.n = 0

    def cmd(self, text: bytes) -> list[bytes]:
        self.n += 1
        tag = b"t%d" % self.n
        self.sock.sendall(tag + b" " + text + b"\r\n")
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            lines.append(line)
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line)
                return lines


def searches() -> list[tuple[str, bytes]]:
    def lit(s: str) -> bytes:
        data = s.encode()
        return b"{%d+}\r\n" % len(data) + data

    return [(f"TEXT {RARE} (~1 %)", b"TEXT " + lit(RARE)), (f"BODY {RARE} (~1 %)", b"BODY " + lit(RARE)),
            (f"BODY {FIXED} ({FIXED_COUNT} at any size)", b"BODY " + lit(FIXED)),
            (f"SUBJECT {RARE_SUBJECT} (1 %)", b"SUBJECT " + lit(RARE_SUBJECT)),
            (f"TEXT {COMMON} (common)", b"TEXT " + lit(COMMON)),
            ("BODY 2 CJK chars (~5 %)", b"BODY " + lit(CJK))]


def measure(port: int, runs: int, label: str, pid: int | None = None) -> dict[str, tuple[float, int, float]]:
    """search -> (median wall seconds, messages found, server CPU seconds per search: all runs' CPU over the
    runs, from /proc, since a clock tick is 10 ms; NaN without `pid`)."""
    c = Client(port)
    c.cmd(f'LOGIN "{USER}" "{PASSWORD}"'.encode())
    c.cmd(b"SELECT INBOX")
    out: dict[str, tuple[float, int, float]] = {}
    for name, query in searches():
        progress(f"  {label}: {name} ...")
        first = c.cmd(b"UID SEARCH CHARSET UTF-8 " + query)  # warm-up (Dovecot builds its cache here)
        # Dovecot may send "* OK Searched 40% of the mailbox" lines first: count the SEARCH line's numbers.
        found = [ln for ln in first if ln.startswith(b"* SEARCH")]
        hits = len(found[0].split()) - 2 if found else 0
        times = []
        cpu0 = cpu_seconds(pid) if pid else 0.0
        for _ in range(runs):
            t = time.perf_counter()
            c.cmd(b"UID SEARCH CHARSET UTF-8 " + query)
            times.append(time.perf_counter() - t)
        cpu = (cpu_seconds(pid) - cpu0) / runs if pid else float("nan")
        out[name] = (statistics.median(times), hits, cpu)
    return out


def index_size(db: Path) -> tuple[int, int, int, list[tuple[str, int]]]:
    """(bytes of the full-text index: FTS5 tables and fts_docs, bytes of the scan forms, bytes of the whole
    database, bytes of the five largest of those tables)."""
    conn = sqlite3.connect(db)
    try:
        try:
            parts = [(str(n), int(b)) for n, b in conn.execute(
                "SELECT name, sum(pgsize) FROM dbstat WHERE name LIKE 'fts%' GROUP BY name ORDER BY 2 DESC")]
        except sqlite3.OperationalError:
            parts = []
        total = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
        scan = sum(b for n, b in parts if n == "fts_scan")  # schema 15 on
        return sum(b for _, b in parts) - scan, scan, int(total), parts[:5]
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20_000, help="messages in the mailbox")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per search (the median is shown)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--no-dovecot", action="store_true", help="Postroom only")
    ap.add_argument("--postroom-store", type=Path, default=None,
                    help="a Postroom folder filled before with the same --count (its data/ is used as it is, and "
                         "kept; made there if missing): filling 100,000 messages takes the better part of an hour")
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = str(ROOT)  # the server runs this checkout's code
    work = Path(tempfile.mkdtemp(prefix="imap-search-bench-", dir=args.dir))
    messages = make_messages(args.count)
    body_bytes = sum(map(len, messages))
    progress(f"imap search bench: {args.count} messages, {body_bytes / 1e6:.0f} MB, in {work}")
    results: dict[str, dict[str, tuple[float, int, float]]] = {}
    sizes: tuple[int, int, int, list[tuple[str, int]]] = (0, 0, 0, [])
    with servers_stopped(work) as started:
        pr = PrivatePostroom(args.postroom_store or work / "postroom", "imap", "[auth]\nallow_plaintext = true\n")
        if not (pr.data / "postroom.db").exists():
            t = time.perf_counter()
            pr.create(user=USER, password=PASSWORD, messages=messages, with_meta=True)
            progress(f"  Postroom store filled in {time.perf_counter() - t:.0f} s")
        sizes = index_size(pr.data / "postroom.db")
        started.append(pr)
        port = pr.start(greeting=b"* OK", timeout=120)
        results["Postroom"] = measure(port, args.runs, "Postroom", pr.pid)
        pr.stop()
        if not args.no_dovecot:
            name = f"Dovecot {dovecot.version()}"
            dv = PrivateDovecot(work / "dovecot", ["imap"], USER, f"{{PLAIN}}{PASSWORD}")
            dv.fill(messages)
            started.append(dv)
            dv.start()
            results[name] = measure(dv.ports["imap"], args.runs, name)
            dv.stop()

    names = list(results)
    print(f"\nSEARCH on {args.count} messages ({body_bytes / 1e6:.0f} MB); median of {args.runs} warm runs, ms "
          "(messages found)")
    print("| search | " + " | ".join(names) + " | Postroom server CPU ms" +
          (" | ratio (Postroom / Dovecot) |" if len(names) > 1 else " |"))
    print("| --- |" + " ---: |" * (len(names) + 1) + (" ---: |" if len(names) > 1 else ""))
    for key, _ in searches():
        cells = [f"{results[n][key][0] * 1000:,.1f} ({results[n][key][1]})" for n in names]
        cells.append(f"{results['Postroom'][key][2] * 1000:,.1f}")
        ratio = ""
        if len(names) > 1:
            a, b = results[names[0]][key][0], results[names[1]][key][0]
            ratio = f" {a / b:.3f}x |" if b else " - |"
        print(f"| {key} | " + " | ".join(cells) + " |" + ratio)
    fts, scan, total, parts = sizes
    print(f"\nPostroom database {total / 1e6:.0f} MB, of which full-text index {fts / 1e6:.1f} MB "
          f"= {fts / body_bytes:.2f}x and scan forms {scan / 1e6:.1f} MB = {scan / body_bytes:.2f}x the "
          f"{body_bytes / 1e6:.0f} MB of message bodies (" + ", ".join(f"{n} {b / 1e6:.1f} MB" for n, b in parts) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
