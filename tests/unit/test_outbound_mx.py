"""Routing (delivery/mx.py): static routes, smart host, MX order and shuffling, implicit MX, null MX, failures."""

from __future__ import annotations

import dataclasses

import pytest

from postroom.config import DeliveryConfig
from postroom.delivery.mx import MAX_HOPS, Hop, HostLookup, RouteFailure, RouteFinder, StaticResolver, _host_port

CFG = DeliveryConfig()


def system_hosts(table: dict[str, list[str]]) -> HostLookup:
    """A system resolver (/etc/hosts) knowing only `table`: unit tests never ask the machine's resolver."""
    async def lookup(host: str) -> list[str]:
        return list(table.get(host, []))

    return lookup


def finder(resolver: StaticResolver, hosts: HostLookup | None = None, **cfg: object) -> RouteFinder:
    return RouteFinder(dataclasses.replace(CFG, **cfg), resolver, shuffle=lambda hosts: hosts.reverse(),
                       hosts=hosts or system_hosts({}))


async def test_mx_in_preference_order_with_addresses() -> None:
    r = StaticResolver({"b.test": [(20, "mx2.b.test"), (10, "mx1.b.test.")]},
                       {"mx1.b.test": ["192.0.2.1", "2001:db8::1"], "mx2.b.test": ["192.0.2.2"]})
    route = await finder(r).route("B.Test.")
    assert route.via == "mx" and route.domain == "b.test"
    assert route.hops == (Hop("mx1.b.test", "192.0.2.1", 25), Hop("mx1.b.test", "2001:db8::1", 25),
                          Hop("mx2.b.test", "192.0.2.2", 25))


async def test_equal_preferences_are_shuffled_only_among_themselves() -> None:
    r = StaticResolver({"b.test": [(10, "x.b.test"), (10, "y.b.test"), (5, "a.b.test"), (10, "z.b.test")]},
                       {h: [f"192.0.2.{i}"] for i, h in enumerate(["a.b.test", "x.b.test", "y.b.test", "z.b.test"])})
    seen = []
    route = await RouteFinder(CFG, r, shuffle=lambda hosts: seen.append(list(hosts)) or hosts.reverse()).route("b.test")
    assert [h.host for h in route.hops] == ["a.b.test", "z.b.test", "y.b.test", "x.b.test"]
    assert seen == [["a.b.test"], ["x.b.test", "y.b.test", "z.b.test"]]


async def test_implicit_mx_when_no_mx_record() -> None:
    r = StaticResolver({"b.test": []}, {"b.test": ["192.0.2.9"]})
    route = await finder(r, mx_port=2626).route("b.test")
    assert route.via == "implicit-mx" and route.hops == (Hop("b.test", "192.0.2.9", 2626),)


async def test_no_mx_and_no_address_is_permanent() -> None:
    r = StaticResolver({"b.test": []}, {})
    with pytest.raises(RouteFailure) as e:
        await finder(r).route("b.test")
    assert e.value.permanent and e.value.status == "5.1.2"


async def test_null_mx_bounces_at_once() -> None:
    r = StaticResolver({"b.test": [(0, ".")]})
    with pytest.raises(RouteFailure) as e:
        await finder(r).route("b.test")
    assert e.value.permanent and (e.value.code, e.value.status) == (556, "5.1.10")


async def test_nxdomain_is_permanent_and_timeout_temporary() -> None:
    r = StaticResolver({}, {}, nxdomain={"gone.test"}, failing={"slow.test"})
    with pytest.raises(RouteFailure) as e:
        await finder(r).route("gone.test")
    assert e.value.permanent and e.value.status == "5.1.2"
    with pytest.raises(RouteFailure) as e:
        await finder(r).route("slow.test")
    assert not e.value.permanent and e.value.status == "4.4.3"


async def test_mx_hosts_without_addresses_are_skipped_then_temporary() -> None:
    r = StaticResolver({"b.test": [(10, "dead.b.test"), (20, "ok.b.test")], "c.test": [(10, "dead.b.test")]},
                       {"ok.b.test": ["192.0.2.3"]}, failing={"dead.b.test"})
    route = await finder(r).route("b.test")
    assert [h.address for h in route.hops] == ["192.0.2.3"]
    with pytest.raises(RouteFailure) as e:
        await finder(r).route("c.test")
    assert not e.value.permanent


async def test_static_route_comes_before_dns_and_smarthost() -> None:
    r = StaticResolver({"b.test": [(10, "mx.b.test")]}, {"mx.b.test": ["192.0.2.1"], "relay.test": ["192.0.2.7"]})
    f = finder(r, routes={"B.test": "127.0.0.1:2626", "c.test": "relay.test"}, smarthost="192.0.2.99:587")
    assert (await f.route("b.test")) .hops == (Hop("127.0.0.1", "127.0.0.1", 2626),)
    assert (await f.route("c.test")).hops == (Hop("relay.test", "192.0.2.7", 25),)
    other = await f.route("d.test")
    assert other.via == "smarthost" and other.hops == (Hop("192.0.2.99", "192.0.2.99", 587, smarthost=True),)
    assert r.queries == [("relay.test", "A")]  # DNS MX never asked


async def test_static_route_to_unknown_host_waits() -> None:
    with pytest.raises(RouteFailure) as e:
        await finder(StaticResolver(), routes={"b.test": "nowhere.test:25"}).route("b.test")
    assert not e.value.permanent and e.value.status == "4.4.3"
    # the operator is told where the name was looked for and how to fix it
    assert "nowhere.test has no address in DNS or in the system resolver (/etc/hosts)" in e.value.text
    assert "configure an IP address" in e.value.text


async def test_configured_host_not_in_dns_is_looked_up_by_the_system_resolver() -> None:
    """As Postfix's smtp_host_lookup = dns, native: DNS first, then getaddrinfo (/etc/hosts), for route and
    smart host names only; MX hosts stay DNS-only (RFC 5321 §5.1)."""
    dns_known = StaticResolver({}, {"relay.test": ["192.0.2.7"]})
    etc_hosts = system_hosts({"localhost": ["127.0.0.1"], "relay.test": ["192.0.2.99"], "smart": ["192.0.2.8"]})
    f = finder(dns_known, etc_hosts, routes={"a.test": "localhost:2525", "b.test": "relay.test"},
               smarthost="smart:587")
    assert (await f.route("a.test")).hops == (Hop("localhost", "127.0.0.1", 2525),)
    assert (await f.route("b.test")).hops == (Hop("relay.test", "192.0.2.7", 25),)  # DNS wins when it knows
    assert (await f.route("c.test")).hops == (Hop("smart", "192.0.2.8", 587, smarthost=True),)
    mx_only = finder(StaticResolver({"d.test": [(10, "localhost")]}, {}), etc_hosts)
    with pytest.raises(RouteFailure):
        await mx_only.route("d.test")


async def test_address_literals() -> None:
    f = finder(StaticResolver(), mx_port=2525)
    assert (await f.route("[192.0.2.5]")).hops == (Hop("192.0.2.5", "192.0.2.5", 2525),)
    assert (await f.route("[IPv6:2001:db8::5]")).hops[0].address == "2001:db8::5"
    with pytest.raises(RouteFailure) as e:
        await f.route("[not-an-ip]")
    assert e.value.permanent


async def test_hop_limit() -> None:
    r = StaticResolver({"b.test": [(i, f"mx{i}.b.test") for i in range(20)]},
                       {f"mx{i}.b.test": [f"192.0.2.{i}"] for i in range(20)})
    route = await finder(r).route("b.test")
    assert len(route.hops) == MAX_HOPS and route.hops[0].host == "mx0.b.test"


def test_host_port() -> None:
    assert _host_port("h.test", 25) == ("h.test", 25)
    assert _host_port("h.test:26", 25) == ("h.test", 26)
    assert _host_port("[::1]:26", 25) == ("::1", 26)
    assert _host_port("::1", 25) == ("::1", 25)
