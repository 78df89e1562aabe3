"""The sans-I/O IMAP reader: framing fed whole, byte by byte and at random splits; the formal syntax; fuzzing."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from postroom.imap import parser as P
from postroom.mime.imap import Section


def drive(chunks: list[bytes], framer: P.Framer | None = None, accept: bool = True) -> list[object]:
    """Feed chunks; accept every literal; return the events other than NEED_DATA."""
    f = framer or P.Framer(max_line=200, max_command=1000)
    out: list[object] = []
    for chunk in chunks:
        f.feed(chunk)
        while True:
            ev = f.next_event()
            if ev is P.NEED_DATA:
                break
            out.append(ev)
            if isinstance(ev, P.LiteralRequest):
                f.accept_literal() if accept else f.reject_literal()
    return out


def splits(data: bytes, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


STREAM = (b"a1 NOOP\r\n"
          b"a2 LOGIN {5}\r\nalice {3+}\r\npw1\r\n"
          b"a3 APPEND INBOX ~{4}\r\nx\x00y\n\r\n"
          b"a4 SELECT INBOX\n")
EXPECTED = [
    P.RawCommand(b"a1 NOOP\r\n"),
    P.LiteralRequest(5, True, "a2", verb="LOGIN"),
    P.LiteralRequest(3, False, "a2", verb="LOGIN"),
    P.RawCommand(b"a2 LOGIN {5}\r\nalice {3+}\r\npw1\r\n"),
    P.LiteralRequest(4, True, "a3", binary=True, verb="APPEND"),
    P.RawCommand(b"a3 APPEND INBOX ~{4}\r\nx\x00y\n\r\n"),
    P.RawCommand(b"a4 SELECT INBOX\n"),
]


def test_framer_whole() -> None:
    assert drive([STREAM]) == EXPECTED


def test_framer_byte_by_byte() -> None:
    assert drive([STREAM[i:i + 1] for i in range(len(STREAM))]) == EXPECTED


@pytest.mark.parametrize("seed", range(30))
def test_framer_random_splits(seed: int) -> None:
    assert drive(splits(STREAM, seed)) == EXPECTED


def test_framer_trailing_partial_line_waits() -> None:
    f = P.Framer()
    f.feed(b"a NOOP\r\nb NO")
    assert f.next_event() == P.RawCommand(b"a NOOP\r\n")
    assert f.next_event() is P.NEED_DATA
    f.feed(b"OP\r\n")
    assert f.next_event() == P.RawCommand(b"b NOOP\r\n")


def test_line_too_long_then_next_command() -> None:
    f = P.Framer(max_line=20)
    events = drive([b"t1 " + b"x" * 50, b"yyy\r\nt2 NOOP\r\n"], f)
    assert events == [P.FramingError("t1", "Line too long"), P.RawCommand(b"t2 NOOP\r\n")]


def test_rejected_sync_literal_forgets_command() -> None:
    events = drive([b"a APPEND INBOX {999}\r\nb NOOP\r\n"], accept=False)
    assert events == [P.LiteralRequest(999, True, "a", verb="APPEND"), P.RawCommand(b"b NOOP\r\n")]


def test_rejected_nonsync_literal_is_skipped_with_rest_of_command() -> None:
    # RFC 7888 §4: the client sends the literal anyway; the framer drops it and the rest of the command.
    events = drive([b"a APPEND INBOX {5+}\r\nhello more {2+}\r\nxy end\r\nb NOOP\r\n"], accept=False)
    assert events == [P.LiteralRequest(5, False, "a", verb="APPEND"), P.RawCommand(b"b NOOP\r\n")]


def test_command_too_long() -> None:
    f = P.Framer(max_line=100, max_command=150)
    events = drive([b"a LOGIN {1+}\r\nx " + b"y" * 60 + b" {1+}\r\nz" + b"w" * 90 + b"\r\nb NOOP\r\n"], f)
    assert events[-2] == P.FramingError("a", "Command too long")
    assert events[-1] == P.RawCommand(b"b NOOP\r\n")


def test_next_line_for_idle_and_sasl() -> None:
    f = P.Framer()
    f.feed(b"DO")
    assert f.next_line() is None
    f.feed(b"NE\r\nc NOOP\r\n")
    assert f.next_line() == b"DONE"
    assert f.next_event() == P.RawCommand(b"c NOOP\r\n")


def test_one_line_may_be_the_whole_command_limit() -> None:
    """The session makes max_line == max_command (limits.imap_command_length): a command line as long as the
    command limit passes, a longer one is "Command too long"; whole and byte by byte."""
    ok = b"a ID (" + b'"k" "' + b"v" * 970 + b'")\r\n'
    bad = b"b ID (" + b'"k" "' + b"v" * 1200 + b'")\r\n'
    assert len(ok) <= 1000 < len(bad)
    expected = [P.RawCommand(ok), P.FramingError("b", "Command too long"), P.RawCommand(b"c NOOP\r\n")]
    data = ok + bad + b"c NOOP\r\n"
    assert drive([data], P.Framer(max_line=1000, max_command=1000)) == expected
    assert drive([data[i:i + 1] for i in range(len(data))], P.Framer(max_line=1000, max_command=1000)) == expected


def test_next_line_has_its_own_limit() -> None:
    f = P.Framer(max_line=1000, max_command=1000)
    f.feed(b"x" * 30 + b"\r\nDONE\r\n")
    assert f.next_line(16) == P.FramingError("*", "Line too long")
    assert f.next_line(16) == b"DONE"
    f.feed(b"DONE" + b" " * 40)  # the limit applies before the line end arrives, too
    err = f.next_line(16)
    assert isinstance(err, P.FramingError) and err.text == "Line too long"
    f.feed(b"   \r\nd NOOP\r\n")
    assert f.next_event() == P.RawCommand(b"d NOOP\r\n")


def test_buffered_counts_pipelined_bytes() -> None:
    f = P.Framer()
    f.feed(b"a STARTTLS\r\nb LOGIN x y\r\n")
    f.next_event()
    assert f.buffered == len(b"b LOGIN x y\r\n")


@pytest.mark.parametrize("announce", [b"{10}", b"{10+}", b"~{10}"])
def test_external_literal_is_handed_to_the_session(announce: bytes) -> None:
    """accept_literal(external=True): the session takes the bytes; the command keeps an empty literal."""
    f = P.Framer()
    f.feed(b"a APPEND INBOX " + announce + b"\r\n0123")
    req = f.next_event()
    assert isinstance(req, P.LiteralRequest) and req.size == 10 and req.verb == "APPEND"
    f.accept_literal(external=True)
    assert f.external_need == 10
    assert f.take_external(3) == b"012"
    assert f.take_external(100) == b"3"
    assert f.take_external(100) == b""
    with pytest.raises(RuntimeError):
        f.next_event()
    f.external_done(6)  # the session read the other 6 bytes from its connection
    assert f.external_need == 0
    f.feed(b" \r\nb NOOP\r\n")
    ev = f.next_event()
    empty = b"~{0}" if announce.startswith(b"~") else b"{0}"
    assert ev == P.RawCommand(b"a APPEND INBOX " + empty + b"\r\n \r\n")
    assert isinstance(ev, P.RawCommand)
    args = P.parse_command(ev.data).args
    assert isinstance(args, P.AppendArgs) and args.message == b"" and args.binary == announce.startswith(b"~")
    assert f.next_event() == P.RawCommand(b"b NOOP\r\n")


def test_external_literal_fully_buffered_keeps_pipelined_bytes() -> None:
    f = P.Framer()
    f.feed(b"a APPEND INBOX {4+}\r\nwxyz\r\nb NOOP\r\n")
    assert isinstance(f.next_event(), P.LiteralRequest)
    f.accept_literal(external=True)
    assert f.take_external(1 << 20) == b"wxyz"
    f.external_done(0)
    ev = f.next_event()
    assert isinstance(ev, P.RawCommand)
    cmd = P.parse_command(ev.data)
    assert isinstance(cmd.args, P.AppendArgs) and cmd.args.message == b""
    assert f.next_event() == P.RawCommand(b"b NOOP\r\n")


# ---- a refused command's non-synchronizing literals are data, never commands (RFC 9051 §4.3, RFC 7888 §4)

def chunkings(data: bytes, whole_only: bool = False) -> list[list[bytes]]:
    """`data` whole, and (unless `whole_only`) byte by byte and at five random splits."""
    if whole_only:
        return [[data]]
    return [[data], [data[i:i + 1] for i in range(len(data))], *(splits(data, seed) for seed in range(5))]


@pytest.mark.parametrize("announce", [b"{21+}", b"~{21+}"])
@pytest.mark.parametrize("limit, pad", [(1000, 1100), (65536, 70000)])
def test_overlong_line_skips_its_nonsync_literal(announce: bytes, limit: int, pad: int) -> None:
    """Finding F1, first form: one line past the command limit ends in `{21+}`; the 21 octets that follow
    (`x2 CREATE injected2\\r\\n`) are the literal, and the empty line after them ends the refused command."""
    data = (b'a6 SEARCH SUBJECT "' + b"y" * pad + b'" BODY ' + announce + b"\r\n" + b"x2 CREATE injected2\r\n"
            + b"\r\na7 NOOP\r\n")
    expected = [P.FramingError("a6", "Command too long"), P.RawCommand(b"a7 NOOP\r\n")]
    for chunks in chunkings(data, whole_only=limit > 1000):
        assert drive(chunks, P.Framer(max_line=limit, max_command=limit)) == expected


@pytest.mark.parametrize("announce", [b"{3+}", b"~{3+}"])
@pytest.mark.parametrize("limit, pad", [(1000, 40), (65536, 2000)])
def test_command_over_limit_by_many_lines_skips_its_nonsync_literal(announce: bytes, limit: int, pad: int) -> None:
    """Finding F1, second form: 40 lines, each well under the limit and each ending in a literal, add up past
    the command limit; the literal after the line that crosses it is not read as a command (`abc ...`)."""
    seg = b'SUBJECT "' + b"y" * pad + b'" SUBJECT ' + announce + b"\r\nabc"
    data = b"a7 SEARCH " + seg * 40 + b"\r\na8 NOOP\r\n"
    lines_fit = (limit - len(b"a7 SEARCH ")) // (len(seg) - 3)  # how many announcements the framer passes on
    assert lines_fit < 40
    request = P.LiteralRequest(3, False, "a7", announce.startswith(b"~"), "SEARCH")
    expected = [request] * lines_fit + [P.FramingError("a7", "Command too long"), P.RawCommand(b"a8 NOOP\r\n")]
    for chunks in chunkings(data, whole_only=limit > 1000):
        assert drive(chunks, P.Framer(max_line=limit, max_command=limit)) == expected


def test_refused_command_chain_of_literals_is_skipped() -> None:
    """After a skipped literal the refused command goes on; each line of it that ends in `{m+}` (long or
    short) announces one more literal to skip, until a line ends without one."""
    data = (b"a1 SEARCH " + b"y" * 300 + b" {12+}\r\n" + b"x1 LOGOUT\r\n "
            + b" BODY {12+}\r\n" + b"x2 LOGOUT\r\n "          # a short continuation line
            + b"y" * 500 + b" ~{12+}\r\n" + b"x3 LOGOUT\r\n "  # an overlong continuation line
            + b"y" * 20 + b"\r\na2 NOOP\r\n")
    expected = [P.FramingError("a1", "Line too long"), P.RawCommand(b"a2 NOOP\r\n")]
    for chunks in chunkings(data):
        assert drive(chunks) == expected


def test_refused_line_ending_in_sync_literal_ends_the_command() -> None:
    """RFC 9051 §7.5: the client waits for `+` before it sends a synchronizing literal; a refused command never
    gets one, so the next line is the next command."""
    data = b"a1 SEARCH " + b"y" * 300 + b" {9}\r\nx1 NOOP\r\n"
    for chunks in chunkings(data):
        assert drive(chunks) == [P.FramingError("a1", "Line too long"), P.RawCommand(b"x1 NOOP\r\n")]


def test_refused_command_huge_literal_is_counted_not_kept() -> None:
    """A literal size up to 20 digits is skipped by counting (nothing buffered); 21 digits is no announcement
    (as for a command that is not refused)."""
    f = P.Framer(max_line=200, max_command=1000)
    assert drive([b"a1 SEARCH " + b"y" * 300 + b" {99999999999999999999+}\r\n"], f) == [
        P.FramingError("a1", "Line too long")]
    for _ in range(100):
        f.feed(b"x1 CREATE injected\r\n" * 100)
        assert f.next_event() is P.NEED_DATA and f.buffered == 0 and f.in_literal
    data = b"a1 SEARCH " + b"y" * 300 + b" {999999999999999999999+}\r\nx1 NOOP\r\n"
    for chunks in chunkings(data):
        assert drive(chunks) == [P.FramingError("a1", "Line too long"), P.RawCommand(b"x1 NOOP\r\n")]


# ---- syntax

def parse(line: bytes) -> P.Command:
    return P.parse_command(line + b"\r\n")


def test_simple_commands() -> None:
    for verb in ("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "IDLE",
                 "NAMESPACE", "EXPUNGE"):
        cmd = parse(b"t " + verb.lower().encode())
        assert cmd.name == verb and cmd.args is None and cmd.tag == "t"


def test_login_forms() -> None:
    assert parse(b'a LOGIN alice "p w\\"\\\\"').args == P.Login("alice", 'p w"\\')
    assert parse(b"a LOGIN {5}\r\nalice {2}\r\npw").args == P.Login("alice", "pw")
    with pytest.raises(P.ParseError):
        parse(b"a LOGIN alice")
    with pytest.raises(P.ParseError):
        parse(b'a LOGIN "bad\\x" pw')


def test_authenticate_sasl_ir() -> None:
    assert parse(b"a AUTHENTICATE plain AGEAYg==").args == P.Authenticate("PLAIN", b"AGEAYg==")
    assert parse(b"a AUTHENTICATE PLAIN =").args == P.Authenticate("PLAIN", b"=")
    assert parse(b"a AUTHENTICATE PLAIN").args == P.Authenticate("PLAIN", None)


def test_mailbox_names() -> None:
    assert parse(b"a SELECT inbox").args == P.SelectArgs("INBOX")
    assert parse(b'a CREATE "Foo Bar/&AOk-t&AOk-"').args == P.Create("Foo Bar/&AOk-t&AOk-")
    assert parse("a CREATE \"été\"".encode()).args == P.Create("été")
    assert parse(b"a RENAME a b]").args == P.Rename("a", "b]")
    with pytest.raises(P.ParseError):
        parse(b"a CREATE a*b")
    with pytest.raises(P.ParseError):
        parse(b"a SELECT INBOX (BOGUS)")  # an unknown select-param (RFC 4466) is BAD


def test_list_forms() -> None:
    a = parse(b'a LIST "" %').args
    assert a == P.ListArgs("", ("%",))
    a = parse(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("*" Foo/%) RETURN (CHILDREN STATUS (MESSAGES SIZE))').args
    assert isinstance(a, P.ListArgs)
    assert a.selection == ("SUBSCRIBED", "RECURSIVEMATCH") and a.patterns == ("*", "Foo/%")
    assert a.returns == ("CHILDREN", "STATUS") and a.status_items == ("MESSAGES", "SIZE") and a.extended
    assert parse(b"a LIST \"\" \"\" RETURN ()").args == P.ListArgs("", ("",), extended=True)
    with pytest.raises(P.ParseError):
        parse(b'a LIST (RECURSIVEMATCH) "" *')
    with pytest.raises(P.ParseError):
        parse(b'a LIST "" * RETURN (BOGUS)')


@pytest.mark.parametrize("line", [
    b'a LIST (RECURSIVEMATCH) "" *',
    b'a LIST (RECURSIVEMATCH REMOTE) "" ""',  # issue 15 item 4
    b'a LIST (REMOTE RECURSIVEMATCH) "" *',
    b'a LIST (RECURSIVEMATCH RECURSIVEMATCH) "" *',
    b'a LIST (BOGUS) "" *',  # an option the server does not know
    b'a LIST (SUBSCRIBED) "" * RETURN (BOGUS)',
    b'a LIST "" * RETURN (STATUS)',  # STATUS takes its item list
    b'a LIST "" * RETURN (STATUS ())',
])
def test_list_extended_option_rules_bad(line: bytes) -> None:
    """RFC 5258 §3.1 / RFC 9051 §6.3.9.1: RECURSIVEMATCH "MUST NOT occur as the only selection option (or only
    with REMOTE) ... The server MUST return a BAD tagged response"; §3: "A server MUST respond to options it does
    not recognize with a BAD response"."""
    with pytest.raises(P.ParseError):
        parse(line)


def test_list_extended_option_rules_ok() -> None:
    # RFC 5258 §3: an option given twice is acted on as if given once.
    a = parse(b'a LIST (SUBSCRIBED SUBSCRIBED RECURSIVEMATCH REMOTE) "" * RETURN (CHILDREN CHILDREN)').args
    assert isinstance(a, P.ListArgs)
    assert a.selection == ("SUBSCRIBED", "RECURSIVEMATCH", "REMOTE") and a.returns == ("CHILDREN",)
    # RFC 5258 §6 list-select-opts: the list may be empty; the command is then extended (no "" special case).
    assert parse(b'a LIST () "" ""').args == P.ListArgs("", ("",), extended=True)
    assert parse(b'a LIST (SPECIAL-USE RECURSIVEMATCH) "" *').args == P.ListArgs(
        "", ("*",), ("SPECIAL-USE", "RECURSIVEMATCH"), extended=True)


def test_status_append_id_enable() -> None:
    assert parse(b"a STATUS INBOX (messages unseen SIZE deleted)").args == P.StatusArgs(
        "INBOX", ("MESSAGES", "UNSEEN", "SIZE", "DELETED"))
    with pytest.raises(P.ParseError):
        parse(b"a STATUS INBOX (BOGUS)")
    ap = parse(b'a APPEND Sent (\\Seen $Label) " 1-Feb-2024 10:00:00 -0130" {3+}\r\nabc').args
    assert ap == P.AppendArgs("Sent", ("\\Seen", "$Label"), 1706781600.0 + 5400, b"abc", False)
    assert parse(b"a APPEND x ~{2}\r\n\x00\x01").args == P.AppendArgs("x", (), None, b"\x00\x01", True)
    with pytest.raises(P.ParseError):
        parse(b"a APPEND x {2}\r\n\x00\x01")  # NUL needs literal8
    with pytest.raises(P.ParseError):
        parse(b'a APPEND x "31-Foo-2024 10:00:00 +0000" {1}\r\nx')
    assert parse(b'a ID ("name" "mutt" "version" NIL)').args == P.IdArgs((("name", "mutt"), ("version", None)))
    assert parse(b"a ID NIL").args == P.IdArgs(None)
    assert parse(b"a ENABLE imap4rev2 CONDSTORE").args == P.Names(("IMAP4REV2", "CONDSTORE"))


def test_sequence_sets() -> None:
    a = parse(b"a FETCH 1:*,3,*:2 FLAGS").args
    assert isinstance(a, P.FetchArgs)
    assert a.seqset == P.SeqSet(((1, P.STAR), (3, 3), (P.STAR, 2)))
    assert parse(b"a UID COPY $ Trash").args == P.CopyArgs(P.SeqSet(saved=True), "Trash")
    for bad in (b"a FETCH 0 FLAGS", b"a FETCH 1: FLAGS", b"a FETCH ,1 FLAGS", b"a FETCH 1,, FLAGS"):
        with pytest.raises(P.ParseError):
            parse(bad)


def test_fetch_attributes() -> None:
    a = parse(b"a FETCH 1 (UID BODY[] BODY.PEEK[1.2.MIME]<10.20> BINARY[2] BINARY.SIZE[2] BODY "
              b"BODY[HEADER.FIELDS.NOT (X-A \"X-B\")] RFC822.TEXT)").args
    assert isinstance(a, P.FetchArgs)
    atts = a.atts
    assert atts[0] == P.FetchAtt("UID")
    assert atts[1] == P.FetchAtt("BODY[]", Section(), "")
    assert atts[2] == P.FetchAtt("BODY[]", Section((1, 2), "MIME"), "1.2.MIME", (10, 20), True)
    assert atts[3] == P.FetchAtt("BINARY", Section((2,)), "2")
    assert atts[4] == P.FetchAtt("BINARY.SIZE", Section((2,)), "2")
    assert atts[5] == P.FetchAtt("BODY")
    assert atts[6].section == Section((), "HEADER.FIELDS.NOT", ("X-A", "X-B"))
    assert parse(b"a FETCH 1:* full").args == P.FetchArgs(P.SeqSet(((1, P.STAR),)), tuple(
        P.FetchAtt(n) for n in P.MACROS["FULL"]), "FULL")
    for bad in (b"a FETCH 1 BODY[MIME]", b"a FETCH 1 BINARY[HEADER]", b"a FETCH 1 (FLAGS", b"a FETCH 1 BOGUS",
                b"a FETCH 1 BODY[1.]", b"a FETCH 1 BODY[HEADER.FIELDS ()]", b"a FETCH 1 FLAGS (BOGUS 1)"):
        with pytest.raises(P.ParseError):
            parse(bad)


def test_store_forms() -> None:
    assert parse(b"a STORE 1 +FLAGS.SILENT (\\Seen foo)").args == P.StoreArgs(
        P.SeqSet(((1, 1),)), "+", True, ("\\Seen", "foo"))
    assert parse(b"a UID STORE 1:2 FLAGS \\Deleted \\Seen").args == P.StoreArgs(
        P.SeqSet(((1, 2),)), "", False, ("\\Deleted", "\\Seen"))
    assert parse(b"a STORE 1 -FLAGS ()").args == P.StoreArgs(P.SeqSet(((1, 1),)), "-", False, ())


def test_search_keys() -> None:
    a = parse(b'a SEARCH CHARSET utf-8 OR (FROM "x y" SUBJECT {3}\r\nabc) NOT SEEN 1:5 UID 7:* '
              b'HEADER X-Spam "" SINCE 1-Feb-2024 LARGER 100').args
    assert isinstance(a, P.SearchArgs) and a.charset == "UTF-8" and a.returns is None
    ops = [k.op for k in a.key.args]  # type: ignore[union-attr]
    assert ops == ["OR", "SEQ", "UID", "HEADER", "SINCE", "LARGER"]
    a = parse(b"a UID SEARCH RETURN (MIN MAX COUNT SAVE) ALL").args
    assert isinstance(a, P.SearchArgs) and a.returns == ("MIN", "MAX", "COUNT", "SAVE")
    assert parse(b"a SEARCH RETURN () $").args == P.SearchArgs(P.Key("SEQ", (P.SeqSet(saved=True),)), None, ())
    for bad in (b"a SEARCH", b"a SEARCH BOGUS", b"a SEARCH SINCE 31-Foo-2024", b"a SEARCH OR SEEN",
                b"a SEARCH (SEEN", b"a SEARCH RETURN (BOGUS) ALL"):
        with pytest.raises(P.ParseError):
            parse(bad)


def test_nesting_limit() -> None:
    deep = b"a SEARCH " + b"(" * 100 + b"ALL" + b")" * 100
    with pytest.raises(P.ParseError):
        parse(deep)
    nots = b"a SEARCH " + b"NOT " * 100 + b"ALL"
    with pytest.raises(P.ParseError):
        parse(nots)


def test_tags_and_unknown() -> None:
    with pytest.raises(P.ParseError) as e:
        parse(b"a+b NOOP")
    assert e.value.tag == "*"
    with pytest.raises(P.ParseError) as e:
        parse(b"x1 FROB")
    assert e.value.tag == "x1"
    with pytest.raises(P.ParseError):
        parse(b"x1 UID NOOP")
    assert parse(b"x UID EXPUNGE 1:3").args == P.SeqArg(P.SeqSet(((1, 3),)))


# ---- fuzzing (invariant 1)

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parser_never_raises_anything_but_parse_error(data: bytes) -> None:
    try:
        P.parse_command(data)
    except P.ParseError:
        pass


_WORDS = st.sampled_from([b"a", b"UID", b"FETCH", b"SEARCH", b"STORE", b"LIST", b"(", b")", b"[", b"]", b"*",
                          b"1:*", b"$", b"BODY[", b"HEADER.FIELDS", b"{3}\r\nabc", b'"q"', b"NOT", b"OR",
                          b"<1.2>", b"\\Seen", b"RETURN", b"1", b" ", b"APPEND", b"~{1}\r\n\x00", b"NIL"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_WORDS, max_size=30))
def test_parser_never_raises_on_token_soup(words: list[bytes]) -> None:
    try:
        P.parse_command(b"t " + b" ".join(words) + b"\r\n")
    except P.ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50), st.booleans())
def test_framer_never_raises_and_stays_bounded(data: bytes, step: int, accept: bool) -> None:
    f = P.Framer(max_line=64, max_command=128)
    for i in range(0, len(data), step):
        f.feed(data[i:i + step])
        for _ in range(1000):
            ev = f.next_event()
            if ev is P.NEED_DATA:
                break
            if isinstance(ev, P.LiteralRequest):
                f.accept_literal() if accept and ev.size < 100 else f.reject_literal()
        assert len(f._in) <= 64 + step


_ATOM = st.binary(min_size=1, max_size=12).map(lambda b: bytes(0x61 + c % 26 for c in b))
_INNER_LINE = st.builds(  # what an attacker hides in a literal: "tag CMD args", maybe announcing a literal itself
    lambda tag, cmd, tail: tag + b" " + cmd + tail + b"\r\n", _ATOM,
    st.sampled_from([b"CREATE injected", b"DELETE INBOX", b"LOGOUT", b"NOOP", b"SEARCH ALL"]),
    st.sampled_from([b"", b" {3+}", b" ~{3+}", b" {3}"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=400), _INNER_LINE, st.booleans()), min_size=1,
                max_size=6),
       st.integers(min_value=0, max_value=400), st.sampled_from([(64, 256), (256, 256)]), st.booleans(),
       st.randoms(use_true_random=False))
def test_refused_command_never_frames_its_literals_as_commands(
        segments: list[tuple[int, bytes, bool]], last: int, limits: tuple[int, int], accept: bool,
        rnd: random.Random) -> None:
    """F1 property: a command refused as too long (or whose literal is rejected), with LITERAL+ / literal8
    literals holding "tag CMD" lines, gives no RawCommand: the only one is the NOOP after it (RFC 7888 §4)."""
    data = b"a1 SEARCH"
    for pad, inner, binary in segments:
        data += b" " + b"y" * pad + b" " + (b"~" if binary else b"") + b"{%d+}\r\n" % len(inner) + inner
    data += b" " + b"y" * last + b"\r\n"
    max_line, max_command = limits
    text = data.split(b"\r\n")  # the command's lines, literals aside, are what the limits count
    assume(len(data) - sum(len(inner) for _, inner, _ in segments) > max_command
           or any(len(line) + 2 > max_line for line in text))
    stream = data + b"z9 NOOP\r\n"
    cuts = sorted(rnd.sample(range(1, len(stream)), min(len(stream) - 1, rnd.randint(0, 12))))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    f = P.Framer(max_line=max_line, max_command=max_command)
    events = drive(chunks, f, accept=accept)
    assert [ev for ev in events if isinstance(ev, P.RawCommand)] == [P.RawCommand(b"z9 NOOP\r\n")]
    assert events[-1] == P.RawCommand(b"z9 NOOP\r\n")
    assert not f.in_command and f.buffered == 0


@pytest.mark.parametrize("day", [b"3", b" 3", b"03"])
def test_append_date_time_day_forms(day: bytes) -> None:
    # RFC 9051 §9 date-day-fixed is (SP DIGIT) / 2DIGIT; the one-digit form without the space (iOS Mail) is
    # accepted too. 3-Feb-2025 10:00:00 +0000 is 1738576800 POSIX seconds.
    ap = parse(b'a APPEND INBOX "' + day + b'-Feb-2025 10:00:00 +0000" {1}\r\nx').args
    assert isinstance(ap, P.AppendArgs) and ap.date == 1738576800.0


@pytest.mark.parametrize("date", [b"1-Feb-2024", b"01-Feb-2024", b'"1-Feb-2024"', b'"01-feb-2024"'])
def test_search_date_forms(date: bytes) -> None:
    # RFC 9051 §9: date = date-text / DQUOTE date-text DQUOTE; date-day = 1*2DIGIT
    a = parse(b"a SEARCH SENTON " + date).args
    assert isinstance(a, P.SearchArgs) and a.key == P.Key("SENTON", (1706745600.0,))  # 1-Feb-2024 00:00 UTC


@pytest.mark.parametrize("bad", [b'a APPEND x "31-Feb-2025 10:00:00 +0000" {1}\r\nx',
                                 b'a APPEND x "0-Feb-2025 10:00:00 +0000" {1}\r\nx',
                                 b'a APPEND x "123-Feb-2025 10:00:00 +0000" {1}\r\nx',
                                 b"a SEARCH SINCE 30-Feb-2024", b"a SEARCH SINCE 0-Jan-2024"])
def test_days_that_do_not_exist_are_bad(bad: bytes) -> None:
    with pytest.raises(P.ParseError):
        parse(bad)


@pytest.mark.parametrize("when", [b"1-Jan-0001 00:00:00 +0100", b"31-Dec-9999 23:59:59 -1200",
                                  b"3-Feb-2025 10:00:00 +2400", b"3-Feb-2025 10:00:00 +1399"])
def test_append_date_times_that_cannot_be_answered_are_bad(when: bytes) -> None:
    # RFC 9051 §9: INTERNALDATE (answered in +0000) has a 4DIGIT year, and a zone is hours and minutes
    with pytest.raises(P.ParseError):
        parse(b'a APPEND x "' + when + b'" {1}\r\nx')
    ok = parse(b'a APPEND x "1-Jan-0001 00:00:00 -0100" {1}\r\nx')  # 01:00 UTC on the first day: fine
    assert ok.verb == "APPEND"
