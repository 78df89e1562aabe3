"""The webmail's message rendering (web/render.py): body choice, charsets, links, attachments, the HTML cleaner
and `cid:` images, fed whole messages."""

from __future__ import annotations

import base64

import pytest

from postroom.mime.meta import compute_meta
from postroom.web import render
from postroom.web.mail import content_disposition


def _view(raw: bytes) -> render.View:
    return render.view(raw, compute_meta(raw))


@pytest.mark.parametrize("charset,text", [("iso-8859-1", "café à midi"), ("koi8-r", "Привет"), ("shift_jis", "日本語"),
                                          ("big5", "中文"), ("iso-8859-7", "Καλημέρα"), ("windows-1255", "שלום"),
                                          ("utf-16", "snow ☃"), ("euc-kr", "한국어")])
def test_every_python_charset_is_decoded(charset: str, text: str) -> None:
    raw = (f"Subject: x\r\nContent-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           .encode() + base64.encodebytes(text.encode(charset)))
    v = _view(raw)
    assert v.text is not None and text in str(v.text)


def test_plain_text_is_escaped_and_links_are_safe() -> None:
    v = _view(b"Subject: =?utf-8?b?w6l0w6k=?=\r\nFrom: =?iso-8859-1?q?Andr=E9?= <a@example.org>\r\n\r\n"
              b"<script>alert(1)</script> see https://example.org/a?b=1&c=2. and javascript:alert(1) "
              b"\"https://x.example/\"onmouseover=\"\r\n")
    assert v.headers["subject"] == "été" and v.headers["from"] == "André <a@example.org>"  # RFC 2047
    html = str(v.text)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert '<a href="https://example.org/a?b=1&amp;c=2" rel="noopener noreferrer" target="_blank">' in html
    assert 'href="javascript' not in html
    assert 'href="https://x.example/"' in html and "onmouseover=&#34;" in html  # the quote ends the URL


def test_html_is_preferred_and_attachments_are_listed_with_decoded_names() -> None:
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\n"
           b"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
           b"--a\r\nContent-Type: text/html\r\n\r\n<p>rich</p>\r\n--a--\r\n--m\r\nContent-Type: message/rfc822\r\n\r\n"
           b"Subject: inner\r\nContent-Type: text/html\r\n\r\n<p>inner html</p>\r\n--m\r\n"
           b"Content-Type: application/pdf\r\nContent-Disposition: attachment;\r\n filename*0*=utf-8''r%C3%A9;\r\n"
           b" filename*1=sum.pdf\r\n\r\n%PDF\r\n--m--\r\n")
    v = _view(raw)
    assert v.text is None and v.html_section == "1.2"  # not the forwarded message's HTML
    assert [(a.section, a.name, a.mime_type) for a in v.attachments] == [
        ("2", "part-2.eml", "message/rfc822"), ("3", "résum.pdf", "application/pdf")]  # RFC 2231 continuations


def test_html_cleaner_removes_everything_active_and_remote() -> None:
    out = render.clean_html(
        "<script>x()</script><p onclick='x()' style='color:red;background:url(http://e/x);position:fixed'>t</p>"
        "<a href='javascript:x()'>j</a><a href='https://ok.example/'>ok</a><img src='http://e/t.gif'>"
        "<img src='cid:logo@x' alt='logo'><form action='http://e/'><input name=a></form><style>*{}</style>"
        "<iframe src='http://e/'></iframe><object data='http://e/'></object><base href='http://e/'>"
        "<svg><a xlink:href='javascript:x()'>s</a></svg><meta http-equiv=refresh content='0;url=http://e/'>")
    for banned in ("script", "onclick", "url(", "position", "javascript", "http://e", "<form", "<input", "<style",
                   "<iframe", "<object", "<base", "<meta", "<svg"):
        assert banned not in out, banned
    assert '<p style="color:red">t</p>' in out
    assert '<a href="https://ok.example/" target="_blank" rel="noopener noreferrer">ok</a>' in out or \
        '<a href="https://ok.example/" rel="noopener noreferrer" target="_blank">ok</a>' in out
    assert '<img src="cid:logo@x" alt="logo">' in out


def test_cid_images_become_data_urls_of_the_messages_own_parts() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=r\r\n\r\n--r\r\n"
           b"Content-Type: text/html\r\n\r\n<p><img src=\"cid:logo@x\"><img src=\"cid:missing@x\"></p>\r\n--r\r\n"
           b"Content-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(png) + b"--r--\r\n")
    meta = compute_meta(raw)
    doc = render.html_document(raw, meta, "1")
    assert doc is not None
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in doc
    assert 'src="cid:' not in doc
    assert render.html_document(raw, meta, "2") is None  # not an HTML part
    assert render.html_document(raw, meta, "../1") is None and render.find_row(meta, "1.") is None


def test_content_disposition_has_an_ascii_fallback_and_the_utf8_name() -> None:
    # RFC 6266 §4.3 and RFC 8187 §3.2.1: attr-char is ALPHA / DIGIT / "!#$&+-.^_`|~"; everything else %-encoded
    assert content_disposition('naïve "quote";.txt') == (
        "attachment; filename=\"na_ve _quote__.txt\"; filename*=UTF-8''na%C3%AFve%20%22quote%22%3B.txt")
