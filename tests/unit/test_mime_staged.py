"""`mime.staged.StagedMessage` answers as bytes (its invariant 1), and `compute_meta_staged` as `compute_meta`
(mime/meta.py invariant 6): over the whole MIME corpus, with the message cut into prefix and file at every
offset or at random ones, and windows from the smallest (16 bytes: every needle crosses window edges) up."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from postroom.config import LimitsConfig
from postroom.mime.meta import compute_meta, compute_meta_staged
from postroom.mime.staged import WINDOW, ShrunkError, StagedMessage

CORPUS = sorted((Path(__file__).resolve().parents[1] / "data" / "mime" / "msgs").glob("*.eml"))
LIMITS = LimitsConfig(mime_depth=100)


def staged(tmp_path: Path, raw: bytes, cut: int, window: int) -> StagedMessage:
    """raw[:cut] as the prefix, raw[cut:] in a file."""
    path = tmp_path / f"staged-{cut}-{window}"
    path.write_bytes(raw[cut:])
    return StagedMessage(raw[:cut], path, window)


NEEDLES = (b"\n", b"\r\n", b"\n\r\n", b"\n\n", b"--", b"--b", b"--boundary", b"\x00", b"x", b"", b"zz-not-there")


def offsets(n: int, few: bool = False) -> list[int | None]:
    if few:
        return [None, 0, n // 2, n - 1, n + 1, -2]
    return [None, 0, 1, 2, n // 3, n // 2, n - 3, n - 1, n, n + 1, n + 50, -1, -2, -n // 2, -n, -n - 5]


def check_same(s: StagedMessage, raw: bytes, few: bool = False) -> None:
    """Every operation `compute_meta` uses, at edge and middle offsets (`few`: fewer), against bytes (staged.py
    invariant 1)."""
    n = len(raw)
    assert len(s) == n
    for i in range(-n, n):
        assert s[i] == raw[i]
    for i in (n, n + 1, -n - 1):
        with pytest.raises(IndexError):
            s[i]
    for a in offsets(n, few):
        for b in offsets(n, few):
            assert s[a:b] == raw[a:b]
            for sub in NEEDLES:
                assert s.find(sub, a, b) == raw.find(sub, a, b), (sub, a, b)
                assert s.count(sub, a, b) == raw.count(sub, a, b), (sub, a, b)
                assert s.startswith(sub, a, b) == raw.startswith(sub, a, b), (sub, a, b)
                assert s.endswith(sub, a, b) == raw.endswith(sub, a, b), (sub, a, b)
    for sub in NEEDLES:
        assert (sub in s) == (sub in raw)
        assert s.find(sub) == raw.find(sub) and s.count(sub) == raw.count(sub)
    # A walk of finds from every hit, as the multipart scan does, both ways round a window's edge.
    for sub in (b"\n", b"--boundary", b"\r\n"):
        pos, got, want = 0, [], []
        while (hit := raw.find(sub, pos)) >= 0:
            want.append(hit)
            pos = hit + 1
        pos = 0
        while (hit := s.find(sub, pos)) >= 0:
            got.append(hit)
            assert s[hit - 1] == raw[hit - 1]  # the look-behind after a hit
            pos = hit + 1
        assert got == want


MESSAGE = (b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=boundary\r\n\r\npre\r\n"
           b"--boundary\r\nContent-Type: text/plain\r\n\r\nline one\nline two\r\n--boundaryx\r\n"
           b"--boundary  \r\n\r\n\x00zz\n\n--boundary--\r\nepilogue")


def test_every_cut_at_the_smallest_window(tmp_path: Path) -> None:
    # Byte by byte: the message cut into prefix and file at every offset.
    for cut in range(len(MESSAGE) + 1):
        with staged(tmp_path, MESSAGE, cut, 16) as s:
            check_same(s, MESSAGE, few=cut % 10 != 0)


@pytest.mark.parametrize("window", [16, 17, 40, 97, 1000])
def test_random_cuts_and_windows(tmp_path: Path, window: int) -> None:
    rnd = random.Random(window)
    pieces = [b"--boundary", b"\r\n", b"\n", b"x" * 7, b"--", b"\r", b" ", b"\n\r\n", b"abc"]
    for _ in range(6):
        raw = b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(1, 120)))
        with staged(tmp_path, raw, rnd.randrange(len(raw) + 1), window) as s:
            check_same(s, raw)


def test_whole_window_needle_and_empty_file(tmp_path: Path) -> None:
    raw = b"a" * 40 + b"needle-longer-than-half-a-window" + b"b" * 40
    with staged(tmp_path, raw, 10, 32) as s:
        assert s.find(b"needle-longer-than-half-a-window") == raw.find(b"needle-longer-than-half-a-window")
        assert s.count(b"needle-longer-than-half-a-window", 5) == 1
    with staged(tmp_path, b"", 0, 16) as s:
        check_same(s, b"")
    with staged(tmp_path, b"Subject: x\r\n", 12, 16) as s:  # all prefix, empty file
        check_same(s, b"Subject: x\r\n")


@pytest.mark.parametrize("window", [16, 61, 4096, WINDOW])
def test_corpus_meta_equal_at_random_cuts(tmp_path: Path, window: int) -> None:
    rnd = random.Random(window)
    assert len(CORPUS) > 50
    for path in CORPUS:
        raw = path.read_bytes()
        for cut in {0, len(raw), rnd.randrange(len(raw) + 1)}:
            with staged(tmp_path, raw, cut, window) as s:
                assert compute_meta_staged(s, LIMITS) == compute_meta(raw, LIMITS), (path.name, cut)
                assert compute_meta_staged(s, LIMITS).to_bytes() == compute_meta(raw, LIMITS).to_bytes()


def test_corpus_with_a_trace_prefix_and_default_limits(tmp_path: Path) -> None:
    # As SMTP delivery sends it: trace fields in memory, the message in its staging file.
    prefix = b"Return-Path: <a@example.org>\r\nReceived: from x by y; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    for path in CORPUS:
        raw = path.read_bytes()
        with StagedMessage(prefix, path, 64) as s:
            assert compute_meta_staged(s).to_bytes() == compute_meta(prefix + raw).to_bytes(), path.name


def test_large_message_with_parts_across_windows(tmp_path: Path) -> None:
    # Parts, delimiters, a base64 attachment and text past the search-text cap, over many 1 MiB windows.
    text = b"".join(b"line %d of some text to index\r\n" % i for i in range(60_000))
    attachment = b"QUJD" * 19 + b"\r\n"
    raw = (b"From: a@example.org\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text +
           b"\r\n--b1\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + attachment * 40_000 + b"\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\n"
           + text + b"\r\n--b1--\r\n")
    for window in (WINDOW, 4099):
        with staged(tmp_path, raw, 100, window) as s:
            assert compute_meta_staged(s, LIMITS) == compute_meta(raw, LIMITS)


def test_a_file_that_shrinks_is_an_error_not_an_answer(tmp_path: Path) -> None:
    # staged.py invariant 3: compute_meta_staged raises OSError rather than describe other bytes.
    raw = b"Subject: s\r\n\r\n" + b"body line\r\n" * 1000
    path = tmp_path / "shrinks"
    path.write_bytes(raw)
    with StagedMessage(b"", path, 64) as s:
        os.truncate(path, 100)
        with pytest.raises(ShrunkError):
            compute_meta_staged(s, LIMITS)
    with pytest.raises(OSError):
        StagedMessage(b"", tmp_path / "missing")
