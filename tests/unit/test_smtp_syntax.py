"""SMTP's one grammar module (smtp/syntax.py), used by the server core and the outbound client: paths and ESMTP
parameters (RFC 5321 §4.1.2, RFC 6531 §3.3, RFC 3461 §4), replies both ways (RFC 5321 §4.2, RFC 3463) and the
DATA transparency of RFC 5321 §4.5.2, stuffed whole and unstuffed at every split."""

from __future__ import annotations

import random

import pytest

from postroom.smtp.syntax import (
    PathError,
    Reply,
    dot_stuff,
    dot_unstuff,
    parse_params,
    parse_path,
    parse_reply_line,
    valid_xtext,
)

# --------------------------------------------------------------------------------------------------------
# Paths and parameters


@pytest.mark.parametrize("text,address,rest", [
    ("<a@b.test>", "a@b.test", ""),
    ("<A@B.Test> SIZE=1", "A@b.test", " SIZE=1"),
    ("<@relay.test,@r2.test:user@dest.test>", "user@dest.test", ""),
    ('<"john"@b.test>', "john@b.test", ""),
    ('<"john doe"@b.test>', '"john doe"@b.test', ""),
    ('<"a@c"@b.test>', '"a@c"@b.test', ""),
    ('<"a\\"b"@b.test>', '"a\\"b"@b.test', ""),
    ("<user%other@b.test>", "user%other@b.test", ""),
    ("<other!user@b.test>", "other!user@b.test", ""),
    ("<u@[127.0.0.1]>", "u@[127.0.0.1]", ""),
    ("<u@[IPv6:::1]>", "u@[ipv6:::1]", ""),
    ("<Postmaster>", "Postmaster", ""),
    ("<>", "", ""),
    ("<δοκιμή@παράδειγμα.δοκιμή>", "δοκιμή@παράδειγμα.δοκιμή", ""),
])
def test_parse_path(text: str, address: str, rest: str) -> None:
    assert parse_path(text, allow_null=True, utf8=True) == (address, rest)


@pytest.mark.parametrize("text", [
    "a@b.test", "<a@b.test", "<a@@b.test>", "<a@b@c.test>", "<a@b.test.>", "<.a@b.test>", "<a..b@b.test>",
    "<a@-b.test>", "<a@b..test>", "<a b@c.test>", "<@x:>", "<@:a@b.test>", '<"a@b.test>', "<a@>", "<@b.test>",
    "<a@[]>", "<a@b_c.test>",
])
def test_parse_path_rejects(text: str) -> None:
    with pytest.raises(PathError):
        parse_path(text, allow_null=False, utf8=True)


def test_parse_params() -> None:
    assert parse_params(" SIZE=10 BODY=8BITMIME SMTPUTF8") == {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None}
    for bad in (" SIZE=", " SIZE=1 size=2", "junk", " =x", " A=b=c"):
        with pytest.raises(PathError):
            parse_params(bad)


def test_xtext() -> None:
    assert valid_xtext("abc+2Bdef") and valid_xtext("")
    assert not valid_xtext("a+2b") and not valid_xtext("a=b") and not valid_xtext("a b") and not valid_xtext("+4")


def test_reply_rendering() -> None:
    assert Reply(250, "2.1.5", ("<a@b>", "<c@d>")).to_bytes() == b"250-2.1.5 <a@b>\r\n250 2.1.5 <c@d>\r\n"
    with pytest.raises(ValueError):
        Reply(550, "4.0.0", ("x",))
    with pytest.raises(ValueError):
        Reply(250, "2.0.0", ("a\r\nb",))


@pytest.mark.parametrize("path", ['<"john doe"@Example.TEST>', '<"a\\ b"@x.test>', '<"john"@x.test>',
                                  '<"a\\"b"@x.test>', '<"a@b"@x.test>', '<"a\\\\b"@x.test>', '<j.d@x.test>'])
def test_parse_path_and_the_store_spell_an_address_alike(path: str) -> None:
    # store/names.py invariant 5: what RCPT resolves is what `user add` / `alias add` stored.
    from postroom.store import names

    address, _ = parse_path(path, allow_null=False, utf8=True)
    assert names.address(address) == address.lower()
    assert names.address(path[1:-1]) == address.lower()


# --------------------------------------------------------------------------------------------------------
# Replies as the client reads them


@pytest.mark.parametrize("line,parsed", [
    (b"250-SIZE 1000\r\n", (250, True, "SIZE 1000")),
    (b"250 2.0.0 OK queued\r\n", (250, False, "2.0.0 OK queued")),
    (b"220\r\n", (220, False, "")),
    (b"550 5.1.1 no\n", (550, False, "5.1.1 no")),  # a bare LF ends a reply line too (be liberal in what you read)
    # A stray CR in the text: the reply stands (a 250 to the data means the peer has the message, RFC 5321 §6.1),
    # its text without the CR, so none reaches a log line or a DSN.
    (b"250 2.0.0 ok\rqueued\r\n", (250, False, "2.0.0 ok queued")),
    (b"550 5.1.1 no\rsuch user\r\n", (550, False, "5.1.1 no such user")),
])
def test_parse_reply_line(line: bytes, parsed: tuple[int, bool, str]) -> None:
    assert parse_reply_line(line) == parsed


@pytest.mark.parametrize("line", [b"25 OK\r\n", b"650 x\r\n", b"250_x\r\n", b"abc\r\n"])
def test_parse_reply_line_rejects(line: bytes) -> None:
    with pytest.raises(ValueError):
        parse_reply_line(line)


def test_reply_status_from_its_text_or_its_class() -> None:
    # RFC 3463 §2: the enhanced code's class digit must match the reply's; else one of the class, X.0.0 (§3).
    assert Reply(550, "", ("5.1.1 No such user",)).status == "5.1.1"
    assert Reply(550, "", ("4.1.1 mismatched",)).status == "5.0.0"
    assert Reply(451, "", ("try later",)).status == "4.0.0"
    assert Reply(250, "2.1.5", ("OK",)).status == "2.1.5"
    r = Reply(552, "", ("5.3.4 too big",))
    assert r.permanent and r.is_error and not r.positive and str(r) == "552 5.3.4 too big"
    assert str(Reply(250, "2.0.0", ("OK",))) == "250 2.0.0 OK"


# --------------------------------------------------------------------------------------------------------
# Dot-stuffing (RFC 5321 §4.5.2)


def test_dot_stuff() -> None:
    assert dot_stuff(b".a\r\nb\r\n.c") == b"..a\r\nb\r\n..c\r\n.\r\n"
    assert dot_stuff(b"") == b"\r\n.\r\n"
    assert dot_stuff(b".\r\n") == b"..\r\n.\r\n"


def _unstuff_in_pieces(stuffed: bytes, rng: random.Random) -> bytes:
    """Cut `stuffed` (without its end line) into random pieces that never end between CR and LF, as the core does."""
    out, i, start = [], 0, True
    while i < len(stuffed):
        j = min(len(stuffed), i + rng.randrange(1, 40))
        if stuffed[j - 1:j] == b"\r" and j < len(stuffed):
            j += 1
        piece = stuffed[i:j]
        out.append(bytes(dot_unstuff(bytearray(piece) if rng.random() < 0.5 else piece, start)))
        start = piece.endswith(b"\r\n")
        i = j
    return b"".join(out)


def test_dot_unstuff_undoes_dot_stuff_at_every_split() -> None:
    rng = random.Random(5321)
    for _ in range(300):
        lines = [b"." * rng.randrange(3) + bytes(rng.choice(b"a.\xe9 ") for _ in range(rng.randrange(12)))
                 for _ in range(rng.randrange(1, 8))]
        message = b"\r\n".join(lines) + b"\r\n"
        stuffed = dot_stuff(message)
        assert stuffed.endswith(b"\r\n.\r\n")
        assert _unstuff_in_pieces(stuffed[:-3], rng) == message  # invariant 3
