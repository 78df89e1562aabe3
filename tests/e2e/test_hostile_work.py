"""Issue 11 items 1 and 3 end to end: work one client causes must not stall every other session, and a
message whose metadata is hostile is still accepted.

Each hostile input runs while a second IMAP session measures NOOP round trips (`Probe`). The bound asserted
is generous (1 s) so that a busy test machine cannot make it flaky; before the fix the same inputs stalled
every session for ~30 s (HTML) and ~4 s (SEARCH).
"""

from __future__ import annotations

import smtplib
import threading
import time
from typing import Any

import pytest
from imap_support import Raw, wire_imap

from postroom import metapool as pool
from postroom.mime.meta import MessageMeta, compute_meta
from postroom.store.api import AppendRequest

ADDR = "ann@example.org"
PW = "ann-secret"
WORST_ROUND_TRIP = 1.0  # seconds; the issue's goal is a p99 under 50 ms, this only has to catch a stall


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    return server


class Probe:
    """A second, well-behaved IMAP session sending NOOP after NOOP on a thread, timing each round trip."""

    def __init__(self, server: Any) -> None:
        self.raw = Raw(server.port("imap"), timeout=120)
        self.raw.login(ADDR, PW)
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        while len(self.times) < 3:
            time.sleep(0.01)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            t = time.perf_counter()
            assert self.raw.cmd(f"n{n} NOOP")[-1].startswith(b"n%d OK" % n)
            self.times.append(time.perf_counter() - t)
            time.sleep(0.005)

    def stop(self) -> float:
        """Stop after a few more round trips; the worst one, in seconds."""
        seen = len(self.times)
        while len(self.times) < seen + 3:
            time.sleep(0.01)
        self._stop.set()
        self._thread.join(30)
        self.raw.close()
        return max(self.times)


def stored_meta(server: Any, subject: bytes) -> tuple[bytes, MessageMeta]:
    user = server.run(server.store.get_user(ADDR))
    inbox = server.run(server.store.get_mailbox(user.id, "INBOX"))
    for info in server.run(server.store.list_messages(inbox.id)):
        raw = server.run(server.store.read_message(info.blob_id))
        if subject in raw[:4096]:
            return raw, MessageMeta.from_bytes(server.run(server.store.read_meta(info.blob_id)))
    raise AssertionError(f"no message with {subject!r}")


# ---- item 1: content work off the loop ----------------------------------------------------------------------

def test_html_with_unclosed_tags_does_not_stall_others(imap: Any) -> None:
    # The issue's input: text/html whose body is "<a " 20,000 times (60 KB). html.parser rescanned the rest
    # of the buffer at every unclosed tag (quadratic): ~30 s on the loop, every session waiting.
    msg = (b"From: x@remote.test\r\nTo: ann@example.org\r\nSubject: unclosed\r\nContent-Type: text/html\r\n\r\n"
           + b"<a " * 20_000 + b"\r\n")
    probe = Probe(imap)
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", imap.port("smtp"), timeout=120) as s:
        assert s.sendmail("x@remote.test", [ADDR], msg) == {}
    took = time.perf_counter() - started
    worst = probe.stop()
    assert worst < WORST_ROUND_TRIP and took < 10 * WORST_ROUND_TRIP, (worst, took)
    raw, meta = stored_meta(imap, b"Subject: unclosed")
    assert meta == compute_meta(raw) and meta.defects == ()


def test_html_tag_storm_does_not_stall_others(imap: Any) -> None:
    # Closed tags cost a step each: 2 MB of "<a>" is parsed in a worker process, not on the loop.
    msg = (b"From: x@remote.test\r\nTo: ann@example.org\r\nSubject: storm\r\nContent-Type: text/html\r\n\r\n"
           + b"<a>x</a>" * 250_000 + b"\r\n")
    probe = Probe(imap)
    with smtplib.SMTP("127.0.0.1", imap.port("smtp"), timeout=120) as s:
        assert s.sendmail("x@remote.test", [ADDR], msg) == {}
    worst = probe.stop()
    assert worst < WORST_ROUND_TRIP, worst
    raw, meta = stored_meta(imap, b"Subject: storm")
    assert meta.search.body.startswith("x x x") or meta.search.body.startswith("xxx")


def test_meta_timeout_kills_worker_and_stores_the_message(imap: Any) -> None:
    # A content step past the limit (here lowered from META_SECONDS to 50 ms, far below what 3 MB of HTML
    # takes) is abandoned: the worker is killed, and the message is still stored with a defect.
    async def lower() -> None:
        pool.pool().seconds = 0.05

    imap.run(lower())
    msg = (b"From: Ann <x@remote.test>\r\nTo: ann@example.org\r\nSubject: slow\r\nContent-Type: text/html\r\n\r\n"
           + b"<p>word &amp; <b>x</b></p>\r\n" * 120_000)
    probe = Probe(imap)
    with smtplib.SMTP("127.0.0.1", imap.port("smtp"), timeout=120) as s:
        assert s.sendmail("x@remote.test", [ADDR], msg) == {}
    worst = probe.stop()
    assert worst < WORST_ROUND_TRIP, worst
    raw, meta = stored_meta(imap, b"Subject: slow")
    assert meta.defects == ((0, "meta-timeout"),) and meta.size == len(raw)

    async def timeouts() -> int:
        return pool.pool().timeouts

    assert imap.run(timeouts()) == 1
    # IMAP still answers from the minimal metadata.
    r = Raw(imap.port("imap"))
    r.login(ADDR, PW)
    r.cmd("s SELECT INBOX")
    out = r.cmd("f FETCH 1 (ENVELOPE BODYSTRUCTURE)")
    assert out[0].startswith(b'* 1 FETCH (ENVELOPE (NIL "slow" (("Ann" NIL "x" "remote.test"))')
    assert b'BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d ' % (len(raw) - raw.index(
        b"\r\n\r\n") - 4) in out[0]
    assert r.cmd("t SEARCH SUBJECT slow")[0] == b"* SEARCH 1\r\n"


def _fill_large(imap: Any, count: int, size: int) -> None:
    user = imap.run(imap.store.get_user(ADDR))
    inbox = imap.run(imap.store.get_mailbox(user.id, "INBOX"))
    reqs = []
    for i in range(count):
        line = b"lorem ipsum dolor sit amet consectetur %d adipiscing elit\r\n" % i
        raw = (b"From: a@example.org\r\nTo: ann@example.org\r\nSubject: big %d\r\n\r\n" % i
               + line * (size // len(line)))
        reqs.append(AppendRequest(raw=raw, meta=compute_meta(raw).to_bytes()))
    imap.run(imap.store.append_many(inbox.id, reqs))


def test_search_with_650_not_text_keys(imap: Any) -> None:
    # The issue's input: 650 NOT TEXT keys over 20 messages of 260 KB stalled every session for ~4 s.
    _fill_large(imap, 20, 260_000)
    probe = Probe(imap)
    r = Raw(imap.port("imap"), timeout=120)
    r.login(ADDR, PW)
    r.cmd("s SELECT INBOX")
    # "q" is in no message, so no key short-cuts the AND: 7,150 bytes, within the 8,192-byte line limit.
    out = r.cmd("h SEARCH" + " NOT TEXT q" * 650)
    worst = probe.stop()
    # RFC 5530 §3 LIMIT: "The operation ran up against an implementation limit of some kind".
    assert out == [b"h NO [LIMIT] Too many search keys (at most 1000)\r\n"]  # 650 x (NOT, TEXT) = 1,300
    assert worst < WORST_ROUND_TRIP, worst


def test_search_many_text_keys_yields_and_answers_the_same(imap: Any) -> None:
    _fill_large(imap, 40, 260_000)
    probe = Probe(imap)
    r = Raw(imap.port("imap"), timeout=120)
    r.login(ADDR, PW)
    r.cmd("s SELECT INBOX")
    # 120 distinct needles (2 x 119 + 1 + AND = 240 key nodes), each compared with every message's whole
    # text: 40 x 260 KB x 120 = 1.2 G characters, in slices (before: one synchronous run, ~2 s for everyone).
    keys = " ".join(f"NOT TEXT absent{i}" for i in range(119)) + " TEXT consectetur"
    out = r.cmd(f"h SEARCH {keys}")
    worst = probe.stop()
    assert out == [b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, 41)) + b"\r\n", b"h OK SEARCH completed\r\n"]
    assert worst < WORST_ROUND_TRIP, worst
    # RFC 9051 §6.4.4: case-insensitive substring; OR / NOT combine as written.
    assert r.cmd('a SEARCH OR TEXT "ADIPISCING ELIT" SUBJECT nothing')[0].count(b" ") == 41
    assert r.cmd("b SEARCH TEXT \"amet consectetur 5 \" NOT SUBJECT \"big 1\"")[0] == b"* SEARCH 6\r\n"
    assert r.cmd("c SEARCH SUBJECT \"big 1\" NOT BODY \"consectetur 1 \"")[0] == b"* SEARCH " + b" ".join(
        b"%d" % (i + 1) for i in range(10, 20)) + b"\r\n"
    assert r.cmd('d SEARCH HEADER subject "" TEXT "BIG 3" HEADER TO ann')[0] == b"* SEARCH 4 31 32 33 34 35 36 37 " \
        b"38 39 40\r\n"


def test_search_work_budget(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the total work a SEARCH may do, it is abandoned with NO [LIMIT] saying why.
    from postroom.imap import search

    _fill_large(imap, 20, 260_000)
    monkeypatch.setattr(search, "MAX_SEARCH_WORK", 20_000_000)  # characters compared; 30 keys need 160 M
    r = Raw(imap.port("imap"), timeout=120)
    r.login(ADDR, PW)
    r.cmd("s SELECT INBOX")
    # NOT: the full-text index cannot narrow a negated key, so every message's text is compared (30 TEXT keys
    # alone are answered from the index without comparing anything).
    keys = " ".join(f"NOT TEXT absent{i}" for i in range(30))
    out = r.cmd(f"h SEARCH {keys}")
    assert out == [b"h NO [LIMIT] SEARCH abandoned: it would compare more than 20000000 characters of message "
                   b"text (use fewer or narrower keys)\r\n"]


# ---- item 3: metadata that raised ---------------------------------------------------------------------------

ISSUE_RAW = (b"From: a@remote.test\r\nTo: ann@example.org\r\nSubject: 8bit filename\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: application/pdf\r\n"
             b"Content-Disposition: attachment; filename*=iso-8859-1''caf\xe9.pdf\r\n\r\n%PDF-1.4\r\n")


def test_8bit_rfc2231_filename_accepted_by_smtp_and_append(imap: Any) -> None:
    # Was 451 4.3.0 on every try (the sender retries for days) and APPEND NO [SERVERBUG].
    with smtplib.SMTP("127.0.0.1", imap.port("smtp"), timeout=30) as s:
        s.ehlo()
        code, _ = s.docmd("MAIL FROM:<a@remote.test> BODY=8BITMIME")
        assert code == 250
        assert s.docmd(f"RCPT TO:<{ADDR}>")[0] == 250
        assert s.docmd("DATA")[0] == 354
        s.send(ISSUE_RAW + b".\r\n")
        assert s.getreply()[0] == 250
    r = Raw(imap.port("imap"))
    r.login(ADDR, PW)
    out = r.cmd(b"a APPEND INBOX {%d+}\r\n" % len(ISSUE_RAW) + ISSUE_RAW)
    assert out[-1].startswith(b"a OK [APPENDUID ")
    r.cmd("s SELECT INBOX")
    for n in (1, 2):
        body = r.cmd(f"f FETCH {n} BODYSTRUCTURE")[0]
        assert b'("attachment" ("filename*" {20}\r\niso-8859-1\'\'caf\xe9.pdf))' in body
    raw, meta = stored_meta(imap, b"Subject: 8bit filename")
    assert meta.parts[0].filename == "café.pdf" and any(c == "bad-content-disposition-params"
                                                         for _, c in meta.defects)
