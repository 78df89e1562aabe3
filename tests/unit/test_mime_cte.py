"""Content-Transfer-Encoding decoding (mime/cte.py, RFC 2045 §6.7, §6.8) and every path that decodes with it:
BINARY, BINARY.SIZE (meta and imap views) and the search text agree on the same bytes."""

from __future__ import annotations

import base64
import quopri

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.mime.cte import UnknownCTE, decode_base64, decode_body, decode_qp
from postroom.mime.imap import binary_bytes
from postroom.mime.meta import compute_meta
from postroom.mime.structure import scan
from postroom.mime.text import part_text

# The input: lines "hello␠␠", "bar=␠", "baz" with CRLF line ends. RFC 2045 §6.7 rule 3 deletes the
# trailing blanks of "hello  "; rule 5 makes "bar= " a soft line break with transport padding, so "bar" and
# "baz" join: "hello\r\nbarbaz\r\n", 15 octets.
QP_BODY = b"hello  \r\nbar= \r\nbaz\r\n"
QP_DECODED = b"hello\r\nbarbaz\r\n"
QP_MESSAGE = (b"From: ann@example.org\r\nSubject: qp\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: quoted-printable\r\n"
              b"\r\n" + QP_BODY)


def test_qp_trailing_blanks_and_padded_soft_break() -> None:
    assert decode_qp(QP_BODY) == QP_DECODED
    assert len(decode_qp(QP_BODY)) == 15


@pytest.mark.parametrize(("encoded", "decoded"), [
    (b"hello \t\nbar=\t \nbaz\n", b"hello\nbarbaz\n"),  # bare LF line ends (stored as received)
    (b"a=20\r\n", b"a \r\n"),  # an encoded space at the end of a line is kept (rule 1)
    (b"a =\r\nb", b"a b"),  # blanks before a soft break are data (rule 3: followed by "=")
    (b"last line  ", b"last line"),  # the last line has no line end; its trailing blanks go too
    (b"soft at end= \t", b"soft at end"),  # a soft break with padding at the very end
    (b"   \r\n", b"\r\n"),  # a line of nothing but padding
    (b"caf=c3=a9", "café".encode()),  # lower-case hex: note 1, accepted
    (b"50=% off =XY", b"50=% off =XY"),  # "=" starting no escape is kept as is (note 2)
    (b"x=\r\ny=3D1", b"xy=1"),
    (b"a==41\r\n", b"a=A\r\n"),  # "=" then "=41": the first starts no escape and is kept (note 2)
    (b"a===\r\nb", b"a==b"),  # two kept, the third a soft line break
])
def test_qp_cases(encoded: bytes, decoded: bytes) -> None:
    assert decode_qp(encoded) == decoded


@settings(max_examples=200)
@given(st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"")))
def test_qp_round_trip(data: bytes) -> None:
    # invariant 3: what a conforming encoder wrote decodes to what it was given (quopri encodes trailing blanks;
    # its text model has LF line ends only, so CR is left out of the input), with LF and with CRLF line ends
    assert decode_qp(quopri.encodestring(data)) == data
    assert decode_qp(quopri.encodestring(data).replace(b"\n", b"\r\n")) == data.replace(b"\n", b"\r\n")


@given(st.binary(max_size=200))
def test_decoders_never_raise(data: bytes) -> None:
    for enc in ("7bit", "8bit", "binary", "", "base64", "quoted-printable", "QUOTED-PRINTABLE", "Base64"):
        decode_body(data, enc)


def test_qp_long_blank_run_is_linear() -> None:
    # invariant 2: a megabyte of blanks (with or without a line end after them) is no backtracking trap
    assert decode_qp(b" " * 1_000_000 + b"x\r\n") == b" " * 1_000_000 + b"x\r\n"
    assert decode_qp(b"x" + b" \t" * 500_000 + b"\r\n") == b"x\r\n"


def test_base64_padding_ends_the_data() -> None:
    # RFC 2045 §6.8: characters outside the alphabet are ignored; "=" marks the end of the data
    assert decode_base64(b"SGVs\r\nbG8=\r\n") == b"Hello"
    assert decode_base64(b"SGVsbG8g!!d29y*bGQ\r\n=garbage==") == b"Hello world"
    assert decode_base64(b"QQ==\r\nQg==\r\n") == b"A"
    assert decode_base64(b"SGVsbG8") == b"Hello"  # missing padding supplied
    assert decode_base64(b"S") == b""
    payload = bytes(range(256)) * 3
    assert decode_base64(base64.encodebytes(payload)) == payload


def test_unknown_encoding() -> None:
    with pytest.raises(UnknownCTE):
        decode_body(b"begin 644 x", "x-uuencode")


def test_every_path_agrees_on_the_qp_part() -> None:
    """BINARY[1], BINARY.SIZE[1] (stored-meta view and scan view) and the search text decode alike; BODYSTRUCTURE
    still describes the encoded body (21 octets, 3 lines)."""
    meta = compute_meta(QP_MESSAGE)
    root = scan(QP_MESSAGE).root
    assert meta.binary(QP_MESSAGE, (1,)) == QP_DECODED
    assert meta.binary_size(QP_MESSAGE, (1,)) == 15
    assert binary_bytes(QP_MESSAGE, root, (1,)) == QP_DECODED
    assert part_text(QP_MESSAGE, root) == "hello\nbarbaz\n"
    assert "barbaz" in meta.search.body and "bar=" not in meta.search.body
    assert b'"quoted-printable" 21 3' in meta.bodystructure
