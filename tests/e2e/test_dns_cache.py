"""The one resolver's cache (postroom/delivery/mx.py `DnsCache`, issue 12 item 9) against a loopback DNS server
that counts the queries it receives. Expected lifetimes come from the standards: an answer lives for its TTL
(RFC 1035 §3.2.1), a negative answer for min(SOA TTL, SOA MINIMUM) of the SOA sent with it (RFC 2308 §5), and no
entry outlives the configured maximum. The clock is the test's own, so nothing here waits."""

from __future__ import annotations

import asyncio

import pytest
from dns_support import ZoneDns

from postroom.delivery.mx import DnsCache, DnsNotFound, DnsResolver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def started(ttl: int = 60) -> ZoneDns:
    server = ZoneDns({"mail.example": [{"A": "192.0.2.1"}, {"TXT": "hello"}], "example": [{"MX": [10, "x"]}]})
    server.ttl = ttl
    server.soa = ("example", 3600, 30)  # negative TTL: min(3600, 30) = 30
    await server.start()
    return server


def count(server: ZoneDns, name: str, rdtype: str) -> int:
    return server.queries.count((name, rdtype))


async def test_an_answer_is_kept_for_its_ttl_then_asked_again() -> None:
    server = await started(ttl=300)
    clock = Clock()
    try:
        dns = DnsResolver((f"127.0.0.1:{server.port}",), lifetime=2, cache=DnsCache(clock=clock))
        assert await dns.ips("mail.example", "A") == ["192.0.2.1"]
        assert count(server, "mail.example", "A") == 1
        clock.now += 299
        assert await dns.ips("Mail.Example.", "A") == ["192.0.2.1"]  # the same name, any case, final dot
        assert count(server, "mail.example", "A") == 1
        assert await dns.txt("mail.example") == [b"hello"]  # another type is another entry
        assert count(server, "mail.example", "TXT") == 1
        clock.now += 1  # 300 s: the TTL is over
        assert await dns.ips("mail.example", "A") == ["192.0.2.1"]
        assert count(server, "mail.example", "A") == 2
    finally:
        server.close()


async def test_negative_answers_live_for_the_soa_negative_ttl() -> None:
    server = await started()
    clock = Clock()
    try:
        dns = DnsResolver((f"127.0.0.1:{server.port}",), lifetime=2, cache=DnsCache(clock=clock))
        for _ in range(2):
            with pytest.raises(DnsNotFound):
                await dns.ips("nowhere.example", "A")
            assert await dns.ips("mail.example", "AAAA") == []  # the name exists, no AAAA
        assert count(server, "nowhere.example", "A") == 1
        assert count(server, "mail.example", "AAAA") == 1
        clock.now += 29
        with pytest.raises(DnsNotFound):
            await dns.ips("nowhere.example", "A")
        assert count(server, "nowhere.example", "A") == 1
        clock.now += 1  # 30 s = min(SOA TTL 3600, MINIMUM 30)
        with pytest.raises(DnsNotFound):
            await dns.ips("nowhere.example", "A")
        assert await dns.ips("mail.example", "AAAA") == []
        assert count(server, "nowhere.example", "A") == 2
        assert count(server, "mail.example", "AAAA") == 2
    finally:
        server.close()


async def test_max_ttl_and_size_bound_the_cache() -> None:
    server = await started(ttl=86400)
    clock = Clock()
    try:
        cache = DnsCache(size=2, max_ttl=100, clock=clock)
        dns = DnsResolver((f"127.0.0.1:{server.port}",), lifetime=2, cache=cache)
        await dns.ips("mail.example", "A")
        clock.now += 100  # a day's TTL, but the cache keeps nothing past max_ttl
        await dns.ips("mail.example", "A")
        assert count(server, "mail.example", "A") == 2
        await dns.txt("mail.example")
        await dns.mx("example")  # a third entry: the least recently used (mail.example A) goes
        assert len(cache) == 2
        await dns.mx("example")
        await dns.txt("mail.example")
        assert (count(server, "example", "MX"), count(server, "mail.example", "TXT")) == (1, 1)
        await dns.ips("mail.example", "A")
        assert count(server, "mail.example", "A") == 3
    finally:
        server.close()


async def test_failures_are_not_cached_and_views_share_the_cache() -> None:
    server = await started()
    clock = Clock()
    server.zone["slow.example"] = ["TIMEOUT"]
    try:
        dns = DnsResolver((f"127.0.0.1:{server.port}",), lifetime=5, cache=DnsCache(clock=clock))
        short = dns.with_lifetime(0.3)
        await dns.ips("mail.example", "A")
        assert await short.ips("mail.example", "A") == ["192.0.2.1"]  # the other view's answer
        assert count(server, "mail.example", "A") == 1
        for _ in range(2):
            with pytest.raises(Exception) as info:
                await short.txt("slow.example")
            assert type(info.value).__name__ == "DnsTemporary"
        assert count(server, "slow.example", "TXT") >= 2  # asked again: a time-out is not an answer
    finally:
        server.close()


def test_a_zero_size_cache_keeps_nothing() -> None:
    cache = DnsCache(size=0)
    cache.put(("a.example", "A"), None, 60)
    assert len(cache) == 0 and cache.get(("a.example", "A")) == (False, None)


async def test_concurrent_lookups_of_one_name_make_one_query() -> None:
    server = await started()
    try:
        dns = DnsResolver((f"127.0.0.1:{server.port}",), lifetime=2, cache=DnsCache(clock=Clock()))
        results = await asyncio.gather(*(dns.ips("mail.example", "A") for _ in range(20)),
                                       *(dns.ips("gone.example", "A") for _ in range(5)), return_exceptions=True)
        assert results[:20] == [["192.0.2.1"]] * 20
        assert all(isinstance(r, DnsNotFound) for r in results[20:])
        assert count(server, "mail.example", "A") == 1 and count(server, "gone.example", "A") == 1
    finally:
        server.close()
