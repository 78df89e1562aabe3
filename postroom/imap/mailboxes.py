"""Mailbox commands: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, NAMESPACE,
STATUS, APPEND (RFC 9051 §6.3; LIST-EXTENDED RFC 5258, SPECIAL-USE RFC 6154, LIST-STATUS RFC 5819,
CHILDREN RFC 3348, UIDPLUS RFC 4315, APPENDLIMIT RFC 7889, STATUS=SIZE RFC 8438, MULTIAPPEND RFC 3502,
CREATE-SPECIAL-USE RFC 6154 §3; CATENATE RFC 4469 in catenate.py).

Theory of operation
-------------------
The store knows one user's mailboxes by full name with "/" as the hierarchy separator (one personal
namespace, RFC 2342). Names arrive in the client's encoding and are turned into stored names by
`arguments.stored_name` (modified UTF-7 for rev1 sessions, UTF-8 after ENABLE IMAP4rev2); `wire_name` does the
reverse.
LIST reads every mailbox of the user once and matches the patterns in memory: `*` matches anything, `%`
anything but the separator (RFC 9051 §6.3.9). A name that is only the parent of others (its mailbox was
deleted, children stay: RFC 9051 §6.3.5) is listed as `\\NonExistent` (rev2, or any extended LIST: RFC 5258
§3) or `\\Noselect` (a basic LIST of rev1).

Subscriptions are names (store invariant 8): SUBSCRIBE takes any valid name (RFC 9051 §6.3.7 lets the server
check that the mailbox exists; Postroom, like Dovecot, does not), UNSUBSCRIBE any name, DELETE and RENAME leave
them alone (RFC 3501 §6.3.9 MUST NOT remove; RFC 9051 §6.3.6: RENAME "doesn't update subscription
information"). So LSUB and LIST (SUBSCRIBED) may list names no mailbox has: LIST marks them `\\NonExistent`
(RFC 9051 §6.3.9.6 table 3); LSUB lists them as subscribed, and marks `\\Noselect` only the unsubscribed
level a `%` stopped at above a subscribed name (RFC 3501 §6.3.9).

SELECT and EXAMINE with CONDSTORE and QRESYNC (RFC 7162 §3.1.8, §3.2.5): `(CONDSTORE)` enables CONDSTORE, and
once it is on the answer carries `OK [HIGHESTMODSEQ n]`. `(QRESYNC (uidvalidity modseq [known-uids
[seq-match-data]]))` needs ENABLE QRESYNC first (else BAD, §3.2.3). When the UIDVALIDITY matches, the answer
goes on, before the tagged OK, with what `UID FETCH known-uids (FLAGS) (CHANGEDSINCE modseq VANISHED)` would say
(§3.2.5.1): `VANISHED (EARLIER)` for the known UIDs removed after modseq, then `FETCH (UID FLAGS MODSEQ)` for
the known messages changed after it (known-uids left out: 1:UIDNEXT-1, so new messages are fetched too). Both
come from the store's indexes (`Store.vanished`, `Store.list_changed`), in proportion to the changes. When the
record of removals was pruned past modseq (`imap.expunged_retention_days`), the fallback of §3.2.5.2 is used:
every known UID not in the mailbox, above the last (message number, UID) pair of seq-match-data that still
matches. Selecting while a mailbox is selected first says `OK [CLOSED]` (§3.2.11, RFC 9051 §7.1).

Other users' mailboxes (ACL, RFC 4314; "Other Users" namespace, RFC 2342) are resolved and checked by `acl.py`:
every command that takes a mailbox name goes through `acl.resolve` and asks `acl.need` for the rights RFC 4314
§4 gives it. LIST adds the mailboxes other users share with the user's "l" right, under `acl.OTHER_PREFIX`, with
`RETURN (MYRIGHTS)` (RFC 8440) answering each mailbox's rights, and the domain's shared folders with "l" under
`acl.SHARED_PREFIX` (RFC 2342 §5's shared namespace). Personal mailboxes cannot be made in either namespace (a
name there would be hidden by it).

Invariants
1. A session reaches only the mailboxes of its own user, and those of other users through `acl.resolve` alone
   (acl.py invariant 1): store calls pass `s.user.id` or the owner's id from a resolved target, and names are
   plain strings to the store (no paths), so `..`, `%`, `*` or another user's address are just names.
2. SELECT reads the UIDs, the first unseen UID and the keywords in use (`Store.select_view`: the UIDs as one
   value, no row or object per message), never bodies or per-message flags.
3. APPEND computes the message's metadata once (`metapool`: on the loop up to `INLINE_MAX` bytes, else in a
   worker process with a time limit) and stores it with the body; a message over `limits.message_size` is
   refused with TOOBIG before its literal is read when it was synchronizing. A large message arrives as a
   staging file (session.py, `Session.staged`): the worker reads the file itself (`pool.meta_of_file`), and the
   file goes to `Store.append_file`; the handler removes it if it fails first.
4. A FETCH never carries a keyword the session has not announced with FLAGS (state.py invariant 5): SELECT
   announces the mailbox's keyword set and every keyword its listed messages carry.
5. Every mailbox name a client sends passes `arguments.stored_name` before any store call: a name that is not valid
   modified UTF-7 (rev1) or not valid UTF-8 is answered `NO [CANNOT]` there, so no client input reaches the
   store in a form it cannot encode (and nothing is logged as a server error for it).
6. MULTIAPPEND (RFC 3502) is all or nothing: every message is checked and its metadata computed before the
   one store call (`Store.append_multi`, one transaction); a refusal of any message stores none. An APPEND with
   CATENATE (RFC 4469) in any of its messages is built and stored by `catenate.py`, which keeps 3 and 6.
7. An APPEND of one message to the mailbox a read-write IMAP4rev1 session has selected claims its \\Recent
   (RFC 3501 §6.3.11: the appended message is recent) in the store write that stores it (`Store.append(...,
   claim_recent=True)`), as `Session.claim_recent` would have when reporting the arrival: same ranges, one
   write less. Other APPENDs leave the claim to that report.
"""

from __future__ import annotations

import dataclasses
import re
import time

from postroom import metapool as pool
from postroom.store import names
from postroom.store.api import (
    RIGHTS,
    AppendRequest,
    Forbidden,
    Mailbox,
    MailboxStatus,
    SpecialUseTaken,
    StagedAppend,
    flags_allowed,
)

from . import acl, catenate, encoder, objectid
from . import parser as P
from .arguments import SEP, parse_flags, stored_name, wire_name
from .errors import Bad, No, Result
from .session import Session, StagedLiteral
from .state import (
    AUTH,
    SELECTED,
    Selected,
    in_ranges,
    missing_ranges,
    seq_match_floor,
    shared_mailbox,
    shared_view,
    uid_ranges,
    vanished_lines,
)


def _user_id(s: Session) -> int:
    assert s.user is not None
    return s.user.id


# ---- SELECT / EXAMINE (RFC 9051 §6.3.2, §6.3.3)

async def select(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.SelectArgs)
    if a.qresync is not None and not s.qresync:
        raise Bad("QRESYNC needs ENABLE QRESYNC first")  # RFC 7162 §3.2.3: MUST be BAD
    if s.sel is not None:
        s.write(b"* OK [CLOSED] Previous mailbox closed\r\n")  # RFC 9051 §7.1, RFC 7162 §3.2.11
    s.sel = None
    s.state = AUTH  # a failed SELECT leaves no mailbox selected (RFC 9051 §6.3.2)
    if a.condstore:
        s.enable_condstore()  # RFC 7162 §3.1.8 (no mailbox is selected now: nothing is written)
    if s.sub is not None:
        s.sub.watch(None)
    name = stored_name(s, a.mailbox)
    target = acl.need(await acl.resolve(s, name), "r", cmd.name)  # RFC 4314 §4
    mbox = target.mailbox
    if target.shared and s.sub is not None:
        s.sub.watch(mbox.id)  # before the listing, so no change of it is missed (acl.py module doc)
    s.drain_changes()  # changes from before the listing are in it already
    view = await s.store.select_view(mbox.id)  # invariant 2
    uids = shared_view(mbox.id, view.uids)  # state.py invariant 10
    readonly = cmd.name == "EXAMINE" or not acl.writable(target.rights)
    sel = Selected(shared_mailbox(dataclasses.replace(mbox, name=target.name)),  # state.py invariant 11
                   readonly, uids, rev2=s.rev2, uids_shared=True,
                   modseq=mbox.highestmodseq, condstore=s.condstore, qresync=s.qresync, uidonly=s.uidonly,
                   rights=target.rights if target.shared else None)
    if not s.rev2:  # \Recent (RFC 3501 §2.3.2) is rev1 only; rev2 sessions neither see nor claim it
        if readonly or target.shared:  # EXAMINE shows what nobody claimed, and claims nothing (RFC 3501 §6.3.2);
            # nor does a session of another user than the owner (acl.py)
            watermark = await s.store.recent_watermark(mbox.id)
            sel.grant_recent(watermark + 1, uids[-1] if uids else 0)
        else:  # listed first, then claimed: a message arriving in between is ours and announced later
            old, new = await s.store.claim_recent(mbox.id)
            sel.grant_recent(old + 1, new)
            sel.recent_seen = new
    # Invariant 4: the keywords the mailbox has had (store invariant 9) and, should one have been added since
    # get_mailbox read them (its change came before the drain above), those the listing carries.
    sel.learn(mbox.keywords)
    sel.learn(view.keywords)
    first_unseen = sel.msn(view.first_unseen_uid) if view.first_unseen_uid else 0
    s.write(sel.flags_line())
    s.write(b"* %d EXISTS\r\n" % len(uids))
    if not s.rev2:
        s.write(b"* %d RECENT\r\n" % sel.recent_count())
        if first_unseen and not s.uidonly:  # RFC 9586 §3: UNSEEN is a message number (RFC 3501 §7.1)
            s.write(b"* OK [UNSEEN %d] First unseen message\r\n" % first_unseen)
    s.write(sel.permanentflags_line())
    s.write(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mbox.uidvalidity)
    s.write(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % mbox.uidnext)
    if s.condstore:  # RFC 7162 §3.1.2.1; read before the listing, so no change above it is missed
        s.write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % max(mbox.highestmodseq, 1))
    s.write(b"* OK [MAILBOXID (%s)] Ok\r\n" % objectid.mailbox_id(mbox.id, mbox.uidvalidity).encode())  # RFC 8474
    if s.rev2:
        s.write(b'* LIST () "/" ' + wire_name(s, target.name) + b"\r\n")  # RFC 9051 §6.3.2
    if a.qresync is not None and a.qresync.uidvalidity == mbox.uidvalidity:
        # RFC 7162 §3.2.5: a UIDVALIDITY that differs means "start over": the rest is ignored
        await _resync(s, sel, a.qresync)
    s.sel = sel
    s.state = SELECTED
    return ("READ-ONLY" if readonly else "READ-WRITE"), f"{cmd.name} completed"


async def _resync(s: Session, sel: Selected, q: P.Qresync) -> None:
    """QRESYNC's part of the SELECT answer (module doc): VANISHED (EARLIER), then FETCH of the changed messages."""
    view = sel.uids
    v = await s.store.vanished(sel.id, q.modseq)
    known = uid_ranges(q.known_uids) if q.known_uids is not None else [(1, max(v.uidnext - 1, 1))]
    is_known = in_ranges(known)
    if v.complete:
        s.write(*vanished_lines((u for u in v.uids if is_known(u) and not sel.msn(u)), earlier=True))
    else:
        # RFC 7162 §3.2.5.2: the removals after modseq are not all on record (pruned); every known UID that is
        # not here is reported instead, above what seq-match-data shows the client knows already.
        floor = seq_match_floor(*q.seq_match, view) if q.seq_match is not None else 0
        top = v.uidnext - 1
        asked = [(max(lo, floor + 1), min(hi, top)) for lo, hi in known if hi > floor and lo <= top]
        s.write(*vanished_lines(missing_ranges(asked, view), earlier=True))
    if not view:
        return
    cols = await s.store.list_changed(sel.id, q.modseq, view[0], view[-1])
    for i, uid in enumerate(cols.uids):
        n = sel.msn(uid)
        if not n or not is_known(uid):
            continue  # arrived after the listing: its EXISTS comes with the next report
        kws = cols.keywords_at(i)
        if kws:
            s.write(*sel.announce(kws))  # state.py invariant 5
        s.write(sel.fetch_head(uid, n) + (b"" if sel.uidonly else b"UID %d " % uid)  # RFC 9586 §3.3
                + b"FLAGS %s MODSEQ (%d))\r\n" % (encoder.flag_list(cols.flags[i], kws, sel.is_recent(uid)),
                                                   cols.modseqs[i]))
        await s.maybe_flush()


# ---- CREATE / DELETE / RENAME / SUBSCRIBE / UNSUBSCRIBE (RFC 9051 §6.3.4 - §6.3.8)

# CREATE-SPECIAL-USE (RFC 6154 §3): the uses a CREATE may give. Of §2's seven, \All and \Flagged name virtual
# mailboxes (every message, every flagged message) that this server does not keep: a real mailbox marked so would
# mislead clients, so they are refused like unknown ones.
CREATE_USES = {u.lower(): u for u in ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")}


def create_use(uses: tuple[str, ...]) -> str | None:
    """The one special use of a CREATE (USE (...)), or None. Raises No [USEATTR] (RFC 6154 §3: "the specified
    special use is not supported or cannot be assigned") for an attribute not in `CREATE_USES` or for more
    than one: the store keeps one special use per mailbox."""
    distinct = {u.lower() for u in uses}
    if not distinct:
        return None
    if len(distinct) > 1:
        raise No("A mailbox can have one special use here", "USEATTR")
    (use,) = distinct
    if use not in CREATE_USES:
        raise No(f"Special use {use[:40]} cannot be given to a mailbox here", "USEATTR")
    return CREATE_USES[use]


async def create(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.Create)
    name = stored_name(s, cmd.args.mailbox).rstrip(SEP)  # RFC 9051 §6.3.4: a trailing separator is intent
    if not name or "*" in name or "%" in name:
        raise No("Invalid mailbox name", "CANNOT")
    if name.upper() == "INBOX":
        raise No("INBOX always exists", "ALREADYEXISTS")
    use = create_use(cmd.args.uses)
    other = acl.split_other(name)
    if other is not None and other[1]:  # in another user's hierarchy: RFC 4314 §4, "k" on the parent
        if use is not None:  # RFC 6154 §3: special uses are the owner's to give
            raise No("Special-use attributes are for your own mailboxes", "USEATTR")
        owner = await acl.owner_id(s, other[0], "CREATE")
        try:  # the store checks "k" on the nearest existing parent, hidden or not, in its transaction
            mbox = await s.store.create_mailbox(owner, other[1], as_user=_user_id(s))
        except Forbidden:
            raise No("CREATE cannot make a mailbox there", "NOPERM") from None
        return f"MAILBOXID ({objectid.mailbox_id(mbox.id, mbox.uidvalidity)})", "CREATE completed"  # RFC 8474 §4.1
    if acl.in_other_namespace(name):
        if name.split(SEP, 1)[0] == acl.SHARED:
            raise No(f"{acl.SHARED} holds the domain's shared folders", "CANNOT")  # made by the admin
        raise No(f"{acl.OTHER} holds other users' mailboxes", "CANNOT")
    try:
        mbox = await s.store.create_mailbox(_user_id(s), name, use)
    except SpecialUseTaken:
        # RFC 6154 §3: the mailbox is not created; one mailbox per special use per user (store api).
        raise No(f"Another mailbox is {use} already", "USEATTR") from None
    return f"MAILBOXID ({objectid.mailbox_id(mbox.id, mbox.uidvalidity)})", "CREATE completed"  # RFC 8474 §4.1


async def delete(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.MailboxArg)
    name = stored_name(s, cmd.args.mailbox)
    if name == "INBOX":
        raise No("INBOX cannot be deleted", "CANNOT")  # RFC 9051 §6.3.5
    target = acl.need(await acl.resolve(s, name), "x", "DELETE")  # RFC 4314 §4
    if s.sel is not None and s.sel.id == target.mailbox.id:
        raise No("Cannot delete the selected mailbox; UNSELECT first", "INUSE")
    await s.store.delete_mailbox(target.mailbox.user_id, target.mailbox.name)
    return "", "DELETE completed"


async def rename(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.Rename)
    old = stored_name(s, cmd.args.old)
    new = stored_name(s, cmd.args.new).rstrip(SEP)
    if not new or "*" in new or "%" in new:
        raise No("Invalid mailbox name", "CANNOT")
    if new.upper() == "INBOX":
        raise No("INBOX already exists", "ALREADYEXISTS")
    source = acl.need(await acl.resolve(s, old), "x", "RENAME")  # RFC 4314 §4: "x" on the old name
    other = acl.split_other(new)
    if not source.shared:
        if acl.in_other_namespace(new):
            raise No("Cannot rename a mailbox into another user's hierarchy", "CANNOT")
        new_name = new
    else:
        if other is None or not other[1] or names.address(other[0]) != source.owner:
            raise No("Cannot rename a mailbox out of its owner's hierarchy", "CANNOT")
        new_name = other[1]
    try:  # RFC 4314 §4: "x" on the old name, "k" on the new one's parent, checked again by the store
        await s.store.rename_mailbox(source.mailbox.user_id, source.mailbox.name, new_name,
                                     as_user=_user_id(s) if source.shared else None)
    except Forbidden:
        raise No("RENAME cannot make a mailbox there", "NOPERM") from None
    if s.sel is not None and s.sel.id == source.mailbox.id and source.mailbox.name != "INBOX":
        s.sel.mailbox = dataclasses.replace(
            s.sel.mailbox, name=acl.shared_name(source.owner, new_name) if source.shared else new_name)
    return "", "RENAME completed"


async def subscribe(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.MailboxArg)
    name = stored_name(s, cmd.args.mailbox)
    # RFC 9051 §6.3.7 / §6.3.8: OK when subscribed (or not) already; the name need not be a mailbox (module doc).
    # A bad name or too many subscriptions: Invalid -> NO [CANNOT].
    await s.store.set_subscribed(_user_id(s), name, cmd.name == "SUBSCRIBE")
    return "", f"{cmd.name} completed"


async def namespace(s: Session, cmd: P.Command) -> Result:
    # RFC 2342 §5: the personal namespace, other users' and the shared one (acl.py). The shared namespace is
    # announced always, whether or not the domain has a shared folder yet: §5 answers NIL for a namespace the
    # server does not support, and the admin may share a folder at any time during a session that read this once.
    s.write(b'* NAMESPACE (("" "/")) (("' + acl.OTHER_PREFIX.encode() + b'" "/")) (("'
            + acl.SHARED_PREFIX.encode() + b'" "/"))\r\n')
    return "", "NAMESPACE completed"


# ---- LIST / LSUB (RFC 9051 §6.3.9, RFC 5258, RFC 3501 §6.3.9)

def pattern_regex(pattern: str) -> re.Pattern[str]:
    if pattern[:5].upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in SEP + "*%"):
        pattern = "INBOX" + pattern[5:]
    out = []
    for ch in pattern:
        out.append(".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _join(ref: str, pattern: str) -> str:
    # RFC 3501 §6.3.8: the reference is prefixed to the pattern; a pattern starting with the separator
    # ignores a reference ending with one.
    if ref.endswith(SEP) and pattern.startswith(SEP):
        return ref + pattern[1:]
    return ref + pattern


def _sort_key(name: str) -> tuple[int, str]:
    return (0 if name == "INBOX" else 1, name)


async def list_(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.ListArgs)
    ref = stored_name(s, a.reference) if a.reference else ""
    if not a.extended and a.patterns == ("",):
        # RFC 9051 §6.3.9: an empty pattern asks for the separator and the root of the reference.
        root = ref.split(SEP, 1)[0] + SEP if SEP in ref else ""
        s.write(b'* LIST (\\Noselect) "/" ' + wire_name(s, root) + b"\r\n")
        return "", "LIST completed"
    regexes = [pattern_regex(_join(ref, stored_name(s, p) if p else p)) for p in a.patterns]

    def matches(name: str) -> bool:
        return any(r.match(name) for r in regexes)

    mboxes = await s.store.list_mailboxes(_user_id(s))
    by_name = {m.name: m for m in mboxes if not acl.in_other_namespace(m.name)}  # hidden by the namespace
    rights: dict[str, str] = dict.fromkeys(by_name, RIGHTS)
    for shared in await s.store.list_shared_mailboxes(_user_id(s)):  # RFC 4314 §4: those with "l"
        full = acl.shared_name(shared.owner, shared.mailbox.name)
        by_name[full] = dataclasses.replace(shared.mailbox, name=full)
        rights[full] = shared.rights
    want_rights = "MYRIGHTS" in a.returns  # RFC 8440
    virtual: set[str] = set()
    has_children: set[str] = set()
    for name in by_name:
        for parent in names.parents(name):
            has_children.add(parent)
            if parent not in by_name:
                virtual.add(parent)
    select_sub = "SUBSCRIBED" in a.selection
    want_sub = select_sub or "SUBSCRIBED" in a.returns
    subscribed = set(await s.store.list_subscriptions(_user_id(s))) if want_sub else set()
    recursive = "RECURSIVEMATCH" in a.selection
    status_items = a.status_items if "STATUS" in a.returns else ()
    candidates = set(by_name) | virtual
    # RFC 9051 §6.3.9.6: CHILDINFO for a name with a subscribed descendant that the patterns do not list
    # themselves ("servers SHOULD suppress redundant CHILDINFO responses"); one pass, not one per name.
    childinfo_for: set[str] = set()
    if select_sub:  # RFC 9051 §6.3.9.1: subscribed names are listed whether or not a mailbox has them
        candidates |= subscribed
        if recursive:  # ... and so are their parents, for CHILDINFO
            for n in subscribed:
                parents = names.parents(n)
                candidates.update(parents)
                if not matches(n):
                    childinfo_for.update(parents)
    gone = "\\NonExistent" if s.rev2 or a.extended else "\\Noselect"  # RFC 5258 §3; RFC 3501 §7.2.2
    for name in sorted(candidates, key=_sort_key):
        if not matches(name):
            continue
        m = by_name.get(name)
        attrs: list[str] = []
        childinfo = name in childinfo_for
        if select_sub and name not in subscribed and not childinfo:
            continue
        if "SPECIAL-USE" in a.selection and (m is None or not m.special_use):
            continue
        if m is None:
            attrs.append(gone)
        if name in has_children:
            attrs.append("\\HasChildren")
        elif m is not None:  # a name that is no mailbox has no children to speak of
            attrs.append("\\HasNoChildren")
        if want_sub and name in subscribed:
            attrs.append("\\Subscribed")
        if m is not None and m.special_use:
            attrs.append(m.special_use)
        line = b"* LIST (" + " ".join(attrs).encode() + b') "/" ' + wire_name(s, name)
        extended: list[bytes] = []
        if childinfo:
            extended.append(b'"CHILDINFO" ("SUBSCRIBED")')  # RFC 5258 §3.5
        if want_rights and m is not None:  # RFC 8440 §3: the rights MYRIGHTS would answer
            extended.append(b'"MYRIGHTS" ' + acl.astring(acl.with_obsolete(rights[name])))
        if extended:
            line += b" (" + b" ".join(extended) + b")"
        s.write(line + b"\r\n")
        if status_items and m is not None and "r" in rights[name]:  # RFC 4314 §4: STATUS needs "r"
            s.write(await status_line(s, m, status_items))
        await s.maybe_flush()
    return "", "LIST completed"


async def lsub(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.ListArgs)
    ref = stored_name(s, a.reference) if a.reference else ""
    if a.patterns == ("",):
        s.write(b'* LSUB (\\Noselect) "/" ""\r\n')
        return "", "LSUB completed"
    regex = pattern_regex(_join(ref, stored_name(s, a.patterns[0])))
    subscribed = await s.store.list_subscriptions(_user_id(s))  # whether or not the mailboxes exist (doc)
    listed: dict[str, bytes] = {}
    for name in subscribed:
        if regex.match(name):
            listed[name] = b"()"
    # RFC 3501 §6.3.9: when "%" stops above a subscribed name ("foo/bar" subscribed, "foo" not), the level it
    # stops at is listed instead, flagged \Noselect. A subscribed name the pattern matches brings no parent.
    wanted = set(subscribed)
    for name in subscribed:
        if name in listed:
            continue
        for parent in names.parents(name):
            if parent not in wanted and parent not in listed and regex.match(parent):
                listed[parent] = b"(\\Noselect)"
    for name in sorted(listed, key=_sort_key):
        s.write(b"* LSUB " + listed[name] + b' "/" ' + wire_name(s, name) + b"\r\n")
        await s.maybe_flush()
    return "", "LSUB completed"


# ---- STATUS (RFC 9051 §6.3.11, RFC 8438 SIZE, RFC 7889 APPENDLIMIT)

async def status_line(s: Session, mbox: Mailbox, items: tuple[str, ...]) -> bytes:
    if "HIGHESTMODSEQ" in items:
        s.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
    st: MailboxStatus = await s.store.mailbox_status(mbox.id)
    out: list[str] = []
    for item in items:
        if item == "MAILBOXID":  # RFC 8474 §4.3
            out.append(f"MAILBOXID ({objectid.mailbox_id(mbox.id, mbox.uidvalidity)})")
            continue
        if item == "MESSAGES":
            value = st.messages
        elif item == "UIDNEXT":
            value = st.mailbox.uidnext
        elif item == "UIDVALIDITY":
            value = st.mailbox.uidvalidity
        elif item == "UNSEEN":
            value = st.unseen
        elif item == "DELETED":
            value = st.deleted
        elif item == "SIZE":
            value = st.size
        elif item == "DELETED-STORAGE":  # RFC 9208 §4.2.2: what EXPUNGE would free, in units of 1024 octets
            value = st.deleted_size // 1024
        elif item == "APPENDLIMIT":
            value = s.limits.message_size
        elif item == "HIGHESTMODSEQ":  # RFC 7162 §3.1.7
            value = st.mailbox.highestmodseq
        else:  # RECENT: messages no session has been told about yet, counted with the rest (one query)
            value = st.recent
        out.append(f"{item} {value}")
    return b"* STATUS " + wire_name(s, mbox.name) + b" (" + " ".join(out).encode() + b")\r\n"


async def status(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.StatusArgs)
    target = acl.need(await acl.resolve(s, stored_name(s, cmd.args.mailbox)), "r", "STATUS")  # RFC 4314 §4
    s.write(await status_line(s, dataclasses.replace(target.mailbox, name=target.name), cmd.args.items))
    return "", "STATUS completed"


# ---- APPEND (RFC 9051 §6.3.12, UIDPLUS APPENDUID, BINARY literal8, MULTIAPPEND RFC 3502)

async def append(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.AppendArgs)
    staged = s.take_staged()  # large messages, already in staging files (module invariant 3)
    try:
        # RFC 9051 §6.3.12 TRYCREATE; RFC 4314 §4: "i" to append
        target = acl.need(await acl.resolve(s, stored_name(s, a.mailbox)), "i", "APPEND", "TRYCREATE")
        mbox = target.mailbox
        for st in staged:
            if st.error is not None:
                raise st.error  # the disk filled while the literal was read: NO [OVERQUOTA] (session.py)
        messages = a.messages()
        if any(m.catenate is not None for m in messages):
            return await catenate.append(s, target, messages, staged)  # RFC 4469
        if len(messages) > 1:
            return await _multiappend(s, mbox, messages, staged, target.rights if target.shared else None)
        if len(staged) > 1 or (staged and a.message):
            raise Bad("The message must be the only large literal")
        one = staged[0] if staged else None
        size = len(a.message) if one is None else one.size
        if size > s.limits.message_size:
            raise No(f"Message larger than {s.limits.message_size} bytes", "TOOBIG")
        if not size:
            raise No("Empty message", "CANNOT")
        flags, keywords = parse_flags(a.flags)
        if target.shared:  # RFC 4314 §4: flags the user may not set are left off ("s", "t", "w")
            flags &= flags_allowed(target.rights)
            keywords = keywords if "w" in target.rights else []
        date = a.date if a.date is not None else time.time()
        if one is not None:
            assert one.path is not None  # no error, so a file
            meta = await _file_meta(s, one)
            res = await s.store.append_file(mbox.id, one.path, flags=flags, keywords=frozenset(keywords),
                                            internal_date=date, meta=meta)
            return f"APPENDUID {res.uidvalidity} {res.uid}", "APPEND completed"
    finally:
        for st in staged:
            if st.path is not None:
                st.path.unlink(missing_ok=True)
    raw = a.message
    meta_bytes = await pool.meta_bytes(raw, s.limits)  # on the loop only when small (metapool.py)
    sel = s.sel
    # Invariant 7: into the mailbox this read-write rev1 session has selected, the \Recent claim its report of
    # the arrival would make (Session.claim_recent) is made by the append's own write.
    claim = (sel is not None and sel.id == mbox.id and not sel.readonly and not sel.rev2 and sel.rights is None)
    res = await s.store.append(mbox.id, AppendRequest(raw=raw, flags=flags, keywords=frozenset(keywords),
                                                      internal_date=date, meta=meta_bytes), claim_recent=claim)
    if claim and sel is s.sel:
        assert sel is not None
        old, new = res.recent
        sel.grant_recent(old + 1, new)
        sel.recent_seen = max(sel.recent_seen, new)
    return f"APPENDUID {res.uidvalidity} {res.uid}", "APPEND completed"


async def _file_meta(s: Session, st: StagedLiteral) -> bytes:
    """The metadata of a staged message, computed by a worker that reads the file (module invariant 3)."""
    assert st.path is not None
    try:
        meta = await pool.meta_of_file(st.path, st.size, s.limits, allow_nul=st.binary)
    except pool.NulInLiteral:
        raise Bad("NUL in a literal (use literal8)") from None  # as syntax.Cursor.literal says
    return meta.to_bytes()


async def _multiappend(s: Session, mbox: Mailbox, messages: tuple[P.AppendMessage, ...],
                       staged: list[StagedLiteral], rights: str | None) -> Result:
    """RFC 3502: several messages in one APPEND, all stored in one store transaction or none (§3: "all or
    nothing"); the answer is APPENDUID with the UID set (RFC 4315 §3 append-uid). Staged messages stay files
    (`StagedAppend`); the caller removes whatever the store did not take. `rights`: the user's rights on
    another user's mailbox (None: their own); flags they may not set are left off, as for one message."""
    # A staged message left an empty literal in the command (session.py); a literal the client sent empty is
    # an empty message, refused like a single one (so the counts differ).
    empties = sum(1 for m in messages if not m.message)
    if len(staged) > empties:
        raise Bad("A large literal that is not a message")
    if len(staged) < empties:
        raise No("Empty message", "CANNOT")
    files = iter(staged)
    now = time.time()
    items: list[AppendRequest | StagedAppend] = []
    for m in messages:
        st = next(files) if not m.message else None
        size = len(m.message) if st is None else st.size
        if size > s.limits.message_size:
            raise No(f"Message larger than {s.limits.message_size} bytes", "TOOBIG")  # RFC 7889 §4
        flags, keywords = parse_flags(m.flags)
        if rights is not None:  # RFC 4314 §4, as in `append`
            flags &= flags_allowed(rights)
            keywords = keywords if "w" in rights else []
        date = m.date if m.date is not None else now
        if st is not None:
            assert st.path is not None
            items.append(StagedAppend(st.path, flags, frozenset(keywords), date, await _file_meta(s, st)))
        else:
            items.append(AppendRequest(m.message, flags, frozenset(keywords), date,
                                       await pool.meta_bytes(m.message, s.limits)))
    results = await s.store.append_multi(mbox.id, items)
    uidvalidity = results[0].uidvalidity
    uid_set = encoder.seqset([r.uid for r in results]).decode("ascii")
    return f"APPENDUID {uidvalidity} {uid_set}", "APPEND completed"
