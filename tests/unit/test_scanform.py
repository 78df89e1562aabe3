"""The scan form (store/scanform.py): `evaluate` answers every test as the exact check on the metadata does
(invariant 1, on messages whose case folding changes lengths, with repeated fields, lone surrogates and part
headers), counts the same characters, and refuses forms it cannot read (invariant 2)."""

from __future__ import annotations

import random

import pytest

from postroom.mime.meta import compute_meta
from postroom.store.scanform import CODEC_ZSTD, ScanFormError, ScanTest, build, evaluate, needle_bytes, text_haystack

WORDS = ["Straße", "SS", "ﬁ", "İ", "i̇", "ΣΊΣΥΦΟΣ", "σ", "ς", "会议", "会", "привет", "Ёлка", "a, b", "x", "é", "é"]


def _message(rng: random.Random) -> bytes:
    def phrase() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))

    head = (f"Subject: {phrase()}\r\nX-Tag: {phrase()}\r\nX-Tag: {phrase()}\r\nFrom: {phrase()} <a@b.example>\r\n"
            "MIME-Version: 1.0\r\n")
    if rng.random() < 0.5:
        return (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain; '
                f"charset=utf-8\r\n\r\n{phrase()}\r\n--b\r\nContent-Description: {phrase()}\r\n"
                f"Content-Disposition: attachment; filename=\"{phrase()}.txt\"\r\n\r\nxx\r\n--b--\r\n").encode()
    return (head + f"Content-Type: text/plain; charset=utf-8\r\n\r\n{phrase()}\r\n").encode()


def _exact(meta: object, kind: str, needle: str, name: str) -> tuple[bool, int]:
    from postroom.mime.meta import MessageMeta

    assert isinstance(meta, MessageMeta)
    st = meta.search
    if kind == "header":
        if not needle:
            return any(k == name for k, _ in st.headers), 0
        hay = st.header(name).casefold()
    else:
        hay = (text_haystack(meta) if kind == "text" else st.body).casefold()
    return needle.casefold() in hay, len(hay)


@pytest.mark.parametrize("seed", range(30))
def test_evaluate_is_the_exact_check(seed: int) -> None:
    rng = random.Random(seed)
    meta = compute_meta(_message(rng))
    form = build(meta)
    hays = {("text", ""): text_haystack(meta), ("body", ""): meta.search.body,
            ("header", "subject"): meta.search.header("subject"), ("header", "x-tag"): meta.search.header("x-tag")}
    cases = []
    for (kind, name), hay in hays.items():
        for _ in range(10):
            a = rng.randrange(len(hay) + 1)
            needle = hay[a:a + rng.randint(0, 8)]
            cases.append((kind, needle.upper() if rng.random() < 0.4 else needle, name))
    cases += [("text", w, "") for w in WORDS] + [("header", "", "x-tag"), ("header", "", "cc"),
                                                 ("body", "\udcff", ""), ("header", "y", "nope")]
    tests = [ScanTest(kind, needle_bytes(needle), name) for kind, needle, name in cases]
    bits, chars = evaluate(form, tests)
    want = [_exact(meta, *c) for c in cases]
    assert [bool(bits >> i & 1) for i in range(len(cases))] == [hit for hit, _ in want]
    assert chars == sum(c for _, c in want)


def test_lone_surrogates_match_as_in_the_text() -> None:
    meta = compute_meta(b"Subject: x\r\n\r\nplain\r\n")
    from dataclasses import replace

    from postroom.mime.text import SearchText

    meta = replace(meta, search=SearchText((("subject", "a\udce9b"),), "caf\udce9 \U0001f600"))
    form = build(meta)
    tests = [ScanTest("body", needle_bytes("\udce9 \U0001f600")),
             ScanTest("header", needle_bytes("\udce9b"), "subject"),
             ScanTest("body", needle_bytes("\ud83d")), ScanTest("text", needle_bytes("A\udce9"))]
    assert evaluate(form, tests)[0] == 0b1011  # a lone high surrogate is not half of the emoji


@pytest.mark.parametrize("data", [b"", b"\x02" + b"x" * 10, CODEC_ZSTD + b"not a frame", CODEC_ZSTD])
def test_forms_it_cannot_read_are_refused(data: bytes) -> None:
    with pytest.raises(ScanFormError):
        evaluate(data, [ScanTest("text", b"x")])
