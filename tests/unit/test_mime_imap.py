"""IMAP views: strings, ENVELOPE rules, BODY/BODYSTRUCTURE forms, section parsing and extraction, BINARY."""

from __future__ import annotations

import base64

import pytest

from postroom.mime import headers as H
from postroom.mime.address import parse_address_list
from postroom.mime.cte import decode_base64
from postroom.mime.imap import (
    BadSection,
    Section,
    UnknownCTE,
    binary_bytes,
    bodystructure,
    envelope,
    istring,
    literal_safe,
    partial,
    section_bytes,
)
from postroom.mime.structure import scan


def crlf(s: str) -> bytes:
    return s.replace("\n", "\r\n").encode()


def test_istring() -> None:
    assert istring(None) == b"NIL"
    assert istring(b"") == b'""'
    assert istring(b'a "b" \\c') == b'"a \\"b\\" \\\\c"'
    assert istring(b"two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert istring("Grüße") == b"{7}\r\nGr\xc3\xbc\xc3\x9fe"
    assert istring(b"nul\x00") == b"{4}\r\nnul\x00"


def test_istring_octet_boundaries() -> None:
    # RFC 9051 §9: quoted = DQUOTE *QUOTED-CHAR DQUOTE, QUOTED-CHAR is a TEXT-CHAR (CHAR %x01-7F but CR and LF)
    # or an escaped quoted-special; anything else (NUL, a lone CR or LF, 8-bit octets) needs a literal.
    assert istring(b"\x01\x7f") == b'"\x01\x7f"'
    assert istring(b"\x80") == b"{1}\r\n\x80"
    assert istring(b"a\xffb") == b"{3}\r\na\xffb"
    assert istring(b"bare\r") == b"{5}\r\nbare\r"
    assert istring(b"bare\n") == b"{5}\r\nbare\n"
    assert istring("\udc80") == b"{1}\r\n\x80"  # a surrogate-escaped 8-bit octet read from the header


def test_envelope_defaults_sender_and_reply_to_to_from() -> None:
    raw = crlf("From: A <a@x.example>\nSubject: s\n\nb\n")
    env = envelope(scan(raw).root.fields)
    a = b'(("A" NIL "a" "x.example"))'
    assert env == b'(NIL "s" ' + a + b" " + a + b" " + a + b" NIL NIL NIL NIL NIL)"


def test_envelope_leaves_encoded_words_and_unfolds() -> None:
    raw = crlf("Subject: =?utf-8?q?caf=C3=A9?=\n folded\nFrom: =?utf-8?b?5byg?= <z@x>\n\n")
    env = envelope(scan(raw).root.fields)
    assert env.startswith(b'(NIL "=?utf-8?q?caf=C3=A9?= folded" (("=?utf-8?b?5byg?=" NIL "z" "x"))')


def test_address_groups_and_routes() -> None:
    got = parse_address_list(b'g: a@x, "B" <b@y>;, <@r1,@r2:c@z>, d@w (Dee)')
    assert [(a.name, a.adl, a.mailbox, a.host) for a in got] == [
        (None, None, "g", None),
        (None, None, "a", "x"),
        ("B", None, "b", "y"),
        (None, None, None, None),
        (None, "@r1,@r2", "c", "z"),
        ("Dee", None, "d", "w"),
    ]
    # an unterminated group still ends
    got = parse_address_list(b"g: a@x")
    assert got[-1].host is None and got[-1].mailbox is None


def test_body_and_bodystructure_forms() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Language: en\nContent-Location: x.txt\nContent-MD5: abc=\n\nhi\n--b\n"
        "Content-Type: image/png\nContent-Disposition: attachment; filename=a.png\n"
        "Content-Transfer-Encoding: base64\n\nAAAA\n--b--\n"
    )
    root = scan(raw).root
    assert bodystructure(root, extensible=False) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 2 0)'
        b'("image" "png" NIL NIL NIL "base64" 4) "mixed")'
    )
    assert bodystructure(root) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 2 0 "abc=" NIL ("en") "x.txt")'
        b'("image" "png" NIL NIL NIL "base64" 4 NIL ("attachment" ("filename" "a.png")) NIL NIL)'
        b' "mixed" ("boundary" "b") NIL NIL NIL)'
    )


def test_rfc2231_parameters() -> None:
    _, _, params, ok = H.parse_content_type(
        b"application/x-stuff;\r\n title*0*=us-ascii'en'This%20is%20even%20more%20;\r\n"
        b' title*1*=%2A%2A%2Afun%2A%2A%2A%20;\r\n title*2="isn\'t it!"'
    )
    assert ok
    assert params == (("title*", "us-ascii'en'This%20is%20even%20more%20%2A%2A%2Afun%2A%2A%2A%20isn't it!"),)
    assert H.param_value(params, "title") == "This is even more ***fun*** isn't it!"
    _, _, params, _ = H.parse_content_type(b'text/plain; name*=utf-8\'\'%E2%82%AC.txt; charset="a\\"b"')
    assert H.param_value(params, "name") == "€.txt"
    assert H.param_value(params, "charset") == 'a"b'


def test_unquoted_boundary_with_tspecials() -> None:
    _, _, params, _ = H.parse_content_type(b"multipart/alternative; boundary=----=_Part_1_2.3; x=y")
    assert H.param_value(params, "boundary") == "----=_Part_1_2.3"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", Section()),
        ("HEADER", Section((), "HEADER")),
        ("text", Section((), "TEXT")),
        ("1.2", Section((1, 2))),
        ("1.2.MIME", Section((1, 2), "MIME")),
        ("3.HEADER", Section((3,), "HEADER")),
        ("3.TEXT", Section((3,), "TEXT")),
        ("HEADER.FIELDS (From To)", Section((), "HEADER.FIELDS", ("FROM", "TO"))),
        ('1.HEADER.FIELDS.NOT ("Subject" x-a)', Section((1,), "HEADER.FIELDS.NOT", ("SUBJECT", "X-A"))),
    ],
)
def test_section_parse(text: str, expected: Section) -> None:
    assert Section.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["MIME", "0", "1.0", "HEADER.FIELDS", "HEADER.FIELDS ()", "TEXT (A)", "1.X", "1."]
)
def test_bad_sections(text: str) -> None:
    with pytest.raises(BadSection):
        Section.parse(text)


NESTED = crlf(
    "Subject: top\nContent-Type: multipart/mixed; boundary=o\n\n--o\n\nfirst\n--o\nContent-Type: message/rfc822\n\n"
    "Subject: inner\nContent-Type: multipart/alternative; boundary=i\n\n--i\nX-A: 1\n\nalt1\n--i\n\nalt2\n--i--\n"
    "--o--\n"
)


@pytest.mark.parametrize(
    "sec,expected",
    [
        ("1", b"first"),
        ("1.MIME", b"\r\n"),
        ("2.HEADER", b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n"),
        ("2.TEXT", b"--i\r\nX-A: 1\r\n\r\nalt1\r\n--i\r\n\r\nalt2\r\n--i--"),
        ("2.1", b"alt1"),
        ("2.1.MIME", b"X-A: 1\r\n\r\n"),
        ("2.2", b"alt2"),
        ("2.HEADER.FIELDS (SUBJECT)", b"Subject: inner\r\n\r\n"),
        ("2.HEADER.FIELDS.NOT (SUBJECT)", b"Content-Type: multipart/alternative; boundary=i\r\n\r\n"),
        ("HEADER.FIELDS (X-NONE)", b"\r\n"),
    ],
)
def test_sections_of_a_nested_message(sec: str, expected: bytes) -> None:
    assert section_bytes(NESTED, scan(NESTED).root, Section.parse(sec)) == expected


def test_missing_parts() -> None:
    root = scan(NESTED).root
    for sec in ("3", "1.1", "2.3", "2.1.1"):
        assert section_bytes(NESTED, root, Section.parse(sec)) is None
    assert binary_bytes(NESTED, root, (9,)) is None


def test_single_part_message_has_part_one() -> None:
    raw = crlf("Subject: s\n\nbody\n")
    root = scan(raw).root
    assert section_bytes(raw, root, Section.parse("1")) == b"body\r\n"
    assert section_bytes(raw, root, Section.parse("TEXT")) == b"body\r\n"


def test_partial() -> None:
    assert partial(b"0123456789", 2, 3) == b"234"
    assert partial(b"0123456789", 8, 10) == b"89"
    assert partial(b"0123456789", 10, 1) == b""
    assert partial(b"0123456789", 3, None) == b"3456789"


def test_binary() -> None:
    payload = bytes(range(256))
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(payload).decode()
        + "--b\nContent-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9 =\nsoft\n"
        "--b\nContent-Transfer-Encoding: x-uuencode\n\nbegin\n--b--\n"
    )
    root = scan(raw).root
    assert binary_bytes(raw, root, (1,)) == payload
    assert binary_bytes(raw, root, (2,)) == "café soft".encode()
    assert binary_bytes(raw, root, ()) == raw
    with pytest.raises(UnknownCTE):
        binary_bytes(raw, root, (3,))


def test_broken_base64_is_decoded_leniently() -> None:
    # junk characters are dropped, so the good prefix decodes; the rest is best effort, never an error
    assert decode_base64(b"SGVsbG8g!!d29y*bGQ\r\n=garbage==").startswith(b"Hello world")
    assert decode_base64(b"SGVsbG8") == b"Hello"
    assert decode_base64(b"S") == b""


def test_literal_safe() -> None:
    assert literal_safe(b"a\x00b") == b"a\x80b"
    assert literal_safe(b"ab") == b"ab"


def test_8bit_parameter_is_a_literal() -> None:
    raw = 'Content-Type: application/pdf; name="résumé.pdf"\r\n\r\nx'.encode()
    bs = bodystructure(scan(raw).root)
    assert b'("name" {12}\r\nr\xc3\xa9sum\xc3\xa9.pdf)' in bs


def _corpus(name: str) -> bytes:
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "data" / "mime" / "msgs" / name).read_bytes()


def test_rfc3501_bodystructure_example_byte_exact() -> None:
    # RFC 3501 §7.4.2, the BODY example, as printed in the RFC.
    rfc = (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)("TEXT" "PLAIN" ("CHARSET" "US-ASCII"'
        b' "NAME" "cc.diff") "<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) "MIXED")'
    )
    assert bodystructure(scan(_corpus("43_rfc3501_example.eml")).root, extensible=False) == rfc


def test_rfc3501_envelope_example_byte_exact() -> None:
    # RFC 3501 §7.4.2, the ENVELOPE example, as printed in the RFC.
    rfc = (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes"'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu"))'
        b' ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL'
        b' "<B27397-0100000@cac.washington.edu>")'
    )
    assert envelope(scan(_corpus("77_rfc3501_envelope.eml")).root.fields) == rfc


def test_message_global_bodystructure_follows_rfc9051() -> None:
    # Dovecot 2.3 reports message/global as a basic part; RFC 9051 §7.5.2 gives it envelope, body and lines.
    raw = _corpus("45_message_global.eml")
    bs = bodystructure(scan(raw).root)
    assert b'("message" "global" NIL NIL NIL "7bit" 68 (NIL {7}\r\nGr\xc3\xbc\xc3\x9fe' in bs
    assert (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 11 0 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)'
        in bs
    )
