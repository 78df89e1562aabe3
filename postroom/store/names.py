"""Name rules every store engine applies the same way: domains, addresses, mailbox names, keywords.

The engines call these before touching the database, so a bad name is `Invalid` whatever the engine, and the
conformance suite can check the rules once.

Invariants:
1. Domains and addresses come out lower-case and stripped (api.py: names are case-insensitive where mail is).
2. A mailbox name comes out with INBOX spelled "INBOX" whatever case it was given in, also as the first component
   of a child ("inbox/x" -> "INBOX/x"), because RFC 9051 §5.1 makes INBOX case-insensitive and a child must
   name the same parent.
3. A mailbox name has no empty component, no leading or trailing separator and no control characters.
4. Keywords are IMAP atoms (RFC 9051 §9 `flag-keyword`); they never start with a backslash (system flags do).
"""

from __future__ import annotations

from collections.abc import Iterable

from postroom.store.api import HIERARCHY_SEPARATOR, Flag, Invalid

ALL_FLAGS = int(Flag.SEEN | Flag.ANSWERED | Flag.FLAGGED | Flag.DELETED | Flag.DRAFT)

# RFC 9051 §9: atom-specials are ( ) { SP CTL % * " \ ] ; a keyword is an atom.
_ATOM_SPECIALS = frozenset('(){ %*"\\]')
MAX_MAILBOX_NAME = 1000
MAX_KEYWORD = 200
MAX_SUBSCRIPTIONS = 10_000  # names one user may subscribe (api invariant 8): LIST (SUBSCRIBED) reads them all
MAX_MAILBOX_KEYWORDS = 1000  # keywords one mailbox may have had (api invariant 9): every SELECT sends them all


def domain(name: str) -> str:
    d = name.strip().lower().rstrip(".")
    if not d or "@" in d or any(c.isspace() or ord(c) < 32 for c in d) or d.startswith("."):
        raise Invalid(f"bad domain name: {name!r}")
    return d


def address(addr: str) -> str:
    """'User@Example.ORG' -> 'user@example.org'. Invalid unless it is local@domain."""
    a = addr.strip().lower()
    local, at, dom = a.rpartition("@")
    if not at or not local or any(c.isspace() or ord(c) < 32 for c in a):
        raise Invalid(f"bad address: {addr!r}")
    return f"{local}@{domain(dom)}"


def alias_source(source: str) -> str:
    """An address, or "@domain" for a catch-all."""
    s = source.strip()
    if s.startswith("@"):
        return "@" + domain(s[1:])
    return address(s)


def domain_of(addr: str) -> str:
    return addr.rpartition("@")[2]


def mailbox(name: str) -> str:
    if not name or len(name) > MAX_MAILBOX_NAME:
        raise Invalid(f"bad mailbox name: {name!r}")
    parts = name.split(HIERARCHY_SEPARATOR)
    if any(not p for p in parts) or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise Invalid(f"bad mailbox name: {name!r}")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return HIERARCHY_SEPARATOR.join(parts)


def parents(name: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b'] (outermost first)."""
    parts = name.split(HIERARCHY_SEPARATOR)
    return [HIERARCHY_SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def is_inside(name: str, ancestor: str) -> bool:
    return name.startswith(ancestor + HIERARCHY_SEPARATOR)


def flags(value: int) -> int:
    """A plain int bitmask of system flags (an `api.Flag` comes out as int, so records compare simply)."""
    value = int(value)
    if value & ~ALL_FLAGS or value < 0:
        raise Invalid(f"unknown system flag bits: {value:#x}")
    return value


def keyword(kw: str) -> str:
    if (
        not kw
        or len(kw) > MAX_KEYWORD
        or any(c in _ATOM_SPECIALS or ord(c) <= 32 or ord(c) == 127 for c in kw)
    ):
        raise Invalid(f"bad keyword: {kw!r}")
    return kw


def keywords(kws: Iterable[str]) -> dict[str, str]:
    """Validated keywords, de-duplicated case-insensitively: lower-case -> spelling as first given."""
    out: dict[str, str] = {}
    for kw in kws:
        out.setdefault(keyword(kw).lower(), kw)
    return out
