"""RFC 5322 address lists read the way IMAP ENVELOPE needs them (RFC 9051 §7.5.2, RFC 3501 §7.4.2).

Theory of operation
-------------------
The raw field value (bytes, decoded with surrogateescape so 8-bit survives) is cut into lexical tokens: atoms
(RFC 5322 §3.2.3, taken liberally: any run of non-special, non-blank characters), quoted strings (unquoted,
escapes removed), domain literals, comments (remembered, not returned) and the specials `< > @ , ; : .`.
The token stream is then read as a list of mailboxes and groups:

* `display-name <[@route,@route:]local@domain>` gives (name, route, local, domain);
* a bare `local@domain (comment)` uses the comment as the name, as Dovecot and UW-IMAP do (with angle
  brackets a comment is only a comment);
* empty list elements (`a@b,,c@d`, RFC 5322 §4.4 obs-addr-list) denote nothing and are skipped;
* `group: a, b;` gives the group start (NIL NIL "group" NIL), its members and the end (NIL NIL NIL NIL),
  RFC 9051 §7.5.2.

Encoded words (RFC 2047) are left encoded: the RFCs require ENVELOPE strings to be the header's own text.

Invariants:
1. `parse_address_list` never raises; text that is no address is skipped.
2. Every group start is matched by a group end, even when the `;` is missing.
3. A mailbox without a domain gets host `MISSING_DOMAIN` (IMAP reserves a NIL host for group syntax) and one
   without a local part `MISSING_MAILBOX`, as Dovecot does.
4. Work is linear in the field's length: no step rescans what was read (a field of 8,000 atoms, `<>` and 8,000
   colons once took seconds, on the event loop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postroom.mime.headers import read_quoted, to_str

MAX_SENDER_FIELD = 8 * 1024  # bytes of a From or Sender value that a sender check reads (see `sender_addresses`)
MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"


@dataclass(frozen=True, slots=True)
class Address:
    """One ENVELOPE address: (name adl mailbox host); None is NIL. A group start has host None and the group
    name as mailbox; a group end has all four None."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


_SPECIALS = "<>@,;:."
_LOCAL_KINDS = frozenset(("atom", "qs", ".", "lit", "@"))  # tokens kept in a local part, and in a domain:
_DOMAIN_KINDS = frozenset(("atom", ".", "lit", "qs"))
_ATOM = re.compile(r'[^ \t\r\n()"\[\]<>@,;:.\\]+')  # what `_tokens` reads as one atom


def _tokens(s: str) -> list[tuple[str, str]]:
    """(kind, text) with kind in: 'atom', 'qs', 'lit', 'comment', or a special character itself."""
    out: list[tuple[str, str]] = []
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            j = i
            buf: list[str] = []
            while j < n:
                ch = s[j]
                if ch == "\\" and j + 1 < n:
                    buf.append(s[j + 1])
                    j += 2
                    continue
                if ch == "(":
                    depth += 1
                    if depth > 1:
                        buf.append(ch)
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        j += 1
                        break
                    buf.append(ch)
                elif ch not in "\r\n":
                    buf.append(ch)
                j += 1
            out.append(("comment", "".join(buf).strip()))
            i = j
        elif c == '"':
            text, i = read_quoted(s, i)
            out.append(("qs", text))
        elif c == "[":
            j = s.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("lit", s[i:j]))
            i = j
        elif c in _SPECIALS:
            out.append((c, c))
            i += 1
        elif c in ")]\\":
            i += 1  # stray closer: ignore
        else:
            m = _ATOM.match(s, i)  # c is an atom character, so the match is not empty
            assert m is not None
            out.append(("atom", m.group()))
            i = m.end()
    return out


def _phrase(tokens: list[tuple[str, str]]) -> str | None:
    words: list[str] = []
    for kind, text in tokens:
        if kind in ("atom", "qs", "lit"):
            words.append(text)
        elif kind == ".":
            # obs-phrase allows '.': keep it glued to the previous word ("J. Smith")
            if words:
                words[-1] += "."
            else:
                words.append(".")
    name = " ".join(words)
    return name or None


def _addr_spec(tokens: list[tuple[str, str]]) -> tuple[str, str]:
    """local@domain from tokens (comments already removed); missing parts become the MISSING_* names."""
    at = -1
    for idx in range(len(tokens) - 1, -1, -1):
        if tokens[idx][0] == "@":
            at = idx
            break
    local_toks = tokens if at < 0 else tokens[:at]
    domain_toks = [] if at < 0 else tokens[at + 1 :]
    local = "".join([t for k, t in local_toks if k in _LOCAL_KINDS])
    domain = "".join([t for k, t in domain_toks if k in _DOMAIN_KINDS])
    return local or MISSING_MAILBOX, domain or MISSING_DOMAIN


def _mailbox(tokens: list[tuple[str, str]]) -> Address | None:
    comments: list[str] = []
    toks: list[tuple[str, str]] = []
    lt = -1  # where the first "<" is in toks
    for tok in tokens:
        kind = tok[0]
        if kind == "comment":
            comments.append(tok[1])
            continue
        if kind == "<" and lt < 0:
            lt = len(toks)
        toks.append(tok)
    if not toks:
        return None
    if lt >= 0:
        gt = next((i for i in range(lt + 1, len(toks)) if toks[i][0] == ">"), len(toks))
        name = _phrase(toks[:lt])
        inner = toks[lt + 1 : gt]
        if not inner:
            # `<>` (the null reverse path) or `Name <>`: no address at all
            if name is None:
                return None
            return Address(name, None, MISSING_MAILBOX, MISSING_DOMAIN)
        adl = None
        colon = next((i for i, (k, _) in enumerate(inner) if k == ":"), -1) if inner[0][0] == "@" else -1
        if colon >= 0:
            adl = "".join(t for _, t in inner[:colon]) or None
            inner = inner[colon + 1 :]
        local, domain = _addr_spec(inner)
        return Address(name, adl, local, domain)
    local, domain = _addr_spec(toks)
    name = comments[-1] if comments and comments[-1] else None
    if local == MISSING_MAILBOX and domain == MISSING_DOMAIN:
        return None
    return Address(name, None, local, domain)


def parse_address_list(value: bytes) -> list[Address]:
    """All addresses (and group markers) in one address-list field value."""
    try:
        toks = _tokens(to_str(value))
    except Exception:  # noqa: BLE001 - belt and braces: the tokenizer is total, but received mail must not raise
        return []
    out: list[Address] = []
    item: list[tuple[str, str]] = []
    item_angled = False  # `item` holds a "<" (invariant 4: a flag, not a scan of `item` per colon)
    angle = 0
    in_group = False
    for tok in toks:
        kind = tok[0]
        if kind == "<":
            angle += 1
        elif kind == ">":
            angle = max(0, angle - 1)
        if angle == 0 and kind in (",", ";", ":"):
            if kind == ":" and not in_group and not item_angled:
                out.append(Address(None, None, _phrase(item) or "", None))
                in_group = True
                item = []
                continue
            if kind == ":":
                item.append(tok)  # a stray colon inside a group: keep it as text
                continue
            addr = _mailbox(item)
            if addr is not None:
                out.append(addr)
            item = []
            item_angled = False
            if kind == ";" and in_group:
                out.append(Address(None, None, None, None))
                in_group = False
            continue
        item.append(tok)
        item_angled = item_angled or kind == "<"
    addr = _mailbox(item)
    if addr is not None:
        out.append(addr)
    if in_group:
        out.append(Address(None, None, None, None))
    return out


class Parsed:
    """`parse_address_list` of the field values of one message, each value parsed once however many views of
    the header read it (ENVELOPE and the SORT keys: `mime.meta`). The lists it returns are shared: read them,
    never change them. Holds what it parsed until it is dropped (one message's header)."""

    __slots__ = ("_lists",)

    def __init__(self) -> None:
        self._lists: dict[bytes, list[Address]] = {}

    def of(self, value: bytes) -> list[Address]:
        """`parse_address_list(value)`, the same list for the same value. `value` may be a slice of a bytearray
        (the metadata worker reads a staged file into one, metaworker.py): it is keyed by its bytes."""
        key = value if type(value) is bytes else bytes(value)
        found = self._lists.get(key)
        if found is None:
            found = self._lists[key] = parse_address_list(value)
        return found


def sender_addresses(value: bytes) -> list[Address] | None:
    """The mailboxes of a From or Sender value for a check that decides trust (submission's sender check, DKIM
    alignment), or None when the value is longer than `MAX_SENDER_FIELD`: such a value (about a hundred
    addresses) is no sender anyone writes, and these checks run on the event loop, so their work is capped
    (issue 11 rule 1). Callers treat None as "cannot be checked" and refuse or do not sign."""
    if len(value) > MAX_SENDER_FIELD or _ambiguous(value):
        return None
    return [a for a in parse_address_list(value) if a.host is not None]


def _ambiguous(value: bytes) -> bool:
    """Does a list element carry more than its one angle-address (`<alice@x> <bob@y>`, `<alice@x> bob@y`)?
    RFC 5322 §3.4 allows one; parsers differ on which address such a mailbox is (Python's `email` reads both),
    so a check that trusts one reading must not pass it (attack on issue 11). Linear, one token pass."""
    depth = 0
    closed = False  # this element's angle-address has ended
    for kind, _ in _tokens(to_str(value)):
        if kind == "comment":
            continue
        if depth == 0 and kind in (",", ";", ":"):
            closed = False
            continue
        if depth == 0 and closed:
            return True
        if kind == "<":
            depth += 1
        elif kind == ">" and depth > 0:
            depth -= 1
            closed = depth == 0
    return False
