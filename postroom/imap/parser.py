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
4. Arguments the server does not implement (SELECT/FETCH/STORE modifiers of CONDSTORE) are syntax errors,
   not silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    mechanism: str
    initial: bytes | None  # SASL-IR (RFC 4959) still base64; b"=" means an empty response


@dataclass(frozen=True, slots=True)
class Names:
    items: tuple[str, ...]  # ENABLE capabilities


@dataclass(frozen=True, slots=True)
class MailboxArg:
    mailbox: str


@dataclass(frozen=True, slots=True)
class Create:
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
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ListArgs:
    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()  # LIST-EXTENDED selection options, upper-case
    returns: tuple[str, ...] = ()  # return options, upper-case (STATUS's items in status_items)
    status_items: tuple[str, ...] = ()
    extended: bool = False  # the client used LIST-EXTENDED syntax (RFC 5258 §3)


@dataclass(frozen=True, slots=True)
class StatusArgs:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of an APPEND: its flags, date-time and literal (RFC 3502 append-message)."""

    flags: tuple[str, ...]
    date: float | None
    message: bytes
    binary: bool  # literal8 (RFC 3516 §4.4)


@dataclass(frozen=True, slots=True)
class AppendArgs:
    mailbox: str
    flags: tuple[str, ...]
    date: float | None
    message: bytes
    binary: bool  # literal8 (RFC 3516 §4.4)
    more: tuple[AppendMessage, ...] = ()  # MULTIAPPEND (RFC 3502): the second message on

    def messages(self) -> tuple[AppendMessage, ...]:
        """Every message of the command, in order."""
        return (AppendMessage(self.flags, self.date, self.message, self.binary), *self.more)


@dataclass(frozen=True, slots=True)
class SearchArgs:
    key: Key
    charset: str | None = None
    returns: tuple[str, ...] | None = None  # None: no RETURN (plain SEARCH); () : RETURN () = ALL


@dataclass(frozen=True, slots=True)
class FetchArgs:
    seqset: SeqSet
    atts: tuple[FetchAtt, ...]
    macro: str = ""  # ALL / FAST / FULL


@dataclass(frozen=True, slots=True)
class StoreArgs:
    seqset: SeqSet
    mode: str  # "", "+", "-"
    silent: bool
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CopyArgs:
    seqset: SeqSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class SeqArg:
    seqset: SeqSet


@dataclass(frozen=True, slots=True)
class IdArgs:
    params: tuple[tuple[str, str | None], ...] | None


Args = (None | Login | Authenticate | Names | MailboxArg | Create | Rename | ListArgs | StatusArgs | AppendArgs
        | SearchArgs | FetchArgs | StoreArgs | CopyArgs | SeqArg | IdArgs | GetMetadata | SetMetadata)


@dataclass(frozen=True, slots=True)
class Command:
    tag: str
    name: str  # upper-case verb; "UID FETCH" etc. keep name "FETCH" with uid=True
    args: Args = None
    uid: bool = False

    @property
    def verb(self) -> str:
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


def _p_mailbox(c: Cursor) -> MailboxArg:
    c.sp()
    name = c.mailbox()
    c.end()
    return MailboxArg(name)


def _p_select(c: Cursor) -> MailboxArg:
    c.sp()
    name = c.mailbox()
    if c.peek() == 0x20:  # RFC 4466 select-params: none are supported (no CONDSTORE/QRESYNC)
        raise c.error("Unknown SELECT parameters")
    c.end()
    return MailboxArg(name)


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
_LIST_RETURN = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}


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


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "APPENDLIMIT"}


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
    if c.peek() not in (0x7B, 0x7E):
        raise c.error("Expected the message literal")
    message, binary = c.literal(allow8=True)
    return AppendMessage(tuple(flags), date, message, binary)


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
    return AppendArgs(name, first.flags, first.date, first.message, first.binary, tuple(more))


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
SEARCH_RETURN = {"MIN", "MAX", "ALL", "COUNT", "SAVE"}


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
    if word == "UID":
        c.sp()
        return Key(word, (c.seqset(),))
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


def _p_search(c: Cursor) -> SearchArgs:
    c.sp()
    returns: tuple[str, ...] | None = None
    if c.take(b"RETURN "):
        opts = [o.upper() for o in c.paren_list()]
        for o in opts:
            if o not in SEARCH_RETURN:
                raise c.error(f"Unknown SEARCH return option {o}")
        returns = tuple(opts)
        c.sp()
    charset = None
    if c.take(b"CHARSET "):
        charset = c.text(c.astring()).upper()
        c.sp()
    keys = [_search_key(c)]
    while c.peek() == 0x20 and c.data[c.pos + 1:].strip(b" "):
        c.sp()
        keys.append(_search_key(c))
    c.end()
    return SearchArgs(keys[0] if len(keys) == 1 else Key("AND", tuple(keys)), charset, returns)


# ---- FETCH (RFC 9051 §6.4.5, RFC 3516 BINARY)

_SIMPLE_ATTS = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT",
                "BODYSTRUCTURE", "UID", "BODY",
                "SAVEDATE"}  # RFC 8514 §4.2
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
    if c.peek() == 0x20 and c.data[c.pos + 1:].strip(b" "):
        raise c.error("FETCH modifiers are not supported")  # RFC 4466 fetch-modifiers (CONDSTORE not offered)
    c.end()
    return FetchArgs(seqset, tuple(atts), macro)


def _p_store(c: Cursor) -> StoreArgs:
    c.sp()
    seqset = c.seqset()
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
    return StoreArgs(seqset, mode, silent, tuple(flags))


def _p_copy(c: Cursor) -> CopyArgs:
    c.sp()
    seqset = c.seqset()
    c.sp()
    name = c.mailbox()
    c.end()
    return CopyArgs(seqset, name)


_PARSERS: dict[str, Callable[[Cursor], Args]] = {
    "CAPABILITY": _p_none, "NOOP": _p_none, "LOGOUT": _p_none, "STARTTLS": _p_none, "CHECK": _p_none,
    "CLOSE": _p_none, "UNSELECT": _p_none, "IDLE": _p_none, "NAMESPACE": _p_none, "EXPUNGE": _p_none,
    "LOGIN": _p_login, "AUTHENTICATE": _p_authenticate, "ENABLE": _p_enable,
    "SELECT": _p_select, "EXAMINE": _p_select, "CREATE": _p_create, "DELETE": _p_mailbox,
    "SUBSCRIBE": _p_mailbox, "UNSUBSCRIBE": _p_mailbox, "RENAME": _p_rename,
    "LIST": _p_list, "LSUB": _p_lsub, "STATUS": _p_status, "APPEND": _p_append, "ID": _p_id,
    "SEARCH": _p_search, "FETCH": _p_fetch, "STORE": _p_store, "COPY": _p_copy, "MOVE": _p_copy,
    "GETMETADATA": _p_getmetadata, "SETMETADATA": _p_setmetadata,
}
_UID_PARSERS: dict[str, Callable[[Cursor], Args]] = {
    "FETCH": _p_fetch, "SEARCH": _p_search, "STORE": _p_store, "COPY": _p_copy, "MOVE": _p_copy,
    "EXPUNGE": _p_expunge_uid,
}
COMMANDS = frozenset(_PARSERS)


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
    "MONTHS",
    "NEED_DATA",
    "STAR",
    "Command",
    "Event",
    "FetchAtt",
    "Framer",
    "FramingError",
    "Key",
    "LiteralRequest",
    "ParseError",
    "RawCommand",
    "SeqSet",
    "guess_tag",
    "parse_command",
]
