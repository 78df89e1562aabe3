"""inbound/senders.py: which rule decides for an address, block over allow, and an allow counting only for an
authenticated sender (SPF pass of the MAIL FROM domain, RFC 7208 §2.6.3; DMARC pass, RFC 7489 §6.6.2; a whole-body
DKIM pass aligned with the From domain, relaxed, RFC 7489 §3.1.1)."""

from __future__ import annotations

from postroom.inbound.dkim import DkimResult
from postroom.inbound.dmarc import DmarcResult
from postroom.inbound.senders import Senders, authenticated_senders, deciding_rule, matches, verdict
from postroom.inbound.spf import SpfResult
from postroom.store.api import SenderRule


def rule(pattern: str, kind: str = "block", user: bool = True) -> SenderRule:
    return SenderRule(0, "u@x.test" if user else "x.test", kind, pattern, 0.0, 1 if user else None,
                      None if user else 1)


def test_patterns() -> None:
    assert matches("bob@a.example", "Bob@A.Example")
    assert not matches("bob@a.example", "bob@b.a.example")
    assert matches("@a.example", "x@a.example") and not matches("@a.example", "x@b.a.example")
    assert matches("@.a.example", "x@b.a.example") and matches("@.a.example", "x@c.b.a.example")
    assert not matches("@.a.example", "x@a.example")  # subdomains only
    assert not matches("@.a.example", "x@evila.example")  # a label boundary, not a string suffix


def test_most_specific_rule_and_the_users_own_scope_win() -> None:
    rules = [rule("@.a.example", "allow"), rule("@b.a.example", "block"), rule("bob@b.a.example", "allow"),
             rule("@.x.a.example", "block")]
    assert deciding_rule(rules, "bob@b.a.example").kind == "allow"  # the address beats @domain
    assert deciding_rule(rules, "eve@b.a.example").kind == "block"  # @domain beats @.parent
    assert deciding_rule(rules, "eve@c.a.example").kind == "allow"
    assert deciding_rule(rules, "eve@y.x.a.example").pattern == "@.x.a.example"  # the longest @.domain
    assert deciding_rule(rules, "eve@elsewhere.example") is None
    assert deciding_rule(rules, "") is None
    # The user's own rule beats their domain's, however specific the domain's is.
    mixed = [rule("bob@b.a.example", "block", user=False), rule("@.a.example", "allow")]
    assert deciding_rule(mixed, "bob@b.a.example").kind == "allow"


def test_block_wins_and_allow_needs_authentication() -> None:
    rules = [rule("friend@a.example", "allow"), rule("@bad.example", "block")]
    authed = Senders("friend@a.example", ("friend@a.example",), frozenset({"friend@a.example"}))
    assert verdict(rules, authed).allowed is not None
    forged = Senders("friend@a.example", ("friend@a.example",), frozenset())
    assert verdict(rules, forged).allowed is None and verdict(rules, forged).blocked is None
    # an allowed, authenticated envelope sender does not unblock a blocked From address (invariant 1)
    both = Senders("friend@a.example", ("x@bad.example",), frozenset({"friend@a.example"}))
    assert verdict(rules, both).blocked is not None and verdict(rules, both).allowed is None
    assert verdict([], authed).blocked is None and verdict([], authed).allowed is None


def test_authenticated_senders() -> None:
    spf_pass = SpfResult("pass", "a.example", "mailfrom")
    assert authenticated_senders("Bob@A.example", [], spf_pass, [], None) == {"bob@a.example"}
    assert authenticated_senders("bob@a.example", [], SpfResult("softfail", "a.example"), [], None) == set()
    assert authenticated_senders("bob@b.example", [], spf_pass, [], None) == set()  # another domain's pass
    assert authenticated_senders("", [], SpfResult("pass", "helo.example", "helo"), [], None) == set()
    dkim = [DkimResult("pass", "mail.a.example")]
    assert authenticated_senders("x@z.example", ["ann@a.example"], None, dkim, None) == {"ann@a.example"}
    partial = [DkimResult("pass", "a.example", whole_body=False)]  # l= leaves some of the body unsigned
    assert authenticated_senders("x@z.example", ["ann@a.example"], None, partial, None) == set()
    assert authenticated_senders("x@z.example", ["ann@a.example"], None, [DkimResult("fail", "a.example")],
                                 None) == set()
    assert authenticated_senders("x@z.example", ["ann@a.example"], None, [],
                                 DmarcResult("pass", "a.example")) == {"ann@a.example"}
    assert authenticated_senders("x@z.example", ["ann@a.example"], None, [],
                                 DmarcResult("fail", "a.example")) == set()
