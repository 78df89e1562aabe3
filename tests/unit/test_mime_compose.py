"""Composing: the message shapes the rest of Postroom builds, checked by scanning them back."""

from __future__ import annotations

from typing import Any

from postroom.mime import headers as H
from postroom.mime.compose import Attachment, compose
from postroom.mime.imap import binary_bytes
from postroom.mime.meta import compute_meta
from postroom.mime.structure import find_part, scan, walk


def _compose(**kw: Any) -> bytes:
    """compose() with a fixed Date and Message-ID."""
    return compose(date=0.0, message_id="<fixed@example.org>", **kw)


def shape(raw: bytes) -> list[tuple[str, str]]:
    return [(".".join(map(str, sec)), p.mime_type) for sec, p in walk(scan(raw).root)[1:]]


def check_wire(raw: bytes) -> None:
    assert all(b < 0x80 for b in raw), "only ASCII on the wire"
    assert b"\n" not in raw.replace(b"\r\n", b""), "CRLF only"
    assert scan(raw).defects == []


def test_text_only(india_time: None) -> None:
    raw = _compose(from_="a@example.org", to=["b@example.net"], subject="hi", text="hello\n")
    check_wire(raw)
    assert b"Message-ID: <fixed@example.org>\r\n" in raw
    # RFC 5322 §3.3: the server's zone with its real offset; "-0000" would say the zone is unknown
    assert b"Date: Thu, 01 Jan 1970 05:30:00 +0530\r\n" in raw
    assert b"Content-Transfer-Encoding: 7bit" in raw
    assert shape(raw) == [("1", "text/plain")]


def test_non_ascii_everything() -> None:
    raw = compose(
        from_="Jörg Müller <jorg@example.de>",
        to=["Zoë <z@example.org>"],
        subject="Grüße – 你好",
        text="Hallo Zoë\n",
        html="<p>Hallo <b>Zoë</b></p>",
        attachments=[Attachment("résumé.pdf", b"%PDF-1.4", "application/pdf")],
        domain="example.de",
        now=lambda: 1_700_000_000.0,
    )
    check_wire(raw)
    meta = compute_meta(raw)
    assert meta.search.header("subject") == "Grüße – 你好"
    assert meta.search.header("from") == "Jörg Müller <jorg@example.de>"
    assert "Hallo Zoë" in meta.search.body
    assert b"quoted-printable" in raw
    assert shape(raw) == [
        ("1", "multipart/alternative"),
        ("1.1", "text/plain"),
        ("1.2", "text/html"),
        ("2", "application/pdf"),
    ]
    part = find_part(scan(raw).root, (2,))
    assert part is not None and part.disposition is not None
    assert H.param_value(part.disposition[1], "filename") == "résumé.pdf"
    assert binary_bytes(raw, scan(raw).root, (2,)) == b"%PDF-1.4"
    assert meta.envelope.endswith(b'@example.de>")')


def test_inline_images_make_multipart_related() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    raw = _compose(
        from_="a@example.org",
        to=["b@example.net"],
        subject="logo",
        text="see logo",
        html='<p><img src="cid:logo@x"></p>',
        attachments=[
            Attachment("logo.png", png, "image/png", inline=True, content_id="logo@x"),
            Attachment("a.txt", b"attached", "text/plain"),
        ],
    )
    check_wire(raw)
    assert shape(raw) == [
        ("1", "multipart/alternative"),
        ("1.1", "text/plain"),
        ("1.2", "multipart/related"),
        ("1.2.1", "text/html"),
        ("1.2.2", "image/png"),
        ("2", "text/plain"),
    ]
    root = scan(raw).root
    img = find_part(root, (1, 2, 2))
    assert img is not None and img.id == b"<logo@x>" and img.encoding == "base64"
    assert binary_bytes(raw, root, (1, 2, 2)) == png
    assert raw.count(b"MIME-Version") == 1


def test_html_only_and_extra_headers() -> None:
    raw = _compose(
        from_="a@example.org",
        to=["b@example.net"],
        html="<p>x</p>",
        cc=["c@example.com"],
        reply_to="r@example.org",
        in_reply_to="<p@x>",
        references="<p@x>",
        headers=[("X-Mailer", "Postroom")],
    )
    check_wire(raw)
    assert shape(raw) == [("1", "text/html")]
    env = compute_meta(raw).envelope
    assert b'((NIL NIL "r" "example.org"))' in env and b'"<p@x>" "<fixed@example.org>")' in env
    assert b"X-Mailer: Postroom\r\n" in raw


def test_generated_message_ids_differ() -> None:
    a = compose(from_="a@example.org", text="x", domain="example.org")
    b = compose(from_="a@example.org", text="x", domain="example.org")
    ida = compute_meta(a).envelope.rsplit(b" ", 1)[1]
    idb = compute_meta(b).envelope.rsplit(b" ", 1)[1]
    assert ida != idb and ida.endswith(b'@example.org>")')


def test_complete_submission(india_time: None) -> None:
    # RFC 6409 §8.3 (Date), §8.4 (Message-ID): added when absent, before the existing header, nothing else changed
    from postroom.mime.compose import complete_submission

    def done(raw: bytes) -> bytes:
        return complete_submission(raw, "mx.example.org", now=lambda: 0.0, make_id=lambda d: f"<id@{d}>")

    added = b"Date: Thu, 01 Jan 1970 05:30:00 +0530\r\nMessage-ID: <id@mx.example.org>\r\n"
    assert done(b"Subject: x\r\n\r\nbody\r\n") == added + b"Subject: x\r\n\r\nbody\r\n"
    assert done(b"DATE: whenever\r\nSubject: x\r\n\r\n") == b"Message-ID: <id@mx.example.org>\r\n" \
        b"DATE: whenever\r\nSubject: x\r\n\r\n"
    folded = b"Subject: x\r\n message-id: in a folded line is not a field\r\nmessage-id:<a@b>\r\n\r\nDate: body\r\n"
    assert done(folded) == b"Date: Thu, 01 Jan 1970 05:30:00 +0530\r\n" + folded
    whole = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <m@x>\r\n\r\n"
    assert done(whole) is whole
    assert done(b"no header at all\r\n") == added + b"\r\nno header at all\r\n"  # the text stays the body
    assert done(b"") == added
    # With the envelope sender (submission), a missing From is added too (RFC 5322 §3.6: one is required)
    with_from = complete_submission(b"Subject: x\r\n\r\nhi\r\n", "mx.example.org", now=lambda: 0.0,
                                    make_id=lambda d: f"<id@{d}>", sender="alice@example.org")
    assert with_from == added + b"From: <alice@example.org>\r\nSubject: x\r\n\r\nhi\r\n"
    has_from = b"FROM: Alice <alice@example.org>\r\nDate: x\r\nMessage-ID: <a@b>\r\n\r\n"
    assert complete_submission(has_from, "mx.example.org", sender="alice@example.org") is has_from
