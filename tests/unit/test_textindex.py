"""What the full-text index holds and how a SEARCH string is cut for it (store/textindex.py): the promise the
narrowing rests on (invariant 1) checked on generated messages and needles."""

from __future__ import annotations

import random

import pytest

from postroom.mime.meta import compute_meta
from postroom.store.scanform import text_haystack
from postroom.store.textindex import FIELDS_OF, HEADER_FIELDS, TextTerm, index_fields, pieces, trigrams

WORDS = ["invoice", "Straße", "İstanbul", "ﬁle", "你好世界", "会议报告", "東京の会議", "カタカナ", "Tiếng Việt",
         "Nguyễn", "привет", "Ёлка", "ΣΊΣΥΦΟΣ", "a, b", "x\ty", "q\"uote"]


def _message(rng: random.Random) -> bytes:
    def phrase() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))

    head = (f"From: {phrase()} <a@example.org>\r\nTo: b@example.org, {phrase()} <c@example.org>\r\n"
            f"Subject: {phrase()}\r\nX-Tag: {phrase()}\r\nX-Tag: {phrase()}\r\nCc: {phrase()} <d@example.org>\r\n"
            "MIME-Version: 1.0\r\n")
    body = "\r\n".join(phrase() for _ in range(rng.randint(1, 5)))
    if rng.random() < 0.5:
        return (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
                "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n--b\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Description: {phrase()}\r\n"
                f"Content-Disposition: attachment; filename=\"{rng.choice(WORDS)}.pdf\"\r\n\r\nxx\r\n--b--\r\n"
                ).encode()
    return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()


def _haystacks(raw: bytes) -> dict[str, str]:
    """The exact check's haystacks (imap/search.py), case-folded: per key."""
    meta = compute_meta(raw)
    st = meta.search
    out = {f: st.header(f) for f in HEADER_FIELDS}
    out["header"] = st.header("x-tag")
    out["body"] = st.body
    out["text"] = text_haystack(meta)
    return {k: v.casefold() for k, v in out.items()}


@pytest.mark.parametrize("seed", range(40))
def test_every_piece_of_a_matching_needle_is_in_an_index_field(seed: int) -> None:
    rng = random.Random(seed)
    raw = _message(rng)
    fields = index_fields(compute_meta(raw))
    hay = _haystacks(raw)
    for key, text in hay.items():
        for _ in range(30):
            if not text:
                break
            a = rng.randrange(len(text))
            needle = text[a:a + rng.randint(1, 14)]
            needle = needle.upper() if rng.random() < 0.3 else needle  # the client's case does not matter
            assert needle.casefold() in text
            where = FIELDS_OF[key]
            for piece in pieces(key, needle):
                assert len(piece) >= 3
                holders = [fields[f] for f in where if piece in fields[f]]
                assert holders, (key, needle, piece)
                assert all(any(t in h for h in holders) for t in trigrams(piece))


def test_pieces_cut_where_the_index_joins_differently() -> None:
    # TEXT: header, body and names are lines of one haystack; HEADER: repeated fields joined by ", ".
    assert pieces("text", "end of subject\nbody starts") == ["end of subject", "body starts"]
    assert pieces("header", "first, second") == [" second", "first"]
    assert pieces("subject", "a, b\nc") == ["a, b\nc"]  # its own column holds exactly the haystack
    assert pieces("body", "你好") == []  # under three characters: the exact scan decides
    assert pieces("body", "STRASSE") == ["strasse"]  # case-folded as the exact check folds
    assert TextTerm("header", "x, y", "subject").pieces() == ["x, y"]  # HEADER Subject uses the subject column


def test_trigrams_cover_the_piece() -> None:
    assert trigrams("abc") == ["abc"]
    assert trigrams("abcdefg") == ["abc", "def", "efg"]
    long = "".join(chr(0x4E00 + i) for i in range(100))
    grams = trigrams(long)
    assert len(grams) <= 12 and grams[0] == long[:3] and grams[-1] == long[-3:]
    assert all(g in long for g in grams)


def test_index_fields_have_no_lone_surrogates() -> None:
    meta = compute_meta(b"Subject: ok\r\n\r\nbody\r\n")
    fields = index_fields(meta)
    for text in fields.values():
        text.encode("utf-8")  # raises on a lone surrogate
    assert fields["subject"] == "ok" and fields["body"].startswith("body")


def test_a_needle_is_cut_at_lone_surrogates() -> None:
    # A client can send UTF-8-encoded surrogates (ED A0 80); the index holds U+FFFD where text had one.
    assert pieces("subject", "abc\ud800defg") == ["defg", "abc"]
    assert pieces("body", "\ud800ab") == []
