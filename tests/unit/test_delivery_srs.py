"""The Sender Rewriting Scheme core (delivery/srs.py): forward and reverse, the hash and the age checked,
case-insensitive as hops may lower-case, SRS1 through two forwarders."""

from __future__ import annotations

import pytest

from postroom.delivery import srs

SECRET, OTHER = b"k" * 32, b"o" * 32
NOW = 1_790_000_000.0  # a fixed clock
DAY = 86400


def local(address: str) -> str:
    return address.rpartition("@")[0]


def test_forward_and_reverse() -> None:
    addr = srs.forward("Alice@Sender.Example", "fwd.test", SECRET, NOW)
    assert addr.startswith("SRS0=") and addr.endswith("@fwd.test")
    _, hash_, stamp, host, orig = local(addr).split("=")
    assert (host, orig) == ("Sender.Example", "Alice") and len(hash_) == 4 and len(stamp) == 2
    assert srs.reverse(local(addr), SECRET, NOW) == "Alice@Sender.Example"
    assert srs.reverse(local(addr).lower(), SECRET, NOW + 3 * DAY).lower() == "alice@sender.example"
    assert srs.is_srs(local(addr)) and srs.is_srs("srs0=x") and not srs.is_srs("alice")


@pytest.mark.parametrize("mangle", [
    lambda s: s.replace("=Alice", "=Mallory"),  # another original: the hash no longer covers it
    lambda s: s.replace("Sender.Example", "evil.example"),
    lambda s: "SRS0=AAAA" + s[9:],  # a made-up hash
    lambda s: s.split("=", 2)[0] + "=" + s.split("=", 2)[1] + "=ZZ=" + s.split("=", 3)[3],  # another day
    lambda s: "SRS0=only=three",
    lambda s: "alice",
])
def test_reverse_refuses_what_was_not_made_here(mangle) -> None:  # type: ignore[no-untyped-def]
    made = local(srs.forward("Alice@Sender.Example", "fwd.test", SECRET, NOW))
    with pytest.raises(srs.SRSError):
        srs.reverse(mangle(made), SECRET, NOW)
    with pytest.raises(srs.SRSError):  # another server's secret
        srs.reverse(made, OTHER, NOW)


def test_age_is_checked_across_the_timestamp_wrap() -> None:
    made = local(srs.forward("a@b.example", "fwd.test", SECRET, NOW))
    assert srs.reverse(made, SECRET, NOW + srs.MAX_AGE_DAYS * DAY) == "a@b.example"
    with pytest.raises(srs.SRSError, match="older than"):
        srs.reverse(made, SECRET, NOW + (srs.MAX_AGE_DAYS + 1) * DAY)
    # made on day 1023 of the 1024-day period, read on day 0 of the next: one day old
    day1023 = (NOW // DAY // 1024 * 1024 + 1023) * DAY
    assert srs.reverse(local(srs.forward("a@b.example", "f.test", SECRET, day1023)), SECRET, day1023 + DAY)


def test_two_forwarders_srs1_then_back() -> None:
    first = srs.forward("alice@sender.example", "one.test", SECRET, NOW)  # forwarder one (SECRET)
    second = srs.forward(first, "two.test", OTHER, NOW)  # forwarder two (OTHER) forwards it on
    assert second.startswith("SRS1=") and second.endswith("@two.test") and "=one.test==" in second
    # a third forwarder keeps the first one's host and part (bounded length)
    third = srs.forward(second, "three.test", b"t" * 32, NOW)
    assert third.startswith("SRS1=") and "=one.test==" in third and len(third) < len(second) + 20
    # the bounce: two.test sends it to one.test's SRS0 address, which gives the original sender
    back_at_one = srs.reverse(local(second), OTHER, NOW)
    assert back_at_one == first
    assert srs.reverse(local(back_at_one), SECRET, NOW) == "alice@sender.example"


def test_too_long_is_not_rewritten() -> None:
    with pytest.raises(srs.SRSError, match="longer"):
        srs.forward("x" * 190 + "@sender.example", "fwd.test", SECRET, NOW)
