"""smtp/door.py's counters and caches: fixed windows (invariant 1), bounded tables (invariant 2), passes that
expire, and which addresses are exempt."""

from __future__ import annotations

from postroom.config import SMTPConfig
from postroom.smtp.door import PASS_SECONDS, Door, PassCache, Window


def test_window_counts_per_fixed_window() -> None:
    w = Window(60.0)
    assert [w.hit("a", 120.0), w.hit("a", 150.0), w.hit("b", 150.0)] == [1, 2, 1]
    assert w.count("a", 179.9) == 2 and w.count("a", 180.0) == 0  # the next window starts empty
    assert w.hit("a", 181.0, n=5) == 5


def test_tables_are_bounded() -> None:
    w, p = Window(60.0, max_keys=3), PassCache(max_keys=3)
    for i in range(10):
        w.hit(f"k{i}", 0.0)
        p.add(f"ip{i}", 0.0)
    assert len(w) == 3 and w.count("k9", 0.0) == 1 and w.count("k0", 0.0) == 0
    assert p.passed("ip9", 1.0) and not p.passed("ip0", 1.0)


def test_pass_expires_after_a_day() -> None:
    p = PassCache()
    p.add("192.0.2.1", 1000.0)
    assert p.passed("192.0.2.1", 1000.0 + PASS_SECONDS - 1)
    assert not p.passed("192.0.2.1", 1000.0 + PASS_SECONDS)


def test_exempt_and_limits() -> None:
    door = Door(SMTPConfig(relay_networks=("192.0.2.0/24",), client_connection_rate=2, client_message_rate=0,
                           submission_messages_per_hour=2, submission_recipients_per_hour=3))
    assert door.exempt("127.0.0.1") and door.exempt("::1") and door.exempt("192.0.2.9")
    assert not door.exempt("198.51.100.1") and not door.exempt("not an address")
    assert [door.connection_allowed("198.51.100.1", 0.0) for _ in range(3)] == [True, True, False]
    assert all(door.message_allowed("198.51.100.1", 0.0) for _ in range(1000))  # 0: no limit
    assert door.user_may_send("u", 0.0) and door.user_may_add_recipient("u", 2, 0.0)
    assert not door.user_may_add_recipient("u", 3, 0.0)
    door.user_sent("u", 2, 0.0)
    assert door.user_may_send("u", 0.0) and door.user_may_add_recipient("u", 0, 0.0)
    assert not door.user_may_add_recipient("u", 1, 0.0)
    door.user_sent("u", 1, 0.0)
    assert not door.user_may_send("u", 0.0) and door.user_may_send("u", 3600.0)  # a new hour


def test_greylist_triplets() -> None:
    from postroom.smtp.door import GREY_KEEP_SECONDS, GREY_RETRY_SECONDS, Greylist

    g = Greylist(300.0)
    assert g.check("192.0.2.10", "a@x.example", "bob@example.org", 0.0) == 300.0  # first sighting
    assert g.check("192.0.2.10", "a@x.example", "bob@example.org", 100.0) == 200.0  # too early
    assert g.check("192.0.2.77", "A@X.example", "Bob@example.org", 300.0) == 0.0  # retry from the same /24
    assert g.check("192.0.2.10", "a@x.example", "bob@example.org", 300.0 + GREY_KEEP_SECONDS - 1) == 0.0
    assert g.check("192.0.2.10", "a@x.example", "carol@example.org", 0.0) == 300.0  # another triplet
    assert g.check("198.51.100.1", "a@x.example", "bob@example.org", 0.0) == 300.0  # another network
    # a retry after the retry window starts again
    assert g.check("203.0.113.5", "s@y.example", "bob@example.org", 0.0) == 300.0
    assert g.check("203.0.113.5", "s@y.example", "bob@example.org", GREY_RETRY_SECONDS + 1) == 300.0
    assert Greylist.network("2001:db8::1") == "2001:db8::/64" and Greylist.network("192.0.2.9") == "192.0.2.0/24"
