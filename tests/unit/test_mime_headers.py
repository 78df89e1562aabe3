"""The header tokenizers the scan and the address parser read with (mime/headers.py): field lines (RFC 5322
§2.2, §4.5.8), quoted strings (RFC 5322 §3.2.4), RFC 2045 §5.1 tokens and parameters. Expected values are the
RFCs' readings; each case is fed whole, and the quoted strings and tokens also at every start offset."""

from __future__ import annotations

import pytest

from postroom.mime import headers as H
from postroom.mime.address import parse_address_list
from postroom.mime.structure import KEPT_PART_HEADERS, scan
from postroom.mime.text import part_fields


def test_field_lines_names_and_values() -> None:
    block = b"Subject: hi\r\nX-A : spaced name\r\n\tfolded\r\nEmpty:\r\nlf-only: v\nBare:x"
    fields, ok = H.split_fields(block, 0, len(block))
    assert ok
    assert [(f.name, f.value) for f in fields] == [
        ("subject", b" hi"),
        ("x-a", b" spaced name\r\n\tfolded"),  # RFC 5322 §4.5.8 obs: blanks before the colon
        ("empty", b""),
        ("lf-only", b" v"),
        ("bare", b"x"),  # no line end at the end of the block
    ]
    assert [block[f.start : f.end] for f in fields][1] == b"X-A : spaced name\r\n\tfolded\r\n"


@pytest.mark.parametrize("line", [b"Two words: x\r\n", b": no name\r\n", b"no colon\r\n", b"Na\x01me: x\r\n",
                                  b"Caf\xc3\xa9: x\r\n"])
def test_lines_that_are_no_field(line: bytes) -> None:
    # RFC 5322 §2.2: a field name is printable US-ASCII other than ":", at least one of them.
    block = b"A: 1\r\n" + line + b"B: 2\r\n"
    fields, ok = H.split_fields(block, 0, len(block))
    assert not ok
    assert [f.name for f in fields] == ["a", "b"]


def test_a_colon_in_the_value_is_not_the_name_end() -> None:
    fields, _ = H.split_fields(b"Received: from a:b\r\n", 0, 20)
    assert [(f.name, f.value) for f in fields] == [("received", b" from a:b")]


@pytest.mark.parametrize(("text", "content", "rest"), [
    ('"plain text" x', "plain text", " x"),
    ('"with \\"escaped\\" quote" x', 'with "escaped" quote', " x"),
    ('"back\\\\slash"', "back\\slash", ""),
    ('"folded\r\n line" x', "folded line", " x"),  # RFC 5322 §3.2.4: FWS; the CRLF is not part of the content
    ('"unterminated', "unterminated", ""),
    ('""', "", ""),
])
def test_quoted_strings(text: str, content: str, rest: str) -> None:
    for lead in ("", "a ", "(c) "):
        s = lead + text
        got, end = H.read_quoted(s, len(lead))
        assert (got, s[end:]) == (content, rest)


@pytest.mark.parametrize(("text", "token"), [
    ("text/plain", "text"), ("x-token.1_2~3!", "x-token.1_2~3!"), ("a b", "a"), ("a\tb", "a"), ("a=b", "a"),
    ("a;b", "a"), ("a\x7fb", "a"), ("a\x00b", "a"), ('a"b', "a"), ("caf\xe9;", "caf\xe9"), ("", ""),
])
def test_tokens_end_at_tspecials_blanks_and_controls(text: str, token: str) -> None:
    # RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>; 8-bit is kept leniently.
    assert H.read_token(text, 0) == (token, len(token))
    assert H.read_token("  " + text, 2) == (token, 2 + len(token))
    assert H.read_token(text, len(text)) == ("", len(text))


def test_token_with_extra_stop_characters() -> None:
    assert H.read_token("abc,def", 0, ",") == ("abc", 3)
    assert H.read_token("a.b", 0, ".") == ("a", 1)


def test_content_type_with_quoted_boundary_and_comment() -> None:
    typ, sub, params, ok = H.parse_content_type(b' multipart/mixed (c) ; boundary="=_a b" ; charset=x (y)')
    assert (typ, sub, params, ok) == ("multipart", "mixed", (("boundary", "=_a b"), ("charset", "x")), True)


def test_address_atoms_and_specials() -> None:
    # RFC 5322 §3.4: display-name angle-addr, and an addr-spec whose comment is the name (as IMAP servers read it).
    got = parse_address_list(b'Dr. J. Smith <j.smith@mail.example.org>, "Q, X" <q@x>, x!#y@z (Zed)')
    assert [(a.name, a.mailbox, a.host) for a in got] == [
        ("Dr. J. Smith", "j.smith", "mail.example.org"), ("Q, X", "q", "x"), ("Zed", "x!#y", "z")]


def test_every_part_keeps_its_header_fields() -> None:
    raw = (b"Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain\r\nContent-ID: <c@x>\r\n\r\nhello\r\n--b\r\n\r\nno header\r\n"
           b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n--b--\r\n")
    root = scan(raw).root
    assert [f.name for f in root.fields] == ["subject", "content-type"]
    first, second, third = root.children
    assert [(f.name, f.value) for f in first.fields] == [("content-type", b" text/plain"), ("content-id", b" <c@x>")]
    assert second.fields == []
    assert [f.name for f in third.fields] == ["content-type"]  # the part's MIME header
    assert third.message is not None and [f.name for f in third.message.fields] == ["subject"]  # its message's


def test_part_headers_past_the_kept_bytes_are_split_again_for_the_search_text() -> None:
    # 80 parts of ~950 header bytes: more than structure.KEPT_PART_HEADERS, so later parts keep no fields, and
    # the search text's part fields (RFC 9051 §6.4.4 TEXT: MIME header fields) still read them.
    part = b"--b\r\nX-Pad: " + b"x" * 900 + b"\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + part * 80 + b"--b--\r\n"
    root = scan(raw).root
    kept = [p for p in root.children if p.fields]
    assert 0 < len(kept) < 80 and sum(p.body_start - p.header_start for p in kept) <= KEPT_PART_HEADERS
    got = part_fields(raw, root)
    assert got[: 2 * len(kept) + 2] == (("x-pad", "x" * 900), ("content-type", "text/plain")) * (len(kept) + 1)
