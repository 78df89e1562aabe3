"""DMARC's pure rules (postroom/inbound/dmarc.py): organisational domains from the Public Suffix List, the
alignment matrix, record parsing. Expected values are RFC 7489's (§3.1 alignment, §3.2 organisational domain,
§6.3 tags and defaults, §6.6.3 records that are not applied)."""

from __future__ import annotations

import pytest

from postroom.inbound.dmarc import DmarcRecord, aligned, organizational_domain, parse_record


@pytest.mark.parametrize(("domain", "org"), [
    ("example.com", "example.com"),
    ("mail.example.com", "example.com"),
    ("a.b.mail.example.com", "example.com"),
    ("example.co.uk", "example.co.uk"),  # a public suffix of two labels
    ("news.example.co.uk", "example.co.uk"),
    ("co.uk", "co.uk"),  # a public suffix is its own organisational domain
    ("MAIL.Example.COM.", "example.com"),
])
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


@pytest.mark.parametrize(("a", "b", "strict", "expected"), [
    ("example.com", "example.com", True, True),
    ("example.com", "example.com", False, True),
    ("mail.example.com", "example.com", True, False),  # §3.1.1: strict needs the very same name
    ("mail.example.com", "example.com", False, True),  # relaxed: the same organisational domain
    ("a.example.com", "b.example.com", False, True),
    ("example.com", "example.net", False, False),
    ("example.co.uk", "other.co.uk", False, False),  # co.uk is a public suffix: not one organisation
    ("news.example.co.uk", "example.co.uk", False, True),
    ("news.example.co.uk", "example.co.uk", True, False),
    ("EXAMPLE.com", "example.COM", True, True),
])
def test_alignment_matrix(a: str, b: str, strict: bool, expected: bool) -> None:
    assert aligned(a, b, strict) is expected
    assert aligned(b, a, strict) is expected


def test_record_defaults_and_tags() -> None:
    assert parse_record("v=DMARC1; p=reject") == DmarcRecord(p="reject", sp="reject")  # §6.3: sp defaults to p
    r = parse_record("v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=20;rua=mailto:d@example.com;t=y;x=1")
    assert r == DmarcRecord(p="quarantine", sp="none", adkim_strict=True, aspf_strict=True, pct=20,
                            rua=("mailto:d@example.com",))
    assert parse_record("v=DMARC1; p=none; pct=500") == DmarcRecord(p="none", sp="none", pct=100)


@pytest.mark.parametrize("text", ["v=DMARC2; p=reject", "p=reject; v=DMARC1", "v=DMARC1", "v=DMARC1; p=drop"])
def test_records_not_applied(text: str) -> None:
    assert parse_record(text) is None  # §6.6.3: no valid p= and no rua=: DMARC is not applied


def test_invalid_policy_with_rua_acts_as_none() -> None:
    # §6.6.3: an invalid p= with a valid rua= is treated as p=none.
    assert parse_record("v=DMARC1; p=drop; rua=mailto:reports@example.com") == DmarcRecord(
        p="none", sp="none", rua=("mailto:reports@example.com",))  # rua kept for aggregate reports
