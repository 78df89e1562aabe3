"""The webmail's message building (web/writing.py): headers in RFC 2047, file names in RFC 2231, format=flowed
text, multipart/mixed with base64 and message/rfc822 parts, reply subjects and threading (RFC 5322 §3.6.4,
§3.6.5), reply recipients, addresses refused with a reason. Messages are read back with the stdlib parser."""

from __future__ import annotations

import email
import email.policy
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.mime.lineends import stray
from postroom.mime.meta import compute_meta
from postroom.web import writing

DATA = bytes(range(256)) * 300 + b"tail"


def _build(draft: writing.Draft, with_bcc: bool = False) -> bytes:
    head = writing.header_bytes(draft, from_="alice@example.org",
                                to=writing.parse_addresses(draft.to, "To"), cc=writing.parse_addresses(draft.cc, "Cc"),
                                bcc=writing.parse_addresses(draft.bcc, "Bcc"), date=1_700_000_000.0,
                                message_id="<id-1@example.org>", with_bcc=with_bcc)
    out = io.BytesIO()
    n = writing.write_message(out, draft, head)
    assert n == len(out.getvalue())
    return out.getvalue()


def test_plain_message_is_flowed_utf8_with_encoded_words() -> None:
    draft = writing.Draft(to="Jürgen Groß <j@example.org>", bcc="hidden@example.net", subject="Café  ünïcode",
                          text="Grüße,\n" + "lang " * 30)
    raw = _build(draft)
    assert stray(raw) is None and raw.split(b"\r\n\r\n")[0].isascii()  # invariant 1
    head = raw.split(b"\r\n\r\n")[0]
    assert b"To: =?utf-8?q?J=C3=BCrgen_Gro=C3=9F?= <j@example.org>" in head  # RFC 2047
    assert b"Bcc" not in head and b"hidden" not in raw
    assert b"Date: " in head and b"Message-ID: <id-1@example.org>" in head
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Café ünïcode"
    assert msg.get_content_type() == "text/plain" and msg.get_param("format") == "flowed"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    text = msg.get_content().replace("\r\n", "\n")
    assert text.startswith("Grüße,\n") and all(len(line) <= 78 for line in text.split("\n"))
    assert writing.Original.parse(raw).text == "Grüße,\n" + ("lang " * 30).rstrip()  # flowed read back


def test_ascii_text_is_7bit_and_draft_keeps_bcc() -> None:
    raw = _build(writing.Draft(to="b@example.org", bcc="c@example.net", subject="hi", text="hello"), with_bcc=True)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Content-Transfer-Encoding"] == "7bit" and msg["Bcc"] == "c@example.net"


def test_attachments_base64_rfc2231_and_forwarded_message_exact() -> None:
    original = b"Return-Path: <x@example.net>\r\nFrom: x@example.net\r\nSubject: caf\xc3\xa9\r\n\r\nbody \xe9\r\n"
    draft = writing.Draft(to="b@example.org", subject="files", text="see attached", attachments=[
        writing.Attachment("résumé final.pdf", "application/pdf", io.BytesIO(DATA)),
        writing.Attachment("kept.txt", "text/plain", b"kept bytes\r\n"),
        writing.Attachment("café.eml", "message/rfc822", original, rfc822=True),
    ])
    raw = _build(draft)
    assert stray(raw) is None
    assert b"filename*=utf-8''r%C3%A9sum%C3%A9%20final.pdf" in raw  # RFC 2231
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["résumé final.pdf", "kept.txt", "café.eml"]
    assert parts[0].get_content() == DATA and parts[0]["Content-Transfer-Encoding"] == "base64"
    assert parts[1].get_payload(decode=True) == b"kept bytes\r\n"
    assert parts[2].get_content_type() == "message/rfc822" and parts[2]["Content-Transfer-Encoding"] == "8bit"
    assert b"8bit\r\n\r\n" + original + b"\r\n--=_postroom_" in raw  # RFC 2046 §5.2.1: the bytes as they are
    assert all(len(line) <= 78 for line in raw.split(b"\r\n") if not line.startswith(b"--"))
    meta = compute_meta(raw)
    assert [r.filename for r in meta.parts if r.filename] == ["résumé final.pdf", "kept.txt", "café.eml"]


def test_boundary_avoids_the_parts() -> None:
    # invariant 2: a forwarded message holding "--=_postroom_..." lines does not break the structure
    original = b"Subject: tricky\r\n\r\n--=_postroom_0\r\n--=_postroom_\r\n"
    raw = _build(writing.Draft(to="b@example.org", text="x", attachments=[
        writing.Attachment("m.eml", "message/rfc822", original, rfc822=True)]))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    boundary = msg.get_boundary()
    assert ("--" + boundary).encode() not in original
    assert len(list(msg.iter_attachments())) == 1


def test_unread_file_in_odd_pieces_gives_whole_base64_lines() -> None:
    class Trickle(io.RawIOBase):  # a file that returns at most 1000 bytes a read
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(1000, len(self.data) - self.pos) if n < 0 else min(n, 1000)
            chunk = self.data[self.pos:self.pos + n]
            self.pos += len(chunk)
            return chunk

    raw = _build(writing.Draft(to="b@example.org", text="x", attachments=[
        writing.Attachment("d.bin", "application/octet-stream", Trickle(DATA))]))  # type: ignore[arg-type]
    body = raw.split(b"base64\r\n\r\n")[1].split(b"\r\n--")[0]
    lines = body.split(b"\r\n")
    assert lines[-1] == b"" and all(len(line) == 76 for line in lines[:-2]) and 0 < len(lines[-2]) <= 76
    (part,) = email.message_from_bytes(raw, policy=email.policy.default).iter_attachments()
    assert part.get_content() == DATA


@pytest.mark.parametrize(("subject", "expected"), [
    ("plans", "Re: plans"), ("Re: plans", "Re: plans"), ("RE: Re: re:plans", "Re: plans"),
    ("Re[2]: plans", "Re: plans"), ("AW: plans", "Re: plans"), ("", "Re: "), ("Fwd: plans", "Re: Fwd: plans"),
])
def test_reply_subject(subject: str, expected: str) -> None:
    assert writing.reply_subject(subject) == expected


def test_forward_subject() -> None:
    assert writing.forward_subject("plans") == "Fwd: plans"
    assert writing.forward_subject("Fwd: plans") == "Fwd: plans"
    assert writing.forward_subject("FW: plans") == "FW: plans"


def test_reply_threading() -> None:
    # RFC 5322 §3.6.4: References = the parent's References, else its single In-Reply-To, then its Message-ID
    assert writing.reply_threading("<p@x>", "<a@x> <b@x>", "<b@x>") == ("<p@x>", "<a@x> <b@x> <p@x>")
    assert writing.reply_threading("<p@x>", "", "<b@x>") == ("<p@x>", "<b@x> <p@x>")
    assert writing.reply_threading("<p@x>", "", "<b@x> <c@x>") == ("<p@x>", "<p@x>")
    assert writing.reply_threading("", "<a@x>", "") == ("", "")


def test_reply_recipients() -> None:
    original = writing.Original(from_="Dana <dana@example.net>", to="alice@example.org, Erin <erin@example.net>",
                                cc="Team <TEAM@example.org>, bob@example.org", reply_to="", subject="s", date="d",
                                message_id="<m@x>", references="", in_reply_to="", text="t")
    own = ["alice@example.org", "team@example.org"]
    assert writing.reply_recipients(original, own, False) == ("Dana <dana@example.net>", "")
    to, cc = writing.reply_recipients(original, own, True)
    assert to == "Dana <dana@example.net>, Erin <erin@example.net>" and cc == "bob@example.org"
    with_reply_to = writing.Original(**{**original.__dict__, "reply_to": "list@example.net"})
    assert writing.reply_recipients(with_reply_to, own, False)[0] == "list@example.net"  # RFC 5322 §3.6.2
    mine = writing.Original(**{**original.__dict__, "from_": "Alice <alice@example.org>"})  # from Sent
    assert writing.reply_recipients(mine, own, False) == ("Erin <erin@example.net>", "")


def test_reply_text_quotes_under_an_attribution() -> None:
    original = writing.Original(from_="Dana <dana@example.net>", to="", cc="", reply_to="", subject="s",
                                date="Mon, 2 Nov 2026 10:00:00 +0000", message_id="", references="",
                                in_reply_to="", text="Hi\n> earlier")
    assert writing.reply_text(original) == ("\n\nOn Mon, 2 Nov 2026 10:00:00 +0000, Dana <dana@example.net> wrote:\n"
                                            "> Hi\n>> earlier")


def test_original_of_an_html_only_message_is_its_text() -> None:
    raw = (b"From: a@example.net\r\nSubject: h\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
           b"<p>Hello <b>there</b></p><script>alert(1)</script><p>caf&eacute;</p>\r\n")
    text = writing.Original.parse(raw).text
    assert "Hello there" in text and "café" in text and "alert" not in text and "<" not in text


@pytest.mark.parametrize("bad", ["bob", "bob@", "@example.org", "a@b@", "Zoë@example.org"])
def test_bad_addresses_are_refused_with_the_field_named(bad: str) -> None:
    with pytest.raises(writing.BadAddress, match="^Cc: "):
        writing.parse_addresses(bad, "Cc")


def test_addresses_idna_and_names() -> None:
    assert writing.parse_addresses("Zoë <zoe@bücher.example>, b@example.org", "To") == [
        ("Zoë", "zoe@xn--bcher-kva.example"), ("", "b@example.org")]
    assert writing.parse_addresses("  ", "To") == []


def test_rich_html_is_a_small_safe_subset() -> None:
    doc = writing.rich_html("Hi **Bob**, *soon*: https://example.org/?a=1&b=2.\n<script>alert(1)</script> "
                            "<b onclick=x>no</b>\n\n- one\n- two\n\n> quoted\n>> deeper\n2*3*4 snake_case")
    assert "<p>Hi <strong>Bob</strong>, <em>soon</em>: " in doc
    assert '<a href="https://example.org/?a=1&amp;b=2">https://example.org/?a=1&amp;b=2</a>.<br>' in doc
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;b onclick=x&gt;no&lt;/b&gt;" in doc  # text, never markup
    assert "<ul><li>one</li><li>two</li></ul>" in doc
    assert "<blockquote><p>quoted</p><blockquote><p>deeper</p></blockquote></blockquote>" in doc
    assert "2*3*4 snake_case" in doc
    assert doc.count("<") == doc.count(">")


def test_rich_message_is_multipart_alternative_text_first() -> None:
    raw = _build(writing.Draft(to="b@example.org", subject="r", text="**Zoë**", rich=True, attachments=[
        writing.Attachment("a.txt", "text/plain", b"a")]))
    assert stray(raw) is None
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    alt = next(iter(msg.iter_parts()))
    assert alt.get_content_type() == "multipart/alternative"
    plain, rich = list(alt.iter_parts())  # RFC 2046 §5.1.4: the plainest first
    assert plain.get_content_type() == "text/plain" and plain.get_param("format") == "flowed"
    assert rich.get_content_type() == "text/html" and "<strong>Zoë</strong>" in rich.get_content()
    single = email.message_from_bytes(_build(writing.Draft(to="b@example.org", text="x", rich=True)),
                                      policy=email.policy.default)
    assert single.get_content_type() == "multipart/alternative" and single["MIME-Version"] == "1.0"


_PIECES = [*"ab@<>\"\\(),;:. é\t[]=?\r\n\x00z1-_", "Zoë", "IPv6:", "=?utf-8?q?x?=", "127.0.0.1"]
_typed = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(_typed, _typed, _typed)
def test_anything_typed_is_refused_with_a_reason_or_written_cleanly(to: str, subject: str, body: str) -> None:
    # bad input gets a clear refusal (BadAddress), never a traceback; what is written has no stray CR/LF/NUL
    try:
        pairs = writing.parse_addresses(to, "To")
    except writing.BadAddress as exc:
        assert str(exc).startswith("To: ")
        pairs = []
    draft = writing.Draft(subject=subject, text=body.replace("\x00", ""))
    typed = [("X-Postroom-Draft-To", " ".join(to.split()))]
    head = writing.header_bytes(draft, from_="a@example.org", to=pairs, cc=[], bcc=[], date=0.0,
                                message_id="<m@x>", with_bcc=True, extra=typed)
    out = io.BytesIO()
    writing.write_message(out, draft, head)
    assert stray(out.getvalue()) is None and head.isascii()


def test_control_characters_in_names_never_reach_the_header() -> None:
    draft = writing.Draft(to="b@example.org", subject="a\x00b\r\nBcc: evil@example.net", text="x", attachments=[
        writing.Attachment("evil\x00\r\nname.txt", "text/plain", b"x")])
    raw = _build(draft)
    assert stray(raw) is None and b"\r\nBcc:" not in raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "a b Bcc: evil@example.net"  # header injection is text
    assert next(iter(msg.iter_attachments())).get_filename() == "evil name.txt"


def test_signature_goes_below_the_text_after_the_separator() -> None:
    """RFC 3676 §4.3: the signature after a "-- " line, which the flowed text part keeps as it is."""
    assert writing.with_signature("", "Alice\r\nRabbit hole") == "\n\n-- \nAlice\nRabbit hole"
    assert writing.with_signature("> quoted\n\n", "Alice") == "> quoted\n\n-- \nAlice"
    assert writing.with_signature("Hello", "  \n") == "Hello"  # no signature: the text unchanged
    part = writing.text_part(writing.with_signature("Hello Bob", "Alice"))
    assert part.endswith(b"\r\n\r\nHello Bob\r\n\r\n-- \r\nAlice\r\n")


def test_from_mailbox_with_a_display_name() -> None:
    assert writing.mailbox("", "alice@example.org") == "alice@example.org"
    assert writing.mailbox("Alice Liddell", "alice@example.org") == "Alice Liddell <alice@example.org>"
    assert writing.mailbox("Liddell, Alice", "alice@example.org") == '"Liddell, Alice" <alice@example.org>'
    # no line break reaches the field; ":" and "@" are specials, so the phrase is quoted (RFC 5322 §3.4)
    assert writing.mailbox("Al\r\nBcc: x@y", "alice@example.org") == '"Al Bcc: x@y" <alice@example.org>'


def test_a_subject_or_name_with_an_encoded_word_is_not_decoded_again() -> None:
    """A reply's subject is the original's decoded once ("Re: " + it); an original encoded twice leaves an RFC 2047
    word in it, which the header registry would decode into CR LF and new fields (Bcc to a spy). It stays text in
    one Subject field (RFC 5322 §2.2), and a display name with such a word gives no error."""
    import base64

    inner = "=?utf-8?b?" + base64.b64encode(b"Hi\r\nX-Injected: yes\r\nBcc: spy@evil.example").decode() + "?="
    draft = writing.Draft(to="bob@example.org", subject="Re: " + inner, text="hello\n")
    msg = email.message_from_bytes(_build(draft), policy=email.policy.default)
    assert msg["X-Injected"] is None and msg["Bcc"] is None
    assert "\n" not in str(msg["Subject"]) and "utf-8?b?SGkNCl" in str(msg["Subject"])
    assert writing.mailbox("=?utf-8?b?QQ0KWDogMQ==?=", "alice@example.org").endswith("<alice@example.org>")
