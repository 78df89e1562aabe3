"""The webmail's search query language (web/search.py): what each term becomes in IMAP SEARCH (RFC 9051
§6.4.4), quoted phrases, and malformed queries answered with a sentence, never another exception (invariant 1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.imap import parser as P
from postroom.web.search import MAX_QUERY, MAX_TERMS, QueryError, parse, quoted


@pytest.mark.parametrize(("query", "imap"), [
    ("hello", 'BODY "hello"'),
    ("hello world", 'BODY "hello" BODY "world"'),
    ('"hello world"', 'BODY "hello world"'),
    ("from:anna", 'FROM "anna"'),
    ('from:"Anna Smith" to:bob@example.org', 'FROM "Anna Smith" TO "bob@example.org"'),
    ('subject:"weekly report"', 'SUBJECT "weekly report"'),
    ("SUBJECT:Report", 'SUBJECT "Report"'),  # operators in any case
    ("has:attachment", 'HEADER Content-Type "multipart/mixed"'),
    ("before:2024-02-01", "BEFORE 1-Feb-2024"),  # RFC 9051 §9 date-text: day "-" month "-" year
    ("after:2024-12-31", "SINCE 31-Dec-2024"),
    ("is:unread is:flagged", "UNSEEN FLAGGED"),
    ("is:read is:unflagged", "SEEN UNFLAGGED"),
    ("http://example.org/x", 'BODY "http://example.org/x"'),  # not an operator: free text
    ("foo:bar", 'BODY "foo:bar"'),
    # A phrase ends at the next quote (no escapes in a query); what follows is a word; IMAP's quoting escapes both.
    ('say "a \\"b\\"', 'BODY "say" BODY "a \\\\" BODY "b\\\\\\""'),
    ("café", 'BODY "café"'),
    ("  from:anna   is:unread  ", 'FROM "anna" UNSEEN'),
])
def test_terms_become_imap_search_keys(query: str, imap: str) -> None:
    parsed = parse(query)
    assert parsed.imap_text == imap
    again = P.parse_command(b"w UID SEARCH CHARSET UTF-8 " + imap.encode())
    assert isinstance(again.args, P.SearchArgs) and again.args.key == parsed.key


def test_the_key_tree_is_the_imap_parsers() -> None:
    key = parse('from:anna "two words" before:2024-02-01').key
    assert key == P.Key("AND", (P.Key("FROM", ("anna",)), P.Key("BODY", ("two words",)),
                                P.Key("BEFORE", (1706745600.0,))))  # 2024-02-01T00:00:00Z


@pytest.mark.parametrize(("query", "says"), [
    ("", "Type something"),
    ("   ", "Type something"),
    ('"open phrase', "not closed"),
    ("from:", "needs a value"),
    ("from: anna", "needs a value"),
    ("before:yesterday", "not a date"),
    ("after:2024-13-01", "not a date"),
    ("is:important", "is:important is not known"),
    ("has:pictures", "has:pictures is not known"),
    ("a\x00b", "control characters"),
    ("a\r\nb", "control characters"),
    ("x" * (MAX_QUERY + 1), "too long"),
    (" ".join(["w"] * (MAX_TERMS + 1)), "too many terms"),
])
def test_malformed_queries_get_a_sentence(query: str, says: str) -> None:
    with pytest.raises(QueryError, match=says):
        parse(query)


def test_quoted_escapes_quote_and_backslash() -> None:
    assert quoted('a"b\\c') == '"a\\"b\\\\c"'


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_text_parses_or_gets_a_sentence(query: str) -> None:
    try:
        parsed = parse(query)
    except QueryError as exc:
        assert str(exc).endswith(".")
    else:
        assert parsed.key.op in ("AND", "BODY", "FROM", "TO", "SUBJECT", "HEADER", "BEFORE", "SINCE", "SEEN",
                                 "UNSEEN", "FLAGGED", "UNFLAGGED")
