"""Sans-I/O IMAP command parser: the formal syntax of RFC 9051 §9 / RFC 3501 §9 over one framed command.

Theory of operation
-------------------
`framer.Framer` (re-exported here) cuts the byte stream into commands, literals included. `parse_command(data)`
walks one command with a `syntax.Cursor` (atoms, quoted strings, literals, lists, sequence sets, dates) and
turns it into a `Command` with typed arguments, or raises `ParseError`, which the session answers with BAD.
One function per command, named after it (`_p_fetch` for FETCH, `_search_key` for SEARCH's keys). Neither
layer touches a socket, the store or the clock.

Invariants
1. `parse_command` raises nothing but `ParseError`, whatever the bytes (fuzzed in tests).
2. The parser recurses at most `syntax.MAX_DEPTH` levels (parenthesised search keys, NOT, OR).
3. Mailbox names come out as the client's text (UTF-8 decoded, undecodable bytes kept as surrogates); the
   session, which knows whether UTF-8 names were enabled, does the modified UTF-7 step (RFC 3501 §5.1.3).
4. Arguments the server does not implement (unknown SELECT, FETCH and STORE modifiers) are
   syntax errors, not silently ignored. The CONDSTORE and QRESYNC ones (RFC 7162 §7) are parsed here; what
   depends on the session (QRESYNC enabled, VANISHED only with UID FETCH) is checked by the handlers.
5. Sets that a client may make as long as it likes (known-uids, seq-match-data) are kept as ranges, never
   expanded: what a command holds stays proportional to its text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from postroom.mime.imap import Section

from .framer import (
    NEED_DATA,
    Event,
    Framer,
    FramingError,
    LiteralRequest,
    RawCommand,
    guess_tag,
)
from .syntax import ATOM_CHARS, MONTHS, STAR, Cursor, ParseError, SeqSet

# ------------------------------------------------------------------------------------------------------------
# Parsed commands


@dataclass(frozen=True, slots=True)
class FetchAtt:
    """One FETCH data item (RFC 9051 §6.4.5 `fetch-att`; BINARY RFC 3516 §4.2, PREVIEW RFC 8970 §3): a section
    as `mime.imap.Section`, a partial as (start octet, length in octets)."""

    name: str  # ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT BODY BODYSTRUCTURE
    #            UID BINARY BINARY.SIZE (BODY with a section is "BODY[]"; BODY.PEEK is BODY[] with peek)
    section: Section | None = None
    section_text: str = ""  # the section as the client wrote it, echoed in the answer
    partial: tuple[int, int] | None = None  # (start, length)
    peek: bool = False
    lazy: bool = False  # PREVIEW (LAZY), RFC 8970 §6


@dataclass(frozen=True, slots=True)
class Key:
    """One search key: `op` is the upper-case key name (or "AND", "SEQ"), `args` its arguments."""

    op: str
    args: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class Login:
    """LOGIN (RFC 9051 §6.2.3): user name and password as text (never logged: session invariant 5)."""

    user: str
    password: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    """AUTHENTICATE (RFC 9051 §6.2.2): the SASL mechanism, upper-case, and the initial response if any."""

    mechanism: str
    initial: bytes | None  # SASL-IR (RFC 4959) still base64; b"=" means an empty response


@dataclass(frozen=True, slots=True)
class Names:
    """A list of names: ENABLE's capabilities (RFC 5161 §3.1) and COMPRESS's mechanism (RFC 4978 §3), upper-case;
    CANCELUPDATE's tags (RFC 5267 §4.3), as sent."""

    items: tuple[str, ...]  # ENABLE capabilities; COMPRESS's one mechanism


@dataclass(frozen=True, slots=True)
class MailboxArg:
    """One mailbox argument (DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT), as the client wrote it (invariant 3)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Qresync:
    """SELECT/EXAMINE's QRESYNC parameter (RFC 7162 §3.2.5): ranges as the client wrote them (no "*")."""

    uidvalidity: int
    modseq: int
    known_uids: tuple[tuple[int, int], ...] | None = None  # None: not given (1:UIDNEXT-1)
    seq_match: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] | None = None  # (seqs, uids)


@dataclass(frozen=True, slots=True)
class SelectArgs:
    """SELECT / EXAMINE with their RFC 4466 select-params (RFC 7162 §3.1.8 CONDSTORE, §3.2.5 QRESYNC)."""

    mailbox: str
    condstore: bool = False
    qresync: Qresync | None = None


@dataclass(frozen=True, slots=True)
class Create:
    """CREATE (RFC 9051 §6.3.4) with CREATE-SPECIAL-USE's USE list (RFC 6154 §3)."""

    mailbox: str
    uses: tuple[str, ...] = ()  # CREATE-SPECIAL-USE (RFC 6154 §3): the USE attributes as given


@dataclass(frozen=True, slots=True)
class GetMetadata:
    """GETMETADATA (RFC 5464 §4.2): options, mailbox ("" for the server) and entry names."""

    mailbox: str
    entries: tuple[str, ...]
    maxsize: int | None = None  # §4.2.1 MAXSIZE
    depth: int = 0  # §4.2.2 DEPTH: 0, 1, or -1 for "infinity"


@dataclass(frozen=True, slots=True)
class SetMetadata:
    """SETMETADATA (RFC 5464 §4.3): mailbox ("" for the server) and (entry, value or None to remove) pairs."""

    mailbox: str
    entries: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class Rename:
    """RENAME (RFC 9051 §6.3.6): the existing name and the new one, as written."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ListArgs:
    """LIST (RFC 9051 §6.3.9, LIST-EXTENDED RFC 5258 §3, LIST-STATUS RFC 5819) or LSUB (RFC 3501 §6.3.9)."""

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()  # LIST-EXTENDED selection options, upper-case
    returns: tuple[str, ...] = ()  # return options, upper-case (STATUS's items in status_items)
    status_items: tuple[str, ...] = ()
    extended: bool = False  # the client used LIST-EXTENDED syntax (RFC 5258 §3)


@dataclass(frozen=True, slots=True)
class StatusArgs:
    """STATUS (RFC 9051 §6.3.11): the mailbox and the status items, upper-case."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CatPart:
    """One cat-part of APPEND ... CATENATE (RFC 4469 §5): `TEXT literal` (url None) or `URL astring` (text b"").
    `at`: the offset in the command of the literal's data (a literal streamed to a staging file left an empty one
    there, session.py `StagedLiteral.at`); -1 for a URL."""

    url: str | None
    text: bytes = b""
    binary: bool = False  # literal8 (RFC 3516 §4.4, as APPEND's own literal)
    at: int = field(default=-1, compare=False)


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of an APPEND: its flags, date-time and literal (RFC 3502 append-message), or its CATENATE
    parts (RFC 4469: then `message` is b"")."""

    flags: tuple[str, ...]
    date: float | None
    message: bytes
    binary: bool  # literal8 (RFC 3516 §4.4)
    catenate: tuple[CatPart, ...] | None = None
    at: int = field(default=-1, compare=False)  # offset of the literal's data in the command (as CatPart.at)


@dataclass(frozen=True, slots=True)
class AppendArgs:
    """APPEND (RFC 9051 §6.3.12) of one message, or several (MULTIAPPEND, RFC 3502): `messages()` gives them all;
    the first one's fields are also here. `date` is seconds since the epoch; `message` the literal's octets."""

    mailbox: str
    flags: tuple[str, ...]
    date: float | None
    message: bytes
    binary: bool  # literal8 (RFC 3516 §4.4)
    more: tuple[AppendMessage, ...] = ()  # MULTIAPPEND (RFC 3502): the second message on
    first: AppendMessage | None = field(default=None, compare=False)  # the first message as parsed

    def messages(self) -> tuple[AppendMessage, ...]:
        """Every message of the command, in order."""
        first = self.first or AppendMessage(self.flags, self.date, self.message, self.binary)
        return (first, *self.more)


@dataclass(frozen=True, slots=True)
class SearchArgs:
    """SEARCH (RFC 9051 §6.4.4; ESEARCH's RETURN, RFC 4731 §3.1): the program as one `Key` tree."""

    key: Key
    charset: str | None = None
    returns: tuple[str, ...] | None = None  # None: no RETURN (plain SEARCH); () : RETURN () = ALL
    partial: tuple[int, int] | None = None  # RETURN (PARTIAL low:high), RFC 5267 §4.4; low <= high


@dataclass(frozen=True, slots=True)
class SortArgs:
    """SORT (RFC 5256 §3, RFC 5957 DISPLAY keys) with ESORT's RETURN (RFC 5267 §3)."""

    criteria: tuple[tuple[str, bool], ...]  # (key, reversed) in order
    charset: str
    key: Key
    returns: tuple[str, ...] | None = None  # as SearchArgs
    partial: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class ThreadArgs:
    """THREAD (RFC 5256 §3): the algorithm's name upper-case, the charset and the search program."""

    algorithm: str
    charset: str
    key: Key


@dataclass(frozen=True, slots=True)
class FetchArgs:
    """FETCH (RFC 9051 §6.4.5) with its CONDSTORE / QRESYNC modifiers (RFC 7162 §3.1.4, §3.2.6)."""

    seqset: SeqSet
    atts: tuple[FetchAtt, ...]
    macro: str = ""  # ALL / FAST / FULL
    changedsince: int | None = None  # RFC 7162 §3.1.4.1 CHANGEDSINCE modifier
    vanished: bool = False  # RFC 7162 §3.2.6 VANISHED modifier (only with CHANGEDSINCE)


@dataclass(frozen=True, slots=True)
class StoreArgs:
    """STORE (RFC 9051 §6.4.6): FLAGS (`mode` ""), +FLAGS or -FLAGS, `.SILENT`, UNCHANGEDSINCE (RFC 7162 §3.1.3)."""

    seqset: SeqSet
    mode: str  # "", "+", "-"
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None  # RFC 7162 §3.1.3 UNCHANGEDSINCE modifier


@dataclass(frozen=True, slots=True)
class CopyArgs:
    """COPY and MOVE (RFC 9051 §6.4.7, §6.4.8): the messages and the destination mailbox."""

    seqset: SeqSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class SeqArg:
    """UID EXPUNGE's UID set (RFC 4315 §2.1)."""

    seqset: SeqSet


@dataclass(frozen=True, slots=True)
class IdArgs:
    """ID (RFC 2971 §3.1): (field, value) pairs as sent; None for NIL."""

    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class AclArgs:
    """SETACL, DELETEACL, GETACL, LISTRIGHTS, MYRIGHTS (RFC 4314 §3): the fields the command has, else ""."""

    mailbox: str
    identifier: str = ""
    rights: str = ""  # SETACL's mod-rights, as sent ("+", "-" or neither first)



@dataclass(frozen=True, slots=True)
class NotifyGroup:
    """One event group of NOTIFY SET (RFC 5465 §8 `event-group`)."""

    filter: str  # SELECTED SELECTED-DELAYED INBOXES PERSONAL SUBSCRIBED SUBTREE MAILBOXES (upper-case)
    mailboxes: tuple[str, ...] = ()  # SUBTREE / MAILBOXES names, as the client wrote them
    events: tuple[str, ...] = ()  # event names as RFC 5465 spells them, others as sent; () for NONE
    fetch_atts: tuple[FetchAtt, ...] = ()  # MessageNew's fetch-att list (RFC 5465 §5.2)


@dataclass(frozen=True, slots=True)
class NotifyArgs:
    """NOTIFY (RFC 5465 §3, §8): SET's event groups, or NONE."""

    groups: tuple[NotifyGroup, ...] | None  # None: NOTIFY NONE
    status: bool = False  # NOTIFY SET STATUS


@dataclass(frozen=True, slots=True)
class QuotaArgs:
    """GETQUOTA and SETQUOTA (RFC 9208 §4.2, §4.1): the quota root's name; SETQUOTA's (resource, limit) pairs,
    resource names upper-case, limits as sent (number64)."""

    root: str
    resources: tuple[tuple[str, int], ...] = ()


Args = (None | Login | Authenticate | Names | MailboxArg | SelectArgs | Create | Rename | ListArgs | StatusArgs
        | AppendArgs | SearchArgs | FetchArgs | StoreArgs | CopyArgs | SeqArg | IdArgs | AclArgs | NotifyArgs
        | GetMetadata | SetMetadata | SortArgs | ThreadArgs | QuotaArgs)


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command (RFC 9051 §9 `command`): its tag, verb, typed arguments (`Args`) and whether it came
    as `UID verb` (§6.4.9). `verb` is the wire name the command table uses (commands.py)."""

    tag: str
    name: str  # upper-case verb; "UID FETCH" etc. keep name "FETCH" with uid=True
    args: Args = None
    uid: bool = False

    @property
    def verb(self) -> str:
        """The wire name: "FETCH", or "UID FETCH" for the UID form (the key of `commands.COMMANDS`)."""
        return ("UID " + self.name) if self.uid else self.name


# ------------------------------------------------------------------------------------------------------------
# Per-command argument parsers


def _p_none(c: Cursor) -> None:
    c.end()


def _p_login(c: Cursor) -> Login:
    c.sp()
    user = c.text(c.astring())
    c.sp()
    pw = c.text(c.astring())
    c.end()
    return Login(user, pw)


def _p_authenticate(c: Cursor) -> Authenticate:
    c.sp()
    mech = c.atom().upper()
    initial = None
    if c.peek() == 0x20:
        c.sp()
        initial = c.chars(ATOM_CHARS + b"=", "an initial response")
    c.end()
    return Authenticate(mech, initial)


def _p_enable(c: Cursor) -> Names:
    items = []
    while c.peek() == 0x20:
        c.sp()
        items.append(c.atom().upper())
    if not items:
        raise c.error("ENABLE needs at least one capability")
    c.end()
    return Names(tuple(items))


def _p_compress(c: Cursor) -> Names:
    """RFC 4978 §5: `"COMPRESS" SP algorithm`; the mechanism comes out upper-case."""
    c.sp()
    mechanism = c.atom().upper()
    c.end()
    return Names((mechanism,))


def _p_mailbox(c: Cursor) -> MailboxArg:
    c.sp()
    name = c.mailbox()
    c.end()
    return MailboxArg(name)


MODSEQ_MAX = (1 << 63) - 1  # RFC 7162 §7 mod-sequence-value: an unsigned 63-bit integer


def _modseq(c: Cursor) -> int:
    """mod-sequence-valzer (RFC 7162 §7). 0 is taken where mod-sequence-value says positive too (CHANGEDSINCE,
    QRESYNC): it asks for everything, which is what a client sending it wants."""
    return c.number(limit=MODSEQ_MAX)


def _uid_ranges(c: Cursor, what: str) -> tuple[tuple[int, int], ...]:
    """A sequence-set without "*" or "$" (RFC 7162 §7 known-uids, known-sequence-set, known-uid-set)."""
    s = c.seqset()
    if s.saved or any(lo == STAR or hi == STAR for lo, hi in s.ranges):
        raise c.error(f"{what}: \"*\" and \"$\" are not allowed")
    return tuple((min(lo, hi), max(lo, hi)) for lo, hi in s.ranges)


def _count(ranges: tuple[tuple[int, int], ...]) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def _qresync(c: Cursor) -> Qresync:
    """RFC 7162 §7 qresync-param, after "QRESYNC SP"."""
    c.expect(b"(")
    uidvalidity = c.number(nonzero=True)
    c.sp()
    modseq = _modseq(c)
    known: tuple[tuple[int, int], ...] | None = None
    match = None
    if c.take(b" "):
        if c.peek() != 0x28:
            known = _uid_ranges(c, "known-uids")
            if c.take(b" "):
                if c.peek() != 0x28:
                    raise c.error("Expected seq-match-data")
        if c.peek() == 0x28:  # RFC 7162 §3.2.5.2 seq-match-data
            c.expect(b"(")
            seqs = _uid_ranges(c, "known-sequence-set")
            c.sp()
            uids = _uid_ranges(c, "known-uid-set")
            c.expect(b")")
            if _count(seqs) != _count(uids):  # the two sets pair up element by element
                raise c.error("seq-match-data: the sets differ in size")
            match = (seqs, uids)
    c.expect(b")")
    return Qresync(uidvalidity, modseq, known, match)


def _p_select(c: Cursor) -> SelectArgs:
    c.sp()
    name = c.mailbox()
    condstore = False
    qresync = None
    if c.take(b" ("):  # RFC 4466 select-params
        while True:
            word = c.atom().upper()
            if word == "CONDSTORE":  # RFC 7162 §3.1.8
                condstore = True
            elif word == "QRESYNC" and qresync is None:  # RFC 7162 §3.2.5
                c.sp()
                qresync = _qresync(c)
            else:
                raise c.error(f"Unknown SELECT parameter {word[:40]}")
            if c.take(b")"):
                break
            c.sp()
    c.end()
    return SelectArgs(name, condstore, qresync)


def _p_create(c: Cursor) -> Create:
    """RFC 4466 §2.2 create-params, of which RFC 6154 §6 defines one: "USE" SP "(" [use-attr *(SP use-attr)] ")",
    each use-attr a backslash and an atom. Any other parameter is BAD (parser invariant 4)."""
    c.sp()
    name = c.mailbox()
    uses: list[str] = []
    if c.peek() == 0x20 and c.data[c.pos:].strip(b" "):
        c.sp()
        c.expect(b"(")
        seen = False
        while True:
            word = c.atom().upper()
            if word != "USE" or seen:
                raise c.error(f"Unknown CREATE parameter {word[:40]}")
            seen = True
            c.sp()
            for attr in c.flag_list():
                if not attr.startswith("\\") or attr == "\\*":
                    raise c.error("A special use is a backslash and an atom")
                uses.append(attr)
            if c.take(b")"):
                break
            c.sp()
    c.end()
    return Create(name, tuple(uses))


def _p_rename(c: Cursor) -> Rename:
    c.sp()
    old = c.mailbox()
    c.sp()
    new = c.mailbox()
    c.end()
    return Rename(old, new)


_LIST_SELECTION = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_LIST_SELECTION_BASE = {"SUBSCRIBED", "SPECIAL-USE"}  # RFC 5258 §6 list-select-base-opt (+ RFC 6154 §6)
_LIST_RETURN = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS", "MYRIGHTS"}  # MYRIGHTS: RFC 8440


def _p_list(c: Cursor) -> ListArgs:
    c.sp()
    selection: list[str] = []
    extended = False
    if c.peek() == 0x28:  # RFC 5258 §6 list-select-opts
        extended = True
        for opt in c.paren_list():
            opt = opt.upper()
            if opt not in _LIST_SELECTION:
                raise c.error(f"Unknown LIST selection option {opt}")  # RFC 5258 §3: BAD
            if opt not in selection:  # RFC 5258 §3: an option given twice counts once
                selection.append(opt)
        c.sp()
    ref = c.mailbox() if c.peek() != 0x22 else c.text(c.quoted())
    c.sp()
    patterns: list[str] = []
    if c.peek() == 0x28:
        extended = True
        c.expect(b"(")
        while True:
            patterns.append(c.list_mailbox())
            if c.take(b")"):
                break
            c.sp()
    else:
        patterns.append(c.list_mailbox())
    returns: list[str] = []
    status_items: list[str] = []
    if c.peek() == 0x20 and c.data[c.pos + 1:c.pos + 7].upper() == b"RETURN":
        extended = True
        c.sp()
        c.expect(b"RETURN")
        c.sp()
        c.expect(b"(")
        while not c.take(b")"):
            opt = c.atom().upper()
            if opt not in _LIST_RETURN:
                raise c.error(f"Unknown LIST return option {opt}")
            if opt not in returns:
                returns.append(opt)
            if opt == "STATUS":  # RFC 5819
                c.sp()
                status_items = [s.upper() for s in c.paren_list()]
                _check_status_items(c, status_items)
            if c.peek() == 0x20:
                c.sp()
    if "RECURSIVEMATCH" in selection and not _LIST_SELECTION_BASE.intersection(selection):
        # RFC 5258 §3.1 (RFC 9051 §6.3.9.1): RECURSIVEMATCH alone, or only with REMOTE, is BAD; it modifies a
        # base option (RFC 5258 §6 list-select-mod-opt).
        raise c.error("RECURSIVEMATCH needs a selection option other than REMOTE")
    c.end()
    return ListArgs(ref, tuple(patterns), tuple(selection), tuple(returns), tuple(status_items), extended)


def _p_lsub(c: Cursor) -> ListArgs:
    c.sp()
    ref = c.mailbox()
    c.sp()
    pattern = c.list_mailbox()
    c.end()
    return ListArgs(ref, (pattern,))


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "APPENDLIMIT",
                "HIGHESTMODSEQ",  # RFC 7162 §3.1.7
                "MAILBOXID",  # RFC 8474 §4.2
                "DELETED-STORAGE"}  # RFC 9208 §4.2.2 (QUOTA=RES-STORAGE)


def _check_status_items(c: Cursor, items: list[str]) -> None:
    if not items:
        raise c.error("Empty STATUS item list")
    for item in items:
        if item not in STATUS_ITEMS:
            raise c.error(f"Unknown STATUS item {item}")


def _p_status(c: Cursor) -> StatusArgs:
    c.sp()
    name = c.mailbox()
    c.sp()
    items = [s.upper() for s in c.paren_list()]
    _check_status_items(c, items)
    c.end()
    return StatusArgs(name, tuple(items))


def _append_message(c: Cursor) -> AppendMessage:
    """RFC 3502 §6: append-message = append-opts SP append-data, append-opts = [SP flag-list] [SP date-time]
    (the SP before it already taken)."""
    flags: list[str] = []
    date = None
    if c.peek() == 0x28:
        flags = c.flag_list()
        c.sp()
    if c.peek() == 0x22:
        date = c.date_time()
        c.sp()
    if c.peek() in (0x43, 0x63):  # "C": RFC 4469 §5 append-data-ext
        return AppendMessage(tuple(flags), date, b"", False, _catenate(c))
    if c.peek() not in (0x7B, 0x7E):
        raise c.error("Expected the message literal")
    message, binary = c.literal(allow8=True)
    return AppendMessage(tuple(flags), date, message, binary, None, c.pos - len(message))


def _catenate(c: Cursor) -> tuple[CatPart, ...]:
    """RFC 4469 §5: "CATENATE" SP "(" cat-part *(SP cat-part) ")", cat-part = text-literal / url,
    text-literal = "TEXT" SP literal, url = "URL" SP astring. TEXT also takes a literal8, as APPEND's own
    message does with BINARY (RFC 3516 §4.4; Dovecot does the same)."""
    if c.atom().upper() != "CATENATE":
        raise c.error("Expected the message literal or CATENATE")
    c.sp()
    c.expect(b"(")
    parts: list[CatPart] = []
    while True:
        kind = c.atom().upper()
        c.sp()
        if kind == "TEXT":
            if c.peek() not in (0x7B, 0x7E):
                raise c.error("TEXT needs a literal")
            text, binary = c.literal(allow8=True)
            parts.append(CatPart(None, text, binary, c.pos - len(text)))
        elif kind == "URL":
            parts.append(CatPart(c.text(c.astring())))
        else:
            raise c.error("Expected TEXT or URL")
        if c.take(b")"):
            return tuple(parts)
        c.sp()


def _p_append(c: Cursor) -> AppendArgs:
    c.sp()
    name = c.mailbox()
    c.sp()
    first = _append_message(c)
    more: list[AppendMessage] = []
    while c.peek() == 0x20 and c.data[c.pos:].strip(b" "):  # RFC 3502: 1*append-message
        c.sp()
        more.append(_append_message(c))
    c.end()
    return AppendArgs(name, first.flags, first.date, first.message, first.binary, tuple(more), first)


def _p_id(c: Cursor) -> IdArgs:
    c.sp()
    if c.take(b"NIL"):
        c.end()
        return IdArgs(None)
    c.expect(b"(")
    params: list[tuple[str, str | None]] = []
    while not c.take(b")"):
        k = c.text(c.string())
        c.sp()
        v = c.nstring()
        params.append((k, None if v is None else c.text(v)))
        if len(params) > 30:  # RFC 2971 §3.3: at most 30 pairs
            raise c.error("Too many ID parameters")
        if c.peek() == 0x20:
            c.sp()
    c.end()
    return IdArgs(tuple(params))


# ---- METADATA (RFC 5464 §5 formal syntax)

MAX_METADATA_ITEMS = 1000  # entries named in one GETMETADATA or SETMETADATA


def _entry(c: Cursor) -> str:
    """entry = astring (RFC 5464 §5); its rules (`store.names.metadata_entry`) are checked by the handler."""
    return c.text(c.astring())


def _p_getmetadata(c: Cursor) -> GetMetadata:
    c.sp()
    maxsize: int | None = None
    depth = 0
    if c.peek() == 0x28:  # getmetadata-options = "(" getmetadata-option *(SP getmetadata-option) ")"
        c.pos += 1
        seen: set[str] = set()
        while True:
            opt = c.atom().upper()
            if opt in seen or opt not in ("MAXSIZE", "DEPTH"):
                raise c.error(f"Unknown or repeated GETMETADATA option {opt[:40]}")
            seen.add(opt)
            c.sp()
            if opt == "MAXSIZE":
                maxsize = c.number()
            else:
                word = c.atom().lower()
                if word not in ("0", "1", "infinity"):
                    raise c.error("DEPTH is 0, 1 or infinity")
                depth = -1 if word == "infinity" else int(word)
            if c.take(b")"):
                break
            c.sp()
        c.sp()
    name = c.mailbox()
    c.sp()
    entries: list[str] = []
    if c.take(b"("):
        while True:
            entries.append(_entry(c))
            if len(entries) > MAX_METADATA_ITEMS:
                raise c.error("Too many entries")
            if c.take(b")"):
                break
            c.sp()
    else:
        entries.append(_entry(c))
    c.end()
    return GetMetadata(name, tuple(entries), maxsize, depth)


def _p_setmetadata(c: Cursor) -> SetMetadata:
    c.sp()
    name = c.mailbox()
    c.sp()
    c.expect(b"(")
    entries: list[tuple[str, bytes | None]] = []
    while True:
        entry = _entry(c)
        c.sp()
        value: bytes | None
        if c.peek() in (0x7B, 0x7E):  # value = nstring / literal8
            value = c.literal(allow8=True)[0]
        else:
            value = c.nstring()
        entries.append((entry, value))
        if len(entries) > MAX_METADATA_ITEMS:
            raise c.error("Too many entries")
        if c.take(b")"):
            break
        c.sp()
    c.end()
    return SetMetadata(name, tuple(entries))


def _p_expunge_uid(c: Cursor) -> SeqArg:
    c.sp()
    s = c.seqset()
    c.end()
    return SeqArg(s)


# ---- SEARCH (RFC 9051 §6.4.4, RFC 4731 ESEARCH, RFC 5182 SEARCHRES)

_FLAG_KEYS = {"ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT",
              "UNFLAGGED", "UNSEEN", "ALL", "NEW", "OLD", "RECENT",
              "SAVEDATESUPPORTED"}  # RFC 8514 §4.3
_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
              "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}  # RFC 8514 §4.3
SEARCH_RETURN = {"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "CONTEXT"}  # RFC 5267 §4.2, §4.3: CONTEXT=SEARCH
NO_DATA_OPTIONS = ("UPDATE", "CONTEXT", "SAVE")  # return options that ask for no result data (RFC 5267 §4.1)


def _search_key(c: Cursor) -> Key:
    ch = c.peek()
    if ch == 0x28:
        c.pos += 1
        c.enter()
        keys = [_search_key(c)]
        while not c.take(b")"):
            c.sp()
            keys.append(_search_key(c))
        c.leave()
        return Key("AND", tuple(keys))
    if ch == 0x24 or ch == 0x2A or 0x30 <= ch <= 0x39:
        return Key("SEQ", (c.seqset(),))
    word = c.atom().upper()
    if word in _FLAG_KEYS:
        return Key(word)
    if word in _STRING_KEYS:
        c.sp()
        return Key(word, (c.text(c.astring()),))
    if word in _DATE_KEYS:
        c.sp()
        return Key(word, (c.date(),))
    if word in ("KEYWORD", "UNKEYWORD"):
        c.sp()
        return Key(word, (c.atom(),))
    if word == "HEADER":
        c.sp()
        name = c.text(c.astring())
        c.sp()
        return Key(word, (name, c.text(c.astring())))
    if word in ("LARGER", "SMALLER"):
        c.sp()
        return Key(word, (c.number(limit=(1 << 63) - 1),))
    if word in ("OLDER", "YOUNGER"):  # RFC 5032 §4: ("OLDER" / "YOUNGER") SP nz-number, seconds
        c.sp()
        return Key(word, (c.number(nonzero=True),))
    if word == "UID":
        c.sp()
        return Key(word, (c.seqset(),))
    if word == "MODSEQ":  # RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
        c.sp()
        if c.peek() == 0x22:
            _entry_name(c)  # one MODSEQ per message here: the entry only has to be well formed
            c.sp()
            if c.atom().lower() not in ("priv", "shared", "all"):
                raise c.error("Expected priv, shared or all")
            c.sp()
        return Key(word, (_modseq(c),))
    if word in ("EMAILID", "THREADID"):  # RFC 8474 §6: objectid = 1*255(ALPHA / DIGIT / "_" / "-")
        c.sp()
        return Key(word, (_objectid(c),))
    if word == "NOT":
        c.sp()
        c.enter()
        k = _search_key(c)
        c.leave()
        return Key(word, (k,))
    if word == "OR":
        c.sp()
        c.enter()
        a = _search_key(c)
        c.sp()
        b = _search_key(c)
        c.leave()
        return Key(word, (a, b))
    raise c.error(f"Unknown search key {word}")


def _entry_name(c: Cursor) -> str:
    """RFC 7162 §7 entry-flag-name: DQUOTE "/flags/" attr-flag DQUOTE (a system flag's "\\" escaped)."""
    name = c.text(c.quoted())
    flag = name[7:] if name[:7].lower() == "/flags/" else ""
    body = flag[1:] if flag.startswith("\\") else flag
    if not body or any(ord(ch) > 0x7E or ch.encode() not in ATOM_CHARS for ch in body):
        raise c.error("Expected an entry name \"/flags/<flag>\"")
    return name


_OBJECTID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _objectid(c: Cursor) -> str:
    """RFC 8474 §6 objectid; a quoted form is accepted too (a string argument)."""
    quoted = c.take(b'"')
    value = c.chars(_OBJECTID_CHARS, "an object id").decode("ascii")
    if quoted:
        c.expect(b'"')
    if len(value) > 255:
        raise c.error("Object id too long")
    return value


def _return_opts(c: Cursor, allowed: set[str]) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """`RETURN (...)` of SEARCH (RFC 4731 §3.1) and SORT (RFC 5267 §3), with PARTIAL low:high (RFC 5267 §4.4:
    partial-range = nz-number ":" nz-number; the two numbers may come in either order)."""
    c.expect(b"(")
    opts: list[str] = []
    partial = None
    while not c.take(b")"):
        o = c.atom().upper()
        if o == "PARTIAL":
            if partial is not None:
                raise c.error("PARTIAL given twice")
            c.sp()
            a = c.number(nonzero=True)
            c.expect(b":")
            b = c.number(nonzero=True)
            partial = (min(a, b), max(a, b))
        elif o not in allowed:
            raise c.error(f"Unknown return option {o}")
        opts.append(o)
        if c.peek() == 0x20:
            c.sp()
            if c.peek() == 0x29:
                raise c.error("Expected a return option")
    return tuple(opts), partial


def _search_program(c: Cursor) -> Key:
    keys = [_search_key(c)]
    while c.peek() == 0x20 and c.data[c.pos + 1:].strip(b" "):
        c.sp()
        keys.append(_search_key(c))
    c.end()
    return keys[0] if len(keys) == 1 else Key("AND", tuple(keys))


def _p_search(c: Cursor) -> SearchArgs:
    c.sp()
    returns: tuple[str, ...] | None = None
    partial = None
    if c.take(b"RETURN "):
        returns, partial = _return_opts(c, SEARCH_RETURN)
        c.sp()
    charset = None
    if c.take(b"CHARSET "):
        charset = c.text(c.astring()).upper()
        c.sp()
    return SearchArgs(_search_program(c), charset, returns, partial)


# ---- SORT and THREAD (RFC 5256 §3, RFC 5957, RFC 5267)

SORT_KEYS = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
SORT_RETURN = {"MIN", "MAX", "ALL", "COUNT", "UPDATE", "CONTEXT"}  # RFC 5267 §3, §4 (SAVE: SEARCH only)
MAX_SORT_CRITERIA = 20  # each key is meaningful once; a longer list is an attack on the sort's work


def _p_sort(c: Cursor) -> SortArgs:
    c.sp()
    returns: tuple[str, ...] | None = None
    partial = None
    if c.take(b"RETURN "):  # RFC 5267 §3: sort =/ ["UID" SP] "SORT" [search-return-opts] SP sort-criteria ...
        returns, partial = _return_opts(c, SORT_RETURN)
        c.sp()
    c.expect(b"(")
    criteria: list[tuple[str, bool]] = []
    while True:
        reverse = False
        word = c.atom().upper()
        if word == "REVERSE":
            reverse = True
            c.sp()
            word = c.atom().upper()
        if word not in SORT_KEYS:
            raise c.error(f"Unknown sort key {word}")
        criteria.append((word, reverse))
        if len(criteria) > MAX_SORT_CRITERIA:
            raise c.error("Too many sort criteria")
        if c.take(b")"):
            break
        c.sp()
    c.sp()
    charset = c.text(c.astring()).upper()  # RFC 5256 §3: the charset is not optional in SORT
    c.sp()
    return SortArgs(tuple(criteria), charset, _search_program(c), returns, partial)


def _p_cancelupdate(c: Cursor) -> Names:
    """RFC 5267 §5: command-select =/ "CANCELUPDATE" 1*(SP quoted): the tags of searching commands."""
    tags: list[str] = []
    while c.peek() == 0x20:
        c.sp()
        tags.append(c.text(c.quoted()))
    if not tags:
        raise c.error("Expected the tag of a searching command")
    c.end()
    return Names(tuple(tags))


def _p_thread(c: Cursor) -> ThreadArgs:
    c.sp()
    algorithm = c.atom().upper()
    c.sp()
    charset = c.text(c.astring()).upper()
    c.sp()
    return ThreadArgs(algorithm, charset, _search_program(c))


# ---- FETCH (RFC 9051 §6.4.5, RFC 3516 BINARY)

_SIMPLE_ATTS = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT",
                "BODYSTRUCTURE", "UID", "BODY", "MODSEQ",  # MODSEQ: RFC 7162 §3.1.4.2
                "SAVEDATE",  # RFC 8514 §4.2
                "EMAILID", "THREADID"}  # RFC 8474 §5
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SPECIFIERS = ("HEADER.FIELDS.NOT", "HEADER.FIELDS", "HEADER", "TEXT", "MIME")


def _section(c: Cursor, binary: bool) -> tuple[Section, str]:
    start = c.pos
    c.expect(b"[")
    nums: list[int] = []
    spec = ""
    fields: list[str] = []
    dot = False  # the part number ended with "." (a specifier must follow)
    while 0x30 <= c.peek() <= 0x39:
        nums.append(c.number(nonzero=True))
        if len(nums) > 100:
            raise c.error("Section too deep")
        dot = c.take(b".")
        if not dot:
            break
    if c.peek() != 0x5D or dot:
        if nums and not dot:
            raise c.error("Bad section")
        if binary:
            raise c.error("BINARY takes a part number only")
        for s in _SPECIFIERS:
            if c.take(s.encode()):
                spec = s
                break
        else:
            raise c.error("Bad section")
        if spec == "MIME" and not nums:
            raise c.error("MIME needs a part number")  # RFC 9051 §6.4.5
        if spec.startswith("HEADER.FIELDS"):
            c.sp()
            c.expect(b"(")
            while True:
                fields.append(c.text(c.astring()).upper())
                if c.take(b")"):
                    break
                c.sp()
    c.expect(b"]")
    text = c.data[start + 1:c.pos - 1].decode("utf-8", "surrogateescape")
    return Section(tuple(nums), spec, tuple(fields)), text


def _partial(c: Cursor) -> tuple[int, int] | None:
    if not c.take(b"<"):
        return None
    start = c.number()
    c.expect(b".")
    length = c.number(nonzero=True)
    c.expect(b">")
    return (start, length)


def _fetch_att(c: Cursor) -> FetchAtt:
    word = c.chars(ATOM_CHARS.replace(b"[", b""), "a fetch attribute").decode("ascii").upper()
    if word in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        if c.peek() != 0x5B:
            if word == "BODY":
                return FetchAtt("BODY")
            raise c.error(f"{word} needs a section")
        binary = word.startswith("BINARY")
        section, text = _section(c, binary)
        if word == "BINARY.SIZE":
            return FetchAtt("BINARY.SIZE", section, text)
        part = _partial(c)
        return FetchAtt("BINARY" if binary else "BODY[]", section, text, part, word.endswith(".PEEK"))
    if word in _SIMPLE_ATTS:
        return FetchAtt(word)
    if word == "PREVIEW":  # RFC 8970 §6: "PREVIEW" [SP "(" preview-mod *(SP preview-mod) ")"]
        lazy = False
        if c.startswith(b" ("):
            save = c.pos
            c.sp()
            try:
                mods = [m.upper() for m in c.paren_list()]
            except ParseError:
                mods = []
            if mods and all(m == "LAZY" for m in mods):
                lazy = True
            else:  # not preview modifiers: FETCH modifiers (RFC 4466) after a bare PREVIEW, or an error later
                c.pos = save
        return FetchAtt("PREVIEW", lazy=lazy)
    raise c.error(f"Unknown fetch attribute {word}")


def _p_fetch(c: Cursor) -> FetchArgs:
    c.sp()
    seqset = c.seqset()
    c.sp()
    atts: list[FetchAtt] = []
    macro = ""
    if c.take(b"("):
        while True:
            atts.append(_fetch_att(c))
            if len(atts) > 1000:
                raise c.error("Too many fetch attributes")
            if c.take(b")"):
                break
            c.sp()
    else:
        save = c.pos
        word = c.chars(ATOM_CHARS.replace(b"[", b""), "a fetch attribute").decode("ascii").upper()
        if word in MACROS:
            macro = word
            atts = [FetchAtt(n) for n in MACROS[word]]
        else:
            c.pos = save
            atts.append(_fetch_att(c))
    changedsince: int | None = None
    vanished = False
    if c.take(b" ("):  # RFC 4466 fetch-modifiers
        while True:
            word = c.atom().upper()
            if word == "CHANGEDSINCE" and changedsince is None:  # RFC 7162 §3.1.4.1
                c.sp()
                changedsince = _modseq(c)
            elif word == "VANISHED" and not vanished:  # RFC 7162 §3.2.6
                vanished = True
            else:
                raise c.error(f"Unknown or repeated FETCH modifier {word[:40]}")
            if c.take(b")"):
                break
            c.sp()
        if vanished and changedsince is None:  # RFC 7162 §3.2.6: MUST be BAD
            raise c.error("VANISHED needs CHANGEDSINCE")
    c.end()
    return FetchArgs(seqset, tuple(atts), macro, changedsince, vanished)


def _p_store(c: Cursor) -> StoreArgs:
    c.sp()
    seqset = c.seqset()
    c.sp()
    unchangedsince: int | None = None
    if c.take(b"("):  # RFC 4466 store-modifiers
        while True:
            word = c.atom().upper()
            if word == "UNCHANGEDSINCE" and unchangedsince is None:  # RFC 7162 §3.1.3: only one
                c.sp()
                unchangedsince = _modseq(c)
            else:
                raise c.error(f"Unknown or repeated STORE modifier {word[:40]}")
            if c.take(b")"):
                break
            c.sp()
        c.sp()
    mode = ""
    if c.peek() in (0x2B, 0x2D):
        mode = chr(c.peek())
        c.pos += 1
    c.expect(b"FLAGS")
    silent = c.take(b".SILENT")
    c.sp()
    if c.peek() == 0x28:
        flags = c.flag_list()
    else:
        flags = [c.flag()]
        while c.peek() == 0x20 and c.data[c.pos + 1:].strip(b" "):
            c.sp()
            flags.append(c.flag())
    c.end()
    return StoreArgs(seqset, mode, silent, tuple(flags), unchangedsince)


def _p_copy(c: Cursor) -> CopyArgs:
    c.sp()
    seqset = c.seqset()
    c.sp()
    name = c.mailbox()
    c.end()
    return CopyArgs(seqset, name)


def _acl_parser(identifier: bool, rights: bool) -> Callable[[Cursor], AclArgs]:
    """RFC 4314 §7: `mailbox [SP identifier [SP mod-rights]]`, identifier and rights being astrings."""

    def parse(c: Cursor) -> AclArgs:
        c.sp()
        name = c.mailbox()
        who = mod = ""
        if identifier:
            c.sp()
            who = c.text(c.astring())
        if rights:
            c.sp()
            mod = c.text(c.astring())
        c.end()
        return AclArgs(name, who, mod)

    return parse


# ---- QUOTA (RFC 9208 §7)

NUMBER64_MAX = (1 << 63) - 1  # RFC 9051 §9 number64: 0 to 2^63 - 1


def _p_getquota(c: Cursor) -> QuotaArgs:
    """`getquota = "GETQUOTA" SP quota-root-name`, quota-root-name = astring (RFC 9208 §7)."""
    c.sp()
    root = c.text(c.astring())
    c.end()
    return QuotaArgs(root)


def _p_setquota(c: Cursor) -> QuotaArgs:
    """`setquota = "SETQUOTA" SP quota-root-name SP setquota-list`; `setquota-list = "(" [setquota-resource
    *(SP setquota-resource)] ")"`; `setquota-resource = resource-name SP resource-limit` (RFC 9208 §7)."""
    c.sp()
    root = c.text(c.astring())
    c.sp()
    c.expect(b"(")
    pairs: list[tuple[str, int]] = []
    while c.peek() != 0x29:
        if pairs:
            c.sp()
        name = c.atom().upper()
        c.sp()
        pairs.append((name, c.number(limit=NUMBER64_MAX)))
    c.expect(b")")
    c.end()
    return QuotaArgs(root, tuple(pairs))


# ---- NOTIFY (RFC 5465 §8)

NOTIFY_EVENTS = {e.upper(): e for e in ("MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange",
                                         "MailboxName", "SubscriptionChange", "MailboxMetadataChange",
                                         "ServerMetadataChange")}
NOTIFY_MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange"})
_NOTIFY_SELECTED = {"SELECTED", "SELECTED-DELAYED"}
_NOTIFY_OTHER = {"INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"}


def _notify_group(c: Cursor) -> NotifyGroup:
    c.expect(b"(")
    word = c.atom().upper()
    if word not in _NOTIFY_SELECTED and word not in _NOTIFY_OTHER:
        raise c.error(f"Unknown NOTIFY mailbox filter {word[:40]}")
    names: list[str] = []
    if word in ("SUBTREE", "MAILBOXES"):  # one-or-more-mailbox
        c.sp()
        if c.take(b"("):
            while True:
                names.append(c.mailbox())
                if c.take(b")"):
                    break
                c.sp()
        else:
            names.append(c.mailbox())
    c.sp()
    events: list[str] = []
    atts: list[FetchAtt] = []
    if not c.take(b"NONE"):
        c.expect(b"(")
        while True:
            name = c.atom()
            event = NOTIFY_EVENTS.get(name.upper(), name)  # event-ext: any atom, answered [BADEVENT] later
            if event in events:
                raise c.error(f"{event} given twice")
            events.append(event)
            if event == "MessageNew" and c.peek() == 0x20 and c.data[c.pos + 1:c.pos + 2] == b"(":
                c.sp()
                c.expect(b"(")
                while True:
                    atts.append(_fetch_att(c))
                    if len(atts) > 100:
                        raise c.error("Too many fetch attributes")
                    if c.take(b")"):
                        break
                    c.sp()
            if c.take(b")"):
                break
            c.sp()
    c.expect(b")")
    ev = set(events)
    # RFC 5465 §5: MessageNew and MessageExpunge come together or not at all; FlagChange and AnnotationChange
    # need both. Otherwise "the server MUST respond with the tagged BAD response".
    if ("MessageNew" in ev) != ("MessageExpunge" in ev):
        raise c.error("MessageNew and MessageExpunge must be given together")
    if ev & {"FlagChange", "AnnotationChange"} and "MessageNew" not in ev:
        raise c.error("FlagChange and AnnotationChange need MessageNew and MessageExpunge")
    if word in _NOTIFY_SELECTED and ev - NOTIFY_MESSAGE_EVENTS:
        # RFC 5465 §6.1 and the §8 ABNF: the selected mailbox filters take message events only.
        raise c.error(f"{word} takes message events only")
    return NotifyGroup(word, tuple(names), tuple(events), tuple(atts))


def _p_notify(c: Cursor) -> NotifyArgs:
    c.sp()
    if c.take(b"NONE"):
        c.end()
        return NotifyArgs(None)
    c.expect(b"SET")
    c.sp()
    status = False
    if c.take(b"STATUS"):
        status = True
        c.sp()
    groups = [_notify_group(c)]
    while c.peek() == 0x20 and c.data[c.pos + 1:].strip(b" "):
        c.sp()
        groups.append(_notify_group(c))
    c.end()
    if sum(g.filter in _NOTIFY_SELECTED for g in groups) > 1:
        raise c.error("Only one SELECTED or SELECTED-DELAYED filter")  # RFC 5465 §8 filter-mailboxes-selected
    return NotifyArgs(tuple(groups), status)


_PARSERS: dict[str, Callable[[Cursor], Args]] = {
    "CAPABILITY": _p_none, "NOOP": _p_none, "LOGOUT": _p_none, "STARTTLS": _p_none, "CHECK": _p_none,
    "CLOSE": _p_none, "UNSELECT": _p_none, "IDLE": _p_none, "NAMESPACE": _p_none, "EXPUNGE": _p_none,
    "LOGIN": _p_login, "AUTHENTICATE": _p_authenticate, "ENABLE": _p_enable,
    "SELECT": _p_select, "EXAMINE": _p_select, "CREATE": _p_create, "DELETE": _p_mailbox,
    "SUBSCRIBE": _p_mailbox, "UNSUBSCRIBE": _p_mailbox, "RENAME": _p_rename,
    "LIST": _p_list, "LSUB": _p_lsub, "STATUS": _p_status, "APPEND": _p_append, "ID": _p_id,
    "SEARCH": _p_search, "FETCH": _p_fetch, "STORE": _p_store, "COPY": _p_copy, "MOVE": _p_copy,
    "COMPRESS": _p_compress, "UNAUTHENTICATE": _p_none, "NOTIFY": _p_notify,
    "GETMETADATA": _p_getmetadata, "SETMETADATA": _p_setmetadata,
    "SORT": _p_sort, "THREAD": _p_thread, "CANCELUPDATE": _p_cancelupdate,
    "GETQUOTA": _p_getquota, "GETQUOTAROOT": _p_mailbox, "SETQUOTA": _p_setquota,  # RFC 9208
}
_PARSERS.update({  # RFC 4314 §3 (ACL)
    "SETACL": _acl_parser(True, True), "DELETEACL": _acl_parser(True, False), "GETACL": _acl_parser(False, False),
    "LISTRIGHTS": _acl_parser(True, False), "MYRIGHTS": _acl_parser(False, False),
})
_UID_PARSERS: dict[str, Callable[[Cursor], Args]] = {
    "FETCH": _p_fetch, "SEARCH": _p_search, "STORE": _p_store, "COPY": _p_copy, "MOVE": _p_copy,
    "EXPUNGE": _p_expunge_uid, "SORT": _p_sort, "THREAD": _p_thread,
}
COMMANDS = frozenset(_PARSERS)  # the verbs parse_command knows (their handlers: commands.py)
UID_COMMANDS = frozenset(_UID_PARSERS)  # the verbs it knows after "UID " (RFC 9051 §6.4.9)


def parse_command(data: bytes) -> Command:
    """Parse one framed command (RFC 9051 §9 `command`). Raises ParseError (answer: BAD)."""
    tag = guess_tag(data)
    if tag == "*":
        raise ParseError("*", "Missing or invalid tag")
    c = Cursor(data, tag)
    c.pos = len(tag) + 1
    try:
        verb = c.atom().upper()
        uid = False
        if verb == "UID":
            c.sp()
            verb = c.atom().upper()
            fn = _UID_PARSERS.get(verb)
            uid = True
        else:
            fn = _PARSERS.get(verb)
        if fn is None:
            raise c.error(f"Unknown command {verb[:40]}")
        return Command(tag, verb, fn(c), uid)
    except ParseError:
        raise
    except (ValueError, IndexError, OverflowError, RecursionError) as e:  # invariant 1
        raise ParseError(tag, f"Invalid arguments ({type(e).__name__})") from None


__all__ = [
    "COMMANDS",
    "MONTHS",
    "NEED_DATA",
    "STAR",
    "CatPart",
    "Command",
    "Event",
    "FetchAtt",
    "Framer",
    "FramingError",
    "Key",
    "LiteralRequest",
    "NotifyArgs",
    "NotifyGroup",
    "ParseError",
    "QuotaArgs",
    "RawCommand",
    "SeqSet",
    "SortArgs",
    "ThreadArgs",
    "UID_COMMANDS",
    "guess_tag",
    "parse_command",
]
