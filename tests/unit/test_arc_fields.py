"""ARC header reading (postroom/inbound/arc.py) and what a passing chain may override, without cryptography.

Expected values are RFC 8617's: an ARC Set is one ARC-Authentication-Results, ARC-Message-Signature and ARC-Seal
with the same `i=` (§4.1, §4.2.1: 1 to 50); the chain is judged `fail` from the header alone when the instances
are not 1..N without gaps or duplicates (§5.2 step 3), when the newest seal says cv=fail (step 2), or when the
oldest seal does not say cv=none or a later one cv=pass (§5.1.1); no ARC field is `none` (step 1). The tag lists
are RFC 6376 §3.2's. The override is RFC 7489 §7.2 local policy: only a passing chain, a trusted newest sealer,
and an i=1 AAR that recorded a pass for the From domain."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.inbound import authres
from postroom.inbound.arc import ArcResult, arc_fields, chain_structure, parse_tags, trusted_pass
from postroom.inbound.dmarc import DmarcResult


def arc_set(i: int, cv: str = "pass", d: str = "l.example", s: str = "sel", fold: bool = False) -> bytes:
    sep = b"\r\n\t" if fold else b" "
    return (b"ARC-Seal: i=%d; cv=%s; a=rsa-sha256;%sd=%s; s=%s; b=AAAA\r\n"
            b"ARC-Message-Signature: i=%d; a=rsa-sha256; c=relaxed/relaxed; d=%s;%ss=%s; h=from; bh=AA; b=AA\r\n"
            b"ARC-Authentication-Results: i=%d; mx.%s; dmarc=pass\r\n"
            % (i, cv.encode(), sep, d.encode(), s.encode(), i, d.encode(), sep, s.encode(), i, d.encode()))


MSG = b"From: a@a.example\r\nSubject: x\r\n\r\nbody\r\n"


def chain(n: int, fold: bool = False) -> bytes:
    return b"".join(arc_set(i, "none" if i == 1 else "pass", fold=fold) for i in range(n, 0, -1)) + MSG


@pytest.mark.parametrize("fold", [False, True])
def test_fields_and_tags(fold: bool) -> None:
    fields = arc_fields(chain(2, fold))
    assert [(f.name, f.i) for f in fields] == [("arc-seal", 2), ("arc-message-signature", 2),
                                               ("arc-authentication-results", 2), ("arc-seal", 1),
                                               ("arc-message-signature", 1), ("arc-authentication-results", 1)]
    assert fields[0].tags is not None and fields[0].tags["d"] == "l.example" and fields[0].tags["cv"] == "pass"
    assert fields[2].tags is None  # an AAR is not a tag list
    # LF-only line ends read the same (a header handed over by a local tool).
    assert [(f.name, f.i) for f in arc_fields(chain(2, fold).replace(b"\r\n", b"\n"))] == [(f.name, f.i)
                                                                                           for f in fields]


def test_fields_stop_at_the_body() -> None:
    assert arc_fields(MSG + arc_set(1, "none")) == []


def test_parse_tags() -> None:
    assert parse_tags(" i=1; cv=none ; b=AB C\r\n D ;") == {"i": "1", "cv": "none", "b": "ABCD"}
    assert parse_tags("i=1; i=2") is None  # a tag twice (RFC 6376 §3.2)
    assert parse_tags("i=1; nonsense") is None
    assert parse_tags("1x=2") is None


def test_structure_of_good_chains() -> None:
    assert chain_structure(MSG).result == "none"
    st = chain_structure(chain(3))
    assert (st.result, st.n, st.sealer, st.keys) == ("", 3, "l.example", ("sel._domainkey.l.example",))
    st = chain_structure(chain(50))
    assert (st.result, st.n) == ("", 50)  # §4.2.1: 50 is the last valid instance


@pytest.mark.parametrize("raw, fragment", [
    (arc_set(51, "pass") + chain(50), "outside 1..50"),
    (arc_set(0, "none") + MSG, "outside 1..50"),
    (arc_set(3, "pass") + chain(1), "i=2 missing"),
    (arc_set(1, "none") + chain(1), "two arc-seal fields with i=1"),
    (b"ARC-Seal: cv=none; d=x; s=y; b=A\r\n" + MSG, "arc-seal without a valid i="),
    (b"ARC-Seal: i=1x; cv=none; d=x; s=y; b=A\r\n" + MSG, "arc-seal without a valid i="),
    (b"ARC-Authentication-Results: mx.example; dmarc=pass\r\n" + MSG, "arc-authentication-results without a valid"),
    (b"ARC-Seal: i=1; i=1; cv=none\r\n" + MSG, "malformed tag list"),
    (arc_set(1, "none").split(b"ARC-Authentication-Results")[0] + MSG, "lacks arc-authentication-results"),
    (arc_set(2, "fail") + chain(1), "ARC-Seal i=2 says cv=fail"),
    (arc_set(2, "none") + chain(1), "ARC-Seal i=2 says cv=none, not cv=pass"),
    (arc_set(1, "pass") + MSG, "ARC-Seal i=1 says cv=pass, not cv=none"),
    (arc_set(1, "none", d="") + MSG, "lacks d= or s="),
])
def test_structure_failures(raw: bytes, fragment: str) -> None:
    st = chain_structure(raw)
    assert st.result == "fail" and fragment in st.reason, st


def test_key_names_are_bounded() -> None:
    raw = b"".join(arc_set(i, "none" if i == 1 else "pass", d=f"d{i}.example") for i in range(40, 0, -1)) + MSG
    st = chain_structure(raw)
    assert st.result == "fail" and "more than 32 keys" in st.reason


PASS = ArcResult("pass", "", 1, 0, "lists.example", (("spf", "fail", {"smtp.mailfrom": "x@a.example"}),
                                                       ("dmarc", "pass", {"header.from": "a.example"})))


def test_trusted_pass() -> None:
    assert trusted_pass(PASS, "a.example", ["Lists.Example."]) == "sealer lists.example, i=1 dmarc=pass"
    assert trusted_pass(PASS, "a.example", ["other.example"]) == ""  # not trusted
    assert trusted_pass(PASS, "b.example", ["lists.example"]) == ""  # the AAR spoke of another domain
    failed = ArcResult("fail", "x", 1, None, "lists.example", PASS.origin)
    assert trusted_pass(failed, "a.example", ["lists.example"]) == ""  # only a passing chain counts
    assert trusted_pass(None, "a.example", ["lists.example"]) == ""
    spf = ArcResult("pass", "", 1, 0, "lists.example", (("spf", "pass", {"smtp.mailfrom": "x@bounce.a.example"}),))
    assert trusted_pass(spf, "a.example", ["lists.example"]) == "sealer lists.example, i=1 spf=pass bounce.a.example"
    dk = ArcResult("pass", "", 1, 0, "lists.example", (("dkim", "pass", {"header.d": "other.example"}),
                                                       ("dkim", "pass", {"header.d": "mail.a.example"})))
    assert trusted_pass(dk, "a.example", ["lists.example"]) == "sealer lists.example, i=1 dkim=pass mail.a.example"


def test_authentication_results_arc_and_override() -> None:
    dmarc = DmarcResult("fail", "a.example", "reject", "none", "no aligned pass", override="sealer l.example, i=1 "
                        "dmarc=pass")
    field = authres.header("mx.example.org", dmarc=dmarc, arc=ArcResult("pass", "", 2, 0, "l.example"),
                           remote_ip="192.0.2.7")
    assert field == (b"Authentication-Results: mx.example.org;\r\n"
                     b"\tdmarc=fail (p=reject dis=none; arc override: sealer l.example, i=1 dmarc=pass)"
                     b' reason="arc" header.from=a.example;\r\n'
                     b"\tarc=pass (i=2 sealer=l.example) header.oldest-pass=0 smtp.remote-ip=192.0.2.7\r\n")
    field = authres.header("mx.example.org", arc=ArcResult("fail", "ARC-Seal i=2 says cv=fail", 2),
                           remote_ip="2001:db8::1")
    assert field.endswith(b'\tarc=fail reason="ARC-Seal i=2 says cv=fail" smtp.remote-ip="2001:db8::1"\r\n')
    # (RFC 8601 §2.2: a value with ":" is not a token, so it is quoted)
    assert authres.header("mx.example.org", arc=ArcResult("none")).endswith(b"\tarc=none\r\n")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"ARC-Seal:", b"ARC-Message-Signature:", b"ARC-Authentication-Results:", b" i=",
                                 b"1", b"51", b";", b"=", b"cv=", b"none", b"fail", b"\r\n", b"\r\n\t", b"\n",
                                 b"d=x.example", b"s=", b"\xff", b"(", b"\"", b"\r\n\r\n"]), max_size=40))
def test_never_raises(pieces: list[bytes]) -> None:
    # Whatever the header holds, the reader gives a structure, never an exception (arc.py invariant 2).
    st_ = chain_structure(b"".join(pieces) + b"\r\n\r\nbody\r\n")
    assert st_.result in ("", "none", "fail")
