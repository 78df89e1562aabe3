"""The Sender Rewriting Scheme: forwards keep SPF passing at the next hop, and their bounces find their way back.

Theory of operation
-------------------
A message from `alice@sender.example` that Postroom forwards (an alias of a local address leading to a remote
one) leaves with Postroom's address as envelope sender, since the next hop checks SPF (RFC 7208) of the
MAIL FROM domain against Postroom's IP address, and `sender.example` did not authorise it. The Sender Rewriting
Scheme (Shevek, "Sender Rewriting Scheme", 2004; the form libsrs2 and postsrsd use) writes the original
sender into the local part, with a timestamp and a keyed hash, so a bounce to that address can be routed back
to the original sender, and nobody can make this server relay to an address of their choice:

    SRS0=HHHH=TT=sender.example=alice@forwarding-domain       (forward)
    SRS1=HHHH=first-forwarder.example==HHHH=TT=orig=alice@forwarding-domain  (an SRS0 address forwarded on)

`HHHH` is the first `HASH_LENGTH` characters of the base64 HMAC-SHA-256 of the fields it covers (keyed with the
server secret, auth/secret.py), computed over their lower-case forms and compared without regard to case, so a
hop that lower-cases the local part does not break it. `TT` is the day number (days since the epoch) modulo
1024 in two base32 characters. An SRS1 address keeps the first forwarder's SRS0 part unchanged (only its
owner can check that hash) and carries its host, so a chain of forwarders stays bounded in length.

`forward` makes the address; `reverse` checks and undoes it: an SRS0 address of ours gives the original sender;
an SRS1 address gives the SRS0 address at the first forwarder. Both are pure functions of their inputs.

Invariants
1. `reverse` accepts only what `forward` made with the same secret within `MAX_AGE_DAYS` days (hash and age
   both checked), so an SRS address is no open relay.
2. The null sender, and senders in local domains, are never rewritten (the caller decides: `forward` rewrites
   whatever it is given).
3. A forwarded address is at most `MAX_LOCAL` octets before `@`; a longer original is not rewritten (`forward`
   raises SRSError) and the caller keeps the original sender.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

HASH_LENGTH = 4  # characters of base64: 24 bits, as libsrs2's default
MAX_AGE_DAYS = 21  # as libsrs2 and postsrsd
MAX_LOCAL = 200  # octets of a rewritten local part (RFC 5321 §4.5.3.1.1 says 64; real MTAs take more, SRS needs it)
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DAY = 86400
_PERIOD = 1024  # days the two-character timestamp can tell apart


class SRSError(ValueError):
    """An address that is not a valid SRS address of ours (bad form, hash or age), or one that cannot be made."""


def _hash(secret: bytes, *fields: str) -> str:
    mac = hmac.new(secret, "\0".join(f.lower() for f in fields).encode("utf-8", "surrogateescape"),
                   hashlib.sha256).digest()
    return base64.b64encode(mac).decode()[:HASH_LENGTH]


def _timestamp(now: float) -> str:
    day = int(now // _DAY) % _PERIOD
    return _B32[day >> 5] + _B32[day & 31]


def _age_ok(stamp: str, now: float) -> bool:
    try:
        then = _B32.index(stamp[0].upper()) << 5 | _B32.index(stamp[1].upper())
    except (ValueError, IndexError):
        return False
    return (int(now // _DAY) - then) % _PERIOD <= MAX_AGE_DAYS


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.lower().encode(), b.lower().encode())


def is_srs(local: str) -> bool:
    """Whether a local part is in SRS form (SRS0= or SRS1=, any case)."""
    return local[:5].upper() in ("SRS0=", "SRS1=")


def forward(sender: str, domain: str, secret: bytes, now: float | None = None) -> str:
    """The SRS address, in `domain`, for the envelope sender `sender` ("local@host") of a forwarded message.
    Raises SRSError when the result would be too long (invariant 3)."""
    now = time.time() if now is None else now
    local, _, host = sender.rpartition("@")
    if not local or not host:
        raise SRSError(f"not an address: {sender!r}")
    if local[:5].upper() == "SRS0=":  # already forwarded once: SRS1 keeps the first forwarder's part
        opaque = local[4:]  # "=HHHH=TT=orig-host=orig-local"
        out = f"SRS1={_hash(secret, host, opaque)}={host}={opaque}"
    elif local[:5].upper() == "SRS1=":  # SRS1 again: keep the first forwarder, as libsrs2 does
        try:
            _, _, first, opaque = local.split("=", 3)
        except ValueError:
            raise SRSError(f"malformed SRS1 address: {sender!r}") from None
        out = f"SRS1={_hash(secret, first, opaque)}={first}=={opaque.lstrip('=')}"
    else:
        stamp = _timestamp(now)
        out = f"SRS0={_hash(secret, stamp, host, local)}={stamp}={host}={local}"
    if len(out.encode()) > MAX_LOCAL:
        raise SRSError(f"the SRS form of {sender!r} would be longer than {MAX_LOCAL} octets")
    return f"{out}@{domain}"


def reverse(local: str, secret: bytes, now: float | None = None) -> str:
    """The address an SRS local part of ours stands for: the original sender (SRS0), or the first forwarder's
    SRS0 address (SRS1). Raises SRSError for anything else (invariant 1)."""
    now = time.time() if now is None else now
    tag = local[:5].upper()
    if tag == "SRS0=":
        parts = local[5:].split("=", 3)
        if len(parts) != 4 or not all(parts):
            raise SRSError("malformed SRS0 address")
        given, stamp, host, orig = parts
        if not _same(given, _hash(secret, stamp, host, orig)):
            raise SRSError("SRS0 hash does not match (not made here, or altered)")
        if not _age_ok(stamp, now):
            raise SRSError(f"SRS0 address is older than {MAX_AGE_DAYS} days")
        return f"{orig}@{host}"
    if tag == "SRS1=":
        parts = local[5:].split("=", 2)
        if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].startswith("="):
            raise SRSError("malformed SRS1 address")
        given, first, opaque = parts
        if not _same(given, _hash(secret, first, opaque)):
            raise SRSError("SRS1 hash does not match (not made here, or altered)")
        return f"SRS0{opaque}@{first}"
    raise SRSError("not an SRS address")


__all__ = ["MAX_AGE_DAYS", "SRSError", "forward", "is_srs", "reverse"]
