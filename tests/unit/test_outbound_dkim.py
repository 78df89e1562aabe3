"""DKIM (delivery/dkim.py): our signatures verify with dkimpy (RSA and Ed25519), canonicalization, DNS records."""

from __future__ import annotations

import dkim as dkimpy
import pytest

from postroom.delivery.dkim import (
    Keys,
    Signer,
    dkim_txt,
    dns_records,
    generate_keys,
    relaxed_body,
    relaxed_header,
    sign_message,
    txt_strings,
)
from postroom.store.api import Domain

RAW = (b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
       b"From: Alice <alice@a.test>\r\nTo: bob@b.test,\r\n  carol@b.test\r\nSubject:  hello   world \r\n"
       b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <m1@a.test>\r\n\r\n"
       b"Hi  Bob, \r\n.dot line\r\n\r\n\r\n")


@pytest.fixture(scope="module")
def keys() -> Keys:
    return generate_keys(1_700_000_000)


def dnsfunc(domain: Domain) -> object:
    records = {name.encode(): value.encode() for name, kind, value in dns_records(domain, "mx.a.test")
               if kind == "TXT"}

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name, b"")

    return lookup


def domain_with(keys: Keys) -> Domain:
    return Domain(1, "a.test", 0.0, keys.rsa_selector, keys.rsa_pem, keys.ed25519_selector, keys.ed25519_pem)


def test_selectors_and_pems(keys: Keys) -> None:
    assert (keys.rsa_selector, keys.ed25519_selector) == ("pr202311r", "pr202311e")
    assert keys.rsa_pem.startswith("-----BEGIN PRIVATE KEY-----") and keys.ed25519_pem.startswith("-----BEGIN")
    assert dkim_txt(keys.rsa_pem).startswith("v=DKIM1; k=rsa; p=MII")
    assert dkim_txt(keys.ed25519_pem).startswith("v=DKIM1; k=ed25519; p=") and len(dkim_txt(keys.ed25519_pem)) == 66


@pytest.mark.parametrize("which", ["rsa", "ed25519"])
def test_signature_verifies_with_dkimpy(keys: Keys, which: str) -> None:
    sel, pem = (keys.rsa_selector, keys.rsa_pem) if which == "rsa" else (keys.ed25519_selector, keys.ed25519_pem)
    signed = sign_message(RAW, "a.test", sel, pem, now=1_700_000_000) + RAW
    d = dkimpy.DKIM(signed)
    assert d.verify(dnsfunc=dnsfunc(domain_with(keys)))
    assert d.domain == b"a.test" and d.selector == sel.encode()
    # any change to a signed header or the body breaks it
    assert not dkimpy.verify(signed.replace(b"hello", b"HELLO"), dnsfunc=dnsfunc(domain_with(keys)))
    assert not dkimpy.verify(signed.replace(b"Hi  Bob", b"Hi Rob"), dnsfunc=dnsfunc(domain_with(keys)))
    # relaxed: refolding and whitespace changes survive
    assert dkimpy.verify(signed.replace(b"Subject:  hello   world ", b"Subject: hello\r\n world"),
                         dnsfunc=dnsfunc(domain_with(keys)))
    # over-signed From: adding a second From breaks it
    assert not dkimpy.verify(b"From: mallory@evil.test\r\n" + signed, dnsfunc=dnsfunc(domain_with(keys)))


def test_canonicalization() -> None:
    assert relaxed_header(b"SubJect : a \t b\r\n  c  ") == b"subject:a b c"
    assert relaxed_body(b"a  b \r\n\r\n\r\n") == b"a b\r\n"
    assert relaxed_body(b"") == b"" and relaxed_body(b"\r\n\r\n") == b""
    assert relaxed_body(b"x") == b"x\r\n"


class FakeStore:
    def __init__(self, domains: dict[str, Domain]) -> None:
        self.domains = domains
        self.calls = 0
        self.asked: list[str] = []

    async def get_domain(self, name: str) -> Domain | None:
        self.calls += 1
        self.asked.append(name)
        return self.domains.get(name)

    async def list_domains(self) -> list[Domain]:
        return sorted(self.domains.values(), key=lambda d: d.name)


async def test_signer_picks_from_domain_then_sender(keys: Keys) -> None:
    store = FakeStore({"a.test": domain_with(keys), "c.test": Domain(3, "c.test", 0.0)})
    signer = Signer(store, clock=lambda: 1_700_000_000)  # type: ignore[arg-type]
    signed = await signer.sign(RAW, "bounce@elsewhere.test")
    assert signed.endswith(RAW) and signed.count(b"DKIM-Signature:") == 2
    assert dkimpy.verify(signed, dnsfunc=dnsfunc(domain_with(keys)))
    other = RAW.replace(b"alice@a.test", b"x@c.test")
    assert await signer.sign(other, "x@c.test") == other  # local domain without keys
    assert await signer.sign(other, "alice@a.test") != other  # falls back to the envelope sender's domain
    calls = store.calls
    await signer.sign(RAW, "")
    assert store.calls == calls  # cached


async def test_unchecked_from_is_never_signed_in_alignment(keys: Keys) -> None:
    """Mail relayed for others (a forward, a list copy of an outside post): no signature that DMARC could align
    with its From (RFC 7489 §3.1.1 relaxed alignment), whatever the envelope says."""
    store = FakeStore({"a.test": domain_with(keys)})
    signer = Signer(store, clock=lambda: 1_700_000_000)  # type: ignore[arg-type]
    assert await signer.sign(RAW, "ceo@a.test", from_checked=False) == RAW  # forged From and envelope: a.test
    assert await signer.sign(RAW, "someone@far.test", from_checked=False) == RAW  # a forward of a.test's From
    sub = RAW.replace(b"alice@a.test", b"alice@news.a.test")
    assert await signer.sign(sub, "list-bounces@a.test", from_checked=False) == sub  # a subdomain aligns too
    outside = RAW.replace(b"alice@a.test", b"dave@far.test")
    signed = await signer.sign(outside, "list-bounces@a.test", from_checked=False)
    assert signed.endswith(outside) and b"d=a.test" in signed  # the list's own signature, not aligned
    assert await signer.sign(RAW, "bounce@elsewhere.test", from_checked=True) != RAW  # checked: as before


def test_dns_records(keys: Keys) -> None:
    recs = dns_records(domain_with(keys), "mx.a.test")
    assert recs[0] == ("a.test.", "MX", "10 mx.a.test.")
    assert recs[1] == ("a.test.", "TXT", "v=spf1 mx -all")
    assert [r[0] for r in recs[2:]] == ["pr202311r._domainkey.a.test.", "pr202311e._domainkey.a.test.",
                                        "_dmarc.a.test."]
    assert recs[-1][2].startswith("v=DMARC1; p=none;")
    assert txt_strings("a" * 300) == '"' + "a" * 255 + '" "' + "a" * 45 + '"'


async def test_from_is_read_only_when_a_signature_may_depend_on_it(keys: Keys) -> None:
    """dkim.py invariant 4: with no local domain holding a key nothing is looked up; a checked From whose domain
    is ours is found in any case (RFC 5321 §2.4: domain names are case-insensitive); a From naming none of our
    signing domains is not looked up (the envelope sender's domain decides); mail relayed for others looks at
    its From only when the envelope sender's domain could sign."""
    keyless = FakeStore({"c.test": Domain(3, "c.test", 0.0)})
    signer = Signer(keyless, clock=lambda: 1_700_000_000)  # type: ignore[arg-type]
    assert await signer.sign(RAW, "alice@c.test") == RAW
    assert await signer.sign(RAW, "alice@c.test", from_checked=False) == RAW
    assert keyless.asked == []

    store = FakeStore({"a.test": domain_with(keys)})
    signer = Signer(store, clock=lambda: 1_700_000_000)  # type: ignore[arg-type]
    upper = RAW.replace(b"alice@a.test", b"ALICE@A.Test")
    signed = await signer.sign(upper, "bounce@elsewhere.test")
    assert signed.endswith(upper) and b"d=a.test;" in signed
    assert dkimpy.verify(signed, dnsfunc=dnsfunc(domain_with(keys)))
    outside = RAW.replace(b"alice@a.test", b"dave@far.test").replace(b"<m1@a.test>", b"<m1@far.test>")
    store.asked.clear()
    assert await signer.sign(outside, "bounce@elsewhere.test") == outside
    assert "far.test" not in store.asked and store.asked == ["elsewhere.test"]
    signed = await signer.sign(outside, "alice@a.test")  # the envelope sender's domain signs
    assert signed.endswith(outside) and b"d=a.test;" in signed
    store.asked.clear()
    assert await signer.sign(RAW, "someone@far.test", from_checked=False) == RAW
    assert store.asked == ["far.test"]  # not a.test, the From's: the envelope domain has no key
