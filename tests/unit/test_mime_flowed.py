"""format=flowed (RFC 3676) as the webmail writes and reads it (mime/flowed.py). Expected lines come from the RFC's
rules: §4.2 (soft breaks end in a space, at most 78 characters), §4.3 (the signature separator), §4.4
(space-stuffing), §4.5 (quotes)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from postroom.mime import flowed


def test_long_paragraph_breaks_softly_at_78() -> None:
    text = " ".join(["word"] * 40)  # 199 characters
    out = flowed.encode(text)
    lines = out.split("\r\n")[:-1]
    assert out.endswith("\r\n") and len(lines) == 3
    assert all(len(line) <= 78 for line in lines)
    assert all(line.endswith(" ") for line in lines[:-1]) and not lines[-1].endswith(" ")  # §4.2
    assert flowed.decode(out) == text


def test_space_stuffing_of_space_from_and_gt() -> None:
    # §4.4: a line starting with " ", "From " or (unquoted) ">" is stuffed; ">" at the start is a quote, so a
    # user's line starting with ">" is a quote by definition (§4.5).
    assert flowed.encode(" indented\nFrom here\nFromage") == "  indented\r\n From here\r\nFromage\r\n"
    assert flowed.decode("  indented\r\n From here\r\n") == " indented\nFrom here"


def test_trailing_spaces_of_hard_lines_are_removed() -> None:
    # a space at the end would make the hard break soft (§4.2)
    assert flowed.encode("one   \ntwo") == "one\r\ntwo\r\n"


def test_quotes_keep_their_depth_on_every_piece() -> None:
    text = "> " + "quoted text " * 12 + "end\n>> deeper\n>\nmine"
    out = flowed.encode(text)
    lines = out.split("\r\n")[:-1]
    assert lines[0].startswith("> ") and lines[0].endswith(" ") and lines[1].startswith("> ")
    assert ">> deeper" in lines and ">" in lines  # an empty quoted line has no stuffing space: not a soft break
    assert all(len(line) <= 78 for line in lines)
    assert flowed.decode(out) == text


def test_signature_separator_is_kept_hard() -> None:
    out = flowed.encode("text\n-- \nAlice")
    assert out == "text\r\n-- \r\nAlice\r\n"  # §4.3
    assert flowed.decode(out) == "text\n-- \nAlice"


def test_a_word_longer_than_the_line_stays_whole() -> None:
    url = "https://example.org/" + "x" * 100
    out = flowed.encode("see " + url + " now")
    assert out == "see \r\n" + url + " \r\nnow\r\n"
    assert flowed.decode(out) == "see " + url + " now"


def test_decode_of_a_soft_break_into_another_depth_ends_the_paragraph() -> None:
    # §4.5: a soft break followed by a line of another depth is an error the reader treats as hard
    assert flowed.decode("> a \r\nb\r\n") == "> a \nb"


def test_quote_runs_marks_together() -> None:
    assert flowed.quote("a\n> b\n\nc") == "> a\n>> b\n>\n> c"


_line = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=200).map(lambda s: s.rstrip(" "))


@given(st.lists(st.tuples(st.integers(0, 3), _line | st.just(" From x") | st.just(("a  " * 40).rstrip())), max_size=12))
def test_round_trip(lines: list[tuple[int, str]]) -> None:
    # invariant 1: typed text without trailing spaces, quotes written ">... text", survives
    typed = []
    for depth, body in lines:
        body = body.lstrip(">")
        if depth:
            typed.append(">" * depth + (" " + body if body else ""))
        else:
            typed.append(body)
    while typed and typed[-1] == "":
        typed.pop()
    text = "\n".join(typed)
    out = flowed.encode(text)
    for line in out.split("\r\n")[:-1]:  # invariant 2: longer only for one word that does not fit
        assert len(line) <= 78 or " " not in line.lstrip(">").strip(" ")
    assert flowed.decode(out) == text
