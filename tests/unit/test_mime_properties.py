"""Property tests: random MIME trees scan back to the exact bytes they were built from; no input makes the
scanner (or the whole metadata computation) raise."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.config import LimitsConfig
from postroom.mime.imap import Section, bodystructure, envelope, section_bytes
from postroom.mime.meta import MessageMeta, compute_meta
from postroom.mime.structure import scan, walk

# Body text never starts a line with "--" (RFC 2046 §5.1.1 forbids delimiters inside parts): no "-" at all.
LINE = st.binary(max_size=30).map(lambda b: b.replace(b"-", b"_").replace(b"\r", b"").replace(b"\n", b""))
BODY = st.lists(LINE, max_size=5).map(b"\r\n".join)


@dataclass
class Node:
    """A generated entity: its MIME header (blank line included), its body, and its subparts."""

    header: bytes
    body: bytes
    kids: list[Node] = field(default_factory=list)
    message: bool = False


_ids = itertools.count()


def leaf() -> st.SearchStrategy[Node]:
    ctype = st.sampled_from(
        [
            b"",
            b"Content-Type: text/plain\r\n",
            b"Content-Type: text/html; charset=utf-8\r\n",
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n",
            b'Content-Type: image/png; name="a b.png"\r\nContent-Disposition: inline\r\n',
        ]
    )
    return st.builds(lambda h, b: Node(h + b"\r\n", b), ctype, BODY)


def multipart(children: st.SearchStrategy[list[Node]]) -> st.SearchStrategy[Node]:
    def build(kids: list[Node], sub: bytes, pre: bytes, epi: bytes) -> Node:
        b = b"=_b%d_=" % next(_ids)
        body = (pre + b"\r\n" if pre else b"") + b"--" + b + b"\r\n"
        body += (b"\r\n--" + b + b"\r\n").join(k.header + k.body for k in kids)
        body += b"\r\n--" + b + b"--" + (b"\r\n" + epi if epi else b"")
        hdr = b"Content-Type: multipart/" + sub + b'; boundary="' + b + b'"\r\n\r\n'
        return Node(hdr, body, kids)

    return st.builds(build, children, st.sampled_from([b"mixed", b"alternative", b"related"]), BODY, BODY)


def message(inner: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    def build(n: Node) -> Node:
        inner = Node(b"Subject: inner\r\nFrom: a@b.example\r\n" + n.header, n.body, n.kids, n.message)
        return Node(b"Content-Type: message/rfc822\r\n\r\n", inner.header + inner.body, [inner], message=True)

    return st.builds(build, inner)


TREE = st.recursive(
    leaf(), lambda inner: multipart(st.lists(inner, min_size=1, max_size=4)) | message(inner), max_leaves=12
)


def expected_sections(root: Node) -> dict[tuple[int, ...], Node]:
    """Section number -> node, numbered the RFC 9051 §6.4.5 way."""
    out: dict[tuple[int, ...], Node] = {}

    def sub(n: Node) -> list[Node]:
        if n.message:
            inner = n.kids[0]
            return inner.kids if (inner.kids and not inner.message) else [inner]
        return n.kids

    top = root.kids if (root.kids and not root.message) else [root]
    work: list[tuple[tuple[int, ...], Node]] = [((i,), n) for i, n in enumerate(top, 1)]
    while work:
        sec, n = work.pop()
        out[sec] = n
        work.extend((sec + (i,), k) for i, k in enumerate(sub(n), 1))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREE)
def test_random_trees_scan_to_their_bytes(tree: Node) -> None:
    top_header = b"From: x@y.example\r\nSubject: t\r\n" + tree.header
    raw = top_header + tree.body
    s = scan(raw)
    assert [d for d in s.defects if d[1] != "nul-byte"] == []
    assert section_bytes(raw, s.root, Section.parse("HEADER")) == top_header
    assert section_bytes(raw, s.root, Section.parse("TEXT")) == tree.body
    assert section_bytes(raw, s.root, Section.parse("")) == raw
    root_node = Node(top_header, tree.body, tree.kids, tree.message)
    exp = expected_sections(root_node)
    got = {sec: p for sec, p in walk(s.root)[1:]}
    assert set(got) == set(exp)
    for sec, node in exp.items():
        name = ".".join(map(str, sec))
        part = got[sec]
        # every part's MIME header and body are exactly the bytes it was built from
        if sec != (1,) or tree.kids:
            assert section_bytes(raw, s.root, Section.parse(name + ".MIME")) == node.header
        assert section_bytes(raw, s.root, Section.parse(name)) == node.body
        assert part.size == len(node.body)
        if node.message:
            inner = node.kids[0]
            assert section_bytes(raw, s.root, Section.parse(name + ".TEXT")) == inner.body
    # the stored meta answers the same
    meta = MessageMeta.from_bytes(compute_meta(raw).to_bytes())
    for sec in exp:
        for suffix in ("", ".MIME", ".TEXT", ".HEADER"):
            name = ".".join(map(str, sec)) + suffix
            assert meta.section(raw, Section.parse(name)) == section_bytes(raw, s.root, Section.parse(name))


def _check_never_raises(raw: bytes, limits: LimitsConfig | None = None) -> None:
    s = scan(raw, limits)
    for _sec, p in walk(s.root):
        assert 0 <= p.header_start <= p.body_start <= p.end <= len(raw)
    bodystructure(s.root)
    envelope(s.root.fields)
    meta = compute_meta(raw, limits)
    assert MessageMeta.from_bytes(meta.to_bytes()) == meta


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    _check_never_raises(raw)


MIMEISH = st.lists(
    st.sampled_from(
        [
            b"\r\n",
            b"\n",
            b"\r",
            b"--",
            b"--b",
            b"--b--",
            b"Content-Type: multipart/mixed; boundary=b\r\n",
            b"Content-Type: message/rfc822\r\n",
            b'Content-Type: multipart/digest; boundary="b"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b"Subject: =?utf-8?q?x?=\r\n",
            b"From: a <b@c>, (x) d:;\r\n",
            b"\x00",
            b"\xff\xfe",
            b" ",
            b"\t",
            b"x",
            b"=?",
            b"(",
            b")",
            b'"',
            b";",
            b"*0*=utf-8''%",
            b"\r\n\r\n",
        ]
    ),
    max_size=80,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(MIMEISH, st.integers(1, 5), st.integers(1, 20))
def test_mime_like_garbage_never_raises(raw: bytes, depth: int, parts: int) -> None:
    _check_never_raises(raw, LimitsConfig(mime_depth=depth, mime_parts=parts))


EDITS = st.lists(
    st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "cut", "dup"]), st.integers(0, 255)), max_size=5
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREE, EDITS)
def test_damaged_trees_never_raise(tree: Node, edits: list[tuple[int, str, int]]) -> None:
    raw = bytearray(b"Subject: t\r\n" + tree.header + tree.body)
    for pos, op, byte in edits:
        if not raw:
            break
        i = pos % len(raw)
        if op == "flip":
            raw[i] = byte
        elif op == "cut":
            del raw[i:]
        else:
            raw[i:i] = raw[i : i + 10]
    _check_never_raises(bytes(raw))
