"""The built-in spam score of MX mail: one number from what the checks and the door found (issue 12 item 8).

Theory of operation
-------------------
`score(cfg, ...)` adds one weight (`[inbound.score]`, config.ScoreConfig) per sign the message shows:

    SPF of MAIL FROM     fail, softfail, none, permerror (RFC 7208 §2.6); pass, neutral, temperror add nothing
    DKIM                 no signature, or signatures that all fail (a pass anywhere counts as signed)
    DMARC                fail with a policy that applied nothing (p=none, or outside pct): the policy itself
                         already quarantines or rejects the others
    DNS blocklists       each zone of `inbound.score.dnsbl_zones` that lists the client (RFC 5782)
    reverse DNS          the client has no forward-confirmed name ("unknown"; not looked up: nothing)
    HELO                 a bare IP address (RFC 5321 §4.1.3 wants an address literal in brackets), or a name
                         without a dot (§4.1.1.1 wants the client's fully-qualified domain name)

and returns the total with its parts. The session (smtp/session.py) decides with it: over `reject_threshold`
(when not 0) the message is refused `550 5.7.1` at the end of DATA; over `junk_threshold` it is spam
(`Envelope.spam`: each recipient's Junk with `$Junk`, except users whose allow rule counts,
inbound/senders.py). When rspamd answered for the message, rspamd's action is the authority and this score is
only logged (two filters voting differently would make neither's settings mean what they say); when rspamd is
unreachable, this score decides. The score and its parts go in the message's log line (`score=4.5
score_parts=spf_softfail:1.0,...`) and in an `X-Postroom-Score` field on top of the stored message, so a user's
Sieve rules or mail client can sort by it as by rspamd's or SpamAssassin's fields; a field of that name that
arrives with the message is removed on every listener (`field_spans`), as RFC 8601 §5 has us do for forged
Authentication-Results, so a sender cannot write its own score.

Invariants
1. Pure: no I/O, a few comparisons per message.
2. Every part is a sign the message shows, with its configured weight; a weight of 0 leaves the sign out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from postroom.config import ScoreConfig
from postroom.inbound.authres import field_end
from postroom.inbound.dkim import DkimResult
from postroom.inbound.dmarc import DmarcResult
from postroom.inbound.spf import SpfResult

FIELD = "X-Postroom-Score"


@dataclass(frozen=True)
class Score:
    """`total` and its `parts` ((sign, weight) in the order of the module doc)."""

    total: float
    parts: tuple[tuple[str, float], ...] = ()

    def log_fields(self) -> list[tuple[str, object]]:
        """`score=` and `score_parts=` for the message's log line."""
        parts = ",".join(f"{name}:{weight:g}" for name, weight in self.parts) or "-"
        return [("score", f"{self.total:g}"), ("score_parts", parts)]

    def field(self) -> bytes:
        """The `X-Postroom-Score` field (with CRLF): the total, then the parts in a comment."""
        parts = ", ".join(f"{name}={weight:g}" for name, weight in self.parts)
        return f"{FIELD}: {self.total:g}{f' ({parts})' if parts else ''}\r\n".encode("ascii")


def _is_bare_ip(helo: str) -> bool:
    try:
        ipaddress.ip_address(helo)
        return True
    except ValueError:
        return False


def score(cfg: ScoreConfig, *, spf: SpfResult | None, dkim: Sequence[DkimResult] | None,
          dmarc: DmarcResult | None, helo: str, rdns: str | None,
          listed: Sequence[tuple[str, str]] = ()) -> Score:
    """The score of a message (module doc). `dkim` None: not checked (no part); `rdns` None: not looked up;
    `listed`: (zone, answer) of each score zone listing the client."""
    parts: list[tuple[str, float]] = []

    def add(name: str, weight: float) -> None:
        if weight:
            parts.append((name, weight))  # invariant 2

    if spf is not None and spf.result in ("fail", "softfail", "none", "permerror"):
        add(f"spf_{spf.result}", getattr(cfg, f"spf_{spf.result}"))
    if dkim is not None:
        if not dkim:
            add("dkim_none", cfg.dkim_none)
        elif not any(r.result == "pass" for r in dkim) and any(r.result == "fail" for r in dkim):
            add("dkim_fail", cfg.dkim_fail)
    if dmarc is not None and dmarc.result == "fail" and dmarc.disposition == "none":
        add("dmarc_fail", cfg.dmarc_fail)
    for _zone, _answer in listed:
        add("dnsbl", cfg.dnsbl)
    if rdns == "unknown":
        add("rdns_none", cfg.rdns_none)
    if not helo.startswith("["):
        if _is_bare_ip(helo):
            add("helo_bare_ip", cfg.helo_bare_ip)
        elif "." not in helo.strip("."):
            add("helo_not_fqdn", cfg.helo_not_fqdn)
    return Score(round(sum(w for _, w in parts), 3), tuple(parts))


_FIELD_START = re.compile(rb"(?im)^x-postroom-score[ \t]*:")


def field_spans(head: bytes) -> list[tuple[int, int]]:
    """Byte spans [start, end) in `head` (the message start, CRLF line ends) of the `X-Postroom-Score` fields of
    its header, continuation lines included: what arrives with that name is removed (module doc)."""
    if head.startswith(b"\r\n"):
        return []
    end = head.find(b"\r\n\r\n")
    block = head[:len(head) if end < 0 else end + 2]
    return [(m.start(), field_end(block, m.end())) for m in _FIELD_START.finditer(block)]
