"""QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA, and the `[OVERQUOTA]` answer of APPEND, COPY, MOVE.

Theory of operation
-------------------
A user has one quota root, named "" (RFC 9208 §3.2: "an empty string is a valid quota root"; Gmail and most
single-root servers use it, Dovecot's default name is "User quota"), which governs every mailbox of theirs. It
exists when the user has a limit (`postroom user set ADDRESS --quota BYTES --quota-messages N`); its QUOTA
response lists the resources that have one (RFC 9208 §5.1 STORAGE: the sum of the messages' RFC822.SIZE in
units of 1024 octets, rounded down as Dovecot does for both usage and limit; §5.2 MESSAGE: the number of
messages). When the user's domain has a quota (`postroom domain set DOMAIN --quota BYTES`) there is a second
root, named after the domain, with the domain's STORAGE. Both are read from the store's counters
(`Store.get_quota`: one row, never a walk of the messages).

    C: a GETQUOTAROOT INBOX          S: * QUOTAROOT INBOX ""
                                     S: * QUOTA "" (STORAGE 10 512 MESSAGE 12 1000)
                                     S: a OK GETQUOTAROOT completed

A mailbox of another user (shared through its ACL) is governed by its owner's quota, which is not this user's
to read: GETQUOTAROOT names no root for it. SETQUOTA is answered `NO [NOPERM]` (RFC 9208 §4.1.3 needs the
QUOTASET capability, not advertised: administrators set quotas with the CLI); its arguments are still parsed,
so bad syntax is BAD. Capabilities (RFC 9208 §6): QUOTA, QUOTA=RES-STORAGE, QUOTA=RES-MESSAGE; not QUOTASET.
STATUS takes DELETED-STORAGE (RFC 9208 §4.2.2: what an EXPUNGE would free, the RFC822.SIZE of the messages
marked \\Deleted, in units of 1024 octets; imap/mailboxes.py `status_line`, counted in the store's STATUS query).

A write over a limit (APPEND, MULTIAPPEND, CATENATE, COPY, MOVE to a mailbox of another user) is refused by the
store in its transaction (`OverQuota`); the session answers `NO [OVERQUOTA]` (RFC 9208 §4.3, RFC 5530 §3) and
logs a `refused ... reason=over-quota` line. An APPEND literal that cannot fit one of the user's own mailboxes
(named on the command's first line) is refused before it is sent (`Session._over_quota_early`): no continuation,
so a large message over quota is never read. A MOVE within the user's own mailboxes never changes usage and is
never refused for quota.

Invariants
1. Every number in a QUOTA response is the store's counter or limit at one read; a root is named only when it
   has at least one resource (RFC 9208 §7 `quota-list` holds at least one).
2. No answer tells this user anything about another user's usage: GETQUOTA only knows this user's roots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.imap import encoder
from postroom.imap import parser as P
from postroom.store.api import QuotaUsage

from .arguments import stored_name
from .errors import No, Result

if TYPE_CHECKING:
    from .session import Session

USER_ROOT = ""
CAPABILITIES = ("QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE")  # RFC 9208 §6


def kib(octets: int) -> int:
    """RFC 9208 §5.1: STORAGE is counted in units of 1024 octets (rounded down, as Dovecot does)."""
    return octets // 1024


def roots(q: QuotaUsage, domain: str) -> dict[str, list[tuple[str, int, int]]]:
    """The user's quota roots and their (resource, usage, limit) triples, in the order they are reported
    (invariant 1): "" for the user's own limits, the domain's name for the domain's."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    own = []
    if q.storage_limit:
        own.append(("STORAGE", kib(q.storage), kib(q.storage_limit)))
    if q.message_limit:
        own.append(("MESSAGE", q.messages, q.message_limit))
    if own:
        out[USER_ROOT] = own
    if q.domain_storage_limit:
        out[domain] = [("STORAGE", kib(q.domain_storage), kib(q.domain_storage_limit))]
    return out


def quota_response(root: str, resources: list[tuple[str, int, int]]) -> bytes:
    """`quota_response = "QUOTA" SP quota-root-name SP quota-list` (RFC 9208 §7)."""
    listed = b" ".join(b"%s %d %d" % (name.encode(), used, limit) for name, used, limit in resources)
    return b"* QUOTA " + encoder.string(root) + b" (" + listed + b")\r\n"


async def _roots(s: Session) -> dict[str, list[tuple[str, int, int]]]:
    assert s.user is not None
    return roots(await s.store.get_quota(s.user.id), s.user.address.rpartition("@")[2])


async def getquotaroot(s: Session, cmd: P.Command) -> Result:
    """RFC 9208 §4.3: `* QUOTAROOT mailbox root...`, then `* QUOTA` for each root."""
    from .acl import need, resolve

    assert isinstance(cmd.args, P.MailboxArg)
    target = need(await resolve(s, stored_name(s, cmd.args.mailbox)), "", cmd.name)
    found = {} if target.shared else await _roots(s)  # invariant 2: the owner's quota is not ours to show
    line = b"* QUOTAROOT " + encoder.mailbox(target.name, s.rev2)
    for root in found:
        line += b" " + encoder.string(root)
    s.write(line + b"\r\n")
    for root, resources in found.items():
        s.write(quota_response(root, resources))
    return "", "GETQUOTAROOT completed"


async def getquota(s: Session, cmd: P.Command) -> Result:
    """RFC 9208 §4.2: the QUOTA response of one of the user's roots; NO [NONEXISTENT] for any other name."""
    assert isinstance(cmd.args, P.QuotaArgs)
    found = await _roots(s)
    resources = found.get(cmd.args.root)
    if resources is None:
        raise No("No such quota root", "NONEXISTENT")
    s.write(quota_response(cmd.args.root, resources))
    return "", "GETQUOTA completed"


async def setquota(s: Session, cmd: P.Command) -> Result:
    """RFC 9208 §4.1.3 (QUOTASET not advertised): quotas are the administrator's (module doc)."""
    raise No("Quotas are set by the administrator (postroom user set ADDRESS --quota BYTES)", "NOPERM")
