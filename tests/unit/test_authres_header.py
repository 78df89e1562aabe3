"""Authentication-Results (postroom/inbound/authres.py): the field we write (RFC 8601 §2.2 syntax, §2.7 methods
and properties) and the fields we remove (§5: only those claiming our authserv-id)."""

from __future__ import annotations

import email
import email.policy
import random

import pytest

from postroom.inbound import authres
from postroom.inbound.dkim import DkimResult
from postroom.inbound.dmarc import DmarcResult
from postroom.inbound.spf import SpfResult


def test_field_with_every_method() -> None:
    field = authres.header(
        "mx.example.org", spf=SpfResult("pass", "a.example"), helo_spf=SpfResult("none", "h.a.example", "helo"),
        mail_from="alice@a.example", helo="h.a.example",
        dkim=[DkimResult("pass", "a.example", "sel", "AbCdEfGh"),
              DkimResult("fail", "b.example", "s2", "12345678", 'body hash "did" not verify')],
        dmarc=DmarcResult("pass", "a.example", "reject", "none", "aligned"))
    assert field == (b"Authentication-Results: mx.example.org;\r\n"
                     b"\tspf=pass smtp.mailfrom=alice@a.example;\r\n"
                     b"\tspf=none smtp.helo=h.a.example;\r\n"
                     b"\tdkim=pass header.d=a.example header.s=sel header.b=AbCdEfGh;\r\n"
                     b'\tdkim=fail reason="body hash \\"did\\" not verify" header.d=b.example header.s=s2'
                     b" header.b=12345678;\r\n"
                     b"\tdmarc=pass (p=reject dis=none) reason=aligned header.from=a.example\r\n")
    # A reader that knows RFC 5322 sees one field with the whole value.
    msg = email.message_from_bytes(field + b"\r\nbody", policy=email.policy.default)
    assert str(msg["Authentication-Results"]).startswith("mx.example.org;")


def test_iprev() -> None:
    """RFC 8601 §2.7.3: iprev's property is policy.iprev, the address; the name of a pass goes in a comment."""
    field = authres.header("mx.example.org", iprev=("pass", "192.0.2.7", "mail.a.example"))
    assert field == (b"Authentication-Results: mx.example.org;\r\n"
                     b"\tiprev=pass policy.iprev=192.0.2.7 (mail.a.example)\r\n")
    field = authres.header("mx.example.org", iprev=("fail", "2001:db8::7", "unknown"))
    assert field == b'Authentication-Results: mx.example.org;\r\n\tiprev=fail policy.iprev="2001:db8::7"\r\n'
    field = authres.header("mx.example.org", iprev=("pass", "192.0.2.7", "a(b)\\c"))
    assert b"(a?b??c)" in field  # a name cannot end the comment early


def test_nothing_checked_says_none() -> None:
    assert authres.header("mx.example.org") == b"Authentication-Results: mx.example.org;\r\n\tnone\r\n"


def test_hostile_values_are_quoted_and_cut() -> None:
    hostile = '"a b\\"c"@x\x01.example' + "y" * 2000
    field = authres.header("mx.example.org", spf=SpfResult("fail", "x"), mail_from=hostile)
    assert field.isascii() and all(len(line) < 998 for line in field.split(b"\r\n"))
    assert b"\x01" not in field


HEAD = (b"Received: from a\r\n"
        b"Authentication-Results: mx.example.org; dkim=pass\r\n"
        b"Authentication-Results: (a comment) MX.Example.Org;\r\n spf=pass\r\n"
        b'authentication-results : "mx.example.org" 1; none\r\n'
        b"Authentication-Results: other.example; dkim=fail\r\n"
        b"Authentication-Results: mx.example.org.evil; dkim=pass\r\n"
        b"Subject: x\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.org; in the body, not a field\r\n")


def test_own_fields_found_and_removed() -> None:
    spans = authres.own_fields(HEAD, "mx.example.org")
    assert len(spans) == 3
    kept = authres.remove_spans(HEAD, spans)
    assert kept == (b"Received: from a\r\n"
                    b"Authentication-Results: other.example; dkim=fail\r\n"
                    b"Authentication-Results: mx.example.org.evil; dkim=pass\r\n"
                    b"Subject: x\r\n"
                    b"\r\n"
                    b"Authentication-Results: mx.example.org; in the body, not a field\r\n")


def test_own_fields_never_raise_on_noise() -> None:
    rng = random.Random(7)
    for _ in range(300):
        alphabet = b'Authentication-Results:;()"\\ \t\r\nmx.example.org'
        noise = bytes(rng.choice(alphabet) for _ in range(rng.randrange(200)))
        for start, stop in authres.own_fields(noise, "mx.example.org"):
            assert 0 <= start < stop <= len(noise)


@pytest.mark.parametrize("value", [b"mx.example.org", b" mx.example.org;", b"(c (nested)) mx.example.org ; x"])
def test_authserv_id_forms(value: bytes) -> None:
    assert authres.own_fields(b"Authentication-Results:" + value + b"\r\n\r\n", "mx.example.org")
