"""Access control: SETACL, DELETEACL, GETACL, LISTRIGHTS, MYRIGHTS (RFC 4314), the "Other Users" namespace
(RFC 2342) and the rights every other command checks (RFC 4314 §4).

Theory of operation
-------------------
A user's own mailboxes keep their names. Another user's mailbox is named `Other Users/<owner address>/<name>`
(`OTHER_PREFIX`; NAMESPACE announces it). `resolve(s, name)` turns any stored-form name into a `Target`: the
store's mailbox record, the session user's rights on it and the session's name for it. A name in the other
users' namespace is resolved only by `Store.get_shared_mailbox`, which answers only when the mailbox's ACL gives
the user a right (store invariant 6); the user's own mailboxes carry every right (`RIGHTS`).

A domain's shared folders (RFC 2342 §5's shared namespace, `SHARED_PREFIX`) are named `Shared Folders/<name>`:
mailboxes of the domain's shared-folders owner (`Store.shared_folders_owner`, made by `postroom mailbox share`),
which no one logs in as; `resolve` finds them only by `Store.get_shared_folder`, through the same ACL check, and
every right on them is one their ACL grants (GETACL shows no owner entry). `shared_name` gives either namespace's
name, so LIST, NOTIFY and RENAME of a selected mailbox name them alike. Personal mailboxes cannot be made in
either namespace; CREATE and RENAME into "Shared Folders" are refused (the admin makes shared folders).

Each command asks `need(target, rights, what)` for what RFC 4314 §4's table says it needs: a mailbox the user
has no right on, or only rights that do not reveal it (`VISIBLE`: l r i k x a, the table's "any" column), is
answered exactly like one that does not exist (§6: the ACL commands, and every other, must not reveal what the
user may not see); one the user can see but lacks the right for is `NO [NOPERM]` (RFC 5530 §3).

Rights map to the letters of RFC 4314 §2.1. The obsolete "c" and "d" (§2.1.1) are accepted by SETACL as "k" and
as "x", "t" and "e" (the second of the two splits §2.1.1 allows), and are added to every rights string this
server sends (GETACL, MYRIGHTS, LISTRIGHTS, LIST RETURN (MYRIGHTS)) whenever one of their members is there, as
§2.1.1 asks for RFC 2086 clients. Negative rights (`-identifier`, §2) are supported; `anyone` means every user of
the owner's domain. Identifiers are the addresses of users of the owner's domain; the owner's own entry is
implicit (every right) and cannot be changed.

A selected mailbox of another user (`Selected.rights` not None): SELECT needs "r"; the mailbox is READ-WRITE
only with one of "s", "w", "t", "e" (the rights that change it in the selected state), and never claims the
owner's \\Recent. The session watches the mailbox on its change feed (store/hub.py), so the owner's changes to it
reach the session, and no other change of the owner. Before every command (`guard`), and when a MAILBOX_ACL
change of the mailbox arrives (IDLE included: `refresh`), the rights are read again. Once "r" is gone the
session stops watching, says `* NO [NOPERM]` once, and every Selected-state command but CLOSE and UNSELECT
answers NO [NOPERM] until another mailbox is selected (RFC 4314 leaves servers free not to re-check "r" at all;
issue 14 asks that a revocation take effect in open sessions).

Invariants
1. No store call receives the id of another user's mailbox that did not come from `resolve` (or the store's ACL
   listing) in the same command, after `need` checked the rights the command needs.
2. A reply never tells apart "does not exist" from "exists, but you may not see it" for a mailbox without a
   VISIBLE right.
3. A session on another user's mailbox receives that mailbox's changes only while it has "r" on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from postroom.store import names
from postroom.store.api import ANYONE, RIGHTS, Invalid, Mailbox

from . import encoder
from . import parser as P
from .arguments import stored_name
from .errors import Bad, No, Result
from .session import Session
from .state import ONLY_SELECTED
from .syntax import ATOM_CHARS

if TYPE_CHECKING:
    from postroom.store.api import User

OTHER = "Other Users"  # RFC 2342 §5: the other users' namespace, "Other Users/<address>/<mailbox>"
OTHER_PREFIX = OTHER + "/"
SHARED = "Shared Folders"  # RFC 2342 §5: the shared namespace, "Shared Folders/<mailbox>" of the user's domain
SHARED_PREFIX = SHARED + "/"
VISIBLE = frozenset("lrikxa")  # RFC 4314 §4 ("any" column) and §6: rights that let the user know it exists
WRITE_RIGHTS = frozenset("swte")  # RFC 4314 §4: rights that change a selected mailbox; none: READ-ONLY
_OBSOLETE = {"c": "k", "d": "xte"}  # RFC 4314 §2.1.1: the members this server gives "c" and "d"


@dataclass(frozen=True, slots=True)
class Target:
    """A mailbox name resolved for one session (module doc)."""

    mailbox: Mailbox  # the store's record (its `name` is the owner's name for it)
    rights: str  # the session user's rights, letters of RIGHTS
    owner: str  # the owner's address
    name: str  # the session's name for it: the owner's name, or OTHER_PREFIX + owner + "/" + name
    shared: bool  # another user's mailbox


def split_other(name: str) -> tuple[str, str] | None:
    """A name in the other users' namespace as (owner, that user's mailbox name), the latter "" for the owner's
    level itself; None for a name outside it. The owner ends at the first "/" after its "@"."""
    if not name.startswith(OTHER_PREFIX):
        return None
    rest = name[len(OTHER_PREFIX):]
    slash = rest.find("/", max(rest.find("@"), 0))
    return (rest, "") if slash < 0 else (rest[:slash], rest[slash + 1:])


def in_other_namespace(name: str) -> bool:
    """Whether a name belongs to the other users' or the shared namespace (personal mailboxes may not be made
    there)."""
    return name in (OTHER, SHARED) or name.startswith((OTHER_PREFIX, SHARED_PREFIX))


def shared_name(owner: str, name: str) -> str:
    """The session's name for the mailbox `name` of `owner`, another user or the domain's shared-folders owner."""
    if names.is_shared_owner(owner):
        return SHARED_PREFIX + name
    return f"{OTHER_PREFIX}{owner}/{name}"


_ATOM = frozenset(ATOM_CHARS)


def astring(value: str) -> bytes:
    """An identifier or rights string as RFC 4314 §7 sends it (astring): an atom when it can be one, as the RFC's
    examples (some clients read only those), else a string."""
    b = value.encode("utf-8", "surrogateescape")
    return b if b and _ATOM.issuperset(b) else encoder.string(b)


def _user(s: Session) -> User:
    assert s.user is not None
    return s.user


async def resolve(s: Session, name: str) -> Target | None:
    """The mailbox a stored-form name (`arguments.stored_name`) names for this session, or None if there is none
    the user has any right on (invariant 1)."""
    user = _user(s)
    if name.startswith(SHARED_PREFIX):
        found = await s.store.get_shared_folder(user.id, name[len(SHARED_PREFIX):])
        if found is None:
            return None
        return Target(found.mailbox, found.rights, found.owner, SHARED_PREFIX + found.mailbox.name, True)
    other = split_other(name)
    if other is None:
        if name in (OTHER, SHARED):
            return None
        mbox = await s.store.get_mailbox(user.id, name)
        return None if mbox is None else Target(mbox, RIGHTS, user.address, mbox.name, False)
    owner, folder = other
    if not folder:
        return None
    shared = await s.store.get_shared_mailbox(user.id, owner, folder)
    if shared is None:
        return None
    return Target(shared.mailbox, shared.rights, shared.owner, shared_name(shared.owner, shared.mailbox.name), True)


async def owner_id(s: Session, owner: str, what: str) -> int:
    """The id of a user of the session user's domain named in the other users' namespace (CREATE below one of
    their mailboxes); NO [NOPERM] otherwise, the answer a parent without "k" gets too (invariant 2)."""
    try:
        user = await s.store.get_user(owner)
    except Invalid:
        user = None
    me = _user(s)
    if user is None or user.id == me.id or user.domain_id != me.domain_id:
        raise No(f"{what} cannot make a mailbox there", "NOPERM")
    return user.id


def need(target: Target | None, rights: str, what: str, missing: str = "NONEXISTENT") -> Target:
    """`target` if the user has every one of `rights` on it; else `No`: as for a missing mailbox (code
    `missing`) when the user may not know it exists, NOPERM otherwise (invariant 2)."""
    if target is None or not VISIBLE.intersection(target.rights):
        raise No("Mailbox does not exist", missing)
    lacking = [r for r in rights if r not in target.rights]
    if lacking:
        raise No(f"{what} needs the right(s) {''.join(lacking)} on this mailbox", "NOPERM")  # RFC 4314 §4
    return target


def writable(rights: str) -> bool:
    """SELECT gives READ-WRITE only with a right that changes the mailbox (module doc)."""
    return bool(WRITE_RIGHTS.intersection(rights))


def with_obsolete(rights: str) -> str:
    """RFC 4314 §2.1.1: "c" and "d" added after the rights when one of their members is there."""
    out = rights
    for letter, members in _OBSOLETE.items():
        if any(m in rights for m in members):
            out += letter
    return out


# ---- the selected mailbox of another user (module doc; state.py invariant 6)

async def refresh(s: Session) -> None:
    """Read the rights on the selected mailbox of another user again; on losing "r", stop (invariant 3)."""
    sel = s.sel
    if sel is None or sel.rights is None:
        return
    sel.acl_changed = False
    rights = await s.store.my_rights(_user(s).id, sel.id)
    if "r" not in sel.rights:
        rights = rights.replace("r", "")  # a revocation lasts until the next SELECT: changes were missed
    elif "r" not in rights:
        if s.sub is not None:
            s.sub.watch(None)
        sel.pending.clear()
        s.write(b"* NO [NOPERM] Access to the selected mailbox was revoked\r\n")
    sel.rights = rights


async def guard(s: Session, cmd: P.Command, states: frozenset[str]) -> None:
    """Before a command while another user's mailbox is selected (session.py): rights read again; a command of
    the Selected state only needs "r" (CLOSE and UNSELECT excepted)."""
    await refresh(s)
    sel = s.sel
    if sel is not None and not sel.may("r") and states == ONLY_SELECTED and cmd.name not in ("CLOSE", "UNSELECT"):
        raise No("Access to the selected mailbox was revoked", "NOPERM")


# ---- SETACL / DELETEACL / GETACL / LISTRIGHTS / MYRIGHTS (RFC 4314 §3)

def _args(cmd: P.Command) -> P.AclArgs:
    assert isinstance(cmd.args, P.AclArgs)
    return cmd.args


async def _target(s: Session, cmd: P.Command, rights: str) -> Target:

    return need(await resolve(s, stored_name(s, _args(cmd).mailbox)), rights, cmd.name)


def _identifier_key(identifier: str) -> str:
    """An identifier as the store names it: "anyone", or a user's lower-case address; "-" kept in front."""
    negative = identifier.startswith("-")
    ident = identifier[1:] if negative else identifier
    try:
        key = ANYONE if ident.lower() == ANYONE else names.address(ident)
    except Invalid:
        raise No(f"Not a user of this domain: {ident[:100]}", "CANNOT") from None
    return ("-" if negative else "") + key


def _rights_letters(text: str) -> str:
    """The rights of a SETACL argument, "c" and "d" expanded (RFC 4314 §2.1.1); BAD for any other letter
    (§3.1: an unrecognised right MUST be BAD, and uppercase rights are not allowed)."""
    out = ""
    for ch in text:
        if ch in _OBSOLETE:
            out += _OBSOLETE[ch]
        elif ch in RIGHTS:
            out += ch
        else:
            raise Bad(f"Unknown right {ch!r}" + (" (uppercase rights are not allowed)" if ch.isupper() else ""))
    return "".join(r for r in RIGHTS if r in out)


def _is_owner(target: Target, key: str) -> bool:
    return key.lstrip("-") == target.owner


async def setacl(s: Session, cmd: P.Command) -> Result:
    a = _args(cmd)
    mod = a.rights
    sign = mod[:1] if mod[:1] in ("+", "-") else ""
    letters = _rights_letters(mod[len(sign):])  # BAD before any lookup: a syntax matter
    target = await _target(s, cmd, "a")
    key = _identifier_key(a.identifier)
    if _is_owner(target, key):
        raise No("The owner of a mailbox always has every right", "CANNOT")
    # RFC 4314 §3.1: "+" adds to the identifier's rights, "-" removes from them; the store reads and writes the
    # entry in one transaction (store/sqlite/acl.py invariant 5). Invalid (another domain, no such user): CANNOT.
    await s.store.set_acl(target.mailbox.id, key, letters, modify=sign)
    return "", "SETACL completed"


async def deleteacl(s: Session, cmd: P.Command) -> Result:
    target = await _target(s, cmd, "a")
    key = _identifier_key(_args(cmd).identifier)
    if _is_owner(target, key):
        raise No("The owner of a mailbox always has every right", "CANNOT")
    await s.store.set_acl(target.mailbox.id, key, "")
    return "", "DELETEACL completed"


async def getacl(s: Session, cmd: P.Command) -> Result:
    target = await _target(s, cmd, "a")
    entries = [] if names.is_shared_owner(target.owner) else [(target.owner, RIGHTS)]  # a shared folder: no owner
    entries += [(e.identifier, e.rights) for e in await s.store.get_acl(target.mailbox.id)]
    # RFC 4314 §3.6: * ACL mailbox *(SP identifier SP rights); the owner's implicit entry first.
    s.write(b"* ACL " + encoder.mailbox(target.name, s.rev2)
            + b"".join(b" " + astring(i) + b" " + astring(with_obsolete(r)) for i, r in entries)
            + b"\r\n")
    return "", "GETACL completed"


async def listrights(s: Session, cmd: P.Command) -> Result:
    target = await _target(s, cmd, "a")
    identifier = _args(cmd).identifier
    key = _identifier_key(identifier)
    if _is_owner(target, key):
        groups = [with_obsolete(RIGHTS)]  # RFC 4314 §3.7: always granted, nothing else to grant
    elif await _grantable(s, key, target.owner):
        groups = ["", *RIGHTS, *_OBSOLETE]  # none required, each right on its own (none are tied)
    else:
        groups = [""]  # nothing can be granted to a user of another domain or to no user
    # §3.4: the identifier in the form the client gave it.
    s.write(b"* LISTRIGHTS " + encoder.mailbox(target.name, s.rev2) + b" " + astring(identifier)
            + b"".join(b" " + astring(g) for g in groups) + b"\r\n")
    return "", "LISTRIGHTS completed"


async def _grantable(s: Session, key: str, owner: str) -> bool:
    address = key.lstrip("-")
    if address == ANYONE:
        return True
    user = await s.store.get_user(address)
    return user is not None and names.domain_of(user.address) == names.domain_of(owner)


async def myrights(s: Session, cmd: P.Command) -> Result:
    target = await _target(s, cmd, "")  # RFC 4314 §4: any right that lets the user see the mailbox
    s.write(b"* MYRIGHTS " + encoder.mailbox(target.name, s.rev2) + b" "
            + astring(with_obsolete(target.rights)) + b"\r\n")
    return "", "MYRIGHTS completed"
