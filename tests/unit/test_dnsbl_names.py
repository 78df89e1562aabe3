"""Blocklist query names (smtp/dnsbl.py `dnsbl_name`) from RFC 5782's own examples: §2.1 (IPv4, the octets
reversed) and §2.4 (IPv6, the 32 nibbles of the full address reversed)."""

from __future__ import annotations

import pytest

from postroom.smtp.dnsbl import dnsbl_name


def test_ipv4_rfc5782_section_2_1() -> None:
    assert dnsbl_name("192.168.42.23", "dnsxl.example.com") == "23.42.168.192.dnsxl.example.com"


def test_ipv6_rfc5782_section_2_4() -> None:
    assert dnsbl_name("2001:db8:1:2:3:4:567:89ab", "ugly.example.com") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com")


def test_ipv4_mapped_ipv6_is_asked_as_ipv4_and_zone_dots_ignored() -> None:
    assert dnsbl_name("::ffff:192.0.2.99", "bl.example.") == "99.2.0.192.bl.example"


def test_not_an_address() -> None:
    with pytest.raises(ValueError):
        dnsbl_name("not-an-ip", "bl.example")
