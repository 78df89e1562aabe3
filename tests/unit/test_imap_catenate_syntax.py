"""CATENATE (RFC 4469) syntax: APPEND ... CATENATE (TEXT literal / URL astring ...), alone and inside a
MULTIAPPEND, framed and parsed whole, byte by byte and at random splits; what is not RFC 4469 §5 syntax is BAD
(ParseError). The URL forms of RFC 5092 the server resolves (`catenate.parse_url`) are tested here too."""

from __future__ import annotations

import pytest
from imap_frames import events, parsed, splits

from postroom.imap import catenate
from postroom.imap import parser as P
from postroom.mime.imap import Section

SEP = b"\r\n--------------030308070208000400050907\r\n"  # RFC 4469 Appendix A's boundary (42 octets)
LAST = b"\r\n--------------030308070208000400050907--\r\n"  # and its closing one (44 octets)
# RFC 4469 Appendix A, with a literal8 TEXT (BINARY, RFC 3516 §4.4) and LITERAL+ (RFC 7888) added.
COMMAND = (b'A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE'
           b' (URL "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER" TEXT {42}\r\n' + SEP +
           b' URL "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME"'
           b' URL "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1" TEXT {42+}\r\n' + SEP +
           b' URL "/Drafts;UIDVALIDITY=385759045/;UID=30" TEXT ~{44}\r\n' + LAST + b')\r\n')


def check(evs: list[object]) -> None:
    lits = [e for e in evs if isinstance(e, P.LiteralRequest)]
    assert [(e.size, e.sync, e.binary, e.verb) for e in lits] == [
        (42, True, False, "APPEND"), (42, False, False, "APPEND"), (44, True, True, "APPEND")]
    raw = evs[-1]
    assert isinstance(raw, P.RawCommand) and raw.data == COMMAND
    args = P.parse_command(raw.data).args
    assert isinstance(args, P.AppendArgs)
    assert args.mailbox == "Drafts"
    (m,) = args.messages()
    assert m.flags == ("\\Seen", "\\Draft", "$MDNSent") and m.message == b""
    assert m.catenate == (
        P.CatPart("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER"),
        P.CatPart(None, SEP),
        P.CatPart("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME"),
        P.CatPart("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1"),
        P.CatPart(None, SEP),
        P.CatPart("/Drafts;UIDVALIDITY=385759045/;UID=30"),
        P.CatPart(None, LAST, True),
    )
    # Each TEXT part knows where its literal's data is in the command (how a staged literal is matched to it)
    for part in m.catenate:
        if part.url is None:
            assert raw.data[part.at:part.at + len(part.text)] == part.text


def test_catenate_whole() -> None:
    check(events([COMMAND]))


def test_catenate_byte_by_byte() -> None:
    check(events([COMMAND[i:i + 1] for i in range(len(COMMAND))]))


@pytest.mark.parametrize("seed", range(40))
def test_catenate_random_splits(seed: int) -> None:
    check(events(splits(COMMAND, seed)))


def test_catenate_in_multiappend() -> None:
    # RFC 4469 §5: append-data-ext in RFC 3502's append-message; a plain message and a CATENATE one mixed
    cmd = (b'b APPEND INBOX {2+}\r\nhi (\\Flagged) "05-Feb-2024 10:00:00 +0000" catenate (url ;UID=3'
           b' text {3+}\r\nabc) CATENATE (URL "imap://h/INBOX/;UID=1")\r\n')
    for c in parsed(cmd):
        assert isinstance(c.args, P.AppendArgs)
        msgs = c.args.messages()
        assert [m.catenate for m in msgs] == [
            None, (P.CatPart(";UID=3"), P.CatPart(None, b"abc")), (P.CatPart("imap://h/INBOX/;UID=1"),)]
        assert msgs[0].message == b"hi" and cmd[msgs[0].at:msgs[0].at + 2] == b"hi"
        assert msgs[1].flags == ("\\Flagged",) and msgs[1].date == 1707127200.0


@pytest.mark.parametrize("line", [
    b"a APPEND INBOX CATENATE ()\r\n",  # RFC 4469 §5: at least one cat-part
    b"a APPEND INBOX CATENATE\r\n",
    b"a APPEND INBOX CATENATE (TEXT \"quoted\")\r\n",  # TEXT takes a literal only
    b"a APPEND INBOX CATENATE (URL)\r\n",
    b"a APPEND INBOX CATENATE (FILE x)\r\n",
    b"a APPEND INBOX CATENATE (URL x\r\n",  # unclosed
    b"a APPEND INBOX CATENATE (URL x  URL y)\r\n",  # two SP
    b"a APPEND INBOX CATENATE (URL x) junk\r\n",
    b"a APPEND INBOX CONCATENATE (URL x)\r\n",
    b"a APPEND INBOX CATENATE (TEXT {2}\r\na\x00)\r\n",  # NUL in a literal (RFC 9051 §4.3)
])
def test_catenate_bad_syntax(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        P.parse_command(line)


# ---- URLs (RFC 5092)

HOST, USER = "mail.example.org", "ann@example.org"


@pytest.mark.parametrize("url, want", [
    ("/INBOX;UIDVALIDITY=785799047/;UID=113330;section=1.5.9", None),  # RFC 4469 erratum 4046's: no "/" before ;
    ("/INBOX;UIDVALIDITY=785799047/;UID=113330/;SECTION=1.5.9",
     catenate.ImapUrl("INBOX", 785799047, 113330, Section((1, 5, 9)), None)),
    ("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME",
     catenate.ImapUrl("Drafts", 385759045, 20, Section((1,), "MIME"), None)),
    ("/inbox/;UID=3", catenate.ImapUrl("INBOX", None, 3, None, None)),
    ("/Inbox/Sub/;uid=3", catenate.ImapUrl("INBOX/Sub", None, 3, None, None)),
    (";UID=7/;SECTION=TEXT/;PARTIAL=10.20", catenate.ImapUrl(None, None, 7, Section((), "TEXT"), (10, 20))),
    (";UID=7/;PARTIAL=5", catenate.ImapUrl(None, None, 7, None, (5, None))),
    ("/Caf%C3%A9;UIDVALIDITY=2/;UID=1", catenate.ImapUrl("Café", 2, 1, None, None)),  # RFC 5092 §3.2: UTF-8
    ("/Other%20Users/bob@example.org/Shared/;UID=1",
     catenate.ImapUrl("Other Users/bob@example.org/Shared", None, 1, None, None)),
    ("/INBOX/;UID=1/;SECTION=HEADER.FIELDS%20(FROM%20TO)",
     catenate.ImapUrl("INBOX", None, 1, Section((), "HEADER.FIELDS", ("FROM", "TO")), None)),
    ("imap://mail.example.org/INBOX;UIDVALIDITY=1/;UID=2", catenate.ImapUrl("INBOX", 1, 2, None, None)),
    ("IMAP://ann%40example.org;AUTH=*@MAIL.example.org:143/INBOX/;UID=2",
     catenate.ImapUrl("INBOX", None, 2, None, None)),
    ("//mail.example.org/INBOX/;UID=2", catenate.ImapUrl("INBOX", None, 2, None, None)),
    ("imap://other.example.org/INBOX/;UID=2", None),  # another server
    ("imap://bob@mail.example.org/INBOX/;UID=2", None),  # another user (URLAUTH is not offered)
    ("imap://mail.example.org/INBOX/;UID=2;URLAUTH=anonymous", None),
    ("/INBOX/;UID=0", None),  # nz-number
    ("/INBOX/;UID=4294967296", None),
    ("/INBOX", None),  # a mailbox, not a message
    ("INBOX/;UID=1", None),  # a relative path from a mailbox name: not resolved here
    (";SECTION=1", None),  # relative to a message: there is no base message
    ("/IN%ZZBOX/;UID=1", None),
    ("/IN%FFBOX/;UID=1", None),  # not UTF-8
    ("/IN BOX/;UID=1", None),  # not a bchar
    ("/INBOX/;UID=1/;SECTION=1.0", None),
    ("/INBOX/;UID=1/;SECTION=" + "9" * 5000, None),  # past int()'s digit limit: BADURL, not a server error
    ("", None),
])
def test_parse_url(url: str, want: catenate.ImapUrl | None) -> None:
    if want is None:
        with pytest.raises(catenate.BadUrl):
            catenate.parse_url(url, HOST, USER)
    else:
        assert catenate.parse_url(url, HOST, USER) == want


def test_badurl_text_carries_no_bracket() -> None:
    # RFC 4469 §5 (erratum 2002): url-resp-text is TEXT-CHAR except "]"
    assert catenate.url_resp_text("/INBOX/;UID=1]x y\r\n") == "/INBOX/;UID=1%5Dx%20y%0D%0A"
    assert catenate.url_resp_text("") == '""'
