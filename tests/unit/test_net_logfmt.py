"""The session log line's logfmt encoding, refusal lines and session ids."""

from __future__ import annotations

from postroom.net.listener import default_id_factory, format_peer, logfmt, logfmt_value, refusal


def test_bare_and_quoted_values() -> None:
    assert logfmt_value("alice@example.org") == "alice@example.org"
    assert logfmt_value(1.23456) == "1.235"
    assert logfmt_value(42) == "42"
    assert logfmt_value("") == '""'
    assert logfmt_value("two words") == '"two words"'
    assert logfmt_value('a"b\\c') == '"a\\"b\\\\c"'
    # A value can never forge a second log line or field.
    assert logfmt_value("x\r\nsession end=quit") == '"x\\r\\nsession end=quit"'
    assert logfmt_value("a\x00\x1b") == '"a\\x00\\x1b"'
    assert logfmt_value(b"caf\xc3\xa9") == '"café"'


def test_line_and_keys() -> None:
    line = logfmt("session", [("id", "ab"), ("bad key=", "v"), ("user", "bob smith")])
    assert line == 'session id=ab bad_key_=v user="bob smith"'


def test_peer_format() -> None:
    assert format_peer(("127.0.0.1", 25)) == "127.0.0.1:25"
    assert format_peer(("::1", 25)) == "[::1]:25"


def test_refusal_lines() -> None:
    assert refusal("smtp", "mx.example") == b"421 4.7.0 mx.example too many connections, try again later\r\n"
    assert refusal("imap", "mx.example").startswith(b"* BYE ")
    assert refusal("pop3", "mx.example").startswith(b"-ERR [SYS/TEMP] ")
    assert refusal("http", "mx.example") == b""


def test_session_ids_are_short_and_unique() -> None:
    new_id = default_id_factory()
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert all(len(i) <= 8 and i.isalnum() for i in ids)
