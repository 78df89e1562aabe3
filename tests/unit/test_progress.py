"""The terminal progress display (postroom/progress.py): TTY redraws, plain log lines, summaries."""

from __future__ import annotations

import io

from postroom.progress import Progress, human_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1234) == "1.2 kB"
    assert human_bytes(1_234_567) == "1.2 MB"
    assert human_bytes(5 * 10**9) == "5.0 GB"
    assert human_bytes(7 * 10**15) == "7000.0 TB"


def test_line_with_and_without_total() -> None:
    clock = Clock()
    p = Progress(456, "import", io.StringIO(), clock=clock)
    clock.now += 1
    p.advance(123, 1_200_000)
    assert p.line() == "import [#####...............] 123/456 1.2 MB 123 msg/s"
    q = Progress(None, "import", io.StringIO(), clock=clock)
    clock.now += 2
    q.advance(7, 10)
    assert q.line() == "import 7 10 B 3.5 msg/s"
    assert Progress(0, "empty", io.StringIO(), clock=clock).line() == "empty 0 0 B 0 msg/s"


def test_tty_redraws_in_place_at_most_ten_times_a_second() -> None:
    clock = Clock()
    out = FakeTTY()
    p = Progress(10, "INBOX", out, clock=clock)
    assert p.tty
    for _ in range(5):
        p.advance(1, 100)  # same instant: only the first draws
    assert out.getvalue().count("\r") == 1
    clock.now += 0.5
    p.advance(5, 500)
    assert out.getvalue().count("\r") == 2
    p.close()
    p.close()  # idempotent
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert text.rstrip("\n").rsplit("\r", 1)[1].startswith("INBOX [####################] 10/10 1.0 kB")
    p.advance()  # after close: nothing
    assert out.getvalue() == text


def test_tty_line_shrinking_is_padded() -> None:
    clock = Clock()
    out = FakeTTY()
    p = Progress(None, "a-long-mailbox-name", out, clock=clock)
    p.advance()
    first = out.getvalue()[1:]
    p.label = "x"  # the next line is shorter: the old tail must be blanked
    clock.now += 1
    p.advance()
    last = out.getvalue().rsplit("\r", 1)[1]
    assert len(last) == len(first) and last.startswith("x 2 0 B") and last.endswith(" ")


def test_plain_stream_lines_every_interval_and_summary() -> None:
    clock = Clock()
    out = io.StringIO()
    p = Progress(100, "import", out, clock=clock)
    assert not p.tty
    for _ in range(10):
        clock.now += 0.5
        p.advance(1, 1000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 2.0 s and 4.0 s
    assert lines[0].startswith("import [") and "4/100" in lines[0]
    assert "\r" not in out.getvalue()
    p.close()
    summary = out.getvalue().splitlines()[-1]
    assert summary == "import: 10 messages, 10.0 kB in 5.0 s (2.0 msg/s)"


def test_quick_job_on_a_log_writes_only_the_summary() -> None:
    out = io.StringIO()
    with Progress(3, "export", out, clock=Clock()) as p:
        p.advance(3, 30)
    assert out.getvalue() == "export: 3 messages, 30 B in 0.0 s (0 msg/s)\n"


def test_broken_stream_does_not_raise() -> None:
    out = io.StringIO()
    p = Progress(None, "x", out, tty=True)
    out.close()
    p.advance()
    p.close()
