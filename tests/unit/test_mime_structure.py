"""The structure scan: offsets, RFC 2046 boundary rules, limits, defects, and no exceptions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from postroom.config import LimitsConfig
from postroom.mime.imap import bodystructure
from postroom.mime.structure import find_part, scan, walk

MSGS = Path(__file__).resolve().parents[1] / "data" / "mime" / "msgs"


def crlf(s: str) -> bytes:
    return s.replace("\n", "\r\n").encode()


def body(raw: bytes, sec: tuple[int, ...]) -> bytes:
    p = find_part(scan(raw).root, sec)
    assert p is not None
    return raw[p.body_start : p.end]


MULTI = crlf(
    'Subject: m\nContent-Type: multipart/mixed; boundary="xx"\n\npreamble\n--xx\nContent-Type: text/plain\n\n'
    "hello\nworld\n--xx\n\nsecond\n--xx--\nepilogue\n"
)


def test_offsets_of_a_simple_multipart() -> None:
    s = scan(MULTI)
    root = s.root
    assert s.defects == []
    assert MULTI[: root.body_start].endswith(b'boundary="xx"\r\n\r\n')
    assert [MULTI[p.body_start : p.end] for p in root.children] == [b"hello\r\nworld", b"second"]
    first = root.children[0]
    assert MULTI[first.header_start : first.body_start] == b"Content-Type: text/plain\r\n\r\n"
    assert first.lines == 1 and first.size == 12  # the CRLF before a delimiter belongs to the delimiter
    # a part with an empty header: the header is just the blank line
    second = root.children[1]
    assert MULTI[second.header_start : second.body_start] == b"\r\n"
    assert second.params == (("charset", "us-ascii"),)


def test_preamble_and_epilogue_belong_to_no_part() -> None:
    root = scan(MULTI).root
    covered = b"".join(MULTI[p.header_start : p.end] for p in root.children)
    assert b"preamble" not in covered and b"epilogue" not in covered


def test_boundary_only_at_line_start_with_dashes() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=AAAA\n\n--AAAA\n\nQUFB--AAAA\nAAAA\n ---AAAA\n-AAAA\n--AAAA--\n"
    )
    assert body(raw, (1,)) == b"QUFB--AAAA\r\nAAAA\r\n ---AAAA\r\n-AAAA"


def test_transport_padding_after_boundary() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=p\n\n--p \t \n\none\n--p\t\n\ntwo\n--p-- \n")
    s = scan(raw)
    assert [raw[p.body_start : p.end] for p in s.root.children] == [b"one", b"two"]
    assert s.defects == []


def test_boundary_followed_by_text_is_not_a_delimiter() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=g\n\n--g\n\none\n--gg\n--g x\n--g--\n")
    assert body(raw, (1,)) == b"one\r\n--gg\r\n--g x"


def test_missing_close_boundary() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\n")
    s = scan(raw)
    assert [raw[p.body_start : p.end] for p in s.root.children] == [b"one", b"two\r\n"]
    assert any(code == "missing-close-boundary" for _, code in s.defects)


def test_nested_multipart_missing_close_ends_at_parent_delimiter() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=out\n\n--out\nContent-Type: multipart/alternative; boundary=in\n\n"
        "--in\n\na\n--in\n\nb\n--out\n\nc\n--out--\n"
    )
    root = scan(raw).root
    assert len(root.children) == 2
    inner = root.children[0]
    assert [raw[p.body_start : p.end] for p in inner.children] == [b"a", b"b"]
    assert body(raw, (2,)) == b"c"


def test_truncated_message() -> None:
    full = crlf(
        "Content-Type: multipart/mixed; boundary=t\n\n--t\nContent-Type: text/plain\n\nabcdef\n--t--\n"
    )
    for cut in range(len(full)):
        s = scan(full[:cut])
        for _, p in walk(s.root):
            assert 0 <= p.header_start <= p.body_start <= p.end <= cut


def test_digest_defaults_to_message_rfc822() -> None:
    raw = crlf("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\nbody\n--d--\n")
    part = scan(raw).root.children[0]
    assert part.mime_type == "message/rfc822" and part.message is not None
    assert part.message.fields[0].name == "subject"
    assert raw[part.message.body_start : part.message.end] == b"body"


def test_message_global_is_encapsulated() -> None:
    raw = crlf("Content-Type: message/global\n\nSubject: G\xfc\n\ninner\n".replace("\xfc", "ü"))
    root = scan(raw).root
    assert root.message is not None and root.message.fields[0].name == "subject"
    assert bodystructure(root).startswith(b'("message" "global" NIL NIL NIL "7bit" ')


def test_sizes_follow_rfc_2046_where_dovecot_adds_a_crlf() -> None:
    # Dovecot reports 210/14 for the level-3 message (it keeps the CRLF after "--b3--"); RFC 2046 gives it to
    # the enclosing delimiter (see QUIRKS in test_mime_corpus.py).
    raw = (MSGS / "13_rfc822_three_deep.eml").read_bytes()
    p = find_part(scan(raw).root, (2, 1, 2))
    assert p is not None and p.mime_type == "message/rfc822"
    assert (p.size, p.lines) == (208, 13)
    assert raw[p.body_start : p.end].endswith(b"--b3--")
    raw = (MSGS / "72_rfc822_headers_only_inner.eml").read_bytes()
    p = find_part(scan(raw).root, (1,))
    assert p is not None and (p.size, p.lines) == (41, 1)


def test_depth_limit_makes_an_opaque_leaf() -> None:
    raw = (MSGS / "47_deep_nesting_60.eml").read_bytes()
    s = scan(raw)  # default limit: 50
    depth = max(len(sec) for sec, _ in walk(s.root))
    assert depth == 50
    assert any(code == "depth-limit" for _, code in s.defects)
    bs = bodystructure(s.root)
    assert b'"application" "octet-stream"' in bs and bs.count(b"(") == bs.count(b")")
    s = scan(raw, LimitsConfig(mime_depth=3))
    assert max(len(sec) for sec, _ in walk(s.root)) == 3


def test_part_limit() -> None:
    parts = "".join(f"--b\n\npart {i}\n" for i in range(100))
    raw = crlf(f"Content-Type: multipart/mixed; boundary=b\n\n{parts}--b--\n")
    s = scan(raw, LimitsConfig(mime_parts=10))
    assert s.part_count <= 10
    assert len(s.root.children) == 9
    assert any(code == "part-limit" for _, code in s.defects)


def test_thousand_deep_nesting_does_not_raise() -> None:
    deep = "Content-Type: text/plain\n\nx\n"
    for i in range(1000):
        deep = f'Content-Type: multipart/mixed; boundary="d{i}"\n\n--d{i}\n{deep}--d{i}--\n'
    raw = crlf(deep)
    s = scan(raw, LimitsConfig(mime_depth=10_000))  # capped internally
    assert max(len(sec) for sec, _ in walk(s.root)) <= 200
    bodystructure(s.root)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"\n",
        b"\r",
        b"\x00" * 10,
        b"Subject",
        b":",
        b" continuation\r\n\r\nx",
        b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n--\r\n',
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b--",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"Content-Type: message/rfc822",
        b"Content-Type: \xff\xfe/\x00; \x80=\x81\r\n\r\n",
        b"Content-Type: text/plain; name*0*=x; name*1*=%zz\r\n\r\n",
    ],
)
def test_odd_inputs(raw: bytes) -> None:
    s = scan(raw)
    for _, p in walk(s.root):
        assert 0 <= p.header_start <= p.body_start <= p.end <= len(raw)
    bodystructure(s.root)


def test_header_without_body_separator_is_a_defect() -> None:
    s = scan(b"Subject: x\r\nFrom: y")
    assert s.root.body_start == s.root.end
    assert "no-header-body-separator" in {c for _, c in s.defects}


def test_lf_only_messages() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nunix\n--b--\n"
    assert body(raw, (1,)) == b"unix"


def test_large_body_is_fast_and_not_copied() -> None:
    big = b"A" * 76 + b"\r\n"
    att = big * (20 * 1024 * 1024 // len(big))  # 20 MB
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=zz\n\n--zz\n\nhi\n--zz\nContent-Transfer-Encoding: base64\n\n"
    )
    raw += att + b"--zz--\r\n"
    t = time.perf_counter()
    s = scan(raw)
    elapsed = time.perf_counter() - t
    assert s.root.children[1].size == len(att) - 2
    assert elapsed < 1.0, elapsed
