"""Search text: RFC 2047 headers in many charsets, decoded bodies, HTML reduced to text, bounded size."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from postroom.mime.meta import compute_meta
from postroom.mime.structure import scan
from postroom.mime.text import decode_words, html_to_text, search_text

MSGS = Path(__file__).resolve().parents[1] / "data" / "mime" / "msgs"


def meta_of(name: str):  # type: ignore[no-untyped-def]
    return compute_meta((MSGS / f"{name}.eml").read_bytes())


@pytest.mark.parametrize(
    "raw,text",
    [
        (b"=?iso-8859-1?q?caf=E9_cr=E8me?=", "café crème"),
        (b"=?UTF-8?B?0J/RgNC40LLQtdGCLCDQvNC40YA=?=", "Привет, мир"),
        (b"=?koi8-r?B?8NLJ18XUIA==?= =?koi8-r?q?=CD=C9=D2?=", "Привет мир"),
        (b"=?ISO-2022-JP?B?GyRCJDMkcyRLJEEkTxsoQg==?=", "こんにちは"),
        (b"=?gb2312?B?xOO6ww==?=", "你好"),
        (b"=?shift_jis?B?grGC8YLJgr+CzQ==?=", "こんにちは"),
        (b"=?x-unknown-42?Q?hello_world?=", "hello world"),
        (b"a =?utf-8?q?b?= c", "a b c"),
        (b"=?utf-8?b?4pw=?= =?utf-8?b?kw==?=", "✓"),  # a character split across two words
        (b"Gr\xc3\xbc\xc3\x9fe", "Grüße"),
        (b"Gr\xfc\xdfe", "Grüße"),  # 8-bit, not UTF-8: Windows-1252
        (b"=?utf-8?q?broken", "=?utf-8?q?broken"),
        (b"folded\r\n line", "folded line"),
    ],
)
def test_decode_words(raw: bytes, text: str) -> None:
    assert decode_words(raw) == text


def test_html_to_text() -> None:
    html = (
        "<html><head><style>p{}</style></head><body><p>A &amp; B</p><script>x()</script><div>C&nbsp;D</div>"
    )
    assert html_to_text(html) == "A & B\nC D"
    assert html_to_text("<p unclosed <b>x") is not None


def test_bodies_in_charsets_and_encodings() -> None:
    assert "Grüße, das ist eine sehr lange Zeile die umbrochen wird." in meta_of("03_text_qp").search.body
    assert "Hej då, världen!" in meta_of("04_text_base64").search.body
    assert meta_of("06_html_only").search.body == "Hello & bye"
    html = meta_of("66_html_qp_entities").search.body
    assert "Price: 5€ € <ok>" in html and "x=1" not in html and "Line two" in html


def test_headers_decoded() -> None:
    m = meta_of("30_subject_latin1_q")
    assert m.search.header("subject") == "café crème"
    assert m.search.header("from") == "André Pirard <alice@example.org>"
    assert meta_of("33_subject_iso2022jp").search.header("subject") == "こんにちは"


def test_alternative_indexed_once_and_attachments_skipped() -> None:
    body = meta_of("07_alternative").search.body
    assert body == "plain version"
    body = meta_of("08_mixed_attachment").search.body
    assert "PDF" not in body


def test_encapsulated_message_headers_and_body() -> None:
    body = meta_of("12_forward_rfc822").search.body
    assert "subject: inner" in body and "inner body" in body


def test_bounded() -> None:
    text = base64.encodebytes(("x" * 70 + "\n").encode() * 200_000).decode()
    raw = ("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + text).encode()
    st = search_text(raw, scan(raw).root, max_body=10_000)
    assert len(st.body) == 10_000


def test_broken_input_never_raises() -> None:
    raw = b'Subject: =?bogus?B?!!!?=\r\nContent-Type: text/html; charset="utf-7"\r\n\r\n<p>+AGEAYgBj-</p>\xff'
    st = search_text(raw, scan(raw).root)
    assert st.body
