"""Preview text (RFC 8970 §3, `mime/preview.py`): the first text/plain or text/html part, HTML reduced to text,
whitespace normalised, at most 256 characters; never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.mime.meta import compute_meta
from postroom.mime.preview import PREVIEW_MAX, preview_text


def preview(raw: bytes) -> str:
    return preview_text(raw, compute_meta(raw))


def test_plain_whitespace_normalised_and_quotes_left_out() -> None:
    raw = b"Subject: s\r\n\r\nHi Bob,\r\n\r\n\tthe  report\r\nis ready.\r\n> what you wrote\r\n>> and before\r\nBye\r\n"
    assert preview(raw) == "Hi Bob, the report is ready. Bye"


def test_at_most_256_characters_not_octets() -> None:
    raw = b"Subject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + ("é" * 300).encode() + b"\r\n"
    text = preview(raw)
    assert text == "é" * PREVIEW_MAX and PREVIEW_MAX == 256  # RFC 8970 §3: characters


def test_html_reduced_to_text() -> None:
    raw = (b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"<html><head><title>Not this</title><style>p {color: red}</style></head><body>"
           b"<p>Hello&nbsp;<b>w=C3=B6rld</b></p>\r\n<div>second&amp;line</div></body></html>\r\n")
    assert preview(raw) == "Hello wörld second&line"


def test_html_cut_inside_a_tag_shows_no_markup() -> None:
    """Only the first 64 KiB of a part are read: a tag cut there must not show as text (RFC 8970 §3: text)."""
    raw = b"Content-Type: text/html\r\n\r\n" + b"<div>" * 100_000 + b"deep" + b"</div>" * 100_000 + b"\r\n"
    assert preview(raw) == ""
    raw = b"Content-Type: text/html\r\n\r\n<p>Hello</p>" + b"<span>" * 20_000 + b"\r\n"
    assert preview(raw) == "Hello"


def test_first_text_part_alternative_plain_first() -> None:
    raw = (b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
           b'Content-Type: multipart/alternative; boundary="a"\r\n\r\n--a\r\n'
           b"Content-Type: text/plain\r\n\r\nthe plain one\r\n--a\r\n"
           b"Content-Type: text/html\r\n\r\n<p>the html one</p>\r\n--a--\r\n--m\r\n"
           b"Content-Type: text/plain\r\n\r\nsecond part\r\n--m--\r\n")
    assert preview(raw) == "the plain one"


def test_attachments_and_attached_messages_are_not_the_text() -> None:
    raw = (b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
           b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner text\r\n--m\r\n"
           b'Content-Type: text/plain; name="a.txt"\r\nContent-Disposition: attachment; filename="a.txt"\r\n\r\n'
           b"attached text\r\n--m\r\n"
           b"Content-Type: text/plain\r\n\r\nmy own words\r\n--m--\r\n")
    assert preview(raw) == "my own words"


def test_no_text_is_empty() -> None:
    raw = b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
    assert preview(raw) == ""
    assert preview(b"") == ""


def test_base64_text() -> None:
    raw = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8sCndvcmxk\r\n"
    assert preview(raw) == "Hello, world"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_never_raises_and_stays_small(data: bytes) -> None:
    raw = b"Content-Type: text/plain\r\n\r\n" + data
    text = preview(raw)
    assert len(text) <= PREVIEW_MAX and "\r" not in text and "\n" not in text
    assert all(ch.isprintable() for ch in text)
