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
4. Arguments the server does not implement (SELECT/FETCH/STORE modifiers of CONDSTORE, MULTIAPPEND) are
   syntax errors, not silently ignored.
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
class AppendArgs:
    mailbox: str
    flags: tuple[str, ...]
    date: float | None
    message: bytes
    binary: bool  # literal8 (RFC 3516 §4.4)


@dataclass(frozen=True, slots=True)
class SearchArgs:
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


Args = (None | Login | Authenticate | Names | MailboxArg | Rename | ListArgs | StatusArgs | AppendArgs | SearchArgs
        | FetchArgs | StoreArgs | CopyArgs | SeqArg | IdArgs | SortArgs | ThreadArgs)


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


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "APPENDLIMIT",
                "MAILBOXID"}


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


def _p_append(c: Cursor) -> AppendArgs:
    c.sp()
    name = c.mailbox()
    c.sp()
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
    if c.peek() == 0x20 and not c.at_end() and c.data[c.pos:].strip(b" "):
        raise c.error("MULTIAPPEND is not supported")
    c.end()
    return AppendArgs(name, tuple(flags), date, message, binary)


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


def _p_expunge_uid(c: Cursor) -> SeqArg:
    c.sp()
    s = c.seqset()
    c.end()
    return SeqArg(s)


# ---- SEARCH (RFC 9051 §6.4.4, RFC 4731 ESEARCH, RFC 5182 SEARCHRES)

_FLAG_KEYS = {"ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT",
              "UNFLAGGED", "UNSEEN", "ALL", "NEW", "OLD", "RECENT"}
_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
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
SORT_RETURN = {"MIN", "MAX", "ALL", "COUNT"}  # RFC 5267 §3 (SAVE is SEARCHRES's, for SEARCH only)
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


def _p_thread(c: Cursor) -> ThreadArgs:
    c.sp()
    algorithm = c.atom().upper()
    c.sp()
    charset = c.text(c.astring()).upper()
    c.sp()
    return ThreadArgs(algorithm, charset, _search_program(c))


# ---- FETCH (RFC 9051 §6.4.5, RFC 3516 BINARY)

_SIMPLE_ATTS = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT",
                "BODYSTRUCTURE", "UID", "BODY", "EMAILID", "THREADID"}
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
    "SELECT": _p_select, "EXAMINE": _p_select, "CREATE": _p_mailbox, "DELETE": _p_mailbox,
    "SUBSCRIBE": _p_mailbox, "UNSUBSCRIBE": _p_mailbox, "RENAME": _p_rename,
    "LIST": _p_list, "LSUB": _p_lsub, "STATUS": _p_status, "APPEND": _p_append, "ID": _p_id,
    "SEARCH": _p_search, "FETCH": _p_fetch, "STORE": _p_store, "COPY": _p_copy, "MOVE": _p_copy,
    "SORT": _p_sort, "THREAD": _p_thread,
}
_UID_PARSERS: dict[str, Callable[[Cursor], Args]] = {
    "FETCH": _p_fetch, "SEARCH": _p_search, "STORE": _p_store, "COPY": _p_copy, "MOVE": _p_copy,
    "EXPUNGE": _p_expunge_uid, "SORT": _p_sort, "THREAD": _p_thread,
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
    "SortArgs",
    "ThreadArgs",
    "guess_tag",
    "parse_command",
]
