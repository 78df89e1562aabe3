"""net/counts.py: the connection counts that the worker processes share (issue 17 item 1).

Each case forks a real second process for the other worker (the map is inherited over fork, as from the
server's parent); the child reports by its exit status.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from postroom.net.counts import SharedCounts


def in_child(work: Callable[[], int]) -> int:
    """Run `work` in a forked process; its return value is the exit status read here."""
    pid = os.fork()
    if pid == 0:
        status = 99
        try:
            status = work()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_per_ip_limit_counts_both_workers(tmp_path: Path) -> None:
    counts = SharedCounts(2, 64, tmp_path / "lock")
    counts.bind(0)
    assert counts.admit("192.0.2.1", 100, 3) is None
    assert counts.admit("192.0.2.1", 100, 3) is None

    def other() -> int:
        counts.bind(1)
        first = counts.admit("192.0.2.1", 100, 3)  # the third: admitted, counted in slot 1
        second = counts.admit("192.0.2.1", 100, 3)  # the fourth: over the limit wherever it arrives
        other_ip = counts.admit("192.0.2.2", 100, 3)
        return 0 if (first, second, other_ip) == (None, "per-ip", None) else 1

    assert in_child(other) == 0
    assert counts.count("192.0.2.1") == 3 and counts.count("192.0.2.2") == 1 and counts.total() == 4
    assert counts.admit("192.0.2.1", 100, 3) == "per-ip"  # the child's connections count here too
    counts.release("192.0.2.1")
    assert counts.count("192.0.2.1") == 2
    assert counts.admit("192.0.2.1", 100, 3) is None


def test_total_limit_and_reset_of_a_dead_worker(tmp_path: Path) -> None:
    counts = SharedCounts(2, 64, tmp_path / "lock")
    counts.bind(0)

    def other() -> int:
        counts.bind(1)
        return 0 if all(counts.admit(f"198.51.100.{i}", 5, 10) is None for i in range(4)) else 1

    assert in_child(other) == 0  # the child "dies" holding 4 connections
    assert counts.admit("192.0.2.9", 5, 10) is None
    assert counts.admit("192.0.2.10", 5, 10) == "total"
    counts.reset(1)  # the parent clears the dead worker's slot (invariant 4 of workers.py)
    assert counts.total() == 1 and counts.count("198.51.100.0") == 0
    assert counts.admit("192.0.2.10", 5, 10) is None


def test_entries_are_reused_after_release(tmp_path: Path) -> None:
    """Invariant 3: many distinct addresses over time fit a small table, as entries at 0 are reused."""
    counts = SharedCounts(1, 8, tmp_path / "lock")
    counts.bind(0)
    for i in range(200):
        ip = f"2001:db8::{i:x}"
        assert counts.admit(ip, 8, 2) is None
        assert counts.count(ip) == 1
        counts.release(ip)
    assert counts.total() == 0
    held = [f"203.0.113.{i}" for i in range(8)]
    assert all(counts.admit(ip, 100, 2) is None for ip in held)
    assert counts.admit("203.0.113.200", 100, 2) == "total"  # every entry busy: refused, not miscounted
    assert all(counts.count(ip) == 1 for ip in held)
