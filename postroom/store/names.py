"""Name rules every store engine applies the same way: domains, addresses, mailbox names, keywords.

The engines call these before touching the database, so a bad name is `Invalid` whatever the engine, and the
conformance suite can check the rules once.

Invariants:
1. Domains come out lower-case and stripped. `address` (the lookup key of users, alias sources and lists)
   comes out lower-case too; `address_as_given` keeps the local part's case, for addresses that are stored to
   be sent onward (alias targets, list owners and members): RFC 5321 §2.4 lets only the receiving host decide
   that `Big.Member` and `big.member` are one mailbox. `address(x) == address_as_given(x).lower()`.
2. A mailbox name comes out with INBOX spelled "INBOX" whatever case it was given in, also as the first component
   of a child ("inbox/x" -> "INBOX/x"), because RFC 9051 §5.1 makes INBOX case-insensitive and a child must
   name the same parent.
3. A mailbox name has no empty component, no leading or trailing separator and no control characters.
4. Keywords are IMAP atoms (RFC 9051 §9 `flag-keyword`); they never start with a backslash (system flags do).
5. An address has one spelling, the one `smtp.syntax.parse_path` produces from the wire: a local part that
   can be a Dot-string is never quoted; one that cannot is quoted with only the escapes it needs.
6. The owner of a domain's shared folders (`shared_owner`) has an address `address` refuses (an unquoted local
   part with a space), so no lookup by address (login, delivery, `user add`, `alias add`, an ACL identifier,
   "Other Users/<owner>") ever finds it, and no real address can ever be the same string.
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
MAX_METADATA_ENTRIES = 500  # IMAP METADATA entries one user may have, server and mailboxes together (RFC 5464)
MAX_METADATA_VALUE = 16 * 1024  # octets of one METADATA value (RFC 5464 §4.3 MAXSIZE); fits in one IMAP command
MAX_METADATA_NAME = 256  # characters of one METADATA entry name
MAX_MAILBOX_KEYWORDS = 1000  # keywords one mailbox may have had (api invariant 9): every SELECT sends them all
MAX_ACL_ENTRIES = 100  # entries of one mailbox's ACL (api invariant 11): GETACL lists them all
MAX_SHARED_LISTED = 10_000  # other users' mailboxes one LIST shows (api invariant 6)
MAX_SENDER_RULES = 1000  # allow/block rules of one user or domain (api invariant 13): every RCPT reads them all
SHARED_OWNER_LOCAL = "shared folders"  # the local part of a domain's shared-folders owner (invariant 6)


def domain(name: str) -> str:
    d = name.strip().lower().rstrip(".")
    if not d or "@" in d or any(c.isspace() or ord(c) < 32 for c in d) or d.startswith("."):
        raise Invalid(f"bad domain name: {name!r}")
    return d


# RFC 5321 §4.1.2 atext (RFC 5322 §3.2.3); RFC 6531 §3.3 adds every non-ASCII character.
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")


def _dot_string(s: str) -> bool:
    return bool(s) and all(part and all(c in _ATEXT or ord(c) >= 0x80 for c in part) for part in s.split("."))


def local_part(local: str) -> str:
    """The one spelling of a local part (invariant 5). A Quoted-string (RFC 5321 §4.1.2) is unquoted when its
    content is a Dot-string (`"john"` and `john` are the same mailbox, and §4.1.2 says the unquoted form
    SHOULD be used), else written with only the quoted-pairs it needs (`"a\\ b"` -> `"a b"`, `\\` and `"`
    escaped). Any other local part is taken as given if it has no space or control character. Invalid
    otherwise (an unterminated quote, a bad quoted-pair, a control character)."""
    if not local.startswith('"'):
        if not local or any(c.isspace() or ord(c) < 32 for c in local):
            raise Invalid(f"bad local part: {local!r}")
        return local
    out: list[str] = []
    i, n = 1, len(local)
    while True:
        if i >= n:
            raise Invalid(f"unterminated quoted local part: {local!r}")
        c = local[i]
        if c == '"':
            if i != n - 1:
                raise Invalid(f"text after the quoted local part: {local!r}")
            break
        if c == "\\":
            if i + 1 >= n or not (32 <= ord(local[i + 1]) <= 126 or ord(local[i + 1]) >= 0x80):
                raise Invalid(f"bad quoted-pair in local part: {local!r}")  # RFC 5321 §4.1.2 quoted-pairSMTP
            c = local[i + 1]
            i += 1
        elif not (32 <= ord(c) <= 126 or ord(c) >= 0x80):
            raise Invalid(f"bad character in quoted local part: {local!r}")  # qtextSMTP
        out.append(c)
        i += 1
    return quote_local("".join(out))


def quote_local(content: str) -> str:
    """The canonical local part for the mailbox name `content` (unquoted): itself if it is a Dot-string, else
    a Quoted-string escaping only backslash and DQUOTE (RFC 5321 §4.1.2)."""
    if _dot_string(content):
        return content
    return '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote_local(local: str) -> str:
    """The mailbox name inside a canonical local part (`quote_local` undone): '"a b"' -> 'a b'."""
    if len(local) < 2 or not local.startswith('"') or not local.endswith('"'):
        return local
    out: list[str] = []
    i = 1
    while i < len(local) - 1:
        if local[i] == "\\" and i + 1 < len(local) - 1:
            i += 1
        out.append(local[i])
        i += 1
    return "".join(out)


def address(addr: str) -> str:
    """The lookup key of an address (invariant 1): 'User@Example.ORG' -> 'user@example.org';
    '"John Doe"@x' -> '"john doe"@x'; '"john"@x' -> 'john@x'. Local users, alias sources and lists are found
    by it, so they match whatever the case (as Postfix and Dovecot do by default). Invalid unless it is
    local@domain (the last '@' starts the domain: a quoted local part may hold '@')."""
    return address_as_given(addr).lower()


def address_as_given(addr: str) -> str:
    """An address to store and send onward: the local part keeps its case and gets its one spelling
    (invariant 5), the domain is lower-cased. 'Ext.User@Remote.TEST' -> 'Ext.User@remote.test';
    '"Quoted Name"@x' stays; '"John"@x' -> 'John@x'. RFC 5321 §2.4: a host "MUST take care to preserve the case
    of mailbox local-parts"; domains are case-insensitive. Invalid as `address`."""
    a = addr.strip()
    local, at, dom = a.rpartition("@")
    if not at or not local:
        raise Invalid(f"bad address: {addr!r}")
    return f"{local_part(local)}@{domain(dom)}"


def alias_source(source: str) -> str:
    """An address, or "@domain" for a catch-all."""
    s = source.strip()
    if s.startswith("@"):
        return "@" + domain(s[1:])
    return address(s)


def sender_pattern(pattern: str) -> str:
    """A sender allow/block pattern (api invariant 13) in its one spelling: an address ('Bob@X.example' ->
    'bob@x.example', compared by key like every address here), '@domain' (that domain only) or '@.domain' (every
    subdomain of it, not the domain itself). Invalid for anything else."""
    p = pattern.strip()
    if p.startswith("@."):
        return "@." + domain(p[2:])
    if p.startswith("@"):
        return "@" + domain(p[1:])
    return address(p)


def shared_owner(dom: str) -> str:
    """The stored address of the owner of the shared folders of `dom` (invariant 6; RFC 2342 §5 "Shared
    Folders"). Not an address: `address` refuses it."""
    return f"{SHARED_OWNER_LOCAL}@{domain(dom)}"


def is_shared_owner(addr: str) -> bool:
    """Whether a stored owner address is a domain's shared-folders owner (`shared_owner`)."""
    return addr.startswith(SHARED_OWNER_LOCAL + "@")


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


def metadata_entry(name: str, *, prefix_ok: bool = False) -> str:
    """An IMAP METADATA entry name, lower-case (RFC 5464 §3.2: case-insensitive). It starts with "/private/" or
    "/shared/" and has no "*", "%", non-ASCII or control characters, no empty component ("//") and no trailing
    "/" (RFC 5464 §3.2, §5 entry); at most `MAX_METADATA_NAME` characters. `prefix_ok` also takes the bare
    "/private" and "/shared" (what GETMETADATA may ask for with a DEPTH). Raises Invalid."""
    low = name.lower()
    ok = (
        0 < len(low) <= MAX_METADATA_NAME
        and all(0x20 < ord(c) < 0x7F and c not in "*%" for c in low)
        and (low.startswith(("/private/", "/shared/")) or (prefix_ok and low in ("/private", "/shared")))
        and "//" not in low
        and not low.endswith("/")
    )
    if not ok:
        raise Invalid(f"bad METADATA entry name: {name[:80]!r}")
    return low


def keywords(kws: Iterable[str]) -> dict[str, str]:
    """Validated keywords, de-duplicated case-insensitively: lower-case -> spelling as first given."""
    out: dict[str, str] = {}
    for kw in kws:
        out.setdefault(keyword(kw).lower(), kw)
    return out
