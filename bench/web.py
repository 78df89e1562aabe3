"""The webmail's pages on a small and a large mailbox, beside the same 50 envelopes fetched over IMAP from Dovecot.

    .venv/bin/python bench/web.py [--sizes 1000,100000] [--runs 40] [--dir PATH]

For each size a fresh Postroom (`postroom serve`, the `http` listener alone) holds the same generated mailbox as
bench/imap_mailbox.py builds (conversations, plain and multipart bodies of about 6 KiB), stored with its metadata
as delivery stores it. One signed-in browser-like client (httpx) then times, --runs times each:

    INBOX page      GET /mail/box/<inbox>: the folder tree and the newest 50 messages (From, Subject, date, size);
                    time to the first byte of the response (TTFB) and to its last byte
    open message    GET /mail/box/<inbox>/<uid> of a random message (its body decoded, \\Seen set on first open)
    search pages    GET /mail/box/<inbox>?q=liquor and ?q=zanzibar: the first page of a free-text search, IMAP
                    SEARCH's code over UID windows growing from the top (web/search.py); "liquor" is in every
                    body (a full page from the first window), "zanzibar" in 1 % of them (10 or 1,000 matches)
    sorted page     GET /mail/box/<inbox>?sort=subject&start=100: the third page by subject (web/sort.py); the
                    first such request sorts the mailbox's sort rows ("first sort", timed once), later ones use
                    the order kept under the mailbox's content version
    conversations   GET /mail/box/<inbox>?view=conversations: the newest 50 conversations (web/conversations.py)

and reports p50 / p95 in milliseconds, and for each the ratio of the largest mailbox to the smallest (the goal
of issue 10 is at most 1.5: no page reads the whole mailbox). "Memory per 100 sessions" is the server's
resident memory after 100 more sign-ins minus before (sessions live in the store: it should be about nothing).

The reference is Dovecot (Debian's dovecot-imapd on a high loopback port, filled with the same messages as a
Maildir, bench/dovecot.py): one logged-in imaplib session times SELECT INBOX and `FETCH` of the newest 50
messages' (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE) by sequence number (EXISTS-49:EXISTS), what a mail
client reads to show the same page; the ratio is Postroom's full INBOX page / Dovecot's. Progress goes to
stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import imaplib
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dovecot  # bench/dovecot.py
from common import PrivatePostroom, progress, servers_stopped  # bench/common.py
from dovecot import PrivateDovecot
from imap import PASSWORD, USER  # bench/imap.py
from imap_mailbox import make_messages  # bench/imap_mailbox.py

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def rss(pid: int) -> int:
    """Resident bytes of one process (/proc/PID/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def sign_in(base: str) -> httpx.Client:
    c = httpx.Client(base_url=base, follow_redirects=False, timeout=120)
    form = c.get("/mail/")
    r = c.post("/mail/signin", data={"csrf": CSRF.search(form.text).group(1),  # type: ignore[union-attr]
                                     "username": USER, "password": PASSWORD})
    if r.status_code != 303:
        raise SystemExit(f"sign-in failed: {r.status_code} {r.text[:200]}")
    return c


def timed_get(c: httpx.Client, path: str) -> tuple[float, float]:
    """(seconds to the response's first byte, seconds to its last) of one GET that must answer 200."""
    t0 = time.perf_counter()
    with c.stream("GET", path) as r:
        first = time.perf_counter() - t0
        r.read()
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: {r.status_code}")
    return first, time.perf_counter() - t0


def bench_postroom(work: Path, messages: list[bytes], runs: int) -> dict[str, list[float] | float]:
    server = PrivatePostroom(work / f"postroom-{len(messages)}", "http",
                             "[auth]\nmax_failures_per_ip = 100000\n[web]\npage_size = 50\n")
    server.create(user=USER, password=PASSWORD, messages=messages, with_meta=True)
    server.start(timeout=60)
    try:
        base = f"http://127.0.0.1:{server.port}"
        c = sign_in(base)
        inbox = c.get("/mail/").headers["location"]
        rng = random.Random(10)
        ttfb, full, opened, searched, common, sorted_, convs = [], [], [], [], [], [], []
        timed_get(c, inbox)  # warm-up: the page cache, the metadata cache
        first_sort = timed_get(c, f"{inbox}?sort=from")[1]  # the store sorts the whole mailbox's sort rows once
        search, by_subject, threads = f"{inbox}?q=zanzibar", f"{inbox}?sort=subject&start=100", \
            f"{inbox}?view=conversations"
        often = f"{inbox}?q=liquor"
        for path in (search, often, by_subject, threads):
            timed_get(c, path)  # warm-up of each page
        for _ in range(runs):
            a, b = timed_get(c, inbox)
            ttfb.append(a)
            full.append(b)
            opened.append(timed_get(c, f"{inbox}/{rng.randint(1, len(messages))}")[1])
            searched.append(timed_get(c, search)[1])
            common.append(timed_get(c, often)[1])
            sorted_.append(timed_get(c, by_subject)[1])
            convs.append(timed_get(c, threads)[1])
        before = rss(server.pid)
        clients = [sign_in(base) for _ in range(100)]
        for extra in clients:
            extra.get(inbox)
        after = rss(server.pid)
        for extra in clients:
            extra.close()
        c.close()
        return {"ttfb": ttfb, "full": full, "open": opened, "sessions": float(after - before), "search": searched,
                "common": common, "sorted": sorted_, "conversations": convs, "first_sort": first_sort}
    finally:
        server.stop()


def bench_dovecot(work: Path, messages: list[bytes], runs: int) -> list[float]:
    # A plain passwd entry: the login is not timed, and Debian's auth process may be short of memory for argon2.
    server = PrivateDovecot(work / f"dovecot-{len(messages)}", ["imap"], USER, f"{{PLAIN}}{PASSWORD}",
                            folders=("Drafts", "Sent", "Trash"))
    server.fill(messages)
    server.start()
    port = server.ports["imap"]
    try:
        imap = imaplib.IMAP4("127.0.0.1", port)
        imap.login(USER, PASSWORD)
        times = []
        for i in range(runs + 1):
            t0 = time.perf_counter()
            _, data = imap.select("INBOX")
            exists = int(data[0])  # the newest 50 by sequence number, as a client paging from the end asks
            imap.fetch(f"{max(1, exists - 49)}:{exists}", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
            if i:  # the first run is the warm-up (Dovecot builds its index)
                times.append(time.perf_counter() - t0)
        imap.logout()
        return times
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,100000", help="mailbox sizes, comma-separated (default 1000,100000)")
    ap.add_argument("--runs", type=int, default=40, help="timed requests per measurement (default 40)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="web-bench-", dir=args.dir))
    results: dict[int, tuple[dict[str, list[float] | float], list[float]]] = {}
    with servers_stopped(work):
        for n in sizes:
            progress(f"web bench: {n} messages in {work}")
            messages = make_messages(n)
            pr = bench_postroom(work, messages, args.runs)
            progress("  Dovecot reference")
            dv = bench_dovecot(work, messages, args.runs)
            results[n] = (pr, dv)

    def ms(v: float) -> str:
        return f"{v * 1000:.1f}"

    small, large = min(sizes), max(sizes)
    print(f"\nWebmail pages, {args.runs} requests each, milliseconds p50 / p95; Dovecot {dovecot.version()}: SELECT + "
          "FETCH of the newest 50 envelopes over IMAP")
    print("| messages | INBOX page TTFB | INBOX page complete | open a message | Dovecot 50 envelopes | "
          "page / Dovecot (p50) | memory per 100 sessions |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        pr, dv = results[n]
        ttfb, full, opened = (pr[k] for k in ("ttfb", "full", "open"))
        assert isinstance(ttfb, list) and isinstance(full, list) and isinstance(opened, list)
        sessions = pr["sessions"]
        assert isinstance(sessions, float)
        print(f"| {n:,} | {ms(pct(ttfb, 50))} / {ms(pct(ttfb, 95))} | {ms(pct(full, 50))} / {ms(pct(full, 95))} | "
              f"{ms(pct(opened, 50))} / {ms(pct(opened, 95))} | {ms(pct(dv, 50))} / {ms(pct(dv, 95))} | "
              f"{statistics.median(full) / statistics.median(dv):.2f}x | {sessions / (1 << 20):.1f} MB |")
    if small != large:
        ratio = {k: pct(results[large][0][k], 50) / pct(results[small][0][k], 50)  # type: ignore[arg-type]
                 for k in ("ttfb", "full", "open")}
        print(f"| {large:,} / {small:,} | {ratio['ttfb']:.2f}x | {ratio['full']:.2f}x | {ratio['open']:.2f}x | "
              f"{pct(results[large][1], 50) / pct(results[small][1], 50):.2f}x | | |")
    print("\nSearch, sort and conversation pages (complete), milliseconds p50 / p95; first sort: one request")
    print("| messages | search: common word | search: rare word | sorted page (order kept) | first sort | "
          "conversations |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        pr = results[n][0]
        cells = []
        for k in ("common", "search", "sorted"):
            v = pr[k]
            assert isinstance(v, list)
            cells.append(f"{ms(pct(v, 50))} / {ms(pct(v, 95))}")
        first, conv = pr["first_sort"], pr["conversations"]
        assert isinstance(first, float) and isinstance(conv, list)
        print(f"| {n:,} | {cells[0]} | {cells[1]} | {cells[2]} | {ms(first)} | "
              f"{ms(pct(conv, 50))} / {ms(pct(conv, 95))} |")
    if small != large:
        more = {k: pct(results[large][0][k], 50) / pct(results[small][0][k], 50)  # type: ignore[arg-type]
                for k in ("common", "search", "sorted", "conversations")}
        first_ratio = float(results[large][0]["first_sort"]) / float(results[small][0]["first_sort"])  # type: ignore[arg-type]
        print(f"| {large:,} / {small:,} | {more['common']:.2f}x | {more['search']:.2f}x | {more['sorted']:.2f}x | "
              f"{first_ratio:.2f}x | "
              f"{more['conversations']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
