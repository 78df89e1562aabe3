"""Per-user and per-domain sender allow and block lists: what a rule means for a message (issue 12 item 7).

Theory of operation
-------------------
A rule (store `SenderRule`, kept by store/sqlite/senders.py) belongs to a user or to a hosted domain and has a
pattern: an address (`bob@example.com`), a domain (`@example.com`, that domain only) or the subdomains of one
(`@.example.com`: `a.example.com`, `x.y.example.com`, not `example.com` itself; add both to cover both).

**Which rule decides for an address** (`deciding_rule`): of the rules that match it, a user's own rule beats
their domain's, and within one scope the most specific pattern wins: the address, then `@domain`, then the
longest `@.domain`. A scope holds one rule per pattern, so there is never a tie.

**Block** (`SenderVerdict.blocked`): the envelope sender (MAIL FROM) or an address of the From header field is
decided by a block rule. A blocked envelope sender is refused at RCPT for that recipient (`550 5.7.1`, the
session's refusal line names the rule's scope); when a recipient leads to several users and only some block the
sender, or when only the From header (known after DATA, when SMTP can no longer refuse one recipient) is
blocked, the copies of the users who block go to their Junk mailbox with `$Junk` (delivery/router.py).
A block needs no authentication: refusing a forged sender costs nobody anything.

**Allow** (`SenderVerdict.allowed`): counts only for an address the message authenticates
(`authenticated_senders`): the MAIL FROM address when SPF passed for its domain (RFC 7208 §2.6.3), an address
of the From field when DMARC passed (RFC 7489 §6.6.2) or a DKIM signature that covers the whole body passed for
a domain aligned with it (relaxed, RFC 7489 §3.1.1). An unauthenticated allow list is a spammer's bypass: the
From field and the envelope sender are free text, and spammers forge the addresses people are most likely to
have allowed. An allowed sender skips the score's Junk filing (ours, `inbound.score`, and rspamd's "add header"
/ "rewrite subject") and greylisting (checked at RCPT with SPF of MAIL FROM, the only identity known then). It
does not skip a DMARC quarantine or reject, nor rspamd's reject: those are the domain owner's or the filter's
word that the message is not what it says.

Invariants
1. A block rule always wins over an allow rule for the same message (for any of its addresses).
2. `allowed` is set only for an address in the message's authenticated set.
3. Everything here is pure: no I/O, bounded by the number of rules (at most `names.MAX_SENDER_RULES` per scope)
   times the message's From addresses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from postroom.inbound.dkim import DkimResult
from postroom.inbound.dmarc import DmarcResult, aligned
from postroom.inbound.spf import SpfResult
from postroom.store.api import SenderRule


def matches(pattern: str, address: str) -> bool:
    """Whether `pattern` (names.sender_pattern form) matches `address` (compared lower-case)."""
    address = address.lower()
    domain = address.rpartition("@")[2]
    if pattern.startswith("@."):
        return domain.endswith(pattern[1:])  # ".example.com": strict subdomains only
    if pattern.startswith("@"):
        return domain == pattern[1:]
    return address == pattern


def _rank(rule: SenderRule) -> tuple[int, int, int]:
    """Sort key, best first: the user's own scope, then the address, `@domain`, the longest `@.domain`."""
    p = rule.pattern
    specific = 2 if not p.startswith("@") else 1 if not p.startswith("@.") else 0
    return (0 if rule.user_id is not None else 1, -specific, -len(p))


def deciding_rule(rules: Iterable[SenderRule], address: str) -> SenderRule | None:
    """The rule that decides for `address` (module doc), or None when none matches."""
    if not address or "@" not in address:
        return None
    found = [r for r in rules if matches(r.pattern, address)]
    return min(found, key=_rank) if found else None


@dataclass(frozen=True)
class Senders:
    """What the rules are applied to: the envelope sender ("" for the null sender), the From field's addresses
    (lower-case), and those of them the message authenticates (`authenticated_senders`)."""

    envelope: str = ""
    header_from: tuple[str, ...] = ()
    authenticated: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SenderVerdict:
    """For one user: the block rule that applies (None: not blocked), else the allow rule that counts."""

    blocked: SenderRule | None = None
    allowed: SenderRule | None = None


def verdict(rules: Sequence[SenderRule], senders: Senders) -> SenderVerdict:
    """The user's verdict on a message from `senders` under `rules` (their own and their domain's)."""
    if not rules:
        return SenderVerdict()
    addresses = [a for a in (senders.envelope, *senders.header_from) if a]
    decided = [(a, deciding_rule(rules, a)) for a in addresses]
    for _, rule in decided:
        if rule is not None and rule.kind == "block":
            return SenderVerdict(blocked=rule)  # invariant 1
    for address, rule in decided:
        if rule is not None and rule.kind == "allow" and address.lower() in senders.authenticated:
            return SenderVerdict(allowed=rule)  # invariant 2
    return SenderVerdict()


def authenticated_senders(mail_from: str, header_from: Sequence[str], spf: SpfResult | None,
                          dkim: Sequence[DkimResult] | None, dmarc: DmarcResult | None) -> frozenset[str]:
    """The addresses among `mail_from` and `header_from` the check results authenticate (module doc, Allow)."""
    out: set[str] = set()
    if mail_from and spf is not None and spf.result == "pass" and spf.identity == "mailfrom" \
            and spf.domain.lower() == mail_from.rpartition("@")[2].lower():
        out.add(mail_from.lower())
    for address in header_from:
        domain = address.rpartition("@")[2]
        if dmarc is not None and dmarc.result == "pass" and dmarc.domain == domain:
            out.add(address.lower())
        elif any(r.result == "pass" and r.whole_body and aligned(r.domain, domain, strict=False)
                 for r in dkim or ()):
            out.add(address.lower())
    return frozenset(out)
