"""Mailbox commands: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, NAMESPACE,
STATUS, APPEND (RFC 9051 §6.3; LIST-EXTENDED RFC 5258, SPECIAL-USE RFC 6154, LIST-STATUS RFC 5819,
CHILDREN RFC 3348, UIDPLUS RFC 4315, APPENDLIMIT RFC 7889, STATUS=SIZE RFC 8438).

Theory of operation
-------------------
The store knows one user's mailboxes by full name with "/" as the hierarchy separator (one personal
namespace, RFC 2342). Names arrive in the client's encoding and are turned into stored names by
`stored_name` (modified UTF-7 for rev1 sessions, UTF-8 after ENABLE IMAP4rev2); `wire_name` does the reverse.
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

Invariants
1. A session reaches only the mailboxes of its own user: every store call passes `s.user.id`, and names are
   plain strings to the store (no paths), so `..`, `%`, `*` or another user's address are just names.
2. SELECT reads UIDs and flags only (`list_columns`: no object per message), never bodies.
3. APPEND computes the message's metadata once (`mime.pool`: on the loop up to `INLINE_MAX` bytes, else in a
   worker process with a time limit) and stores it with the body; a message over `limits.message_size` is
   refused with TOOBIG before its literal is read when it was synchronizing. A large message arrives as a
   staging file (session.py, `Session.staged`): the worker reads the file itself (`pool.meta_of_file`), and the
   file goes to `Store.append_file`; the handler removes it if it fails first.
4. A FETCH never carries a keyword the session has not announced with FLAGS (state.py invariant 5): SELECT
   announces the mailbox's keyword set and every keyword its listed messages carry.
5. Every mailbox name a client sends passes `stored_name` before any store call: a name that is not valid
   modified UTF-7 (rev1) or not valid UTF-8 is answered `NO [CANNOT]` there, so no client input reaches the
   store in a form it cannot encode (and nothing is logged as a server error for it).
"""

from __future__ import annotations

import dataclasses
import re
import time
from array import array

from postroom.mime import pool
from postroom.store import names
from postroom.store.api import AppendRequest, Flag, Mailbox, MailboxStatus

from . import encoder, objectid
from . import parser as P
from .messages import parse_flags
from .session import AUTH, AUTHED, SELECTED, Bad, No, Result, Session, command
from .state import Selected

SEP = "/"

_SEEN = int(Flag.SEEN)  # plain int: IntFlag arithmetic is slow in per-message loops


def stored_name(s: Session, name: str) -> str:
    """The store's name for a client's mailbox argument (module invariant 5). Raises `No` [CANNOT] for a name
    that is not valid modified UTF-7 (rev1) or not valid UTF-8 (8-bit bytes reach here surrogate-escaped)."""
    try:
        name = encoder.decode_mailbox(name, s.rev2)
    except ValueError:
        raise No("Mailbox name is not valid modified UTF-7", "CANNOT") from None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # RFC 9051 §5.1: mailbox names are UTF-8; RFC 5530 §3 CANNOT: a name this server cannot hold.
        raise No("Mailbox name is not valid UTF-8", "CANNOT") from None
    if name.upper() == "INBOX" or name[:6].upper() == "INBOX" + SEP:
        name = "INBOX" + name[5:]
    return name


def wire_name(s: Session, name: str) -> bytes:
    return encoder.mailbox(name, s.rev2)


def _user_id(s: Session) -> int:
    assert s.user is not None
    return s.user.id


# ---- SELECT / EXAMINE (RFC 9051 §6.3.2, §6.3.3)

@command("SELECT", AUTHED)
@command("EXAMINE", AUTHED)
async def select(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.MailboxArg)
    if s.sel is not None and s.rev2:
        s.write(b"* OK [CLOSED] Previous mailbox closed\r\n")  # RFC 9051 §7.1
    s.sel = None
    s.state = AUTH  # a failed SELECT leaves no mailbox selected (RFC 9051 §6.3.2)
    name = stored_name(s, cmd.args.mailbox)
    mbox = await s.store.get_mailbox(_user_id(s), name)
    if mbox is None:
        raise No("Mailbox does not exist", "NONEXISTENT")
    s.drain_changes()  # changes from before the listing are in it already
    cols = await s.store.list_columns(mbox.id)
    uids = array("I", cols.uids)
    readonly = cmd.name == "EXAMINE"
    sel = Selected(mbox, readonly, uids, rev2=s.rev2, modseq=mbox.highestmodseq)
    if not s.rev2:  # \Recent (RFC 3501 §2.3.2) is rev1 only; rev2 sessions neither see nor claim it
        if readonly:  # EXAMINE shows what nobody claimed, and claims nothing (RFC 3501 §6.3.2)
            watermark = await s.store.recent_watermark(mbox.id)
            sel.grant_recent(watermark + 1, uids[-1] if uids else 0)
        else:  # listed first, then claimed: a message arriving in between is ours and announced later
            old, new = await s.store.claim_recent(mbox.id)
            sel.grant_recent(old + 1, new)
            sel.recent_seen = new
    # Invariant 4: the keywords the mailbox has had (store invariant 9) and, should one have been added since
    # get_mailbox read them (its change came before the drain above), those the listing carries.
    sel.learn(mbox.keywords)
    for kws in cols.keywords.values():
        sel.learn(kws)
    first_unseen = next((i + 1 for i, f in enumerate(cols.flags) if not f & _SEEN), 0)
    s.write(sel.flags_line())
    s.write(b"* %d EXISTS\r\n" % len(uids))
    if not s.rev2:
        s.write(b"* %d RECENT\r\n" % sel.recent_count())
        if first_unseen:
            s.write(b"* OK [UNSEEN %d] First unseen message\r\n" % first_unseen)
    s.write(sel.permanentflags_line())
    s.write(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mbox.uidvalidity)
    s.write(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % mbox.uidnext)
    s.write(b"* OK [MAILBOXID (%s)] Ok\r\n" % objectid.mailbox_id(mbox.id, mbox.uidvalidity).encode())  # RFC 8474
    if s.rev2:
        s.write(b'* LIST () "/" ' + wire_name(s, mbox.name) + b"\r\n")  # RFC 9051 §6.3.2
    s.sel = sel
    s.state = SELECTED
    return ("READ-ONLY" if readonly else "READ-WRITE"), f"{cmd.name} completed"


# ---- CREATE / DELETE / RENAME / SUBSCRIBE / UNSUBSCRIBE (RFC 9051 §6.3.4 - §6.3.8)

@command("CREATE", AUTHED)
async def create(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.MailboxArg)
    name = stored_name(s, cmd.args.mailbox).rstrip(SEP)  # RFC 9051 §6.3.4: a trailing separator is intent
    if not name or "*" in name or "%" in name:
        raise No("Invalid mailbox name", "CANNOT")
    if name.upper() == "INBOX":
        raise No("INBOX always exists", "ALREADYEXISTS")
    mbox = await s.store.create_mailbox(_user_id(s), name)
    return f"MAILBOXID ({objectid.mailbox_id(mbox.id, mbox.uidvalidity)})", "CREATE completed"  # RFC 8474 §4.1


@command("DELETE", AUTHED)
async def delete(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.MailboxArg)
    name = stored_name(s, cmd.args.mailbox)
    if name == "INBOX":
        raise No("INBOX cannot be deleted", "CANNOT")  # RFC 9051 §6.3.5
    if s.sel is not None and s.sel.mailbox.name == name:
        raise No("Cannot delete the selected mailbox; UNSELECT first", "INUSE")
    if await s.store.get_mailbox(_user_id(s), name) is None:
        raise No("Mailbox does not exist", "NONEXISTENT")
    await s.store.delete_mailbox(_user_id(s), name)
    return "", "DELETE completed"


@command("RENAME", AUTHED)
async def rename(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.Rename)
    old = stored_name(s, cmd.args.old)
    new = stored_name(s, cmd.args.new).rstrip(SEP)
    if not new or "*" in new or "%" in new:
        raise No("Invalid mailbox name", "CANNOT")
    if new.upper() == "INBOX":
        raise No("INBOX already exists", "ALREADYEXISTS")
    await s.store.rename_mailbox(_user_id(s), old, new)
    if s.sel is not None and s.sel.mailbox.name == old and old != "INBOX":
        s.sel.mailbox = dataclasses.replace(s.sel.mailbox, name=new)
    return "", "RENAME completed"


@command("SUBSCRIBE", AUTHED)
@command("UNSUBSCRIBE", AUTHED)
async def subscribe(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.MailboxArg)
    name = stored_name(s, cmd.args.mailbox)
    # RFC 9051 §6.3.7 / §6.3.8: OK when subscribed (or not) already; the name need not be a mailbox (module doc).
    # A bad name or too many subscriptions: Invalid -> NO [CANNOT].
    await s.store.set_subscribed(_user_id(s), name, cmd.name == "SUBSCRIBE")
    return "", f"{cmd.name} completed"


@command("NAMESPACE", AUTHED)
async def namespace(s: Session, cmd: P.Command) -> Result:
    s.write(b'* NAMESPACE (("" "/")) NIL NIL\r\n')  # RFC 2342 §5: one personal namespace
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


@command("LIST", AUTHED)
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
    by_name = {m.name: m for m in mboxes}
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
        if childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'  # RFC 5258 §3.5
        s.write(line + b"\r\n")
        if status_items and m is not None:
            s.write(await status_line(s, m, status_items))
        await s.maybe_flush()
    return "", "LIST completed"


@command("LSUB", AUTHED)
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
        elif item == "APPENDLIMIT":
            value = s.limits.message_size
        else:  # RECENT: messages no session has been told about yet
            claimed = await s.store.recent_watermark(mbox.id)
            value = len(await s.store.list_messages(mbox.id, claimed + 1)) if st.messages else 0
        out.append(f"{item} {value}")
    return b"* STATUS " + wire_name(s, mbox.name) + b" (" + " ".join(out).encode() + b")\r\n"


@command("STATUS", AUTHED)
async def status(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.StatusArgs)
    mbox = await s.store.get_mailbox(_user_id(s), stored_name(s, cmd.args.mailbox))
    if mbox is None:
        raise No("Mailbox does not exist", "NONEXISTENT")
    s.write(await status_line(s, mbox, cmd.args.items))
    return "", "STATUS completed"


# ---- APPEND (RFC 9051 §6.3.12, UIDPLUS APPENDUID, BINARY literal8)

@command("APPEND", AUTHED)
async def append(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.AppendArgs)
    staged = s.take_staged()  # a large message, already in a staging file (module invariant 3)
    try:
        mbox = await s.store.get_mailbox(_user_id(s), stored_name(s, a.mailbox))
        if mbox is None:
            raise No("Mailbox does not exist", "TRYCREATE")  # RFC 9051 §6.3.12
        if staged is not None and staged.error is not None:
            raise staged.error  # the disk filled while the literal was read: NO [OVERQUOTA] (session.py)
        if staged is not None and a.message:
            raise Bad("The message must be the only large literal")
        size = len(a.message) if staged is None else staged.size
        if size > s.limits.message_size:
            raise No(f"Message larger than {s.limits.message_size} bytes", "TOOBIG")
        if not size:
            raise No("Empty message", "CANNOT")
        flags, keywords = parse_flags(a.flags)
        date = a.date if a.date is not None else time.time()
        if staged is not None:
            assert staged.path is not None  # no error, so a file
            try:
                meta = await pool.meta_of_file(staged.path, staged.size, s.limits, allow_nul=staged.binary)
            except pool.NulInLiteral:
                raise Bad("NUL in a literal (use literal8)") from None  # as syntax.Cursor.literal says
            res = await s.store.append_file(mbox.id, staged.path, flags=flags, keywords=frozenset(keywords),
                                            internal_date=date, meta=meta.to_bytes())
            return f"APPENDUID {res.uidvalidity} {res.uid}", "APPEND completed"
    finally:
        if staged is not None and staged.path is not None:
            staged.path.unlink(missing_ok=True)
    raw = a.message
    meta_bytes = await pool.meta_bytes(raw, s.limits)  # on the loop only when small (mime/pool.py)
    res = await s.store.append(mbox.id, AppendRequest(raw=raw, flags=flags, keywords=frozenset(keywords),
                                                      internal_date=date, meta=meta_bytes))
    return f"APPENDUID {res.uidvalidity} {res.uid}", "APPEND completed"
