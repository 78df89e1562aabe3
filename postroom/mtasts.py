"""MTA-STS (RFC 8461) and SMTP TLS reporting (RFC 8460): the policy a domain publishes so senders insist on TLS.

Theory of operation
-------------------
A sending MTA that supports MTA-STS looks up `_mta-sts.DOMAIN` TXT (`v=STSv1; id=...`, RFC 8461 §3.1); when it
finds one it fetches `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (§3.3: HTTPS with a certificate valid for
that name) and caches the policy for `max_age` seconds, re-fetching when the TXT id changes. In `enforce` mode it
then delivers only to the listed MX hosts, over TLS with a valid certificate; in `testing` mode it delivers as
before and reports failures to the TLS-RPT address (`_smtp._tls.DOMAIN` TXT, RFC 8460 §3).

Postroom serves the policy on its web listeners for every hosted domain (`policy_text`, web/app.py), and
`postroom dns` prints the three records (`dns_records`). The id is derived from the policy text, so it changes
exactly when the policy does (§3.1: "a short string used to track policy updates"). The one MX host is
`server.hostname`, which is also what the MX record names.

The mode comes from `mta_sts.mode` ("testing" by default, as RFC 8461 §5 advises to start; "enforce" once the
certificate of `server.hostname` is from a public CA, e.g. by ACME with `mta-sts.DOMAIN` in `acme.names`; "none"
to withdraw a policy). The policy is served over plain HTTP too, but senders only fetch it over HTTPS.
"""

from __future__ import annotations

import base64
import hashlib

MODES = ("testing", "enforce", "none")


def policy_text(mode: str, mx_host: str, max_age: int) -> str:
    """The policy file (RFC 8461 §3.2): `version`, `mode`, one `mx`, `max_age` in seconds; CRLF line ends."""
    lines = ["version: STSv1", f"mode: {mode}", f"mx: {mx_host.rstrip('.')}", f"max_age: {max_age}"]
    return "".join(line + "\r\n" for line in lines)


def policy_id(text: str) -> str:
    """The TXT record's id (RFC 8461 §3.1: 1-32 letters and digits) for a policy: a digest of its text."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode().rstrip("=")[:20]


def dns_records(domain: str, hostname: str, mode: str, max_age: int) -> list[tuple[str, str, str]]:
    """(name, type, value) of the MTA-STS and TLS-RPT records for `domain`: the `_mta-sts` TXT with the policy's
    id, `mta-sts.DOMAIN` pointing at this host (its certificate must name it), and `_smtp._tls` TXT asking for
    reports to postmaster (RFC 8460 §3)."""
    text = policy_text(mode, hostname, max_age)
    return [
        (f"_mta-sts.{domain}.", "TXT", f"v=STSv1; id={policy_id(text)}"),
        (f"mta-sts.{domain}.", "CNAME", hostname.rstrip(".") + "."),
        (f"_smtp._tls.{domain}.", "TXT", f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"),
    ]


__all__ = ["MODES", "dns_records", "policy_id", "policy_text"]
