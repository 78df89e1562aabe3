"""GETMETADATA and SETMETADATA (RFC 5464: METADATA and METADATA-SERVER).

Theory of operation
-------------------
Entries are named like "/private/comment" or "/shared/comment" and live on a mailbox or, for the mailbox name "",
on the server. The store keeps them per user (`Store.get_metadata` / `set_metadata`, schema invariant 16):
"/private" entries are the user's own; "/shared" entries of a mailbox are kept with its owner, so everyone who
may use the mailbox sees the same ones (store/sqlite/metadata.py); "/shared" entries of the server are kept per
user too, the
server as this user sees it (as Dovecot keeps them), so one user cannot write what another reads. Deleting a
mailbox deletes its entries.

Another user's mailbox (ACL, RFC 4314) is named and resolved as every command does (acl.py): RFC 5464 §3.3 ties
the entries to the mailbox's rights, so GETMETADATA needs "r" (both kinds of entries), SETMETADATA "r" and, for
any "/shared" entry, "w"; "/private" entries stay the asking user's own. A mailbox the user may not see is
answered as one that does not exist, one seen without the right `NO [NOPERM]` (acl.py invariant 2); the store
checks the rights again in its transaction.

Two entries are the server's own and read-only (SETMETADATA of them is `NO [CANNOT]`):
* "/shared/admin" on the server (RFC 5464 §3.2.1.1): a URI for the administrator, `mailto:postmaster@` the user's
  domain (every local domain has a postmaster, delivery/router.py);
* "/private/specialuse" on a mailbox (RFC 6154 §4): its special-use attribute, if it has one.

Limits (RFC 5464 §4.3): a value is at most `names.MAX_METADATA_VALUE` octets (`NO [METADATA MAXSIZE n]`), a user
has at most `names.MAX_METADATA_ENTRIES` entries (`NO [METADATA TOOMANY]`), a command names at most
`parser.MAX_METADATA_ITEMS` entries. Private entries are supported, so `[METADATA NOPRIVATE]` is never sent.
Unsolicited METADATA responses (§4.4.2) are sent to sessions that ask NOTIFY for MailboxMetadataChange or
ServerMetadataChange (RFC 5465 §5.6, §5.7: imap/notify.py), from the change records SETMETADATA publishes.

Invariants
1. Every entry name passes `names.metadata_entry` before any store call (BAD otherwise); a mailbox name passes
   `arguments.stored_name` (mailboxes invariant 5).
2. A SETMETADATA changes every entry it names or none (one store transaction).
3. A GETMETADATA answers each entry once, sorted by name, and writes item by item (flushing), so its memory is
   one value at a time beyond what the store returned (at most MAX_METADATA_ENTRIES x MAX_METADATA_VALUE).
"""

from __future__ import annotations

import dataclasses

from postroom.mime.imap import istring
from postroom.store import names
from postroom.store.api import Invalid, Mailbox, MetadataTooMany

from . import acl, encoder
from . import parser as P
from .arguments import stored_name, wire_name
from .errors import Bad, No, Result
from .session import Session
from .syntax import ATOM_CHARS

ADMIN = "/shared/admin"
SPECIALUSE = "/private/specialuse"
_READ_ONLY_SERVER = {ADMIN}
_READ_ONLY_MAILBOX = {SPECIALUSE}


async def _target(s: Session, name: str, rights: str, what: str) -> tuple[int, Mailbox | None]:
    """(store mailbox id, mailbox under the session's name for it) for a command's mailbox argument; (0, None)
    for the server (""). Another user's mailbox needs `rights` (module doc; acl.need's answers)."""
    if name == "":
        return 0, None
    target = acl.need(await acl.resolve(s, stored_name(s, name)), rights, what)
    return target.mailbox.id, dataclasses.replace(target.mailbox, name=target.name)


def _user_id(s: Session) -> int:
    assert s.user is not None
    return s.user.id


def _entry(name: str, prefix_ok: bool = False) -> str:
    try:
        return names.metadata_entry(name, prefix_ok=prefix_ok)
    except Invalid:
        raise Bad(f"Invalid METADATA entry name {name[:60]!r}") from None  # invariant 1


def _computed(s: Session, mbox: Mailbox | None) -> dict[str, bytes]:
    """The read-only entries of the server or of `mbox` (module doc)."""
    if mbox is None:
        assert s.user is not None
        return {ADMIN: b"mailto:postmaster@" + s.user.address.rpartition("@")[2].encode("utf-8")}
    return {SPECIALUSE: mbox.special_use.encode()} if mbox.special_use else {}


def _under(name: str, wanted: str, depth: int) -> bool:
    """Whether `name` is asked for by `wanted` with `depth` (RFC 5464 §4.2.2)."""
    if name == wanted:
        return True
    if depth == 0 or not name.startswith(wanted + "/"):
        return False
    return depth == -1 or "/" not in name[len(wanted) + 1:]


def entry_name(name: str) -> bytes:
    """An entry name as an atom when it can be one (as RFC 5464's examples write them), else a string."""
    b = name.encode("ascii")  # names.metadata_entry: printable ASCII
    return b if all(ch in ATOM_CHARS for ch in b) else istring(b)


def _value(value: bytes | None) -> bytes:
    if value is not None and b"\x00" in value:
        return b"~{%d}\r\n" % len(value) + value  # RFC 5464 §5: value = nstring / literal8
    return encoder.string(value)  # NIL, quoted, or a literal when long or 8-bit


async def getmetadata(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.GetMetadata)
    wanted = sorted({_entry(e, prefix_ok=True) for e in a.entries})
    mailbox_id, mbox = await _target(s, a.mailbox, "r", "GETMETADATA")  # RFC 5464 §3.3
    found = dict(await s.store.get_metadata(_user_id(s), mailbox_id, wanted, a.depth))
    for name, fixed in _computed(s, mbox).items():
        if any(_under(name, w, a.depth) for w in wanted):
            found[name] = fixed
    answer: dict[str, bytes | None] = dict(found)
    if a.depth == 0:  # an entry asked for by name that has no value is answered NIL (as Dovecot does); with a
        for w in wanted:  # DEPTH the name is a tree to list, and a bare prefix is never an entry
            if w not in answer and w.count("/") > 1:
                answer[w] = None
    longest = 0
    items: list[tuple[str, bytes | None]] = []
    for name in sorted(answer):
        value: bytes | None = answer[name]
        if a.maxsize is not None and value is not None and len(value) > a.maxsize:
            longest = max(longest, len(value))  # RFC 5464 §4.2.1: left out, and the size said in LONGENTRIES
            continue
        items.append((name, value))
    if items:
        mailbox = b'""' if mbox is None else wire_name(s, mbox.name)
        s.write(b"* METADATA " + mailbox + b" (")
        sep = b""
        for name, item in items:  # invariant 3
            s.write(sep, entry_name(name), b" ", _value(item))
            sep = b" "
            await s.maybe_flush()
        s.write(b")\r\n")
    if longest:
        return f"METADATA LONGENTRIES {longest}", "GETMETADATA completed"
    return "", "GETMETADATA completed"


async def setmetadata(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.SetMetadata)
    entries = [(_entry(name), value) for name, value in a.entries]
    # RFC 5464 §3.3: "/shared" entries of a mailbox need write access ("w"), "/private" ones are the user's own
    needed = "rw" if any(name.startswith("/shared") for name, _ in entries) else "r"
    mailbox_id, mbox = await _target(s, a.mailbox, needed, "SETMETADATA")
    read_only = _READ_ONLY_SERVER if mbox is None else _READ_ONLY_MAILBOX
    for name, value in entries:
        if name in read_only:
            raise No(f"{name} is set by the server", "CANNOT")
        if value is not None and len(value) > names.MAX_METADATA_VALUE:
            raise No("Value too large", f"METADATA MAXSIZE {names.MAX_METADATA_VALUE}")  # RFC 5464 §4.3
    try:
        await s.store.set_metadata(_user_id(s), mailbox_id, entries)  # invariant 2
    except MetadataTooMany:
        raise No(f"At most {names.MAX_METADATA_ENTRIES} entries", "METADATA TOOMANY") from None  # RFC 5464 §4.3
    return "", "SETMETADATA completed"
