"""mime/lineends.py: the one check (and the one repair) for stray CR, LF and NUL (RFC 5322 §2.3, RFC 5321 §2.3.8)
that every way into the queue uses (issue 11 item 7). Properties over arbitrary bytes and splits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.mime.lineends import BARE_CR, BARE_LF, NUL, Checker, normalise, stray

# Bytes rich in the characters that matter.
content = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"\x00", b".", b"a", b"\xe9", b" "]),
                   max_size=60).map(b"".join)


@pytest.mark.parametrize("data, fault", [
    (b"", None),
    (b"a\r\nb\r\n", None),
    (b"hello\r.\r\nMAIL FROM:<x@y>\r\n", BARE_CR),  # the sendmail input
    (b"\r\n\x00.\r\n", NUL),  # the inbound input
    (b"a\nb\r\n", BARE_LF),
    (b"a\r\n\r", BARE_CR),
])
def test_stray_names_the_fault(data: bytes, fault: str | None) -> None:
    assert stray(data) == fault


@given(content, st.lists(st.integers(0, 60), max_size=6))
def test_checker_over_any_split_agrees_with_stray(data: bytes, cuts: list[int]) -> None:
    # invariant 1
    points = sorted({min(c, len(data)) for c in cuts})
    checker = Checker()
    for a, b in zip([0, *points], [*points, len(data)]):
        checker.feed(data[a:b])
    assert (checker.finish() is None) == (stray(data) is None)


@given(content)
def test_normalise_leaves_nothing_stray_and_keeps_clean_content(data: bytes) -> None:
    fixed = normalise(data)
    assert stray(fixed) is None  # invariant 2
    assert fixed.count(b"\n") == data.replace(b"\r\n", b"\n").count(b"\n")  # line ends kept, as CRLF
    if stray(data) is None:
        assert fixed == data  # invariant 3


def test_normalise_the_smuggling_input() -> None:
    assert normalise(b"hello\r.\r\nMAIL FROM:<e@x>\r\n") == b"hello .\r\nMAIL FROM:<e@x>\r\n"
    assert normalise(b"a\r\n\x00.\r\n") == b"a\r\n .\r\n"
