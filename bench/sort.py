"""SORT and THREAD: Postroom beside Dovecot on the same mailbox (issue 14: goal <= 1.0x Dovecot on 100,000).

    .venv/bin/python bench/sort.py [--count 100000] [--rounds 3] [--dir PATH]

A mailbox of --count messages made of threads (a new subject, or a reply with References and In-Reply-To to an
earlier message of its thread, "Re: " prefixes, a mailing-list tag on some), 500 senders, dates spread over a
year, is put into a fresh Postroom data folder (through the store, metadata computed as delivery does) and into
a Maildir for a throwaway Dovecot (bench/dovecot.py: Debian's dovecot-imapd, no FTS plugin). Both run as their
own processes on loopback ports. For each command, one untimed run (Dovecot builds its index and cache, both
fill the page cache), then --rounds timed runs; the table gives the median seconds and the ratio, and checks
that both servers answered the same. The first run's time is shown too ("first"): Dovecot builds its index and
sort data then; Postroom computes the answer it keeps for the next command on the unchanged mailbox
(imap/ordercache.py). Then one message is appended to both (the same bytes, a reply in an existing thread) and
the command is run once more ("after an arrival"): what a webmail's next SORT or THREAD costs once mail came in,
Dovecot updating its index and sort data, Postroom computing the answer again from its stored keys.

"same answer" compares the two servers' answers, for the first runs and after the arrivals. Dovecot 2.3 updates
its sort data for arrivals incrementally, and its answer can then differ from RFC 5256's: SORT (REVERSE SUBJECT
DATE) after three arrivals of the same base subject dated :01, :02, :03 gave "103 101 102" (Postroom, and RFC
5256 §3, "101 102 103": equal subjects, then DATE ascending).

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import imaplib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import PrivatePostroom, progress, servers_stopped  # bench/common.py
from dovecot import PrivateDovecot, version

USER = "bench@example.org"
PASSWORD = "bench-password"
COMMANDS = [
    ("SORT", "(DATE)"),
    ("SORT", "(REVERSE ARRIVAL)"),
    ("SORT", "(SUBJECT)"),
    ("SORT", "(FROM)"),
    ("SORT", "(REVERSE SUBJECT DATE)"),
    ("THREAD", "REFERENCES"),
    ("THREAD", "ORDEREDSUBJECT"),
]


def make_messages(count: int) -> list[bytes]:
    rng = random.Random(5256)
    out: list[bytes] = []
    threads: list[tuple[str, list[str]]] = []  # (subject, message ids)
    start = 1_672_531_200  # 2023-01-01
    for i in range(count):
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(start + rng.randint(0, 365 * 86400)))
        msgid = f"<{i}.{rng.randint(0, 1 << 30)}@bench.example>"
        extra = ""
        if threads and rng.random() < 0.6:
            subject, ids = threads[max(0, len(threads) - 1 - int(rng.expovariate(1 / 50)))]
            parent = rng.randrange(len(ids))
            refs = " ".join(ids[max(0, parent - 9):parent + 1])
            extra = f"References: {refs}\r\nIn-Reply-To: {ids[parent]}\r\n"
            ids.append(msgid)
            shown = "Re: " * rng.randint(1, 2) + subject
        else:
            subject = f"{'[list] ' if rng.random() < 0.2 else ''}topic {i} about {rng.choice(['cats', 'tax', 'code'])}"
            threads.append((subject, [msgid]))
            shown = subject
        sender = rng.randrange(500)
        body = "Some text of the message.\r\n" * rng.randint(1, 30)
        out.append((f"From: Person {sender} <p{sender}@example.net>\r\nTo: {USER}\r\nSubject: {shown}\r\n"
                    f"Date: {date}\r\nMessage-ID: {msgid}\r\n{extra}MIME-Version: 1.0\r\n"
                    f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode())
    return out


def run(port: int, verb: str, arg: str) -> tuple[float, bytes]:
    c = imaplib.IMAP4("127.0.0.1", port)
    c._mode_utf8 = False  # type: ignore[attr-defined]
    c.login(USER, PASSWORD)
    c.select("INBOX")
    t = time.perf_counter()
    typ, data = c.sort(arg, "UTF-8", "ALL") if verb == "SORT" else c.thread(arg, "UTF-8", "ALL")
    elapsed = time.perf_counter() - t
    assert typ == "OK", data
    c.logout()
    return elapsed, data[0] or b""


def arrival(n: int) -> bytes:
    """The n-th message appended during the run: a reply to the first message of the mailbox."""
    return (f"From: Late Person <late{n}@example.net>\r\nTo: {USER}\r\nSubject: Re: topic 0 about late\r\n"
            f"Date: Sat, 30 Dec 2023 12:00:{n:02d} +0000\r\nMessage-ID: <late{n}@bench.example>\r\n"
            f"In-Reply-To: <late{n - 1}@bench.example>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\nA late reply.\r\n").encode()


def append(port: int, raw: bytes) -> None:
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(USER, PASSWORD)
    typ, data = c.append("INBOX", None, imaplib.Time2Internaldate(1_704_067_200), raw)
    assert typ == "OK", data
    c.logout()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000, help="messages in the mailbox")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per command and server")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--only", default="", help="run only the commands whose text contains this (e.g. THREAD); "
                    "the others' arrivals are still appended, so the mailbox is the one of a whole run")
    args = ap.parse_args()
    imaplib._MAXLINE = 1 << 30  # type: ignore[attr-defined]  # a SORT answer for 100,000 is one long line
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-sort-"))
    messages = make_messages(args.count)
    with servers_stopped(work) as started:
        dv = PrivateDovecot(work / "dovecot", ["imap"], USER, "{PLAIN}" + PASSWORD)
        dv.fill(messages)
        pr = PrivatePostroom(work / "postroom", "imap", "[auth]\nallow_plaintext = true\n")
        pr.create(user=USER, password=PASSWORD, messages=messages, with_meta=True)
        dv.start()
        started.append(dv)
        pr.start(greeting=b"* OK")
        started.append(pr)
        ports = {"postroom": pr.port, "dovecot": dv.ports["imap"]}
        print(f"SORT / THREAD on {args.count} messages, median of {args.rounds} (Dovecot {version()})")
        print(f"{'command':<34} {'postroom s':>11} {'dovecot s':>10} {'ratio':>6} {'first: postroom':>16} "
              f"{'dovecot':>8} {'after an arrival: postroom':>27} {'dovecot':>8} {'ratio':>6}"
              "  same answer: first / after")
        for n, (verb, arg) in enumerate(COMMANDS, 1):
            if args.only not in f"{verb} {arg}":
                for port in ports.values():
                    append(port, arrival(n))
                continue
            times: dict[str, float] = {}
            first: dict[str, float] = {}
            later: dict[str, float] = {}
            answers: dict[str, bytes] = {}
            later_answers: dict[str, bytes] = {}
            for name, port in ports.items():
                progress(f"  {verb} {arg} on {name}")
                first[name], answers[name] = run(port, verb, arg)  # not in the median: index, caches, page cache
                times[name] = statistics.median(run(port, verb, arg)[0] for _ in range(args.rounds))
                append(port, arrival(n))
                later[name], later_answers[name] = run(port, verb, arg)
            same = ("yes" if answers["postroom"] == answers["dovecot"] else "NO") + " / " + \
                ("yes" if later_answers["postroom"] == later_answers["dovecot"] else "NO")
            if "ARRIVAL" in arg:
                same = "n/a (the internal dates are each server's own filling time)"
            print(f"{verb + ' ' + arg:<34} {times['postroom']:>11.3f} {times['dovecot']:>10.3f} "
                  f"{times['postroom'] / times['dovecot']:>6.2f} {first['postroom']:>16.3f} {first['dovecot']:>8.3f}"
                  f" {later['postroom']:>27.3f} {later['dovecot']:>8.3f} {later['postroom'] / later['dovecot']:>6.2f}"
                  f"  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
