"""net/sharedmap.py and the SMTP door over it: state counted by several processes (issue 17 item 1).

A forked child stands for the other worker; it reports by its exit status.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from postroom.config import SMTPConfig
from postroom.net.sharedmap import PROBE, SharedMap
from postroom.smtp.door import Door


def in_child(work: Callable[[], bool]) -> bool:
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = work()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def test_values_put_in_one_process_are_read_in_the_other(tmp_path: Path) -> None:
    table = SharedMap(1024, tmp_path / "lock")
    k = SharedMap.key("t", "alice")
    with table.locked():
        table.put(k, 1.5, 2.0, 10.0)

    def child() -> bool:
        with table.locked():
            seen = table.get(k)
            table.put(SharedMap.key("t", "bob"), 7.0, 0.0, 11.0)
        return seen == (1.5, 2.0)

    assert in_child(child)
    with table.locked():
        assert table.get(SharedMap.key("t", "bob")) == (7.0, 0.0)
        assert table.get(SharedMap.key("other", "bob")) is None  # tables keep their keys apart


def test_full_probe_window_evicts_the_least_recently_touched(tmp_path: Path) -> None:
    """Invariant 1: fixed size; a new key in a full window takes the entry touched longest ago."""
    table = SharedMap(PROBE, tmp_path / "lock")  # one window: every key lands in it
    with table.locked():
        for i in range(PROBE):
            table.put(SharedMap.key("t", str(i)), float(i), 0.0, float(100 + i))
        table.put(SharedMap.key("t", "0"), 0.0, 1.0, 500.0)  # touched again: now the newest
        table.put(SharedMap.key("t", "new"), 9.0, 9.0, 600.0)
        assert table.get(SharedMap.key("t", "1")) is None  # the oldest went
        assert table.get(SharedMap.key("t", "0")) == (0.0, 1.0)
        assert table.get(SharedMap.key("t", "new")) == (9.0, 9.0)


def test_door_rates_and_send_limits_count_both_processes(tmp_path: Path) -> None:
    cfg = SMTPConfig(client_connection_rate=3, submission_recipients_per_hour=4)
    table = SharedMap(4096, tmp_path / "lock")
    door = Door(cfg, shared=table)
    now = 1_000_000.0  # within one minute and one hour window
    assert door.connection_allowed("192.0.2.7", now) and door.connection_allowed("192.0.2.7", now)
    assert door.take_recipient("ann@example.org", now) and door.take_recipient("ann@example.org", now)

    def child() -> bool:
        other = Door(cfg, shared=table)
        return (other.connection_allowed("192.0.2.7", now + 1)  # the third this minute
                and not other.connection_allowed("192.0.2.7", now + 2)  # the fourth: over, whoever asks
                and other.take_recipient("ann@example.org", now) and other.take_recipient("ann@example.org", now)
                and not other.take_recipient("ann@example.org", now))

    assert in_child(child)
    assert not door.connection_allowed("192.0.2.7", now + 3)
    assert not door.take_recipient("ann@example.org", now + 3)
    assert door.connection_allowed("192.0.2.8", now + 3)  # another client has its own count


def test_greylist_triplet_seen_by_one_process_passes_in_the_other(tmp_path: Path) -> None:
    cfg = SMTPConfig(greylist_seconds=300)
    table = SharedMap(4096, tmp_path / "lock")
    door = Door(cfg, shared=table)
    assert door.greylist is not None
    assert door.greylist.check("192.0.2.7", "bob@example.net", "ann@example.org", 1000.0) == 300.0

    def child() -> bool:
        grey = Door(cfg, shared=table).greylist
        assert grey is not None
        # the retry from the same /24 after the delay passes (module essay), though this process never saw it
        return grey.check("192.0.2.99", "bob@example.net", "ann@example.org", 1400.0) == 0.0

    assert in_child(child)
    assert door.greylist.check("192.0.2.7", "bob@example.net", "ann@example.org", 1500.0) == 0.0  # passed


def test_pop_before_smtp_login_in_one_process_opens_the_window_in_the_other(tmp_path: Path) -> None:
    from postroom.auth.authenticator import Authenticator
    from postroom.config import AuthConfig

    table = SharedMap(4096, tmp_path / "lock")
    clock = [5000.0]
    auth = Authenticator(None, AuthConfig(), clock=lambda: clock[0], logins=table)  # type: ignore[arg-type]
    assert not auth.logged_in_recently("192.0.2.7", 600)
    assert in_child(lambda: asyncio.run(Authenticator(None, AuthConfig(),  # type: ignore[arg-type]
                                                      clock=lambda: 5000.0, logins=table).note_login("192.0.2.7"))
                    is None)
    assert auth.logged_in_recently("192.0.2.7", 600) and not auth.logged_in_recently("192.0.2.8", 600)
    clock[0] += 601
    assert not auth.logged_in_recently("192.0.2.7", 600)
