"""MessageMeta: computed once, serialised without pickle, and answering FETCH like the scanned tree does."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from postroom.mime.imap import Section, UnknownCTE, binary_bytes, envelope, section_bytes
from postroom.mime.meta import MessageMeta, MetaFormatError, compute_meta
from postroom.mime.sortkeys import sort_keys
from postroom.mime.structure import scan, walk

MSGS = Path(__file__).resolve().parents[1] / "data" / "mime" / "msgs"
NAMES = sorted(p.name for p in MSGS.glob("*.eml"))


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_and_sections(name: str) -> None:
    raw = (MSGS / name).read_bytes()
    meta = compute_meta(raw)
    blob = meta.to_bytes()
    assert b"\x80" not in blob[:1] and blob.startswith(b"{")
    back = MessageMeta.from_bytes(blob)
    assert back == meta
    root = scan(raw).root
    for sec, _part in walk(root):
        name_ = ".".join(map(str, sec))
        specs = ["", "HEADER", "TEXT", "HEADER.FIELDS (SUBJECT FROM)", "HEADER.FIELDS.NOT (SUBJECT)"]
        if sec:
            specs.append("MIME")
        for spec in specs:
            text = ".".join(x for x in (name_, spec) if x)
            s = Section.parse(text)
            assert back.section(raw, s) == section_bytes(raw, root, s), text
        if sec:
            try:
                want: bytes | None = binary_bytes(raw, root, sec)
            except UnknownCTE:
                with pytest.raises(UnknownCTE):
                    back.binary(raw, sec)
                continue
            assert back.binary(raw, sec) == want
            assert back.binary_size(raw, sec) == len(want or b"")
    assert back.section(raw, Section.parse("99")) is None


def test_meta_fields() -> None:
    raw = (MSGS / "08_mixed_attachment.eml").read_bytes()
    meta = compute_meta(raw)
    assert meta.size == len(raw)
    assert meta.envelope.startswith(b'("Mon, 7 Feb 1994 21:52:25 -0800" "attach"')
    assert meta.sent_date == datetime(1994, 2, 8, 5, 52, 25, tzinfo=UTC).timestamp()
    row = meta.row((2,))
    assert row is not None
    assert (row.mime_type, row.encoding, row.filename, row.disposition) == (
        "application/pdf",
        "base64",
        "doc.pdf",
        "attachment",
    )
    assert meta.binary(raw, (2,)) is not None and meta.binary(raw, (2,)).startswith(b"%PDF-1.4")  # type: ignore[union-attr]
    assert meta.search.header("subject") == "attach"
    assert "see attached" in meta.search.body


def test_defects_are_kept() -> None:
    raw = (MSGS / "21_missing_close.eml").read_bytes()
    meta = MessageMeta.from_bytes(compute_meta(raw).to_bytes())
    assert [c for _, c in meta.defects] == ["missing-close-boundary"]


@pytest.mark.parametrize("blob", [b"", b"[]", b'{"v": 99}', b'{"v": 1}', b"\xff", b'{"v":1,"size":"x"}'])
def test_bad_blobs(blob: bytes) -> None:
    with pytest.raises(MetaFormatError):
        MessageMeta.from_bytes(blob)


def test_8bit_and_surrogates_survive() -> None:
    raw = 'Subject: Grüße\r\nContent-Type: text/plain; name="\xff.txt"\r\n\r\nx'.encode(
        "utf-8", "surrogateescape"
    )
    raw = raw.replace("ÿ".encode(), b"\xff")
    meta = compute_meta(raw)
    assert MessageMeta.from_bytes(meta.to_bytes()) == meta


_SHARED_ADDRESSES = [
    # the same value in several fields (one parse, read by ENVELOPE's from, sender, reply-to and the sort keys)
    b"From: A <a@x.test>\r\nTo: A <a@x.test>\r\nCc: A <a@x.test>, b@x.test\r\nSubject: s\r\n\r\nbody\r\n",
    # Sender and Reply-To of their own, a group, an empty list element, two From fields
    b"From: a@x.test, (c) b@y.test\r\nFrom: c@z.test\r\nSender: s@x.test\r\nReply-To: g: m@x.test, n@x.test;\r\n"
    b"To: ,,t@x.test\r\nBcc: undisclosed:;\r\n\r\n",
    # no address field at all, and one whose value is no address
    b"Subject: none\r\n\r\n",
    b"From: <>\r\nTo: \r\n\r\n",
]


@pytest.mark.parametrize("raw", [(MSGS / n).read_bytes() for n in NAMES] + _SHARED_ADDRESSES)
def test_envelope_and_sort_keys_share_one_parse_and_mean_the_same(raw: bytes) -> None:
    """compute_meta parses each address field once for ENVELOPE and the sort keys (`address.Parsed`): the result
    is byte for byte what each of them computes alone (RFC 9051 §7.5.2; RFC 5256 §3)."""
    meta = compute_meta(raw)
    if any(code.startswith("meta-failed") for _, code in meta.defects):
        return
    fields = scan(raw).root.fields
    assert meta.envelope == envelope(fields)
    assert meta.keys == sort_keys(fields)


@pytest.mark.parametrize("raw", [(MSGS / n).read_bytes() for n in NAMES] + _SHARED_ADDRESSES)
def test_a_bytearray_gives_the_same_meta_as_bytes(raw: bytes) -> None:
    """The metadata worker reads a staged message into a bytearray (metaworker.py `read_file`): the metadata is
    the same as from bytes, with no step failing on it (an unhashable slice once made ENVELOPE a defect)."""
    assert compute_meta(bytearray(raw)) == compute_meta(raw)
