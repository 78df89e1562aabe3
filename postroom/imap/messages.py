"""Selected-state commands that change messages: STORE, COPY, MOVE, EXPUNGE, UID EXPUNGE, CLOSE, UNSELECT, CHECK
(RFC 9051 §6.4; UIDPLUS RFC 4315; MOVE RFC 6851).

Theory of operation
-------------------
Sequence sets are resolved against the session's view (`Selected.uids`) into UIDs (`arguments.resolve`); every
store call takes UIDs. A write returns its change records: this session reports them itself (FETCH for STORE,
EXPUNGE or VANISHED for EXPUNGE and MOVE, through `Selected.expunged`) and marks them as its own so the hub's
echo is not reported twice (`state` invariant 3). (`arguments.member`, which answers "is this UID in the set"
without listing it, serves FETCH's CHANGEDSINCE and VANISHED.)

CONDSTORE (RFC 7162 §3.1.3): STORE (UNCHANGEDSINCE n) leaves alone every message changed after n, and every
message expunged by another session whose expunge this session has not reported yet (its removal is a change
after any n the client holds); the tagged OK lists them in `[MODIFIED set]` (sequence numbers for STORE, UIDs
for UID STORE). Once CONDSTORE is enabled, STORE's FETCH responses carry MODSEQ, and even `.SILENT` answers with
`FETCH (MODSEQ ...)` for the messages it did not refuse, so the client's cache learns their new mod-sequence.
With QRESYNC, EXPUNGE, UID EXPUNGE and MOVE end with `OK [HIGHESTMODSEQ n]` (§3.2.7, §3.2.9; not CLOSE, §3.2.8).

Invariants
1. A read-only (EXAMINE) session changes nothing: STORE, EXPUNGE, MOVE answer NO [READ-ONLY]; CLOSE does not
   expunge (RFC 9051 §6.4.2).
2. A message sequence number beyond EXISTS is a client error (BAD); a UID that does not exist is ignored
   (RFC 9051 §6.4.8; both checked by `arguments.resolve`).
3. EXPUNGE responses written here always follow the session's own numbering: each one's number is computed
   after the previous one was removed.
4. On another user's mailbox every change checks the RFC 4314 §4 right first (`Selected.may`, rights read
   again before the command: acl.py): STORE "s" for \\Seen, "t" for \\Deleted, "w" for the rest; EXPUNGE "e"
   (CLOSE expunges only with it); COPY and MOVE "i" on the destination ("t" and "e" on the source to MOVE),
   and the store checks them again (`as_user`). A right missing is NO [NOPERM] (RFC 5530), before READ-ONLY.
"""

from __future__ import annotations

from postroom.store.api import ChangeKind, Flag, StoreMode, flags_allowed

from . import acl, encoder
from . import parser as P
from .arguments import parse_flags, resolve, sel_of, stored_name
from .errors import No, Result
from .session import Session
from .state import AUTH

# ---- STORE (RFC 9051 §6.4.6)

async def store(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.StoreArgs)
    sel = sel_of(s)
    bits, keywords = parse_flags(a.flags)
    uids = resolve(s, a.seqset, cmd.uid)
    if sel.rights is not None:
        bits, keywords = _allowed_flags(sel.rights, a.mode, bits, keywords)
    if sel.readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    if a.unchangedsince is not None:
        s.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
    if not uids:
        return "", "STORE completed"
    mode = {"": StoreMode.REPLACE, "+": StoreMode.ADD, "-": StoreMode.REMOVE}[a.mode]
    result = await s.store.store_flags(sel.id, uids, mode, bits, keywords, unchanged_since=a.unchangedsince)
    changed: dict[int, tuple[int, frozenset[str]]] = {}
    for ch in result.changes:
        if ch.kind is ChangeKind.MAILBOX_KEYWORDS:
            # RFC 9051 §7.3.5: the session that brought a keyword is told too, before its FETCH (state.py 5)
            s.write(*sel.announce(ch.keywords))
            continue
        sel.own_change(ch.modseq)
        changed[ch.uid] = (ch.flags, ch.keywords)
    code = ""
    if result.modified:  # RFC 7162 §3.1.3 (module doc)
        failed = list(result.modified) if cmd.uid else [n for n in map(sel.msn, result.modified) if n]
        code = "MODIFIED " + encoder.seqset(failed).decode()
    from .fetch import flags_fetch, light_fetch

    # RFC 7162 §3.2.4: UID in every FETCH once QRESYNC is on; a UIDFETCH starts with it (RFC 9586 §3.3)
    with_uid = (cmd.uid or sel.qresync) and not sel.uidonly
    if a.silent:
        if sel.condstore:  # RFC 7162 §3.1.3: the new MODSEQs, even with .SILENT
            refused = set(result.modified)
            atts = [P.FetchAtt("UID"), P.FetchAtt("MODSEQ")] if with_uid else [P.FetchAtt("MODSEQ")]
            await light_fetch(s, [u for u in uids if u not in refused], atts)
        return code, "STORE completed"
    # The new flags of every message named (RFC 9051 §6.4.6), read back in one query per range.
    await flags_fetch(s, uids, with_uid=with_uid)
    return code, "STORE completed"


def _allowed_flags(rights: str, mode: str, bits: int, keywords: list[str]) -> tuple[int, list[str]]:
    """The flags of a STORE the user may change on another user's mailbox (invariant 4). RFC 4314 §4: a STORE
    "SHOULD NOT fail if the user has rights to modify at least one flag", so the others are dropped; NO
    [NOPERM] if none is left. Replacing every flag (`FLAGS` without + or -) changes all kinds: "s", "t" and
    "w" are all needed."""
    if mode == "":
        if not {"s", "t", "w"} <= set(rights):
            raise No("STORE FLAGS needs the rights s, t and w here; use +FLAGS or -FLAGS", "NOPERM")
        return bits, keywords
    kept = bits & flags_allowed(rights)
    kept_keywords = keywords if "w" in rights else []
    if (bits or keywords) and not (kept or kept_keywords):
        wanted = ("s" if bits & Flag.SEEN else "") + ("t" if bits & Flag.DELETED else "")
        wanted += "w" if bits & ~(Flag.SEEN | Flag.DELETED) or keywords else ""
        raise No(f"STORE needs the right(s) {wanted} on this mailbox", "NOPERM")
    return kept, kept_keywords


# ---- COPY / MOVE (RFC 9051 §6.4.7, RFC 6851, RFC 4315 COPYUID)

async def _destination(s: Session, name: str, verb: str) -> acl.Target:

    # RFC 9051 §6.4.7 TRYCREATE; RFC 4314 §4: "i" on the destination
    return acl.need(await acl.resolve(s, stored_name(s, name)), "i", verb, "TRYCREATE")


def _as_user(s: Session, dest: acl.Target) -> int | None:
    """The user the store checks the rights of (invariant 4), when another user's mailbox takes part."""
    assert s.user is not None
    return s.user.id if dest.shared or sel_of(s).rights is not None else None


def _copyuid(uidvalidity: int, src: tuple[int, ...], dst: tuple[int, ...]) -> str:
    return (f"COPYUID {uidvalidity} {encoder.seqset_ordered(list(src)).decode()} "
            f"{encoder.seqset_ordered(list(dst)).decode()}")


async def copy(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.CopyArgs)
    uids = resolve(s, a.seqset, cmd.uid)
    dest = await _destination(s, a.mailbox, "COPY")
    if not uids:
        return "", "COPY completed"
    res = await s.store.copy_messages(sel_of(s).id, uids, dest.mailbox.id, as_user=_as_user(s, dest))
    if not res.source_uids:
        raise No("Messages were expunged", "EXPUNGEISSUED")
    return _copyuid(res.uidvalidity, res.source_uids, res.dest_uids), "COPY completed"


async def move(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.CopyArgs)
    sel = sel_of(s)
    uids = resolve(s, a.seqset, cmd.uid)
    dest = await _destination(s, a.mailbox, "MOVE")
    if not (sel.may("t") and sel.may("e")):  # RFC 4314 §4 / RFC 6851: moving out deletes and expunges
        raise No("MOVE needs the rights t and e on the selected mailbox", "NOPERM")
    if sel.readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    if not uids:
        return "", "MOVE completed"
    await s.notify(allow_expunge=True)  # report earlier changes first, so numbers below are the client's
    res = await s.store.move_messages(sel.id, uids, dest.mailbox.id, as_user=_as_user(s, dest))
    if res.source_uids:
        # RFC 6851 §4.3: COPYUID in an untagged OK before the expunges.
        s.write(b"* OK [" + _copyuid(res.uidvalidity, res.source_uids, res.dest_uids).encode()
                + b"] Moved\r\n")
    s.write(*sel.expunged(res.source_uids))  # EXPUNGE, or VANISHED with QRESYNC (RFC 6851 §4.4)
    top = max((ch.modseq for ch in res.changes if ch.kind is ChangeKind.EXPUNGE and ch.mailbox_id == sel.id),
              default=0)
    return (f"HIGHESTMODSEQ {top}" if sel.qresync and top else ""), "MOVE completed"


# ---- EXPUNGE / UID EXPUNGE / CLOSE / UNSELECT / CHECK

async def _expunge(s: Session, uids: list[int] | None, report: bool) -> str:
    """Expunge and announce (unless `report` is off: CLOSE); returns the tagged OK's response code: with QRESYNC,
    `HIGHESTMODSEQ n` when something went (RFC 7162 §3.2.7, §3.2.9)."""
    sel = sel_of(s)
    if report:
        await s.notify(allow_expunge=True)
    res = await s.store.expunge(sel.id, uids)
    lines = sel.expunged(ch.uid for ch in sorted(res.changes, key=lambda c: c.uid))  # invariant 3
    if report:
        s.write(*lines)
    top = max((ch.modseq for ch in res.changes), default=0)
    return f"HIGHESTMODSEQ {top}" if report and sel.qresync and top else ""


def _need_expunge(s: Session) -> None:
    if not sel_of(s).may("e"):  # RFC 4314 §4
        raise No("EXPUNGE needs the right e on this mailbox", "NOPERM")


async def expunge(s: Session, cmd: P.Command) -> Result:
    _need_expunge(s)
    if sel_of(s).readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    return await _expunge(s, None, True), "EXPUNGE completed"


async def uid_expunge(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.SeqArg)
    uids = resolve(s, cmd.args.seqset, True)
    _need_expunge(s)
    if sel_of(s).readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    code = await _expunge(s, uids, True) if uids else ""
    return code, "UID EXPUNGE completed"


def _deselect(s: Session) -> None:
    s.sel = None
    s.state = AUTH
    if s.sub is not None:
        s.sub.watch(None)  # another user's mailbox no more (acl.py)


async def close(s: Session, cmd: P.Command) -> Result:
    if not sel_of(s).readonly and sel_of(s).may("e"):  # RFC 4314 §4: CLOSE expunges only with "e"
        await _expunge(s, None, False)  # RFC 9051 §6.4.1: silently, no EXPUNGE responses
    _deselect(s)
    return "", "CLOSE completed"


async def unselect(s: Session, cmd: P.Command) -> Result:
    _deselect(s)
    return "", "UNSELECT completed"


async def check(s: Session, cmd: P.Command) -> Result:
    return "", "CHECK completed"  # every write is durable already (store invariant 1)
