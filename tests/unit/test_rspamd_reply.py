"""The sans-I/O parts of postroom/inbound/rspamd.py: rspamd's /checkv2 reply (its protocol's JSON: `action`,
`score`, `required_score`, `subject` for "rewrite subject"), the Subject fields found for replacement (RFC 5322
§2.2.3 folding) and the new field written (RFC 2047 encoded words when not ASCII), the URL setting."""

from __future__ import annotations

import json

import pytest

from postroom import config as config_mod
from postroom.inbound.rspamd import RspamdError, parse_reply, parse_url, subject_field, subject_spans


def http(body: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
        body) + body


def test_actions_parsed() -> None:
    r = parse_reply(http(json.dumps({"action": "add header", "score": 7, "required_score": 15.0}).encode()))
    assert (r.action, r.score, r.required, r.subject, r.junk) == ("add header", 7.0, 15.0, None, True)
    r = parse_reply(http(b'{"action":"rewrite subject","score":9.5,"required_score":15,"subject":"***SPAM*** x"}'))
    assert (r.subject, r.junk) == ("***SPAM*** x", True)
    assert r.x_spam() == b"X-Spam: Yes; score=9.50; required=15.00\r\n"
    for action in ("no action", "greylist", "soft reject", "reject"):
        r = parse_reply(http(json.dumps({"action": action, "score": 1, "required_score": 15}).encode()))
        assert r.action == action and not r.junk


@pytest.mark.parametrize("reply", [
    http(b"{}", b"500 Internal Server Error"),
    http(b"not json"),
    http(b"[1, 2]"),
    http(b'{"action": "discard", "score": 1}'),
    http(b'{"action": "reject", "score": "high"}'),
    http(b'{"action": "rewrite subject", "score": 9}'),
    b"HTTP/1.1 200 OK\r\nContent-Length: 5",
    b"",
])
def test_anything_else_is_an_error(reply: bytes) -> None:
    with pytest.raises(RspamdError):
        parse_reply(reply)


def test_subject_spans_include_folded_lines_and_stop_at_the_body() -> None:
    head = b"From: a@b\r\nSubject: one\r\n two\r\nTo: c@d\r\nsubject:again\r\n\r\nSubject: in the body\r\n"
    spans = subject_spans(head)
    assert [head[a:b] for a, b in spans] == [b"Subject: one\r\n two\r\n", b"subject:again\r\n"]
    assert subject_spans(b"\r\nSubject: body only\r\n") == []


def test_subject_field_ascii_and_encoded_words() -> None:
    assert subject_field("***SPAM*** hi") == b"Subject: ***SPAM*** hi\r\n"
    field = subject_field("***SPAM*** Grüße\r\nBcc: x")
    assert field.startswith(b"Subject: =?utf-8?") and b"\r\nBcc" not in field and field.endswith(b"\r\n")


def test_url_setting() -> None:
    assert parse_url("http://127.0.0.1:11333") == ("127.0.0.1", 11333, "")
    assert parse_url("http://[::1]:8080/rspamd/") == ("::1", 8080, "/rspamd")
    for bad in ("https://127.0.0.1:11333", "127.0.0.1:11333", "http://", "http://h:1/?q=1"):
        with pytest.raises(ValueError):
            parse_url(bad)
        with pytest.raises(config_mod.ConfigError):
            config_mod.load(None, {"rspamd": {"url": bad}})
